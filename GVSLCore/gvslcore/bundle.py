"""Model files: one ``.safetensors`` with architecture, preprocessing, labels and provenance as JSON
in the metadata header. Loading never unpickles.

Also reads a training run's checkpoint (``.pt``, loaded with ``weights_only=True``) wherever a model
is asked for, so users can segment or register with a run that is still going.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from .atomic import atomic_path
from .errors import InputError

FORMAT = "gvsl-model"
FORMAT_VERSION = 1
METADATA_KEY = "gvsl"


def default_metadata(task: str, width: int, **extra: Any) -> dict[str, Any]:
    """Metadata skeleton. ``task`` is 'pretrain' (GVSLNet) or 'segmentation' (SegNet)."""
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": task,
        "architecture": {"name": "GVSLNet" if task == "pretrain" else "SegNet", "width": width, "in_channels": 1},
        "preprocessing": {"modality": "CT", "spacing": [1.0, 1.0, 1.0], "ct_window": [-1024.0, 1024.0]},
        "labels": [],
        "provenance": {},
    }
    meta.update(extra)
    return meta


def save_model(path: str | os.PathLike, state_dict: dict, metadata: dict[str, Any]) -> Path:
    """Write tensors + metadata atomically. Tensors are made contiguous and moved to the CPU."""
    from safetensors.torch import save_file

    path = Path(path)
    if not path.name.endswith(".safetensors"):
        raise InputError(f"model file name {path} must end in .safetensors")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(metadata)})
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a model file, read from the safetensors header alone (no torch needed).

    Raises:
        InputError: not a safetensors file or not one of ours.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file {path} does not exist; give a .safetensors model (see `gvsl models list`)")
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(length))
        meta = json.loads(header.get("__metadata__", {}).get(METADATA_KEY, "null"))
    except (OSError, ValueError, struct.error):
        raise InputError(f"{path} is not a safetensors model file; give a model written by gvsl (.safetensors)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{path} is a safetensors file without GVSL metadata; "
                         "import it with `gvsl models import-gvsl` or use a gvsl model")
    return meta


def load_model_file(path: str | os.PathLike, device: str = "cpu") -> tuple[dict, dict[str, Any]]:
    """(state_dict, metadata) from a model file."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    return load_file(str(path), device=device), meta


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> dict[str, Any]:
    """A training checkpoint (``.pt``), loaded without unpickling arbitrary objects."""
    import torch

    try:
        return torch.load(str(path), map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file: one clear line
        raise InputError(f"cannot read checkpoint {path} ({type(exc).__name__}); give a gvsl checkpoint or model file") from None


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    ckpts = sorted(Path(run_dir, "checkpoints").glob("step_*.pt"))
    return ckpts[-1] if ckpts else None


def resolve_model(path: str | os.PathLike, device: str = "cpu") -> tuple[dict, dict[str, Any]]:
    """Accept a model file, a checkpoint file or a run folder; return (state_dict, metadata)."""
    path = Path(path)
    if path.is_dir():
        if (path / "model.safetensors").is_file() and (path / "status.json").is_file():
            status = json.loads((path / "status.json").read_text()).get("status")
            if status == "done":
                return load_model_file(path / "model.safetensors", device)
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise InputError(f"{path} is a folder without model.safetensors or checkpoints/; give a model file or a run folder")
        path = ckpt
    if path.name.endswith(".safetensors"):
        return load_model_file(path, device)
    if path.suffix == ".pt":
        ckpt = load_checkpoint(path, device)
        if "model" not in ckpt or "metadata" not in ckpt:
            raise InputError(f"{path} is not a gvsl checkpoint; give a gvsl model (.safetensors) or a run's checkpoint")
        return ckpt["model"], json.loads(ckpt["metadata"])
    if not path.exists():
        raise InputError(f"model {path} does not exist; give a .safetensors model file, a checkpoint or a run folder")
    raise InputError(f"{path} is not a model: give a .safetensors model file, a run's checkpoint (.pt) or a run folder")

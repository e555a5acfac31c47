"""Import the authors' released checkpoint (``GVSL_epoch_1000.pth``, a plain state_dict).

Our :class:`GVSLNet` keeps the authors' parameter names, so the import is a strict, shape-checked
load: every key of theirs present with the expected shape, nothing unexpected. The one layer of ours
that their model lacks (``f_moments``, the pose moments of the affine head) starts freshly
initialized: their affine head never received a gradient, so nothing trained is lost. The file is
read with ``torch.load(weights_only=True)``: tensors only, nothing unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path

from .bundle import default_metadata, save_model
from .errors import InputError

OURS_ONLY = ("f_moments.",)  # layers of our GVSLNet that the authors' model does not have


def import_official(src: str | os.PathLike, out: str | os.PathLike, modality: str = "CT") -> tuple[Path, int]:
    """Convert the authors' checkpoint into a gvsl model file; returns (path, tensor count)."""
    import torch

    from .nets import GVSLNet

    src = Path(src)
    if not src.is_file():
        raise InputError(f"{src} does not exist; give the authors' GVSL_epoch_*.pth file")
    try:
        state = torch.load(str(src), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, pickled objects or not a checkpoint
        raise InputError(f"cannot read {src} as a weights-only PyTorch checkpoint ({type(exc).__name__}); "
                         "give the authors' state_dict .pth") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise InputError(f"{src} is not a state_dict of tensors; give the authors' GVSL_epoch_*.pth")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    width = _infer_width(state, src)
    with torch.random.fork_rng(devices=[]):  # the fresh layers are reproducible; the caller's RNG is untouched
        torch.manual_seed(0)
        ours = GVSLNet(width).state_dict()
    fresh = {k: v for k, v in ours.items() if k.startswith(OURS_ONLY)}
    expected = {k: v for k, v in ours.items() if k not in fresh}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InputError(
            f"{src} does not have the GVSL key layout ({len(missing)} missing e.g. {missing[:2]}, "
            f"{len(unexpected)} unexpected e.g. {unexpected[:2]}); give the authors' GVSL checkpoint"
        )
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise InputError(f"{src}: {key} has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)}")
    meta = default_metadata("pretrain", width)
    meta["preprocessing"]["modality"] = modality
    meta["provenance"] = {
        "source": "authors' release (YutingHe-list/GVSL)",
        "file": src.name,
        "method": "GVSL (He et al., CVPR 2023)",
        "trained_on": "302 cardiac CTAs at 1 mm (paper)",
    }
    tensors = {**{k: state[k].float() for k in expected}, **fresh}
    return save_model(out, tensors, meta), len(tensors)


def _infer_width(state: dict, src: Path) -> int:
    key = "unet.inc.double_conv.0.weight"
    if key not in state:
        raise InputError(f"{src} has no {key}; it is not a GVSL checkpoint")
    return int(state[key].shape[0])

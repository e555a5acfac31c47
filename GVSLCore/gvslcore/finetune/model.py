"""Where the network starts: resolve ``--pretrained`` / ``--init`` / ``--from-scratch`` into a
:class:`ModelStart` (width, labels, preprocessing, weights, provenance) and build the SegNet."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bundle import resolve_model
from ..errors import InputError
from ..labels import HEART_LABELS, LabelTable
from .config import FinetuneConfig


def _backbone_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    backbone = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    if not backbone:
        raise InputError(f"{source} has no U-Net backbone weights (unet.*); give a GVSL pre-trained or fine-tuned model")
    return backbone


def _check_model_meta(meta: dict[str, Any], source: str, modality: str | None) -> None:
    arch = meta.get("architecture", {})
    if int(arch.get("in_channels", 1)) != 1:
        raise InputError(f"{source} expects {arch.get('in_channels')} input channels; "
                         "fine-tuning here uses one channel, give a single-channel model")
    model_modality = str(meta.get("preprocessing", {}).get("modality", "CT")).upper()
    if modality is not None and modality.upper() != model_modality:
        raise InputError(f"{source} was trained on {model_modality} but --modality is {modality}; "
                         f"use a {modality} model or drop --modality")


@dataclass
class ModelStart:
    """How the network starts: width, label table, preprocessing and provenance."""

    width: int
    table: LabelTable
    spacing: tuple[float, float, float]
    modality: str
    backbone: dict[str, torch.Tensor] | None = None
    full_state: dict[str, torch.Tensor] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    # A two-stage model continued with --init: its locator (weights without the "locator." prefix,
    # and meta["locator"]) is carried unchanged into the fine-tuned file, so it stays a cascade.
    locator_state: dict[str, torch.Tensor] | None = None
    locator_meta: dict[str, Any] | None = None


def _start_from_init(cfg: FinetuneConfig, path: Path, given_table: LabelTable | None) -> ModelStart:
    """``--init``: an earlier fine-tuned model, its head, labels and preprocessing included."""
    state, meta = resolve_model(path)
    if meta.get("task") != "segmentation":
        raise InputError(f"--init {path} is a {meta.get('task')} model; --init continues a fine-tuned "
                         "segmentation model (use --pretrained for a backbone)")
    _check_model_meta(meta, str(path), cfg.modality)
    from ..nets import SegNet

    file_readout = SegNet.head_options(state)["readout"]
    if cfg.readout and cfg.readout != file_readout:
        raise InputError(f"--readout {cfg.readout} differs from {path}'s '{file_readout}' head; drop --readout "
                         "when continuing a model (or start from --pretrained)")
    table = LabelTable.from_list(meta.get("labels") or []) if meta.get("labels") else HEART_LABELS
    if given_table is not None and given_table.values != table.values:
        raise InputError(f"--label-table has values {given_table.values} but {path} predicts {table.values}; "
                         "drop --label-table or start from --pretrained")
    prep = meta.get("preprocessing", {})
    spacing = tuple(cfg.spacing or prep.get("spacing", (1.0, 1.0, 1.0)))
    if cfg.spacing and not np.allclose(cfg.spacing, prep.get("spacing", cfg.spacing)):
        raise InputError(f"--spacing {cfg.spacing} differs from {path}'s {prep.get('spacing')}; drop --spacing when continuing a model")
    prov = dict(meta.get("provenance") or {})
    from ..segment import split_locator

    main, located = split_locator(state)
    loc_meta = meta.get("locator") if located else None
    return ModelStart(int(meta["architecture"]["width"]), table, spacing, str(prep.get("modality", "CT")).upper(),  # type: ignore[arg-type]
                      full_state=main, provenance={"init": str(path), "pretrained": prov.get("pretrained"),
                                                   "init_provenance": prov},
                      locator_state=located or None, locator_meta=loc_meta)


def _start_from_pretrained(cfg: FinetuneConfig, path: Path, table: LabelTable) -> ModelStart:
    """``--pretrained``: the U-Net backbone of a GVSL pre-trained (or fine-tuned) model, a new head."""
    state, meta = resolve_model(path)
    _check_model_meta(meta, str(path), cfg.modality)
    prep = meta.get("preprocessing", {})
    spacing = tuple(cfg.spacing or prep.get("spacing", (1.0, 1.0, 1.0)))
    return ModelStart(
        int(meta["architecture"]["width"]), table, spacing, str(prep.get("modality", "CT")).upper(),  # type: ignore[arg-type]
        backbone=_backbone_state(state, str(path)),
        provenance={"pretrained": str(path), "pretrained_task": meta.get("task"),
                    "pretrained_provenance": meta.get("provenance", {})},
    )


def model_start(cfg: FinetuneConfig) -> ModelStart:
    """Resolve ``--pretrained`` / ``--init`` / ``--from-scratch`` into a :class:`ModelStart`."""
    from ..zoo import locate_model

    given_table = LabelTable.from_list(cfg.label_table) if cfg.label_table else None
    if sum(bool(x) for x in (cfg.init, cfg.pretrained and not cfg.from_scratch)) > 1:
        raise InputError("give either --init (continue a fine-tuned model) or --pretrained (a backbone), not both")
    if cfg.init:
        return _start_from_init(cfg, locate_model(cfg.init), given_table)
    table = given_table or HEART_LABELS
    if cfg.from_scratch:
        if cfg.pretrained:
            raise InputError("--from-scratch trains a random backbone: drop --pretrained")
        spacing = tuple(cfg.spacing or (1.0, 1.0, 1.0))
        return ModelStart(int(cfg.width), table, spacing, (cfg.modality or "CT").upper(), provenance={"pretrained": None})  # type: ignore[arg-type]
    if not cfg.pretrained:
        raise InputError("give --pretrained MODEL (a GVSL pre-trained model or run), --init MODEL, or --from-scratch")
    return _start_from_pretrained(cfg, locate_model(cfg.pretrained), table)


def build_network(start: ModelStart, device: torch.device, readout: str = "last"):
    """The SegNet to train: ``--init`` weights (their own head), or a backbone plus a new ``readout`` head."""
    from ..nets import SegNet

    head = SegNet.head_options(start.full_state) if start.full_state is not None else {"readout": readout}
    net = SegNet(start.table.num_classes, start.width, **head)  # type: ignore[arg-type]
    if start.full_state is not None:
        try:
            net.load_state_dict(start.full_state, strict=True)
        except RuntimeError as exc:
            raise InputError(f"--init weights do not fit: {str(exc).splitlines()[0]}") from None
    elif start.backbone is not None:
        try:
            net.unet.load_state_dict(start.backbone, strict=True)
        except RuntimeError as exc:
            raise InputError(f"--pretrained backbone does not fit a width-{start.width} U-Net: {str(exc).splitlines()[0]}") from None
    return net.to(device)


"""The fine-tuned model as a file: the metadata (architecture, preprocessing, labels, provenance,
training), the weights as a plain SegNet (the probe's standardization folded into the head), and
the final model written at the end of a run."""

from __future__ import annotations

import copy
from typing import Any

import torch

from .. import __version__
from ..bundle import default_metadata, save_model
from ..events import Reporter, log
from .config import FinetuneConfig
from .model import ModelStart
from .probe import Statistics, fold_standardization


def model_metadata(cfg: FinetuneConfig, start: ModelStart, step: int, summary: dict[str, Any],
                   readout: str = "last") -> dict[str, Any]:
    meta = default_metadata("segmentation", start.width)
    meta["architecture"]["num_classes"] = start.table.num_classes
    meta["architecture"]["readout"] = readout
    meta["preprocessing"].update({"modality": start.modality, "spacing": [float(s) for s in start.spacing]})
    meta["labels"] = start.table.to_list()
    meta["inference"] = {"window": list(cfg.patch), "overlap": 0.5}
    meta["provenance"] = {
        "software": f"gvslcore {__version__}",
        "method": cfg.mode,
        **start.provenance,
        "data": {"images": str(cfg.images), "labels": str(cfg.labels)},
        "steps": step,
        "best_validation_dice": summary.get("best_dice"),
        "best_step": summary.get("best_step"),
    }
    meta["training"] = {
        "mode": cfg.mode,
        "steps": step,
        "patch": list(cfg.patch),
        "batch": cfg.batch,
        "lr": cfg.learning_rate(),
        "seed": cfg.seed,
        "foreground_fraction": cfg.foreground,
        "augment": cfg.augment,
        **{k: v for k, v in summary.items() if k not in ("best_dice", "best_step")},
    }
    return meta



def run_metadata(cfg: FinetuneConfig, start: ModelStart, step: int, summary: dict[str, Any], best: dict[str, Any],
                 validated: bool, readout: str) -> dict[str, Any]:
    """:func:`model_metadata` with the best validation Dice and step so far (None without validation)."""
    return model_metadata(cfg, start, step, {**summary, "best_dice": best["best_dice"] if validated else None,
                                             "best_step": best["best_step"] if validated else None}, readout)


def plain_state(net: torch.nn.Module, f_stats: Statistics | None) -> dict[str, torch.Tensor]:
    """The weights as a plain SegNet (a linear probe's standardization ``f_stats`` folded into the head)."""
    if f_stats is not None:
        return fold_standardization(net.state_dict(), f_stats)
    return net.state_dict()


def plain_net(net: torch.nn.Module, f_stats: Statistics | None) -> torch.nn.Module:
    """``net`` itself, or for a linear probe a copy that reads raw features (for validation)."""
    if f_stats is None:
        return net
    twin = copy.deepcopy(net)
    twin.load_state_dict(plain_state(net, f_stats))
    return twin


def write_final_model(cfg: FinetuneConfig, start: ModelStart, weights: dict[str, torch.Tensor], step: int,
                      summary: dict[str, Any], best: dict[str, Any], validated: bool, readout: str,
                      reporter: Reporter) -> dict[str, Any]:
    """Write ``cfg.out`` (the weights of ``step``); returns the outputs of the ``done`` event."""
    meta = run_metadata(cfg, start, step, summary, best, validated, readout)
    if start.locator_state and start.locator_meta:
        from ..segment import LOCATOR_PREFIX

        weights = {**weights, **{LOCATOR_PREFIX + k: v for k, v in start.locator_state.items()}}
        meta["locator"] = copy.deepcopy(start.locator_meta)
    model_path = save_model(cfg.out, weights, meta)
    reporter.artifact("model", model_path)
    note = f" (best validation Dice {best['best_dice']:.3f} at step {step})" if validated else ""
    log(f"fine-tuning done: {model_path}{note}")
    return {"model": str(model_path), "best_validation_dice": best["best_dice"] if validated else None, "best_step": step}

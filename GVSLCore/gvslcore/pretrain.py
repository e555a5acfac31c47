"""GVSL pre-training: Z-Matching (affine + deformable) of two volumes plus restoration.

Loss = w_ncc * NCC(A, warp(B)) + w_smooth * smooth(v) + w_mse * MSE(restore(t(A)), A), Adam.
The network sees the appearance-transformed view t(A) as its fixed image; both the registration
and the restoration targets are the untransformed A (the authors' training).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .bundle import default_metadata, save_model
from .data import PairPatchDataset, Preprocessing, StepSampler, VolumeCache, collect_volumes
from .engine import TrainingRun, resolve_device, rng_state, set_rng_state
from .errors import InputError
from .events import log
from .losses import local_ncc_loss, restoration_loss, smoothness_loss
from .nets import GVSLNet

logger = logging.getLogger("gvsl.pretrain")


@dataclass
class PretrainConfig:
    """Everything a pre-training run depends on (written to RUN/config.json)."""

    data: list[str]
    out: str
    steps: int = 2000
    patch: tuple[int, int, int] = (128, 128, 128)
    batch: int = 1
    width: int = 32
    lr: float = 1e-4
    seed: int = 0
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    modality: str = "auto"
    ncc_weight: float = 1.0
    smooth_weight: float = 1.0
    mse_weight: float = 1.0
    ncc_window: int = 9
    checkpoint_every: int = 100
    keep: int = 3
    log_every: int = 10
    workers: int = 0
    device: str = "auto"
    bf16: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def model_metadata(cfg: PretrainConfig, step: int, modality: str) -> dict[str, Any]:
    meta = default_metadata("pretrain", cfg.width)
    meta["preprocessing"].update({"modality": modality, "spacing": list(cfg.spacing)})
    meta["provenance"] = {
        "software": f"gvslcore {__version__}",
        "method": "GVSL (He et al., CVPR 2023)",
        "steps": step,
        "patch": list(cfg.patch),
        "batch": cfg.batch,
        "data": [str(d) for d in cfg.data],
    }
    return meta


def compute_losses(model: torch.nn.Module, fixed, view, moving, cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    """One forward pass; returns the weighted total and its parts (tensors, no host sync)."""
    out = model(view, moving)
    ncc = local_ncc_loss(fixed, out.warped, cfg.ncc_window)
    smooth = smoothness_loss(out.residual)
    mse = restoration_loss(out.restored, fixed)
    total = cfg.ncc_weight * ncc + cfg.smooth_weight * smooth + cfg.mse_weight * mse
    return {"total": total, "ncc": ncc, "smooth": smooth, "mse": mse}


@torch.no_grad()
def baseline_losses(fixed, view, moving, window: int) -> dict[str, torch.Tensor]:
    """What the losses are without learning: NCC of the unwarped pair, MSE of the transformed view."""
    return {"ncc_unwarped": local_ncc_loss(fixed, moving, window), "mse_view": restoration_loss(view, fixed)}


def run_pretrain(cfg: PretrainConfig, progress: str = "bar", resume: bool = False) -> int:
    """Train; returns the exit code (0 done, 130/143 cancelled)."""
    device = resolve_device(cfg.device)
    paths = collect_volumes(cfg.data)
    if len(paths) < 2:
        raise InputError(f"found only one volume ({paths[0]}); GVSL pairs two different volumes, add at least one more to --data")
    if cfg.steps < 1:
        raise InputError("--steps must be at least 1")
    torch.manual_seed(cfg.seed)
    with TrainingRun(cfg.out, "pretrain", asdict(cfg), cfg.steps, resume=resume, progress=progress, keep=cfg.keep) as run:
        modality = cfg.modality if cfg.modality != "auto" else "CT"
        model = GVSLNet(cfg.width).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        state = run.load_latest(device)
        start = 0
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"], device)
            start = int(state["step"])
        run.reporter.start("pretrain", cfg.steps, step=start)
        run.reporter.stage("preprocessing", step=start)
        prep = Preprocessing(tuple(cfg.spacing), cfg.modality)
        cache = VolumeCache(Path(cfg.out) / "cache")
        volumes = [cache.get(p, prep) for p in paths]
        dataset = PairPatchDataset(volumes, cfg.patch, cfg.seed)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch,
            sampler=StepSampler(start, cfg.steps, cfg.batch, run.rank, run.world_size),
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        use_bf16 = cfg.bf16 and device.type == "cuda"
        sums: dict[str, torch.Tensor] = {}
        count = 0
        step = start
        model.train()

        def checkpoint(at: int) -> None:
            run.save_checkpoint(
                at,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": rng_state(device),
                    "metadata": _json(model_metadata(cfg, at, modality)),
                },
            )

        for fixed, view, moving in loader:
            fixed = fixed.to(device, non_blocking=True)
            view = view.to(device, non_blocking=True)
            moving = moving.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                losses = compute_losses(model, fixed, view, moving, cfg)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            step += 1
            # Accumulate on the device; read back only every log_every steps (no per-step sync).
            losses.update(baseline_losses(fixed, view, moving, cfg.ncc_window))
            for k, v in losses.items():
                sums[k] = sums.get(k, 0) + v.detach()
            count += 1
            if step % cfg.log_every == 0 or step == cfg.steps or run.stop.requested:
                means = {k: float(v) / count for k, v in sums.items()}
                run.reporter.progress(step, loss={k: means[k] for k in ("ncc", "smooth", "mse", "total")},
                                      baseline={k: means[k] for k in ("ncc_unwarped", "mse_view")})
                logger.info("step %d %s", step, " ".join(f"{k}={v:.4f}" for k, v in means.items()))
                sums, count = {}, 0
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or run.stop.requested:
                checkpoint(step)
            if run.stop.requested:
                break
        outputs: dict[str, Any] = {"run": cfg.out}
        if not run.stop.requested and run.is_main:
            model_path = save_model(Path(cfg.out) / "model.safetensors", model.state_dict(), model_metadata(cfg, step, modality))
            run.reporter.artifact("model", model_path)
            outputs["model"] = str(model_path)
            log(f"pretraining done: {model_path}")
        return run.finish(outputs)


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj)

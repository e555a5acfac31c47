"""GVSL pre-training: Z-Matching (affine + deformable) of two volumes plus restoration.

Loss = w_ncc * NCC(A, warp(B)) + w_smooth * smooth(v) + w_mse * MSE(restore(t(A)), A), Adam.
The network sees the appearance-transformed view t(A) as its fixed image; both the registration
and the restoration targets are the untransformed A (the authors' training).

Runs in one process or data-parallel under torchrun (``gvsl pretrain --nproc N``, see
:mod:`gvslcore.distributed`): ``batch`` is per process, the global batch is ``batch * world``.
The hot loop never waits for the device: patches and appearance transforms come from DataLoader
workers into pinned memory, copies are non-blocking, losses stay on the device and are read back
(all-reduced over ranks) every ``log_every`` steps.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .bundle import default_metadata, save_model
from .data import (
    PairPatchDataset,
    Preprocessing,
    StepSampler,
    VolumeCache,
    collect_volumes,
)
from .distributed import (
    DistContext,
    StopAgreement,
    barrier,
    init_distributed,
    load_latest_together,
    loader_options,
    reduce_mean,
    shutdown,
    unwrap,
    wrap_model,
    write_debug_digest,
)
from .engine import TrainingRun, check_run_folder, rng_state, set_rng_state
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
    workers: int = 0  # DataLoader processes per training process; -1 = auto (up to 8 per GPU, 0 on CPU)
    device: str = "auto"
    bf16: bool = True
    compile: bool = False  # torch.compile the model (measure first: benchmarks/pretrain_speed.py)
    channels_last: bool = False  # channels-last-3d memory format for weights and inputs
    pairs: str = "any"  # "any": any two volumes; "folder": two volumes of one --data folder (one body region)
    zoom: tuple[float, float] | None = None  # field-of-view factor range per pair (scale augmentation)
    body_relative: bool = False  # crop both volumes at one fraction of their body boxes
    balance_folders: bool = False  # each --data folder gives the fixed volume equally often
    extra: dict[str, Any] = field(default_factory=dict)


def model_metadata(cfg: PretrainConfig, step: int, modality: str, world_size: int = 1) -> dict[str, Any]:
    meta = default_metadata("pretrain", cfg.width)
    meta["preprocessing"].update({"modality": modality, "spacing": list(cfg.spacing)})
    meta["provenance"] = {
        "software": f"gvslcore {__version__}",
        "method": "GVSL (He et al., CVPR 2023)",
        "steps": step,
        "patch": list(cfg.patch),
        "batch": cfg.batch,
        "processes": world_size,
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


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    fixed: torch.Tensor,
    view: torch.Tensor,
    moving: torch.Tensor,
    cfg: PretrainConfig,
    use_bf16: bool,
) -> dict[str, torch.Tensor]:
    """Forward (bf16 autocast when asked), backward, Adam step. Returns the losses as detached-able
    device tensors (no host sync). Shared by the training loop and the speed benchmark."""
    with torch.autocast(fixed.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        losses = compute_losses(model, fixed, view, moving, cfg)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    optimizer.step()
    return losses


def make_optimizer(net: torch.nn.Module, cfg: PretrainConfig, device: torch.device) -> torch.optim.Adam:
    # The fused CUDA kernel updates every parameter in one launch (the foreach path takes several).
    return torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=device.type == "cuda")


def compile_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``torch.compile`` on CUDA, falling back to eager where a graph fails to compile; on CPU the
    model stays eager (torch 2.13's CPU code generator fails on this network: an assertion in
    its vectorized stores)."""
    if device.type != "cuda":
        logger.info("--compile is used on CUDA only; training eagerly on %s", device)
        log(f"--compile: ignored on {device.type} (CUDA only); training eagerly")
        return model
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    return torch.compile(model)


def check_inputs(cfg: PretrainConfig, resume: bool, check_folder: bool = False) -> list[Path]:
    """Validate what can be validated before starting; with ``check_folder`` also the run folder
    against ``resume`` (what TrainingRun checks on rank 0; the launcher checks it before starting
    torchrun workers, so that bad input is one line and exit code 2, not a worker failure).

    Returns the volume files. Raises InputError with one line naming the problem.
    """
    paths = collect_volumes(cfg.data)
    if len(paths) < 2:
        raise InputError(f"found only one volume ({paths[0]}); GVSL pairs two different volumes, add at least one more to --data")
    if cfg.steps < 1:
        raise InputError("--steps must be at least 1")
    if cfg.pairs not in ("any", "folder"):
        raise InputError(f"--pairs {cfg.pairs} is not valid; give 'any' or 'folder'")
    if cfg.zoom is not None and not (0.0 < cfg.zoom[0] <= cfg.zoom[1]):
        raise InputError(f"--zoom {cfg.zoom[0]} {cfg.zoom[1]} is not valid; give LO HI with 0 < LO <= HI, e.g. 0.8 1.25")
    if not check_folder:
        return paths
    check_run_folder(cfg.out, resume)
    return paths


def folder_groups(folders, paths: list[Path]) -> list[int]:
    """For each volume of ``paths`` (as :func:`collect_volumes` lists them), the index of the
    ``--data`` folder it came from."""
    groups: list[int] = []
    for k, folder in enumerate(folders):
        groups += [k] * len(collect_volumes([folder]))
    if len(groups) != len(paths):  # cannot happen unless a folder changed meanwhile
        raise InputError("the --data folders changed while the run started; start it again")
    return groups


def run_pretrain(cfg: PretrainConfig, progress: str = "bar", resume: bool = False) -> int:
    """Train; returns the exit code (0 done, 130/143 cancelled). One process, or one rank of a
    torchrun job (the environment says which)."""
    paths = check_inputs(cfg, resume)
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx, paths, progress, resume)
    finally:
        shutdown(ctx)


def _train(cfg: PretrainConfig, ctx: DistContext, paths: list[Path], progress: str, resume: bool) -> int:
    device = ctx.device
    torch.manual_seed(cfg.seed)
    with TrainingRun(cfg.out, "pretrain", asdict(cfg), cfg.steps, resume=resume, progress=progress, keep=cfg.keep) as run:
        modality = cfg.modality if cfg.modality != "auto" else "CT"
        net = GVSLNet(cfg.width).to(device)
        if cfg.channels_last:
            net = net.to(memory_format=torch.channels_last_3d)
        optimizer = make_optimizer(net, cfg, device)
        state = load_latest_together(run, ctx)
        start = 0
        if state is not None:
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            for group in optimizer.param_groups:  # --lr may change on resume: the new one applies
                group["lr"] = cfg.lr
            set_rng_state(state["rng"], device)
            start = int(state["step"])
        run.reporter.start("pretrain", cfg.steps, step=start, world_size=ctx.world_size)
        run.reporter.stage("preprocessing", step=start)
        prep = Preprocessing(tuple(cfg.spacing), cfg.modality)
        cache = VolumeCache(Path(cfg.out) / "cache")
        # One process per node preprocesses; the others then memory-map its cache files.
        if ctx.local_rank == 0:
            volumes = [cache.get(p, prep) for p in paths]
        barrier(ctx)
        if ctx.local_rank != 0:
            volumes = [cache.get(p, prep) for p in paths]
        folders = folder_groups(cfg.data, paths) if (cfg.pairs == "folder" or cfg.balance_folders) else None
        weights = None
        if cfg.balance_folders and folders is not None:
            counts = {g: folders.count(g) for g in set(folders)}
            weights = [1.0 / counts[g] for g in folders]
        dataset = PairPatchDataset(volumes, cfg.patch, cfg.seed, groups=folders if cfg.pairs == "folder" else None,
                                   zoom=tuple(cfg.zoom) if cfg.zoom else None, body_relative=cfg.body_relative,
                                   weights=weights)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch,
            sampler=StepSampler(start, cfg.steps, cfg.batch, ctx.rank, ctx.world_size),
            **loader_options(cfg.workers, ctx),
        )
        model = wrap_model(net, ctx)
        if cfg.compile:
            model = compile_model(model, device)
        use_bf16 = cfg.bf16 and device.type == "cuda"
        stop = StopAgreement(ctx, run.stop)
        sums: dict[str, torch.Tensor] = {}
        count = 0
        step = start
        model.train()

        def checkpoint(at: int) -> None:
            run.save_checkpoint(
                at,
                {
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": rng_state(device),
                    "metadata": _json(model_metadata(cfg, at, modality, ctx.world_size)),
                },
            )

        for batch in loader:
            fixed, view, moving = (t.to(device, non_blocking=True) for t in batch)
            if cfg.channels_last:
                fixed, view, moving = (t.contiguous(memory_format=torch.channels_last_3d) for t in (fixed, view, moving))
            losses = training_step(model, optimizer, fixed, view, moving, cfg, use_bf16)
            step += 1
            # Accumulate on the device; read back only every log_every steps (no per-step sync).
            losses.update(baseline_losses(fixed, view, moving, cfg.ncc_window))
            for k, v in losses.items():
                sums[k] = sums.get(k, 0) + v.detach()
            count += 1
            stopping = stop.poll()
            if step % cfg.log_every == 0 or step == cfg.steps or stopping:
                means = reduce_mean(sums, ctx, count)
                run.reporter.progress(step, loss={k: means[k] for k in ("ncc", "smooth", "mse", "total")},
                                      baseline={k: means[k] for k in ("ncc_unwarped", "mse_view")})
                logger.info("step %d %s", step, " ".join(f"{k}={v:.4f}" for k, v in means.items()))
                sums, count = {}, 0
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping:
                checkpoint(step)
            if stopping:
                break
        stop.close()
        write_debug_digest(net, optimizer, ctx, step)
        outputs: dict[str, Any] = {"run": cfg.out}
        if not run.stop.requested and run.is_main:
            model_path = save_model(Path(cfg.out) / "model.safetensors", unwrap(net).state_dict(),
                                    model_metadata(cfg, step, modality, ctx.world_size))
            run.reporter.artifact("model", model_path)
            outputs["model"] = str(model_path)
            log(f"pretraining done: {model_path}")
        return run.finish(outputs)


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj)

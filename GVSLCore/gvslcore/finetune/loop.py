"""The fine-tuning run: check and read everything up front, then train inside a
:class:`gvslcore.engine.TrainingRun` (checkpoints, resume, cancel, progress events), validate,
stop early, and write the best model. One process, or one rank of a torchrun job.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from ..bundle import save_model
from ..data import Preprocessing, StepSampler
from ..distributed import (
    DistContext,
    StopAgreement,
    broadcast_object,
    init_distributed,
    load_latest_together,
    loader_options,
    reduce_mean,
    shutdown,
    wrap_model,
    write_debug_digest,
)
from ..engine import TrainingRun, rng_state, set_rng_state
from ..events import log
from ..losses import dice_ce_loss
from .config import FinetuneConfig, check_config
from .data import AugmentConfig, Case, SegPatchDataset, load_case, pair_cases, split_cases
from .export import plain_net, plain_state, run_metadata, write_final_model
from .model import ModelStart, build_network, model_start
from .probe import class_weights, feature_statistics, standardize
from .validation import validate

logger = logging.getLogger("gvsl.finetune")


def _poly_lr(base: float, step: int, total: int) -> float:
    return base * (1.0 - min(step, total - 1) / total) ** 0.9


class _Session:
    """One fine-tuning run inside its TrainingRun: the network, optimizer, patches, the best
    validation so far, and the steps that train, validate and checkpoint."""

    def __init__(self, cfg: FinetuneConfig, start: ModelStart, train_cases: list[Case], val_cases: list[Case],
                 run: TrainingRun, ctx: DistContext) -> None:
        self.cfg, self.start, self.run, self.ctx = cfg, start, run, ctx
        self.train_cases, self.val_cases = train_cases, val_cases
        self.device = device = ctx.device
        self.net = net = build_network(start, device, cfg.head_readout)
        if cfg.linear_probe:
            net.unet.requires_grad_(False)
            params = list(net.head.parameters())
        else:
            params = list(net.parameters())
        self.base_lr = cfg.learning_rate()
        self.optimizer = torch.optim.Adam(params, lr=self.base_lr, weight_decay=0.0)
        self.dataset = SegPatchDataset(train_cases, cfg.patch, tuple(reversed(start.spacing)), cfg.seed,
                                       cfg.foreground, AugmentConfig() if cfg.augment else None)
        # Linear probe (the paper's linear evaluation): the frozen features are standardized per
        # channel and the head learns with class-weighted cross-entropy. Both are measured
        # necessities at small widths: on raw features, Dice + CE leaves a linear head on the
        # all-background solution for hundreds of steps, for pretrained and random backbones alike.
        # The standardization is folded into the saved head, so the model is a plain SegNet.
        self.f_stats = self.ce_weights = None
        if cfg.linear_probe:
            net.eval()
            self.f_stats = feature_statistics(net, self.dataset, device)
            self.ce_weights = class_weights(train_cases, start.table.num_classes).to(device)
        self.step = 0
        self.best: dict[str, Any] = {"best_dice": -1.0, "best_step": 0, "bad_validations": 0, "validations": 0}
        self._resume(load_latest_together(run, ctx))
        self.best_path = cfg.run_dir / "best.safetensors"
        self.values = [v for v in start.table.values]
        self.summary: dict[str, Any] = {}
        self.stopped_early = False
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.loss_name = "ce" if cfg.linear_probe else "dice_ce"
        self.first_loss: float | None = self.best.get("first_loss")

    def _resume(self, state: dict[str, Any] | None) -> None:
        if state is None:
            return
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], self.device)
        self.step = int(state["step"])
        self.best.update(json.loads(state["best"]))

    def metadata(self, at: int) -> dict[str, Any]:
        return run_metadata(self.cfg, self.start, at, self.summary, self.best, bool(self.val_cases), self.net.readout)

    def checkpoint(self, at: int) -> None:
        self.run.save_checkpoint(at, {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(self.device),
            "best": json.dumps({**self.best, "first_loss": self.first_loss}),
            "metadata": json.dumps(self.metadata(at)),
        })

    def validate_now(self, at: int) -> bool:
        """Validate the weights of step ``at``, keep the best, and say whether to stop early."""
        cfg, best = self.cfg, self.best
        # Rank 0 validates and tells the others, so that early stopping is decided once.
        result = validate(plain_net(self.net, self.f_stats), self.val_cases, self.values, cfg.patch, self.device) \
            if self.ctx.is_main else (None, None)
        mean, per_label = broadcast_object(result, self.ctx)
        if cfg.linear_probe:
            self.net.unet.eval()
        best["validations"] += 1
        if mean > best["best_dice"]:
            best.update(best_dice=mean, best_step=at, bad_validations=0)
            if self.run.is_main:
                self.summary["best_per_label"] = {self.start.table.name_of(v): round(d, 4) for v, d in per_label.items()}
                save_model(self.best_path, plain_state(self.net, self.f_stats), self.metadata(at))
        else:
            best["bad_validations"] += 1
        self.run.reporter.progress(at, stage="validation",
                                   validation={"dice": mean, "best_dice": best["best_dice"], "best_step": best["best_step"]})
        logger.info("step %d validation dice %.4f (best %.4f at %d)", at, mean, best["best_dice"], best["best_step"])
        if cfg.patience and best["bad_validations"] >= cfg.patience and at < cfg.steps:
            log(f"early stopping at step {at}: no better validation Dice in {cfg.patience} validations")
            return True
        return False

    def _loss(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Dice + CE of the network, or the probe's weighted CE of the head on standardized features."""
        cfg = self.cfg
        use_bf16 = cfg.bf16 and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            if cfg.linear_probe:
                with torch.no_grad():
                    features = standardize(self.net.head_inputs(images), self.f_stats)
                logits = self.net.read_out(model(features), images.shape[2:])
            else:
                logits = model(images)
        if cfg.linear_probe:
            return F.cross_entropy(logits.float(), labels, weight=self.ce_weights)
        return dice_ce_loss(logits, labels)

    def _descend(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One optimizer step at the poly learning rate; the loss is summed on the device."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = _poly_lr(self.base_lr, self.step, self.cfg.steps)
        loss = self._loss(model, images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.sums[self.loss_name] = self.sums.get(self.loss_name, 0.0) + loss.detach()  # on the device: no per-step sync
        self.count += 1
        if self.first_loss is None:
            self.first_loss = float(loss.detach())

    def _after_step(self, stopping: bool) -> bool:
        """Report, validate and checkpoint as due after a step; whether the loop ends here."""
        cfg, step = self.cfg, self.step
        if step % cfg.log_every == 0 or step == cfg.steps or stopping:
            means = reduce_mean(self.sums, self.ctx, self.count)
            self.run.reporter.progress(step, loss=means, lr=self.optimizer.param_groups[0]["lr"])
            logger.info("step %d %s=%.4f", step, self.loss_name, means[self.loss_name])
            self.summary["last_loss"] = means[self.loss_name]
            self.sums, self.count = {}, 0
        due = bool(self.val_cases) and (step % cfg.val_every == 0 or step == cfg.steps)
        if due and stopping:
            self.best["pending_validation"] = step  # validated first thing on --resume, as a straight run would
        elif due:
            self.stopped_early = self.validate_now(step)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping or self.stopped_early:
            self.checkpoint(step)
        return stopping or self.stopped_early

    def train(self) -> None:
        """From the current step to ``cfg.steps``, a cancel, or early stopping."""
        cfg, net = self.cfg, self.net
        self.run.reporter.start("finetune", cfg.steps, step=self.step)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=cfg.batch,
            sampler=StepSampler(self.step, cfg.steps, cfg.batch, self.ctx.rank, self.ctx.world_size),
            **loader_options(cfg.workers, self.ctx),
        )
        net.train()
        if cfg.linear_probe:
            net.unet.eval()
        # DDP over what trains (the head alone in a linear probe); identity in one process.
        model = wrap_model(net.head if cfg.linear_probe else net, self.ctx)
        stop = StopAgreement(self.ctx, self.run.stop)
        if self.best.pop("pending_validation", None) == self.step and self.step > 0:
            self.stopped_early = self.validate_now(self.step)
            self.checkpoint(self.step)
        for images, labels in loader:
            if self.stopped_early:  # decided by the pending validation of a resumed run
                break
            self._descend(model, images, labels)
            if self._after_step(stop.poll()):  # the stop is agreed by every rank
                break
        stop.close()
        write_debug_digest(net, self.optimizer, self.ctx, self.step)

    def export(self) -> dict[str, Any]:
        """Write ``cfg.out``: the best validated weights, or the last ones without validation."""
        self.summary.update(first_loss=self.first_loss, stopped_early=self.stopped_early, final_step=self.step,
                            train_cases=[c.name for c in self.train_cases],
                            validation_cases=[c.name for c in self.val_cases])
        if self.val_cases and self.best_path.is_file():
            from ..bundle import load_model_file

            weights, _ = load_model_file(self.best_path)
            chosen_step = self.best["best_step"]
        else:
            weights, chosen_step = plain_state(self.net, self.f_stats), self.step
        return write_final_model(self.cfg, self.start, weights, chosen_step, self.summary, self.best,
                                 bool(self.val_cases), self.net.readout, self.run.reporter)


def _prepare(cfg: FinetuneConfig) -> tuple[ModelStart, list[Case], list[Case]]:
    """Check the settings, resolve the model start, read every case; (start, train cases, validation
    cases). Bad model input fails before the run folder exists; every case is checked up front."""
    check_config(cfg)
    start = model_start(cfg)
    pairs = pair_cases(cfg.images, cfg.labels)
    prep = Preprocessing(tuple(start.spacing), start.modality)  # type: ignore[arg-type]
    cases = [load_case(img, lab, prep, start.table, seed=cfg.seed) for img, lab in pairs]
    train_idx, val_idx = split_cases([c.name for c in cases], cfg.val_fraction, cfg.val_cases, cfg.seed)
    return start, [cases[i] for i in train_idx], [cases[i] for i in val_idx]


def run_finetune(cfg: FinetuneConfig, progress: str = "bar", resume: bool = False) -> int:
    """Train; returns the exit code (0 done, 130/143 cancelled). Writes ``cfg.out`` when done.
    One process, or one rank of a torchrun job (:mod:`gvslcore.distributed`)."""
    ctx = init_distributed(cfg.device)
    try:
        return _run_finetune(cfg, progress, resume, ctx)
    finally:
        shutdown(ctx)


def _run_finetune(cfg: FinetuneConfig, progress: str, resume: bool, ctx: DistContext) -> int:
    start, train_cases, val_cases = _prepare(cfg)
    torch.manual_seed(cfg.seed)
    config = asdict(cfg)
    config.update({"mode": cfg.mode, "lr_used": cfg.learning_rate(), "spacing_used": list(start.spacing),
                   "modality_used": start.modality, "train_cases": [c.name for c in train_cases],
                   "validation_cases": [c.name for c in val_cases]})
    run_dir = cfg.run_dir
    with TrainingRun(run_dir, "finetune", config, cfg.steps, resume=resume, progress=progress, keep=cfg.keep) as run:
        session = _Session(cfg, start, train_cases, val_cases, run, ctx)
        session.train()
        outputs: dict[str, Any] = {"run": str(run_dir)}
        if not run.stop.requested and run.is_main:
            outputs.update(session.export())
        return run.finish(outputs)

"""The default heart model ``gvsl-heart-ct``: labels from synthetic adult chests only, never from a real scan.

``gvsl models build gvsl-heart-ct OUT.safetensors --run RUN`` renders a bank of synthetic chest
tissue maps (:mod:`gvslcore.synth`, RUN/bank/), then trains the two networks of the cascade on views
painted from them with a new appearance every sample (SynthSeg-style domain randomization with CT's
physical units as the prior): the locator (4 mm, RUN/locator/) and the fine network (2 mm, RUN/fine/),
whose U-Net starts from the shipped GVSL model (pre-trained without labels on real CTs). Each stage
validates on views of held-out bank cases and keeps its best weights; the export puts both in one
file (fp16; the locator's tensors prefixed ``locator.``) with the recipe in the header. Every part is
resumable: bank cases are written atomically and skipped when present, each stage is a
:class:`gvslcore.engine.TrainingRun` (checkpoints, SIGINT/SIGTERM, ``--resume`` bit-for-bit in step
count) and a finished stage is not trained again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .atomic import ensure_writable_dir
from .bundle import default_metadata, save_model
from .engine import EXIT_CODES
from .errors import InputError
from .events import log
from .heartrecipe import MODEL_ID, VERSION, HeartRecipe, StageRecipe
from .labels import HEART_LABELS

logger = logging.getLogger("gvsl.heartmodel")

# -- the bank ---------------------------------------------------------------------------------------

def bank_seed(recipe: HeartRecipe, index: int) -> int:
    """The chest seed of bank case ``index``."""
    return int(np.random.SeedSequence([recipe.seed, 31, index]).generate_state(1)[0])


def _render_one(job: tuple[int, float, str]) -> str:

    from .io import write_image
    from .synth.chest import render_case

    seed, spacing, path = job
    torch.set_num_threads(1)
    write_image(render_case(seed, spacing), path)
    return path


def build_bank(folder: Path, recipe: HeartRecipe, reporter=None) -> list[Path]:
    """Render the bank's missing cases (in ``recipe.bank_workers`` processes); returns every case file."""
    folder = ensure_writable_dir(folder)
    paths = [folder / f"chest_{i:04d}.nii.gz" for i in range(recipe.cases)]
    jobs = [(bank_seed(recipe, i), recipe.bank_spacing, str(p)) for i, p in enumerate(paths) if not p.is_file()]
    if reporter is not None:
        reporter.stage(f"rendering {len(jobs)} synthetic chests ({recipe.cases - len(jobs)} already there)")
    t0 = time.monotonic()
    if jobs:
        ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no torch threads or locks inherited
        with _stop_on_signals(), ctx.Pool(max(1, recipe.bank_workers)) as pool:
            for done, _ in enumerate(pool.imap_unordered(_render_one, jobs), start=1):
                if done % 10 == 0 or done == len(jobs):
                    log(f"bank: {done}/{len(jobs)} chests rendered ({(time.monotonic() - t0) / done:.1f} s each)")
    return paths


class BankStopped(Exception):
    """SIGINT or SIGTERM while the bank renders (``signum``); finished cases stay, --resume renders the rest."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals():
    """Turn SIGINT/SIGTERM into :class:`BankStopped` while the pool renders, so that leaving the pool's
    ``with`` terminates its workers (SIGTERM's default would end this process alone and leave them
    rendering). A process started with SIGINT ignored (``nohup ... &``) keeps ignoring it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise BankStopped(signum)

    handled = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, stop) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def load_bank(paths: list[Path]):
    """The bank's tissue maps in memory (about 7 MB each)."""
    import SimpleITK as sitk

    from .synth.patches import BankCase

    return [BankCase.from_image(sitk.ReadImage(str(p)), seed=i) for i, p in enumerate(paths)]


# -- training ---------------------------------------------------------------------------------------

def sample_config(stage: StageRecipe):
    from .synth.patches import SampleConfig

    return SampleConfig(patch=tuple(stage.patch), spacing=stage.spacing, foreground=stage.foreground,
                        centre_jitter_mm=stage.centre_jitter_mm, paint_step=stage.paint_step)


def validation_views(bank, stage: StageRecipe, recipe: HeartRecipe) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed views of the held-out cases (their own seed stream), computed once."""
    from .synth.patches import SyntheticHeartPatches

    views = SyntheticHeartPatches(bank, sample_config(stage), seed=recipe.seed + 1_000_003)
    return [views[i] for i in range(recipe.val_views)]


@torch.no_grad()
def validate(net: torch.nn.Module, views, device: torch.device) -> tuple[float, dict[int, float]]:
    """Mean Dice of the seven labels over the validation views (labels absent from a view are skipped)."""
    from .metrics import dice

    was_training = net.training
    net.eval()
    per_label: dict[int, list[float]] = {v: [] for v in range(1, 8)}
    for image, labels in views:
        pred = net(image[None].to(device)).argmax(1)[0].cpu().numpy()
        ref = labels.numpy()
        for v in per_label:
            if (ref == v).any():
                per_label[v].append(dice(pred == v, ref == v))
    net.train(was_training)
    means = {v: float(np.mean(d)) for v, d in per_label.items() if d}
    return (float(np.mean(list(means.values()))) if means else math.nan), means


def stage_metadata(stage: StageRecipe, name: str) -> dict[str, Any]:
    """Architecture, preprocessing and inference of one stage."""
    meta = default_metadata("segmentation", stage.width)
    meta["architecture"].update({"num_classes": HEART_LABELS.num_classes, "readout": "last"})
    meta["preprocessing"].update({"modality": "CT", "spacing": [stage.spacing] * 3, "orientation": "LPS"})
    meta["inference"] = {"window": list(stage.patch), "overlap": 0.5, "largest_component": True}
    meta["stage"] = name
    return meta


def model_metadata(recipe: HeartRecipe, summary: dict[str, Any]) -> dict[str, Any]:
    meta = stage_metadata(recipe.fine, "fine")
    loc = stage_metadata(recipe.locator, "locator")
    meta["locator"] = {k: loc[k] for k in ("architecture", "preprocessing", "inference")}
    meta["locator"]["margin_mm"] = recipe.margin_mm
    meta["labels"] = HEART_LABELS.to_list()
    meta["id"] = MODEL_ID
    meta["version"] = VERSION
    meta["name"] = "GVSL heart chambers (CT)"
    meta["description"] = ("Seven heart structures (LV, RV, LA, RA blood pools, LV myocardium, ascending aorta, "
                           "pulmonary artery) in chest CT: a 4 mm locator finds the heart, a 2 mm network "
                           "(GVSL pre-trained backbone) segments it; labels from synthetic chests only")
    meta["template"] = "heart"
    meta["provenance"] = {
        "software": f"gvslcore {__version__}",
        "method": "supervised on synthetic chests (gvslcore.synth: procedural adult anatomy, per-sample CT "
                  "appearance randomization); no real image and no real label was used for the labels; the "
                  "fine network's backbone starts from the GVSL model pre-trained without labels "
                  f"({recipe.fine.pretrained or 'none: random'})",
        "recipe": {k: v for k, v in asdict(recipe).items() if k not in ("device", "workers", "bank_workers")},
        "command": f"gvsl models build {MODEL_ID} OUT.safetensors --run RUN",
        **summary,
    }
    return meta


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp16 weights (half the file; loading casts back to float32)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def _pretrained_backbone(name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from .bundle import resolve_model
    from .zoo import locate_model

    path = locate_model(name)
    state, meta = resolve_model(path)
    backbone = {k[len("unet."):]: v.float() for k, v in state.items() if k.startswith("unet.")}
    if not backbone:
        raise InputError(f"--pretrained {name} has no U-Net backbone (unet.*); give a GVSL pre-trained model")
    return backbone, {"pretrained": str(path), "pretrained_id": meta.get("id"),
                      "pretrained_steps": (meta.get("provenance") or {}).get("steps")}


def run_build(recipe: HeartRecipe, out: str | os.PathLike, run_dir: str | os.PathLike, progress: str = "bar",
              resume: bool = False) -> int:
    """Build the bank, train both stages, export; returns the exit code (0 done, 130/143 cancelled)."""
    from .atomic import write_json
    from .bundle import load_model_file

    out = Path(out)
    if not out.name.endswith(".safetensors"):
        raise InputError(f"{out} must be a model file name ending in .safetensors")
    if recipe.val_cases >= recipe.cases:
        raise InputError(f"--cases {recipe.cases} must exceed the {recipe.val_cases} held-out validation cases")
    run_dir = Path(run_dir)
    if (run_dir / "bank").exists() and not resume:
        raise InputError(f"{run_dir} already holds a build; add --resume to continue it or give another --run")
    pretrained_info: dict[str, Any] = {}
    backbone = None
    if recipe.fine.pretrained:  # found before hours of work, not after
        backbone, pretrained_info = _pretrained_backbone(recipe.fine.pretrained)
    ensure_writable_dir(run_dir)
    write_json(run_dir / "recipe.json", asdict(recipe))
    try:
        paths = build_bank(run_dir / "bank", recipe)
    except BankStopped as stopped:
        done = sum(1 for _ in (run_dir / "bank").glob("chest_*.nii.gz"))
        log(f"bank: stopped with {done}/{recipe.cases} chests rendered; --resume renders the rest")
        return EXIT_CODES.get(signal.Signals(stopped.signum), 130)
    bank = load_bank(paths)
    results: dict[str, Any] = {}
    for name, stage, start in (("locator", recipe.locator, None), ("fine", recipe.fine, backbone)):
        code, best = train_stage(name, stage, recipe, bank, run_dir / name, start, progress, resume)
        if code != 0:
            return code
        results[name] = best
    fine_w, _ = load_model_file(run_dir / "fine" / "best.safetensors")
    loc_w, _ = load_model_file(run_dir / "locator" / "best.safetensors")
    weights = {**fine_w, **{f"locator.{k}": v for k, v in loc_w.items()}}
    summary = {"steps": {"locator": recipe.locator.steps, "fine": recipe.fine.steps}, **pretrained_info,
               "synthetic_validation": results}
    path = save_model(out, _half(weights), model_metadata(recipe, summary))
    log(f"heart model done: {path} (synthetic validation Dice: locator {results['locator']['dice']:.3f}, "
        f"fine {results['fine']['dice']:.3f})")
    return 0


def train_stage(name: str, stage: StageRecipe, recipe: HeartRecipe, bank, folder: Path,
                backbone: dict[str, torch.Tensor] | None, progress: str, resume: bool) -> tuple[int, dict[str, Any]]:
    """Train one stage in its own run folder (skipped when done); returns (exit code, best validation)."""
    from .data import StepSampler
    from .engine import TrainingRun, read_status, resolve_device, rng_state, set_rng_state
    from .losses import dice_ce_loss
    from .nets import SegNet
    from .synth.patches import SyntheticHeartPatches

    best_path = folder / "best.safetensors"
    finished = (folder / "status.json").is_file() and read_status(folder).get("status") == "done"
    if finished and best_path.is_file() and int(read_status(folder).get("step") or 0) >= stage.steps:
        best = json.loads((folder / "best.json").read_text())
        log(f"{name}: done earlier (synthetic validation Dice {best['dice']:.3f} at step {best['step']})")
        return 0, best
    device = resolve_device(recipe.device)
    torch.manual_seed(recipe.seed)
    config = {"stage": name, **asdict(stage), "cases": recipe.cases, "val_cases": recipe.val_cases,
              "bank_spacing": recipe.bank_spacing, "seed": recipe.seed, "batch": recipe.batch}
    with TrainingRun(folder, "build", config, stage.steps, resume=resume and folder.exists(), progress=progress,
                     keep=recipe.keep) as run:
        train_bank, val_bank = bank[: -recipe.val_cases], bank[-recipe.val_cases :]
        views = validation_views(val_bank, stage, recipe)
        net = SegNet(HEART_LABELS.num_classes, stage.width).to(device)
        if backbone is not None:
            net.unet.load_state_dict(backbone, strict=True)
        optimizer = torch.optim.Adam(net.parameters(), lr=stage.lr)
        state = run.load_latest(device)
        step, best = 0, {"dice": -1.0, "step": 0}
        if state is not None:
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"], device)
            step, best = int(state["step"]), json.loads(state["best"])
        run.reporter.start(f"build {name}", stage.steps, step=step)
        dataset = SyntheticHeartPatches(train_bank, sample_config(stage), seed=recipe.seed + (0 if name == "fine" else 17))
        loader = torch.utils.data.DataLoader(dataset, batch_size=recipe.batch,
                                             sampler=StepSampler(step, stage.steps, recipe.batch),
                                             num_workers=recipe.workers, prefetch_factor=2 if recipe.workers else None,
                                             pin_memory=device.type == "cuda", persistent_workers=False)

        def checkpoint(at: int) -> None:
            run.save_checkpoint(at, {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                     "rng": rng_state(device), "best": json.dumps(best),
                                     "metadata": json.dumps(stage_metadata(stage, name) | {"labels": HEART_LABELS.to_list()})})

        step = _train(net, optimizer, loader, stage, recipe, run, step, best, views, best_path, checkpoint, device,
                      dice_ce_loss, name)
        if run.stop.requested:
            return run.finish({"run": str(folder)}), best
        if not best_path.is_file():  # no validation ran (fewer steps than val_every): the last weights
            save_model(best_path, _half(net.state_dict()), stage_metadata(stage, name))
        (folder / "best.json").write_text(json.dumps(best))
        return run.finish({"run": str(folder), "best_validation_dice": best["dice"], "best_step": best["step"]}), best


def _train(net, optimizer, loader, stage: StageRecipe, recipe: HeartRecipe, run, step: int, best: dict, views,
           best_path: Path, checkpoint, device: torch.device, loss_fn, name: str) -> int:
    """The training loop from ``step`` to ``stage.steps``; returns the step reached."""
    sums, count, t0 = torch.zeros((), device=device), 0, time.monotonic()
    net.train()
    for images, labels in loader:
        for group in optimizer.param_groups:  # poly decay, as nnU-Net
            group["lr"] = stage.lr * (1.0 - min(step, stage.steps - 1) / stage.steps) ** 0.9
        # bf16 on CUDA (the losses are computed in float32); the CPU trains in float32, where bf16 measured no faster.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = net(images.to(device, non_blocking=True))
        loss = loss_fn(logits, labels.to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        sums += loss.detach()  # stays on the device: no host sync until the log line
        count += 1
        if step % recipe.log_every == 0 or step == stage.steps or run.stop.requested:
            run.reporter.progress(step, loss={"dice_ce": float(sums) / count}, lr=optimizer.param_groups[0]["lr"],
                                  s_per_step=round((time.monotonic() - t0) / count, 2))
            sums, count, t0 = torch.zeros((), device=device), 0, time.monotonic()
        if step % stage.val_every == 0 or step == stage.steps:
            mean, per_label = validate(net, views, device)
            if mean > best["dice"]:
                best.update(dice=mean, step=step, per_label={HEART_LABELS.name_of(v): round(d, 4) for v, d in per_label.items()})
                save_model(best_path, _half(net.state_dict()), stage_metadata(stage, name))
            log(f"{name} step {step}: synthetic validation Dice {mean:.3f} (best {best['dice']:.3f} at {best['step']})")
            run.reporter.progress(step, stage="validation", validation={"dice": mean, "best_dice": best["dice"],
                                                                        "best_step": best["step"]})
        if step % recipe.checkpoint_every == 0 or step == stage.steps or run.stop.requested:
            checkpoint(step)
        if run.stop.requested:
            break
    return step

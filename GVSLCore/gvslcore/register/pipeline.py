"""The whole registration of one pair, top-down (:func:`register_images`: initial alignment, working
grid, Z-Matching, instance optimization, export, metrics) and the ``gvsl register`` command
(:func:`run_register`: read, check, register, write).

Every array is (z, y, x); every physical quantity is LPS millimetres (DESIGN.md section 3).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..atomic import write_json
from ..errors import InputError
from ..events import Reporter, log
from ..geometry import displacement_image
from ..io import guess_modality, normalize, resample_to_spacing, same_geometry
from ..spatial import fuse_affine_and_displacement, warp
from .config import COARSE_SPACING_MM, DEFAULT_SPACING_MM, MIN_OVERLAP, RegisterConfig, RegistrationResult
from .export import OUTPUT_NAMES, check_output_dir, label_table_for, propagate_labels, working_affine_matrix, write_outputs
from .feedforward import identity_affine, load_registration_model, predict_coarse
from .fields import field_transform, folding_percent, full_displacement, global_ncc, jacobian_image
from .grid import affine_to_matrix, background_value, initial_transform, matrix_to_affine, normalized, overlap_fraction, working_grid
from .instance import StepCallback, instance_optimize, local_ncc

logger = logging.getLogger("gvsl.register")


class _Timer:
    """Seconds per named stage, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._t, 3)
        self._t = now


@dataclass
class _Aligned:
    """The pair after the initial alignment: modalities, backgrounds, ``T_init`` (and its 4x4 matrix)."""

    mod_f: str
    mod_m: str
    bg_f: float
    bg_m: float
    t_init: sitk.AffineTransform
    t_init_m: np.ndarray


@dataclass
class _Working:
    """Both images on the working grid ((D, H, W) float32 in [0, 1]) and their overlap fraction."""

    grid: sitk.Image
    fixed: np.ndarray
    moving: np.ndarray
    overlap: float


@dataclass
class _Run:
    """What the metrics report about how the registration ran."""

    device: torch.device
    model: bool
    model_modality: str | None
    warnings: list[str]
    start: str = "initial alignment"
    io_losses: dict[str, float] = field(default_factory=dict)
    io_seconds: dict[str, float] = field(default_factory=dict)  # per pyramid level


def check_labels(labels: sitk.Image, moving: sitk.Image, labels_name: str = "the labels", moving_name: str = "MOVING") -> None:
    if not same_geometry(labels, moving):
        raise InputError(
            f"{labels_name} is not on the grid of {moving_name} (size {labels.GetSize()} vs {moving.GetSize()}, "
            "spacing/origin/direction must match); give labels drawn on the moving image"
        )


def _modality_warnings(mod_f: str, mod_m: str, model_modality: str | None, names: tuple[str, str]) -> list[str]:
    """Logged warnings on a modality mismatch between the images or with the model (None: no model)."""
    warnings: list[str] = []
    if mod_f != mod_m:
        warnings.append(f"{names[0]} looks like {mod_f} and {names[1]} like {mod_m}: the model and the NCC similarity "
                        "are single-modality, expect a poor result (no multi-modal model is available)")
    if model_modality and model_modality not in {mod_f, mod_m, "auto"}:
        warnings.append(f"the model was trained on {model_modality} but the images look like {mod_f}/{mod_m}; "
                        "its prediction may be poor, add --iterations N")
    for w in warnings:
        log(f"warning: {w}")
    return warnings


def _initial_alignment(fixed: sitk.Image, moving: sitk.Image, mod_f: str, mod_m: str, init: str) -> _Aligned:
    """``T_init`` from coarse (>= COARSE_SPACING_MM) normalized copies of both images."""
    coarse = [max(COARSE_SPACING_MM, s) for s in fixed.GetSpacing()]
    coarse_m = [max(COARSE_SPACING_MM, s) for s in moving.GetSpacing()]
    bg_f, bg_m = background_value(fixed, mod_f), background_value(moving, mod_m)
    fixed_c = normalized(resample_to_spacing(fixed, coarse, default_value=bg_f), mod_f)
    moving_c = normalized(resample_to_spacing(moving, coarse_m, default_value=bg_m), mod_m)
    t_init = initial_transform(fixed_c, moving_c, init)
    return _Aligned(mod_f, mod_m, bg_f, bg_m, t_init, affine_to_matrix(t_init))


def _working_spacing(fixed: sitk.Image, cfg: RegisterConfig) -> float:
    """mm: ``--spacing``, else DEFAULT_SPACING_MM, never finer than the fixed image (with or without
    a model).

    Measured on the shared chest CTA pair of benchmarks/register_speed.py (two cores): a 4 mm grid
    instead of 2.2 mm cut instance optimization from 33 to 5 s at 0.52 instead of 0.24 mm mean error
    (ANTs SyN: 0.91 mm); a 4 mm pair on a 2 mm grid took 4x longer for the same error. The GVSL
    model sees 4 mm within the 1-2x zoom range it was pre-trained on (gvslcore.gvslrecipe)."""
    if cfg.spacing is not None:
        return float(cfg.spacing)
    return max(DEFAULT_SPACING_MM, min(fixed.GetSpacing()))


def _working_images(
    fixed: sitk.Image, moving: sitk.Image, spacing: float, cfg: RegisterConfig, al: _Aligned, names: tuple[str, str]
) -> _Working:
    """Resample both images onto the working grid (moving through ``T_init``); stop without overlap."""
    working = working_grid(fixed, spacing, cfg.max_size)
    if working.GetSpacing()[0] > spacing * 1.001:
        logger.info("working spacing coarsened to %.2f mm (--max-size %d)", working.GetSpacing()[0], cfg.max_size)
    fixed_w = sitk.GetArrayFromImage(
        normalized(sitk.Resample(fixed, working, sitk.Transform(), sitk.sitkLinear, al.bg_f), al.mod_f))
    moving_w = sitk.GetArrayFromImage(
        normalized(sitk.Resample(moving, working, al.t_init, sitk.sitkLinear, al.bg_m), al.mod_m))
    overlap = overlap_fraction(working, fixed_w, moving, al.t_init_m)
    if overlap < MIN_OVERLAP:
        raise InputError(
            f"{names[0]} and {names[1]} do not overlap after the initial alignment (--init {cfg.init}): only "
            f"{100 * overlap:.1f}% of the fixed image falls inside the moving one; check that both show the same "
            "body region" + ("" if cfg.init == "moments" else ", or use --init moments")
        )
    return _Working(working, fixed_w, moving_w, overlap)


def _start(
    model: torch.nn.Module | None, wk: _Working, run: _Run, stage: Callable[[str], None], cfg: RegisterConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both images as (1, 1, D, H, W) tensors, and the start mapping: the network's prediction
    (affine (3, 4), residual (1, 3, D, H, W), working voxels), or the identity without a model."""
    f_t = torch.from_numpy(wk.fixed)[None, None].to(run.device)
    m_t = torch.from_numpy(wk.moving)[None, None].to(run.device)
    if model is None:
        return f_t, m_t, identity_affine(run.device), torch.zeros(1, 3, *wk.fixed.shape, device=run.device)
    stage("prediction")
    affine, residual = predict_coarse(model, f_t, m_t, wk.grid.GetSpacing()[0], cfg.predict_spacing)
    run.start = "prediction"
    return f_t, m_t, affine, residual


@torch.no_grad()
def _prediction_fits(f_t: torch.Tensor, m_t: torch.Tensor, affine: torch.Tensor, residual: torch.Tensor,
                     window: int) -> bool:
    """Whether the predicted mapping fits the pair at least as well as no motion (local NCC)."""
    u_pred = fuse_affine_and_displacement(affine[None].float(), residual.float())
    return not local_ncc(f_t, warp(m_t, u_pred), window) > local_ncc(f_t, m_t, window)


def _refine(
    f_t: torch.Tensor, m_t: torch.Tensor, affine: torch.Tensor, residual: torch.Tensor, wk: _Working,
    cfg: RegisterConfig, run: _Run, on_step: StepCallback | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance optimization from the prediction, or from the initial alignment when the prediction
    fits worse (a model that does not know this pair can do worse than no motion at all)."""
    if run.model and not _prediction_fits(f_t, m_t, affine, residual, cfg.ncc_window):
        log("note: the model's prediction fits this pair worse than the initial alignment; "
            "instance optimization starts from the initial alignment")
        affine = identity_affine(run.device)
        residual = torch.zeros_like(residual)
        run.start = "initial alignment (prediction rejected)"
    with torch.enable_grad():
        affine, residual, run.io_losses = instance_optimize(
            f_t, m_t, affine, residual, wk.grid.GetSpacing()[::-1], cfg, on_step, run.io_seconds
        )
    return affine, residual


@torch.no_grad()
def _working_result(
    f_t: torch.Tensor, m_t: torch.Tensor, affine: torch.Tensor, residual: torch.Tensor, wk: _Working
) -> tuple[np.ndarray, np.ndarray, dict[str, float | None]]:
    """The fused working field (3, D, H, W) voxels, the affine (3, 4) float64, and NCC on the grid."""
    u_w = fuse_affine_and_displacement(affine[None].float(), residual.float())[0]
    warped_t = warp(m_t, u_w[None])
    ncc_working = {
        "global_before": global_ncc(wk.fixed, wk.moving),
        "global_after": global_ncc(wk.fixed, warped_t.cpu().numpy()),
        "local_before": float(1 - local_ncc(f_t, m_t, 9)),
        "local_after": float(1 - local_ncc(f_t, warped_t, 9)),
    }
    return u_w.cpu().numpy(), affine.cpu().numpy().astype(np.float64), ncc_working


def _export(
    fixed: sitk.Image, moving: sitk.Image, u_w: np.ndarray, affine: np.ndarray, wk: _Working, al: _Aligned,
    moving_labels: sitk.Image | None, stage: Callable[[str], None], timer: _Timer,
) -> RegistrationResult:
    """The working-grid mapping as ITK objects on the fixed grid, with the warped image, the
    Jacobian and the propagated labels (metrics still empty)."""
    stage("export")
    displacement = full_displacement(displacement_image(u_w, wk.grid), al.t_init, fixed)
    fixed_centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in fixed.GetSize()])
    affine_tx = matrix_to_affine(al.t_init_m @ working_affine_matrix(affine, wk.grid), fixed_centre)
    timer.lap("compose")
    transform = field_transform(displacement)
    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, al.bg_m, sitk.sitkFloat32)
    timer.lap("warp")
    jacobian = jacobian_image(displacement)
    timer.lap("jacobian")
    propagated = None
    if moving_labels is not None:
        stage("labels")
        propagated = propagate_labels(moving_labels, fixed, transform)
        timer.lap("labels")
    return RegistrationResult(displacement, affine_tx, warped, jacobian, propagated, {}, moving, wk.grid,
                              fixed_display=fixed)


def _ncc_on_fixed(fixed: sitk.Image, moving: sitk.Image, result: RegistrationResult, al: _Aligned) -> dict[str, float | None]:
    """Global NCC on the fixed grid before, after the initial alignment, and after registration."""
    # Every other voxel along each axis is plenty for a global correlation of large volumes; the
    # moving image is resampled onto those voxels only (the same values as subsampling a full
    # resample, an eighth of the work).
    step = 2 if np.prod(fixed.GetSize()) > 2_000_000 else 1
    sub = (slice(None, None, step),) * 3
    grid = fixed[sub]

    def moved(transform: sitk.Transform) -> np.ndarray:
        image = sitk.Resample(moving, grid, transform, sitk.sitkLinear, al.bg_m, sitk.sitkFloat32)
        return normalize(sitk.GetArrayViewFromImage(image), al.mod_m)

    fixed_n = normalize(sitk.GetArrayViewFromImage(grid), al.mod_f)
    return {
        "before": global_ncc(fixed_n, moved(sitk.Transform())),
        "initial_alignment": global_ncc(fixed_n, moved(al.t_init)),
        "after": global_ncc(fixed_n, normalize(sitk.GetArrayViewFromImage(result.warped)[sub], al.mod_m)),
    }


def _metrics(
    result: RegistrationResult, ncc: dict, ncc_working: dict, al: _Aligned, wk: _Working, cfg: RegisterConfig,
    run: _Run, seconds: dict[str, float],
) -> dict[str, Any]:
    """metrics.json (without the read/write seconds and inputs that :func:`run_register` adds)."""
    det = sitk.GetArrayViewFromImage(result.jacobian)
    return {
        "ncc": ncc,
        "ncc_working_grid": ncc_working,
        "folding_percent": folding_percent(result.jacobian),
        "jacobian": {"min": float(det.min()), "max": float(det.max()), "mean": float(det.mean())},
        "overlap_after_initial_alignment": wk.overlap,
        "initial_transform": {"mode": cfg.init, "matrix": al.t_init_m.tolist()},
        "working_grid": {"size": list(wk.grid.GetSize()), "spacing_mm": wk.grid.GetSpacing()[0]},
        "modality": {"fixed": al.mod_f, "moving": al.mod_m, "model": run.model_modality if run.model else None},
        "model": run.model,
        "instance_optimization": {"iterations_per_level": cfg.iterations, "levels": cfg.levels if cfg.iterations else 0,
                                  "start": run.start, "final_losses": run.io_losses,
                                  "seconds_per_level": run.io_seconds},
        "settings": asdict(cfg),
        "device": str(run.device),
        "warnings": run.warnings,
        "seconds": seconds,
    }


FOLDING_WARN_PERCENT = 0.5
"""Above this share of the fixed grid (%) with a Jacobian determinant <= 0 the field is called folded.
In benchmarks/register_real.py the known-transform pairs fold in at most 0.003 % at the defaults; the
inter-subject CTA -> LIDC pair folds in 2.6 % (warned), the feed-forward field alone in 0.5-0.7 %."""
POOR_NCC = 0.5
"""Global NCC (Pearson r, -1..1) after registration below which the pair is called poorly matched. The
whole-volume correlation is dominated by the body outline against air: on phantom pairs the same
subject reaches 0.99 and even a different subject or noise inside the body outline 0.9 after a few
steps, so r < 0.5 (the warped image explains under a quarter of the fixed image's variance) means
different body regions, modalities or a failed optimization."""
NCC_DROP = 0.02
"""NCC lower than its starting value by more than this counts as made worse (the global NCC is not
the optimized loss, so it may dip by less on a good result)."""


def _quality_warnings(metrics: dict[str, Any], cfg: RegisterConfig) -> list[str]:
    """Warnings on a folded field or a poor similarity after registration, appended to
    ``metrics["warnings"]`` and logged; returns the new ones.

    Reads ``folding_percent`` (% of fixed voxels) and the global NCC on the fixed grid (``before``:
    no motion, ``initial_alignment``, ``after``); the advice names the options that change them.
    """
    found: list[str] = []
    folding = metrics.get("folding_percent")
    if isinstance(folding, (int, float)) and folding > FOLDING_WARN_PERCENT:
        if cfg.iterations > 0:
            advice = (f"raise --smooth-weight (now {cfg.smooth_weight:g}) or lower --iterations "
                      f"(now {cfg.iterations}) or --lr (now {cfg.lr:g})")
        else:
            advice = (f"the model's prediction folds: add --iterations N to refine it under the smoothness "
                      f"term (--smooth-weight, now {cfg.smooth_weight:g})")
        found.append(f"the field folds in {folding:.2g} % of voxels (Jacobian determinant <= 0, more than "
                     f"{FOLDING_WARN_PERCENT:g} %): the mapping is not one-to-one there; {advice}")
    ncc = metrics.get("ncc") or {}
    after = ncc.get("after")
    starts = [v for v in (ncc.get("before"), ncc.get("initial_alignment")) if isinstance(v, (int, float))]
    if isinstance(after, (int, float)):
        start = max(starts) if starts else None
        if after < POOR_NCC:
            found.append(f"the images correlate poorly after registration (NCC {after:.2f}, below {POOR_NCC:g}): "
                         "check that both show the same body region and modality, and look at the checkerboard "
                         "(qc.png, or GVSL Register's overlay)")
        elif start is not None and after < start - NCC_DROP:
            advice = ("try a higher --smooth-weight or fewer --iterations" if cfg.iterations > 0 else
                      "add --iterations N (instance optimization starts from the better of prediction and none)")
            found.append(f"registration lowered the similarity (NCC {start:.2f} at the start, {after:.2f} after): "
                         f"the result may be worse than none; compare the checkerboard (qc.png, or GVSL Register's "
                         f"overlay), {advice}")
    for w in found:
        log(f"warning: {w}")
    metrics.setdefault("warnings", []).extend(found)
    return found


def register_images(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    model: torch.nn.Module | None = None,
    metadata: dict[str, Any] | None = None,
    cfg: RegisterConfig | None = None,
    moving_labels: sitk.Image | None = None,
    on_step: StepCallback | None = None,
    on_stage: Callable[[str], None] | None = None,
    names: tuple[str, str] = ("FIXED", "MOVING"),
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` (both float32 3-D images of any geometry).

    Args:
        model: a GVSLNet in eval mode (or None: instance optimization from the initial alignment).
        metadata: the model's metadata (preprocessing spacing and modality).
        cfg: settings; ``cfg.iterations`` must be > 0 without a model.
        moving_labels: a label map on the moving grid, propagated onto the fixed grid.
        on_step, on_stage: progress callbacks.
        names: how to call the two images in messages (their paths).

    Raises:
        InputError: no model and no iterations, labels off the moving grid, no overlap.
    """
    cfg = cfg or RegisterConfig()
    cfg.validate()
    stage = on_stage or (lambda text: None)
    if model is None and cfg.iterations == 0:
        raise InputError("without a model (--model none) give --iterations N (instance optimization steps per level)")
    if moving_labels is not None:
        check_labels(moving_labels, moving, "--moving-labels", names[1])
    from ..engine import resolve_device

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    timer = _Timer()
    metadata = metadata or {}

    stage("initial alignment")
    mod_f, mod_m = guess_modality(fixed), guess_modality(moving)
    model_modality = (metadata.get("preprocessing") or {}).get("modality")
    warnings = _modality_warnings(mod_f, mod_m, model_modality if model is not None else None, names)
    run = _Run(device, model is not None, model_modality, warnings)
    al = _initial_alignment(fixed, moving, mod_f, mod_m, cfg.init)
    timer.lap("initial_alignment")

    stage("working grid")
    wk = _working_images(fixed, moving, _working_spacing(fixed, cfg), cfg, al, names)
    timer.lap("working_grid")

    f_t, m_t, affine, residual = _start(model, wk, run, stage, cfg)
    timer.lap("prediction")
    if cfg.iterations > 0:
        stage("instance optimization")
        affine, residual = _refine(f_t, m_t, affine, residual, wk, cfg, run, on_step)
        timer.lap("instance_optimization")
    u_w, affine_np, ncc_working = _working_result(f_t, m_t, affine, residual, wk)

    result = _export(fixed, moving, u_w, affine_np, wk, al, moving_labels, stage, timer)
    ncc = _ncc_on_fixed(fixed, moving, result, al)
    timer.lap("metrics")
    result.metrics = _metrics(result, ncc, ncc_working, al, wk, cfg, run, timer.seconds)
    _quality_warnings(result.metrics, cfg)
    return result


def _read_inputs(
    fixed_path: str | os.PathLike, moving_path: str | os.PathLike, model_path: str | None,
    moving_labels: str | os.PathLike | None, cfg: RegisterConfig,
) -> tuple[sitk.Image, sitk.Image, sitk.Image | None, torch.nn.Module | None, dict[str, Any] | None]:
    """Read and check the images, the labels and the model (nothing is written)."""
    from ..engine import resolve_device
    from ..io import read_image

    fixed = read_image(fixed_path)
    moving = read_image(moving_path)
    labels = None
    if moving_labels is not None:
        labels = read_image(moving_labels, label=True)
        check_labels(labels, moving, str(moving_labels), str(moving_path))
    device = resolve_device(cfg.device)
    model, meta = (None, None)
    if model_path is not None:
        model, meta = load_registration_model(model_path, device)
    return fixed, moving, labels, model, meta


def _step_reporter(reporter: Reporter | None, levels: int) -> StepCallback:
    """Instance-optimization steps as progress events naming the pyramid level."""

    def on_step(step: int, n: int, losses: dict[str, float]) -> None:
        if reporter is not None:
            level = int(losses.pop("level", 0))
            reporter.progress(step, stage=f"instance optimization (level {level + 1}/{levels})", loss=losses)

    return on_step


def run_register(
    fixed_path: str | os.PathLike,
    moving_path: str | os.PathLike,
    model_path: str | None,
    out: str | os.PathLike,
    cfg: RegisterConfig | None = None,
    *,
    moving_labels: str | os.PathLike | None = None,
    qc: bool = True,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """``gvsl register``: read, check, register, write. Returns the outputs for the ``done`` event.

    Every input is checked before anything is written; a bad input raises :class:`InputError`
    and leaves ``out`` untouched.
    """
    cfg = cfg or RegisterConfig()
    cfg.validate()
    t0 = time.monotonic()
    out = check_output_dir(out)
    if model_path is None and cfg.iterations == 0:
        raise InputError("without a model (--model none) give --iterations N (instance optimization steps per level)")
    fixed, moving, labels, model, meta = _read_inputs(fixed_path, moving_path, model_path, moving_labels, cfg)
    read_s = time.monotonic() - t0
    if reporter is not None:
        reporter.start("register", cfg.total_steps)
    result = register_images(fixed, moving, model=model, metadata=meta, cfg=cfg, moving_labels=labels,
                             on_step=_step_reporter(reporter, cfg.levels),
                             on_stage=reporter.stage if reporter is not None else None,
                             names=(str(fixed_path), str(moving_path)))
    result.metrics["seconds"] = {"read": round(read_s, 3), **result.metrics["seconds"]}
    result.metrics["inputs"] = {"fixed": str(fixed_path), "moving": str(moving_path), "model": str(model_path),
                                "moving_labels": str(moving_labels) if moving_labels else None}
    if reporter is not None:
        reporter.stage("writing")
    table = label_table_for(moving_labels, labels) if labels is not None else None
    t = time.monotonic()
    title = f"{Path(str(moving_path)).name} -> {Path(str(fixed_path)).name}"
    written = write_outputs(result, out, table=table, qc=qc, reporter=reporter, title=title)
    result.metrics["seconds"]["write"] = round(time.monotonic() - t, 3)  # qc.png drawn alongside
    result.metrics["seconds"]["total"] = round(time.monotonic() - t0, 3)
    write_json(out / OUTPUT_NAMES["metrics"], result.metrics)
    return {**written, "ncc": result.metrics["ncc"], "folding_percent": result.metrics["folding_percent"],
            "seconds": result.metrics["seconds"]["total"]}

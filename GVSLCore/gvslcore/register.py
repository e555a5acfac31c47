"""Inter-image registration with the GVSL Z-Matching head, optional instance optimization, and
export of the result as ITK objects in physical LPS millimetres.

The pipeline (``gvsl register FIXED MOVING``):

1. **Initial alignment** ``T_init`` (fixed physical point -> moving physical point): centres of mass
   of the normalized intensities (``moments``), of the image boxes (``geometry``) or none. This makes
   large offsets between scanners harmless before any learned step.
2. **Working grid** ``W``: a grid in the FIXED image's frame (its direction), at the model's spacing,
   centred on and covering the fixed image. Both images are resampled onto it (moving through
   ``T_init``) and normalized to [0, 1].
3. **Z-Matching** (feed-forward): the network predicts an affine ``Aff`` (working voxels, (z, y, x),
   about the grid centre) and a residual ``v``; the working-grid pull mapping is
   ``p -> Aff(p + v(p))`` (paper Eq. 12, :func:`gvslcore.spatial.fuse_affine_and_displacement`).
4. **Instance optimization** (``iterations > 0``): Adam on local NCC + smoothness of ``v``, from the
   prediction (or the identity without a model), coarse to fine over an image pyramid.
5. **Export**: the full mapping ``x -> T_init(x + d_W(x))`` becomes ONE ITK displacement field on the
   FIXED grid (``d(x) = T_init(x + d_W(x)) - x``, LPS mm), so that
   ``sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(d))`` is the registered image; the
   global part ``T_init o Aff`` becomes an ITK ``AffineTransform`` (.tfm).

Every array is (z, y, x); every physical quantity is LPS millimetres (DESIGN.md section 3).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .atomic import atomic_path, ensure_writable_dir, write_json
from .errors import InputError
from .events import Reporter, log
from .geometry import displacement_image, index_to_physical_matrix
from .io import (
    guess_modality,
    normalize,
    resample_to_spacing,
    same_geometry,
    write_image,
)
from .labels import LabelInfo, LabelTable
from .spatial import fuse_affine_and_displacement, warp

logger = logging.getLogger("gvsl.register")

INIT_MODES = ("moments", "geometry", "none")
DEFAULT_SPACING_MM = 2.0
"""Working spacing without a model (``--model none``) when ``--spacing`` is not given (or the fixed
image's own spacing when that is coarser)."""
COARSE_SPACING_MM = 4.0
"""Spacing of the copies the initial alignment is computed on (moments need no detail)."""
MIN_OVERLAP = 0.10
"""Below this fraction of the fixed foreground falling inside the moving image, registration stops."""


@dataclass
class RegisterConfig:
    """Settings of one registration.

    Attributes:
        iterations: instance-optimization steps per resolution level (0: feed-forward only).
        levels: resolution levels of the instance optimization (factors 2^(levels-1) ... 1).
        init: initial alignment: 'moments' (centres of mass), 'geometry' (image centres), 'none'.
        spacing: isotropic working spacing in mm; None takes the model's (without a model: 2 mm, or
            the fixed image's finest spacing when coarser).
        max_size: cap on the working grid's longest axis, in voxels (bounds memory and time; the
            spacing is coarsened when the fixed image is larger).
        smooth_weight: weight of the smoothness term (squared gradient of the residual, mm/mm).
        ncc_window: local NCC window in voxels of each level.
        lr: Adam step of the residual field, in voxels of the level.
        lr_affine: Adam step of the affine parameters (normalized coordinates, about 1 = half extent).
        affine_only_first: at the coarsest level, run the affine alone before the joint optimization.
        device: 'auto' | 'cpu' | 'cuda'.
        seed: torch seed (the optimization itself is deterministic on the CPU).
    """

    iterations: int = 0
    levels: int = 3
    init: str = "moments"
    spacing: float | None = None
    max_size: int = 160
    smooth_weight: float = 3.0
    ncc_window: int = 7
    lr: float = 0.1
    lr_affine: float = 0.005
    affine_only_first: bool = True
    device: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        if self.iterations < 0:
            raise InputError(f"--iterations {self.iterations} is not valid; give 0 (feed-forward) or more steps")
        if self.levels < 1:
            raise InputError(f"--levels {self.levels} is not valid; give 1 or more")
        if self.init not in INIT_MODES:
            raise InputError(f"--init {self.init} is not valid; use one of {', '.join(INIT_MODES)}")
        if self.spacing is not None and not (self.spacing > 0 and math.isfinite(self.spacing)):
            raise InputError(f"--spacing {self.spacing} is not valid; give a positive size in mm")
        if self.max_size < 16:
            raise InputError(f"--max-size {self.max_size} is not valid; give at least 16 voxels")
        if self.ncc_window < 3 or self.ncc_window % 2 == 0:
            raise InputError(f"--ncc-window {self.ncc_window} is not valid; give an odd number >= 3")


@dataclass
class RegistrationResult:
    """What :func:`register_images` gives (everything in memory; :func:`write_outputs` writes it).

    Attributes:
        displacement: ITK displacement field on the fixed grid (sitkVectorFloat64, LPS mm):
            fixed point x -> moving point x + d(x); the full mapping (initial + affine + deformable).
        affine: the global part (initial alignment composed with the predicted/optimized affine).
        warped: moving resampled into the fixed geometry through ``displacement``.
        jacobian: determinant of the mapping's Jacobian on the fixed grid (float32).
        propagated: moving labels mapped onto the fixed grid (uint16), or None.
        metrics: NCC before/after, folding %, seconds per stage, settings.
        moving_on_fixed: the moving image in the fixed geometry *before* registration (identity in
            physical space), for the QC picture.
        working: the (empty) working grid the model and the optimization ran on.
        fixed_display: the fixed image, for the QC picture.
    """

    displacement: sitk.Image
    affine: sitk.AffineTransform
    warped: sitk.Image
    jacobian: sitk.Image
    propagated: sitk.Image | None
    metrics: dict[str, Any]
    moving_on_fixed: sitk.Image
    working: sitk.Image | None = None
    fixed_display: sitk.Image | None = None


class _Timer:
    """Seconds per named stage, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._t, 3)
        self._t = now


# -- images and grids ---------------------------------------------------------------------------

def background_value(image: sitk.Image, modality: str) -> float:
    """What lies outside an image: air for CT, the minimum otherwise."""
    if modality == "CT":
        return -1024.0
    return float(np.min(sitk.GetArrayViewFromImage(image)))


def normalized(image: sitk.Image, modality: str) -> sitk.Image:
    """[0, 1] intensities (CT window or MR percentiles) with ``image``'s geometry, float32."""
    out = sitk.GetImageFromArray(normalize(sitk.GetArrayViewFromImage(image), modality))
    out.CopyInformation(image)
    return out


def working_grid(fixed: sitk.Image, spacing_mm: float, max_size: int) -> sitk.Image:
    """An empty float32 grid in the fixed image's frame, isotropic ``spacing_mm`` (coarsened so that
    no axis exceeds ``max_size`` voxels), centred on the fixed image and covering it."""
    extent = (np.array(fixed.GetSize()) - 1) * np.array(fixed.GetSpacing())
    spacing = float(spacing_mm)
    size = np.ceil(extent / spacing - 1e-6).astype(int) + 1  # 1e-6: 47 * 3 / 3 must stay 47
    if size.max() > max_size:
        spacing = float(extent.max() / (max_size - 1))
        size = np.ceil(extent / spacing - 1e-6).astype(int) + 1
    size = np.maximum(size, 8)
    centre = np.array(fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in fixed.GetSize()]))
    direction = np.array(fixed.GetDirection()).reshape(3, 3)
    origin = centre - direction @ ((size - 1) / 2.0 * spacing)
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing([spacing] * 3)
    grid.SetDirection(fixed.GetDirection())
    grid.SetOrigin([float(v) for v in origin])
    return grid


def affine_to_matrix(transform: sitk.AffineTransform) -> np.ndarray:
    """4x4 homogeneous matrix (x, y, z, 1) of an ITK AffineTransform: y = A (x - c) + c + t."""
    a = np.array(transform.GetMatrix()).reshape(3, 3)
    c = np.array(transform.GetCenter())
    t = np.array(transform.GetTranslation())
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = t + c - a @ c
    return m


def matrix_to_affine(m: np.ndarray, center: Sequence[float] = (0.0, 0.0, 0.0)) -> sitk.AffineTransform:
    """An ITK AffineTransform of the 4x4 matrix ``m`` with the given centre (y = A (x - c) + c + t)."""
    a, b = m[:3, :3], m[:3, 3]
    c = np.asarray(center, dtype=float)
    tx = sitk.AffineTransform(3)
    tx.SetCenter([float(v) for v in c])
    tx.SetMatrix([float(v) for v in a.ravel()])
    tx.SetTranslation([float(v) for v in b + a @ c - c])
    return tx


def initial_transform(fixed_n: sitk.Image, moving_n: sitk.Image, mode: str) -> sitk.AffineTransform:
    """Fixed physical point -> moving physical point, from normalized (mass >= 0) coarse images."""
    if mode == "none":
        return sitk.AffineTransform(3)
    how = sitk.CenteredTransformInitializerFilter.MOMENTS if mode == "moments" else sitk.CenteredTransformInitializerFilter.GEOMETRY
    try:
        tx = sitk.CenteredTransformInitializer(fixed_n, moving_n, sitk.AffineTransform(3), how)
    except RuntimeError:
        raise InputError("cannot compute the centres of mass: one image has no intensity above its background; "
                         "check the inputs or use --init geometry") from None
    return sitk.AffineTransform(tx)


def overlap_fraction(working: sitk.Image, fixed_w: np.ndarray, moving: sitk.Image, t_init: np.ndarray) -> float:
    """Share of the fixed foreground (working grid) whose mapped point falls inside the moving image."""
    fg = fixed_w > 0.05
    if fg.sum() < 10:
        fg = np.ones_like(fg)
    idx = np.argwhere(fg[::2, ::2, ::2]) * 2  # (N, 3) z, y, x; every other voxel is plenty
    pts = np.c_[idx[:, ::-1].astype(float), np.ones(len(idx))] @ (t_init @ index_to_physical_matrix(working)).T
    cidx = pts @ np.linalg.inv(index_to_physical_matrix(moving)).T
    size = np.array(moving.GetSize(), dtype=float)
    inside = np.all((cidx[:, :3] >= -0.5) & (cidx[:, :3] <= size - 0.5), axis=1)
    return float(inside.mean()) if len(inside) else 0.0


# -- the network ----------------------------------------------------------------------------------

def load_registration_model(path: str, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A GVSLNet (Z-Matching head) from a model file, checkpoint or run folder."""
    from .bundle import resolve_model
    from .nets import GVSLNet
    from .zoo import locate_model

    path = locate_model(path)
    state, meta = resolve_model(path, device=str(device))
    arch = meta.get("architecture", {})
    if arch.get("name") != "GVSLNet" or meta.get("task") != "pretrain":
        raise InputError(f"{path} is a {arch.get('name', 'unknown')} model ({meta.get('task')}); registration needs a "
                         "GVSL pre-trained model (gvsl pretrain) or --model none")
    model = GVSLNet(int(arch.get("width", 32)), int(arch.get("in_channels", 1)))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit GVSLNet(width={arch.get('width')}): "
                         f"{str(exc).splitlines()[0]}; give a model written by gvsl pretrain") from None
    return model.to(device).eval(), meta


@torch.inference_mode()
def predict(model: torch.nn.Module, fixed_w: torch.Tensor, moving_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed-forward Z-Matching on the working grid.

    Args:
        fixed_w, moving_w: (1, 1, D, H, W) in [0, 1].

    Returns:
        affine (3, 4) in working voxels, (z, y, x), about the grid centre; residual (1, 3, D, H, W) voxels.
    """
    shape = fixed_w.shape[2:]
    affine, residual, _, _ = model.match(model.unet.features(fixed_w), model.unet.features(moving_w), shape)
    return affine[0].float().clone(), residual.float().clone()


# -- instance optimization --------------------------------------------------------------------------

def _box(x: torch.Tensor, window: int) -> torch.Tensor:
    """Window mean along each axis with zero padding, by differences of cumulative sums: a few
    operations a voxel whatever the window."""
    pad = window // 2
    for dim in (2, 3, 4):
        widths = [0] * 6
        widths[2 * (4 - dim)], widths[2 * (4 - dim) + 1] = pad + 1, pad
        c = F.pad(x, widths).cumsum(dim)
        n = c.shape[dim] - window
        x = (c.narrow(dim, window, n) - c.narrow(dim, 0, n)) / window
    return x


def local_ncc(fixed: torch.Tensor, warped: torch.Tensor, window: int = 7, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean local squared NCC over ``window``^3 neighbourhoods (zero padding).

    The quantity of :func:`gvslcore.losses.local_ncc_loss`, with window sums from cumulative sums
    (about 3x faster on CPU than three 1-D average pools, forward and backward; instance
    optimization runs it hundreds of times on whole volumes).
    """
    i, j = fixed.float(), warped.float()
    means = _box(torch.cat([i, j, i * i, j * j, i * j], dim=1), window)
    mi, mj, mii, mjj, mij = torch.split(means, 1, dim=1)
    cross = mij - mi * mj
    cc = cross * cross / ((mii - mi * mi) * (mjj - mj * mj) + eps / window**6)
    return 1.0 - cc.mean()


def _gaussian_blur(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0.1:
            continue
        radius = max(1, math.ceil(2.5 * sigma))
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        shape = [1, 1, 1, 1, 1]
        shape[axis + 2] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(shape))
    return x


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=True)


def _level_shapes(shape: Sequence[int], levels: int) -> list[tuple[int, ...]]:
    out = []
    for level in range(levels):
        f = 2 ** (levels - 1 - level)
        out.append(tuple(max(8, round((s - 1) / f) + 1) if f > 1 else int(s) for s in shape))
    return out


def _normalized_grid(shape: Sequence[int], device, dtype=torch.float32) -> torch.Tensor:
    """(1, 3, D, H, W) coordinates in [-1, 1] (align_corners=True), channels (z, y, x)."""
    axes = [torch.linspace(-1.0, 1.0, s, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).unsqueeze(0)


def _half(shape: Sequence[int], device) -> torch.Tensor:
    return torch.tensor([(s - 1) / 2.0 for s in shape], device=device, dtype=torch.float32)


def instance_optimize(
    fixed_w: torch.Tensor,
    moving_w: torch.Tensor,
    affine: torch.Tensor,
    residual: torch.Tensor,
    spacing_mm: Sequence[float],
    cfg: RegisterConfig,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Refine ``p -> Aff(p + v(p))`` on this pair by Adam on local NCC + smoothness, coarse to fine.

    Coordinates inside are normalized ([-1, 1] per axis, align_corners=True), so a field carries
    over between pyramid levels by plain trilinear resizing.

    Args:
        fixed_w, moving_w: (1, 1, D, H, W) in [0, 1] on the working grid.
        affine: (3, 4) start, working voxels, (z, y, x), about the grid centre.
        residual: (1, 3, D, H, W) start, working voxels.
        spacing_mm: working spacing (z, y, x).
        cfg: iterations per level, levels, weights, steps.
        on_step: called as (step, total, losses) every 10 steps.

    Returns:
        (affine (3, 4), residual (1, 3, D, H, W)) in working voxels, and the final losses.
    """
    device = fixed_w.device
    shape = tuple(fixed_w.shape[2:])
    h_w = _half(shape, device)
    extent = h_w * torch.as_tensor(list(spacing_mm), device=device, dtype=torch.float32)  # half extents, mm
    a_n = (affine[:, :3] * h_w.view(1, 3) / h_w.view(3, 1)).detach().clone()  # H^-1 A H
    t_n = (affine[:, 3] / h_w).detach().clone()
    v_n = residual.detach() / h_w.view(1, 3, 1, 1, 1)
    a_param = torch.nn.Parameter(a_n)
    t_param = torch.nn.Parameter(t_n)
    shapes = _level_shapes(shape, cfg.levels)
    total = cfg.iterations * (cfg.levels + (1 if cfg.affine_only_first else 0))
    step = 0
    losses: dict[str, float] = {}
    for level, lshape in enumerate(shapes):
        factors = [(s - 1) / max(ls - 1, 1) for s, ls in zip(shape, lshape)]
        sigmas = [0.5 * f if f > 1 else 0.0 for f in factors]
        fixed_l = _resize(_gaussian_blur(fixed_w, sigmas), lshape)
        moving_l = _resize(_gaussian_blur(moving_w, sigmas), lshape)
        grid = _normalized_grid(lshape, device).permute(0, 2, 3, 4, 1)  # (1, D, H, W, 3), (z, y, x)
        h_l = _half(lshape, device)
        # The field is a parameter in voxels of this level (so that one Adam step is about the
        # same fraction of a voxel at every level).
        v_param = torch.nn.Parameter((_resize(v_n, lshape) * h_l.view(1, 3, 1, 1, 1)).detach())
        spacing_l = extent / h_l  # mm per level voxel, (z, y, x)
        phases = ["affine", "joint"] if (level == 0 and cfg.affine_only_first) else ["joint"]
        for phase in phases:
            params = [{"params": [a_param, t_param], "lr": cfg.lr_affine}]
            if phase == "joint":
                params.append({"params": [v_param], "lr": cfg.lr})
            optimizer = torch.optim.Adam(params)
            for _ in range(cfg.iterations):
                v = v_param / h_l.view(1, 3, 1, 1, 1)
                # grid_sample wants (x, y, z) last: reversing the matrix rows is the flip, for free.
                q = (grid + v.permute(0, 2, 3, 4, 1)) @ a_param.flip(0).T + t_param.flip(0)
                warped = F.grid_sample(moving_l, q, mode="bilinear", padding_mode="zeros", align_corners=True)
                ncc = local_ncc(fixed_l, warped, cfg.ncc_window)
                smooth = _smoothness_mm(v_param, spacing_l)
                loss = ncc + cfg.smooth_weight * smooth
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if on_step is not None and (step % 10 == 0 or step == total):
                    losses = {"ncc": float(ncc.detach()), "smooth": float(smooth.detach())}
                    on_step(step, total, {**losses, "level": level})
        v_n = (v_param / h_l.view(1, 3, 1, 1, 1)).detach()
    if total:
        losses = {"ncc": float(ncc.detach()), "smooth": float(smooth.detach())}
    a_v = a_param.detach() * h_w.view(3, 1) / h_w.view(1, 3)
    t_v = t_param.detach() * h_w
    residual_out = _resize(v_n, shape) * h_w.view(1, 3, 1, 1, 1)
    return torch.cat([a_v, t_v.view(3, 1)], dim=1), residual_out, losses


def _smoothness_mm(v_vox: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
    """Mean squared gradient (mm per mm) of a field given in voxels of a grid of ``spacing`` (z, y, x)."""
    v = v_vox * spacing.view(1, 3, 1, 1, 1)
    dz = (v[:, :, 1:] - v[:, :, :-1]) / spacing[0]
    dy = (v[:, :, :, 1:] - v[:, :, :, :-1]) / spacing[1]
    dx = (v[:, :, :, :, 1:] - v[:, :, :, :, :-1]) / spacing[2]
    return (dz.pow(2).mean() + dy.pow(2).mean() + dx.pow(2).mean()) / 3.0


# -- from the working grid to ITK objects -----------------------------------------------------------

def working_affine_matrix(affine: np.ndarray, working: sitk.Image) -> np.ndarray:
    """4x4 physical matrix (LPS mm) of the working-voxel affine ``q = A (p - c) + c + t`` ((z, y, x))."""
    c = np.array([(s - 1) / 2.0 for s in working.GetSize()])  # x, y, z
    a = np.asarray(affine, dtype=float)[:, :3][::-1, ::-1]
    t = np.asarray(affine, dtype=float)[:, 3][::-1]
    v = np.eye(4)
    v[:3, :3] = a
    v[:3, 3] = c + t - a @ c
    m = index_to_physical_matrix(working)
    return m @ v @ np.linalg.inv(m)


def full_displacement(field_w: sitk.Image, t_init: sitk.Transform, fixed: sitk.Image) -> sitk.Image:
    """d(x) = T_init(x + d_W(x)) - x on the fixed grid (sitkVectorFloat64, LPS mm).

    ``field_w`` lives on the working grid, which covers the fixed image, so every fixed voxel centre
    falls inside it (ITK gives a zero displacement outside a field).
    """
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(t_init)  # ITK applies the transform added last first
    composite.AddTransform(sitk.DisplacementFieldTransform(sitk.Image(field_w)))
    return sitk.TransformToDisplacementField(
        composite, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection()
    )


def field_transform(field_image: sitk.Image) -> sitk.DisplacementFieldTransform:
    """A transform of a displacement field image (copied: the transform takes its image over)."""
    return sitk.DisplacementFieldTransform(sitk.Cast(field_image, sitk.sitkVectorFloat64))


def jacobian_image(field_image: sitk.Image, slab: int = 16) -> sitk.Image:
    """det of the Jacobian of x -> x + d(x) on the field's grid (float32).

    ``I + (dd/dp) (D S)^-1`` with central differences inside and one-sided ones at the border (as
    :func:`gvslcore.spatial.jacobian_determinant`), computed in slabs along z so that memory stays
    bounded on large fixed images.
    """
    d = sitk.GetArrayViewFromImage(field_image)  # (D, H, W, 3) LPS mm
    m_inv = np.linalg.inv(np.array(field_image.GetDirection()).reshape(3, 3) @ np.diag(field_image.GetSpacing()))
    depth = d.shape[0]
    out = np.empty(d.shape[:3], dtype=np.float32)
    for z0 in range(0, depth, slab):
        z1 = min(depth, z0 + slab)
        a, b = max(0, z0 - 1), min(depth, z1 + 1)
        block = np.asarray(d[a:b], dtype=np.float64)
        # grads[c][k]: d d_c / d index_k, index axes in (x, y, z) order
        grads = [[None] * 3 for _ in range(3)]
        for c in range(3):
            comp = block[..., c]
            gz = np.gradient(comp, axis=0) if comp.shape[0] > 1 else np.zeros_like(comp)
            gy = np.gradient(comp, axis=1) if comp.shape[1] > 1 else np.zeros_like(comp)
            gx = np.gradient(comp, axis=2) if comp.shape[2] > 1 else np.zeros_like(comp)
            grads[c] = [gx, gy, gz]
        # J = I + G M^-1, J[c][j] = delta_cj + sum_k G[c][k] M^-1[k][j]
        j = [[sum(grads[c][k] * m_inv[k, jj] for k in range(3)) + (1.0 if c == jj else 0.0) for jj in range(3)]
             for c in range(3)]
        det = (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
               - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
               + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))
        out[z0:z1] = det[z0 - a : z0 - a + (z1 - z0)]
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(field_image)
    return image


def global_ncc(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two arrays (None when one is constant)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / den) if den > 0 else None


def propagate_labels(labels: sitk.Image, fixed: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """Map a label map onto the fixed grid label by label: each label's indicator is resampled with
    linear interpolation and every voxel takes the label of largest weight (background included),
    so no value between two labels ever appears."""
    arr = sitk.GetArrayViewFromImage(labels)
    values = [int(v) for v in np.unique(arr)]
    best = np.full(tuple(reversed(fixed.GetSize())), -1.0, dtype=np.float32)
    out = np.zeros(best.shape, dtype=np.uint16)
    for value in values:
        mask = sitk.Cast(labels == value, sitk.sitkFloat32)
        default = 1.0 if value == 0 else 0.0  # outside the moving image is background
        w = sitk.GetArrayFromImage(sitk.Resample(mask, fixed, transform, sitk.sitkLinear, default, sitk.sitkFloat32))
        better = w > best
        best[better] = w[better]
        out[better] = value
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(fixed)
    return image


def displacement_error_mm(estimate: sitk.Image, truth: sitk.Image, mask: np.ndarray | None = None) -> dict[str, float]:
    """|d_est - d_true| in mm over ``mask`` (or everywhere): mean, median, 95th percentile, max."""
    e = sitk.GetArrayViewFromImage(estimate)
    t = sitk.GetArrayViewFromImage(truth)
    err = np.sqrt(((np.asarray(e, dtype=np.float64) - t) ** 2).sum(-1))
    if mask is not None:
        err = err[mask]
    return {"mean": float(err.mean()), "median": float(np.median(err)), "p95": float(np.percentile(err, 95)),
            "max": float(err.max())}


def folding_percent(jacobian: sitk.Image) -> float:
    det = sitk.GetArrayViewFromImage(jacobian)
    return float(100.0 * np.count_nonzero(det <= 0) / det.size)


# -- the whole registration ---------------------------------------------------------------------

def check_labels(labels: sitk.Image, moving: sitk.Image, labels_name: str = "the labels", moving_name: str = "MOVING") -> None:
    if not same_geometry(labels, moving):
        raise InputError(
            f"{labels_name} is not on the grid of {moving_name} (size {labels.GetSize()} vs {moving.GetSize()}, "
            "spacing/origin/direction must match); give labels drawn on the moving image"
        )


def register_images(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    model: torch.nn.Module | None = None,
    metadata: dict[str, Any] | None = None,
    cfg: RegisterConfig | None = None,
    moving_labels: sitk.Image | None = None,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
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
    from .engine import resolve_device

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    timer = _Timer()
    warnings: list[str] = []
    metadata = metadata or {}

    # -- intensities and initial alignment --------------------------------------------------------
    stage("initial alignment")
    mod_f, mod_m = guess_modality(fixed), guess_modality(moving)
    if mod_f != mod_m:
        warnings.append(f"{names[0]} looks like {mod_f} and {names[1]} like {mod_m}: the model and the NCC similarity "
                        "are single-modality, expect a poor result (no multi-modal model is available)")
    model_modality = (metadata.get("preprocessing") or {}).get("modality")
    if model is not None and model_modality and model_modality not in {mod_f, mod_m, "auto"}:
        warnings.append(f"the model was trained on {model_modality} but the images look like {mod_f}/{mod_m}; "
                        "its prediction may be poor, add --iterations N")
    for w in warnings:
        log(f"warning: {w}")
    coarse = [max(COARSE_SPACING_MM, s) for s in fixed.GetSpacing()]
    coarse_m = [max(COARSE_SPACING_MM, s) for s in moving.GetSpacing()]
    bg_f, bg_m = background_value(fixed, mod_f), background_value(moving, mod_m)
    fixed_c = normalized(resample_to_spacing(fixed, coarse, default_value=bg_f), mod_f)
    moving_c = normalized(resample_to_spacing(moving, coarse_m, default_value=bg_m), mod_m)
    t_init = initial_transform(fixed_c, moving_c, cfg.init)
    t_init_m = affine_to_matrix(t_init)
    timer.lap("initial_alignment")

    # -- working grid ----------------------------------------------------------------------------
    stage("working grid")
    if cfg.spacing is not None:
        spacing = float(cfg.spacing)
    elif model is not None:
        spacing = float(min((metadata.get("preprocessing") or {}).get("spacing", [1.0])))
    else:  # never finer than the fixed image itself: upsampling buys time, not accuracy
        spacing = max(DEFAULT_SPACING_MM, min(fixed.GetSpacing()))
    working = working_grid(fixed, spacing, cfg.max_size)
    if working.GetSpacing()[0] > spacing * 1.001:
        logger.info("working spacing coarsened to %.2f mm (--max-size %d)", working.GetSpacing()[0], cfg.max_size)
    fixed_w = sitk.GetArrayFromImage(normalized(sitk.Resample(fixed, working, sitk.Transform(), sitk.sitkLinear, bg_f), mod_f))
    moving_w = sitk.GetArrayFromImage(normalized(sitk.Resample(moving, working, t_init, sitk.sitkLinear, bg_m), mod_m))
    overlap = overlap_fraction(working, fixed_w, moving, t_init_m)
    if overlap < MIN_OVERLAP:
        raise InputError(
            f"{names[0]} and {names[1]} do not overlap after the initial alignment (--init {cfg.init}): only "
            f"{100 * overlap:.1f}% of the fixed image falls inside the moving one; check that both show the same "
            "body region" + ("" if cfg.init == "moments" else ", or use --init moments")
        )
    timer.lap("working_grid")

    # -- feed-forward and instance optimization ------------------------------------------------------
    f_t = torch.from_numpy(fixed_w)[None, None].to(device)
    m_t = torch.from_numpy(moving_w)[None, None].to(device)
    if model is not None:
        stage("prediction")
        affine, residual = predict(model, f_t, m_t)
    else:
        affine = torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1).to(device)
        residual = torch.zeros(1, 3, *fixed_w.shape, device=device)
    timer.lap("prediction")
    io_losses: dict[str, float] = {}
    start = "prediction" if model is not None else "initial alignment"
    if cfg.iterations > 0:
        stage("instance optimization")
        if model is not None:
            # A model that does not know this pair can do worse than no motion at all: start from
            # whichever of the two the images agree with more.
            with torch.no_grad():
                u_pred = fuse_affine_and_displacement(affine[None].float(), residual.float())
                if local_ncc(f_t, warp(m_t, u_pred), cfg.ncc_window) > local_ncc(f_t, m_t, cfg.ncc_window):
                    log("note: the model's prediction fits this pair worse than the initial alignment; "
                        "instance optimization starts from the initial alignment")
                    affine = torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1).to(device)
                    residual = torch.zeros_like(residual)
                    start = "initial alignment (prediction rejected)"
        with torch.enable_grad():
            affine, residual, io_losses = instance_optimize(
                f_t, m_t, affine, residual, working.GetSpacing()[::-1], cfg, on_step
            )
        timer.lap("instance_optimization")
    with torch.no_grad():
        u_w = fuse_affine_and_displacement(affine[None].float(), residual.float())[0]
        u_w_np = u_w.cpu().numpy()
        affine_np = affine.cpu().numpy().astype(np.float64)
        warped_t = warp(m_t, u_w[None])
        ncc_working = {
            "global_before": global_ncc(fixed_w, moving_w),
            "global_after": global_ncc(fixed_w, warped_t.cpu().numpy()),
            "local_before": float(1 - local_ncc(f_t, m_t, 9)),
            "local_after": float(1 - local_ncc(f_t, warped_t, 9)),
        }

    # -- export ------------------------------------------------------------------------------------
    stage("export")
    field_w = displacement_image(u_w_np, working)
    displacement = full_displacement(field_w, t_init, fixed)
    fixed_centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in fixed.GetSize()])
    affine_tx = matrix_to_affine(t_init_m @ working_affine_matrix(affine_np, working), fixed_centre)
    timer.lap("compose")
    transform = field_transform(displacement)
    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, bg_m, sitk.sitkFloat32)
    moving_on_fixed = sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkLinear, bg_m, sitk.sitkFloat32)
    timer.lap("warp")
    jacobian = jacobian_image(displacement)
    timer.lap("jacobian")
    propagated = None
    if moving_labels is not None:
        stage("labels")
        propagated = propagate_labels(moving_labels, fixed, transform)
        timer.lap("labels")

    # Every other voxel along each axis is plenty for a global correlation of large volumes.
    step = 2 if np.prod(fixed.GetSize()) > 2_000_000 else 1
    sub = (slice(None, None, step),) * 3

    def on_fixed(image: sitk.Image) -> np.ndarray:
        return normalize(sitk.GetArrayViewFromImage(image)[sub], mod_m)

    fixed_n = normalize(sitk.GetArrayViewFromImage(fixed)[sub], mod_f)
    initial_on_fixed = sitk.Resample(moving, fixed, t_init, sitk.sitkLinear, bg_m, sitk.sitkFloat32)
    ncc = {
        "before": global_ncc(fixed_n, on_fixed(moving_on_fixed)),
        "initial_alignment": global_ncc(fixed_n, on_fixed(initial_on_fixed)),
        "after": global_ncc(fixed_n, on_fixed(warped)),
    }
    timer.lap("metrics")
    det = sitk.GetArrayViewFromImage(jacobian)
    metrics: dict[str, Any] = {
        "ncc": ncc,
        "ncc_working_grid": ncc_working,
        "folding_percent": folding_percent(jacobian),
        "jacobian": {"min": float(det.min()), "max": float(det.max()), "mean": float(det.mean())},
        "overlap_after_initial_alignment": overlap,
        "initial_transform": {"mode": cfg.init, "matrix": t_init_m.tolist()},
        "working_grid": {"size": list(working.GetSize()), "spacing_mm": working.GetSpacing()[0]},
        "modality": {"fixed": mod_f, "moving": mod_m, "model": model_modality if model is not None else None},
        "model": bool(model is not None),
        "instance_optimization": {"iterations_per_level": cfg.iterations, "levels": cfg.levels if cfg.iterations else 0,
                                  "start": start, "final_losses": io_losses},
        "settings": asdict(cfg),
        "device": str(device),
        "warnings": warnings,
        "seconds": timer.seconds,
    }
    return RegistrationResult(displacement, affine_tx, warped, jacobian, propagated, metrics, moving_on_fixed, working,
                              fixed_display=fixed)


# -- files ---------------------------------------------------------------------------------------

OUTPUT_NAMES = {
    "warped": "warped.nii.gz",
    "affine": "affine.tfm",
    "displacement": "displacement.nii.gz",
    "jacobian": "jacobian.nii.gz",
    "metrics": "metrics.json",
    "propagated": "propagated.seg.nrrd",
    "qc": "qc.png",
}


def check_output_dir(out: str | os.PathLike) -> Path:
    """Fail early (before any work) when ``out`` cannot become a writable folder; creates nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the registration outputs")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: {probe} is not writable; choose a writable location")
    return out


def label_table_for(labels_path: str | os.PathLike | None, labels: sitk.Image) -> LabelTable:
    """Names and colours of propagated labels: the .seg.nrrd's own table, else generic entries."""
    import colorsys

    if labels_path is not None and str(labels_path).lower().endswith(".seg.nrrd"):
        from .segfile import read_label_table

        table = read_label_table(labels_path)
        if len(table):
            return table
    values = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v != 0]
    # Hues a golden angle apart: neighbouring values get clearly different colours.
    colors = {v: colorsys.hsv_to_rgb((0.618034 * v) % 1.0, 0.65, 0.95) for v in values}
    return LabelTable([LabelInfo(v, f"label {v}", tuple(round(c, 4) for c in colors[v])) for v in values])


def write_outputs(
    result: RegistrationResult,
    out: str | os.PathLike,
    *,
    table: LabelTable | None = None,
    qc: bool = True,
    reporter: Reporter | None = None,
    title: str | None = None,
) -> dict[str, str]:
    """Write every output of ``result`` into ``out`` (each file atomically); returns name -> path."""
    out = ensure_writable_dir(out)
    written: dict[str, str] = {}

    def done(key: str, path: Path) -> None:
        written[key] = str(path)
        if reporter is not None:
            reporter.artifact(key, path)

    done("warped", write_image(result.warped, out / OUTPUT_NAMES["warped"]))
    with atomic_path(out / OUTPUT_NAMES["affine"]) as tmp:
        sitk.WriteTransform(result.affine, str(tmp))
    done("affine", out / OUTPUT_NAMES["affine"])
    done("displacement", write_image(result.displacement, out / OUTPUT_NAMES["displacement"]))
    done("jacobian", write_image(result.jacobian, out / OUTPUT_NAMES["jacobian"]))
    if result.propagated is not None:
        from .segfile import write_labels

        path = out / OUTPUT_NAMES["propagated"]
        try:
            write_labels(result.propagated, path, table or label_table_for(None, result.propagated))
        except InputError:  # values above 255 or unnamed: a plain label map keeps every value
            path = write_image(sitk.Cast(result.propagated, sitk.sitkUInt16), out / "propagated.nii.gz")
        done("propagated", path)
    if qc:
        t = time.monotonic()
        try:
            from .qc import registration_qc_png

            fixed = result.fixed_display if result.fixed_display is not None else result.warped
            path = registration_qc_png(fixed, result.moving_on_fixed, result.warped, result.displacement,
                                       result.jacobian, out / OUTPUT_NAMES["qc"], ncc=result.metrics.get("ncc"),
                                       folding_percent=result.metrics.get("folding_percent"), title=title)
            done("qc", path)
        except ModuleNotFoundError as exc:
            if exc.name != "matplotlib":
                raise
            log("note: matplotlib is not installed; qc.png skipped (pip install matplotlib)")
        result.metrics["seconds"]["qc"] = round(time.monotonic() - t, 3)
    write_json(out / OUTPUT_NAMES["metrics"], result.metrics)
    done("metrics", out / OUTPUT_NAMES["metrics"])
    return written


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
    from .engine import resolve_device
    from .io import read_image

    cfg = cfg or RegisterConfig()
    cfg.validate()
    t0 = time.monotonic()
    out = check_output_dir(out)
    if model_path is None and cfg.iterations == 0:
        raise InputError("without a model (--model none) give --iterations N (instance optimization steps per level)")
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
    read_s = time.monotonic() - t0
    total = cfg.iterations * (cfg.levels + (1 if cfg.affine_only_first else 0))
    if reporter is not None:
        reporter.start("register", total)

    def on_step(step: int, n: int, losses: dict[str, float]) -> None:
        if reporter is not None:
            level = int(losses.pop("level", 0))
            reporter.progress(step, stage=f"instance optimization (level {level + 1}/{cfg.levels})", loss=losses)

    def on_stage(text: str) -> None:
        if reporter is not None:
            reporter.stage(text)

    result = register_images(fixed, moving, model=model, metadata=meta, cfg=cfg, moving_labels=labels,
                             on_step=on_step, on_stage=on_stage, names=(str(fixed_path), str(moving_path)))
    result.metrics["seconds"] = {"read": round(read_s, 3), **result.metrics["seconds"]}
    result.metrics["inputs"] = {"fixed": str(fixed_path), "moving": str(moving_path), "model": str(model_path),
                                "moving_labels": str(moving_labels) if moving_labels else None}
    if reporter is not None:
        reporter.stage("writing")
    table = label_table_for(moving_labels, labels) if labels is not None else None
    t = time.monotonic()
    title = f"{Path(str(moving_path)).name} -> {Path(str(fixed_path)).name}"
    written = write_outputs(result, out, table=table, qc=qc, reporter=reporter, title=title)
    result.metrics["seconds"]["write"] = round(time.monotonic() - t - result.metrics["seconds"].get("qc", 0.0), 3)
    result.metrics["seconds"]["total"] = round(time.monotonic() - t0, 3)
    write_json(out / OUTPUT_NAMES["metrics"], result.metrics)
    return {**written, "ncc": result.metrics["ncc"], "folding_percent": result.metrics["folding_percent"],
            "seconds": result.metrics["seconds"]["total"]}

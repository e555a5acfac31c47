"""Both images on one working grid: background, [0, 1] intensities, the initial alignment
``T_init`` (fixed physical point -> moving physical point), the working grid and their overlap.

Every array is (z, y, x); every physical quantity is LPS millimetres.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry import index_to_physical_matrix
from ..io import normalize


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

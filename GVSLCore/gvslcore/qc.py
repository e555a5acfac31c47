"""Quality-control picture of a registration (``qc.png`` of ``gvsl register``).

Three orthogonal planes (rows: axial, coronal, sagittal) through the fixed image's centre of mass,
five columns: a checkerboard of fixed and warped, the difference to the fixed image before and after
registration (same colour scale), the deformed grid drawn over the fixed image, and the Jacobian
determinant of the mapping with a colour bar (<= 0 is folding). Everything is resampled onto an
isotropic display grid in LPS axes, so the aspect ratio is physical and the planes are radiological
(axial seen from the feet, patient's right on the left; anterior up). matplotlib's Agg canvas, no
display needed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path

PLANES = ("axial", "coronal", "sagittal")


def display_grid(fixed: sitk.Image, max_size: int = 192) -> sitk.Image:
    """An isotropic grid in the fixed image's LPS-permuted frame, at most ``max_size`` per axis."""
    oriented = sitk.DICOMOrient(fixed, "LPS")
    extent = (np.array(oriented.GetSize()) - 1) * np.array(oriented.GetSpacing())
    spacing = max(min(oriented.GetSpacing()), float(extent.max()) / (max_size - 1))
    size = [int(s) for s in np.floor(extent / spacing + 1e-6).astype(int) + 1]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing([spacing] * 3)
    grid.SetOrigin(oriented.GetOrigin())
    grid.SetDirection(oriented.GetDirection())
    return grid


def _on(image: sitk.Image, grid: sitk.Image, default: float = 0.0) -> np.ndarray:
    # float32 through Resample's output type, not a Cast: a cast copies the whole input volume.
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32))


def _plane(volume: np.ndarray, plane: str, centre: Sequence[int]) -> np.ndarray:
    """A 2-D slice ready for imshow(origin='upper') of a (k, j, i) LPS-oriented array."""
    k, j, i = centre
    if plane == "axial":
        return volume[k]  # rows anterior -> posterior, columns right -> left
    if plane == "coronal":
        return volume[:, j, :][::-1]  # superior up
    return volume[:, :, i][::-1]  # sagittal: superior up, anterior left


def _window(fixed: sitk.Image) -> tuple[float, float]:
    """Display window: the 1st and 99th percentiles of about a million of the fixed image's voxels."""
    arr = sitk.GetArrayViewFromImage(fixed)
    step = max(1, round((arr.size / 1e6) ** (1 / 3)))
    lo, hi = np.percentile(arr[::step, ::step, ::step], (1, 99))
    return float(lo), float(hi if hi > lo else lo + 1)


def _bright_centre(fixed: sitk.Image, grid: sitk.Image, lo: float, hi: float) -> tuple[int, int, int]:
    """(k, j, i) on ``grid`` of the centre of mass of the windowed fixed image (above 5 % of the
    window), found on a copy 4x coarser than ``grid``; the grid's centre when nothing is bright."""
    coarse = sitk.Image([max(1, s // 4) for s in grid.GetSize()], sitk.sitkFloat32)
    coarse.SetSpacing([4 * grid.GetSpacing()[0]] * 3)
    coarse.SetDirection(grid.GetDirection())
    coarse.SetOrigin(grid.TransformContinuousIndexToPhysicalPoint([1.5] * 3))  # same extent, voxel centres inside
    weights = np.clip((_on(fixed, coarse) - lo) / (hi - lo), 0, 1) - 0.05
    weights = np.clip(weights, 0, None)
    size = grid.GetSize()
    if weights.sum() <= 0:
        return size[2] // 2, size[1] // 2, size[0] // 2
    kji = [float((np.indices(weights.shape)[a] * weights).sum() / weights.sum()) for a in range(3)]
    point = coarse.TransformContinuousIndexToPhysicalPoint(kji[::-1])
    ijk = grid.TransformPhysicalPointToContinuousIndex(point)
    i, j, k = (min(max(round(c), 0), n - 1) for c, n in zip(ijk, size))
    return k, j, i


def _slab(grid: sitk.Image, plane: str, centre: Sequence[int]) -> tuple[sitk.Image, list[int]]:
    """The one-voxel-thick part of ``grid`` holding ``plane`` through ``centre`` ((k, j, i)), and the
    grid index (i, j, k) of its first voxel."""
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    start = [0, 0, 0]
    start[axis] = int(centre[::-1][axis])
    size = list(grid.GetSize())
    size[axis] = 1
    slab = sitk.Image(size, sitk.sitkFloat32)
    slab.SetSpacing(grid.GetSpacing())
    slab.SetDirection(grid.GetDirection())
    slab.SetOrigin(grid.TransformIndexToPhysicalPoint(start))
    return slab, start


def _on_plane(image: sitk.Image, grid: sitk.Image, plane: str, centre: Sequence[int], default: float = 0.0) -> np.ndarray:
    """``_plane(_on(image, grid, default), plane, centre)`` without resampling the whole grid."""
    slab, _ = _slab(grid, plane, centre)
    return _plane(_on(image, slab, default), plane, (0, 0, 0))


def _mapped_on_plane(displacement: sitk.Image, grid: sitk.Image, plane: str, centre: Sequence[int]) -> np.ndarray:
    """(3, rows, cols): where each display voxel of the plane lands under the mapping, in display
    voxels along (i, j, k) of ``grid``."""
    slab, start = _slab(grid, plane, centre)
    d = sitk.GetArrayFromImage(sitk.Resample(displacement, slab, sitk.Transform(), sitk.sitkLinear, 0.0,
                                             sitk.sitkVectorFloat64))
    m_inv = np.linalg.inv(np.array(grid.GetDirection()).reshape(3, 3) * grid.GetSpacing()[0])
    shift = d @ m_inv.T  # (k, j, i, 3): displacement in display voxels along (i, j, k)
    index = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) + o for s, o in
                                   zip(slab.GetSize()[::-1], start[::-1])], indexing="ij")[::-1], -1)
    mapped = index + shift
    return np.stack([_plane(mapped[..., c], plane, (0, 0, 0)) for c in range(3)])


def _plane_axes(plane: str) -> tuple[int, int]:
    """Which display-index components (0 = i, 1 = j, 2 = k) run along the columns and rows."""
    return {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}[plane]


def _checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    rows, cols = a.shape
    step = max(1, max(rows, cols) // tiles)
    r = (np.arange(rows) // step)[:, None]
    c = (np.arange(cols) // step)[None, :]
    return np.where((r + c) % 2 == 0, a, b)


def registration_qc_png(
    fixed: sitk.Image,
    moving_before: sitk.Image,
    warped: sitk.Image,
    displacement: sitk.Image,
    jacobian: sitk.Image,
    path: str | os.PathLike,
    *,
    ncc: dict | None = None,
    folding_percent: float | None = None,
    title: str | None = None,
    max_size: int = 192,
    dpi: int = 100,
) -> Path:
    """Write the QC picture (PNG, atomically).

    Args:
        fixed: the fixed image; ``moving_before`` the moving image on the fixed grid without
            registration; ``warped`` after registration (all scalar, any pixel type).
        displacement: the ITK displacement field of the mapping (LPS mm, any grid).
        jacobian: its Jacobian determinant.
        ncc: {'before': .., 'after': ..} for the title; ``folding_percent`` likewise.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    grid = display_grid(fixed, max_size)
    lo, hi = _window(fixed)
    centre = _bright_centre(fixed, grid, lo, hi)
    f_w, before, after, det, mapped = {}, {}, {}, {}, {}
    for plane in PLANES:
        # Only the three planes are resampled: the full display volume costs seconds on a CT.
        f_w[plane] = np.clip((_on_plane(fixed, grid, plane, centre) - lo) / (hi - lo), 0, 1)
        before[plane] = np.clip((_on_plane(moving_before, grid, plane, centre, lo) - lo) / (hi - lo), 0, 1)
        after[plane] = np.clip((_on_plane(warped, grid, plane, centre, lo) - lo) / (hi - lo), 0, 1)
        det[plane] = _on_plane(jacobian, grid, plane, centre, 1.0)
        mapped[plane] = _mapped_on_plane(displacement, grid, plane, centre)
    sp = grid.GetSpacing()[0]
    grid_step = max(2.0, max(grid.GetSize()) / 24.0)  # grid lines every ~1/24 of the field of view

    fig = Figure(figsize=(16, 9.6), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 5)
    columns = ("checkerboard fixed / warped", "|fixed - moving| before", "|fixed - warped| after",
               "deformed grid on fixed", "Jacobian determinant")
    diff_max = 0.5
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=2.0)
    for row, plane in enumerate(PLANES):
        f2 = f_w[plane]
        rows, cols = f2.shape
        extent = (0, cols * sp, rows * sp, 0)
        show = {"extent": extent, "interpolation": "nearest"}
        ax = axes[row]
        ax[0].imshow(_checkerboard(f2, after[plane]), cmap="gray", vmin=0, vmax=1, **show)
        ax[1].imshow(np.abs(f2 - before[plane]), cmap="magma", vmin=0, vmax=diff_max, **show)
        im_diff = ax[2].imshow(np.abs(f2 - after[plane]), cmap="magma", vmin=0, vmax=diff_max, **show)
        ax[3].imshow(f2, cmap="gray", vmin=0, vmax=1, **show)
        a_col, a_row = _plane_axes(plane)
        xs = (np.arange(cols) + 0.5) * sp
        ys = (np.arange(rows) + 0.5) * sp
        for comp in (a_col, a_row):
            values = mapped[plane][comp]
            levels = np.arange(np.floor(values.min() / grid_step), np.ceil(values.max() / grid_step) + 1) * grid_step
            if len(levels) > 1:
                ax[3].contour(xs, ys, values, levels=levels, colors="yellow", linewidths=0.6)
        im_det = ax[4].imshow(det[plane], cmap="RdBu_r", norm=norm, **show)
        fig.colorbar(im_det, ax=ax[4], fraction=0.046, pad=0.02)
        fig.colorbar(im_diff, ax=ax[2], fraction=0.046, pad=0.02)
        for col, a in enumerate(ax):
            a.set_xticks([])
            a.set_yticks([])
            a.set_xlim(0, cols * sp)
            a.set_ylim(rows * sp, 0)
            if row == 0:
                a.set_title(columns[col], fontsize=10)
        ax[0].set_ylabel(plane, fontsize=11)
    parts = [title] if title else []
    if ncc:
        b, a = ncc.get("before"), ncc.get("after")
        if b is not None and a is not None:
            parts.append(f"NCC {b:.3f} -> {a:.3f}")
    if folding_percent is not None:
        parts.append(f"folding {folding_percent:.3f} %")
    if parts:
        fig.suptitle("   |   ".join(parts), fontsize=12)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path

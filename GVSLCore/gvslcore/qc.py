"""Quality-control picture of a registration (``qc.png`` of ``gvsl register``).

Three orthogonal planes (rows: axial, coronal, sagittal) through the fixed image's centre of mass,
five columns: a checkerboard of fixed and warped, the difference to the fixed image before and after
registration (same colour scale), the deformed grid drawn over the fixed image, and the Jacobian
determinant of the mapping with a colour bar (<= 0 is folding). Everything is resampled onto an
isotropic display grid in LPS axes, so the aspect ratio is physical and the planes are radiological
(axial seen from the feet, patient's right on the left; anterior up). The picture is composed as
pixels and written by Pillow, text included: matplotlib and scipy.ndimage are not imported, which in
a `gvsl register` process is 0.6-0.8 s of imports, more than the drawing itself.
"""

from __future__ import annotations

import functools
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


def _linear_zoom(values: np.ndarray, scale: int) -> np.ndarray:
    """(rows, cols) -> (rows * scale, cols * scale), linear between pixel centres, edges held (as
    ``scipy.ndimage.zoom(values, scale, order=1, mode="nearest", grid_mode=True)``)."""
    for axis, n in enumerate(values.shape):
        x = np.clip((np.arange(n * scale) + 0.5) / scale - 0.5, 0, n - 1)
        i0 = np.minimum(np.floor(x).astype(int), n - 1)
        i1 = np.minimum(i0 + 1, n - 1)
        w = (x - i0).reshape([-1 if a == axis else 1 for a in range(values.ndim)])
        values = np.take(values, i0, axis) * (1 - w) + np.take(values, i1, axis) * w
    return values


def _grid_lines(values: np.ndarray, scale: int, step: float) -> np.ndarray:
    """Boolean (rows * scale, cols * scale): pixels where the mapped coordinate ``values`` (display
    voxels) crosses a multiple of ``step``; the coordinate is interpolated linearly onto the finer
    pixels, so the lines are one pixel wide at the picture's resolution."""
    fine = _linear_zoom(values, scale) if scale > 1 else values
    cell = np.floor(fine / step)
    lines = np.zeros(fine.shape, dtype=bool)
    lines[:, 1:] |= cell[:, 1:] != cell[:, :-1]
    lines[1:, :] |= cell[1:, :] != cell[:-1, :]
    return lines


# Colour maps as evenly spaced control points, linear between them: matplotlib's magma (CC0) sampled
# at 17 points and its RdBu_r (ColorBrewer's 11 colours); within 3/255 of matplotlib's, without
# importing it.
COLOUR_MAPS = {
    "magma": ((0.001, 0.0, 0.014), (0.04, 0.031, 0.134), (0.113, 0.065, 0.277), (0.212, 0.062, 0.419),
              (0.317, 0.072, 0.485), (0.415, 0.11, 0.505), (0.513, 0.148, 0.508), (0.614, 0.182, 0.499),
              (0.716, 0.215, 0.475), (0.817, 0.256, 0.436), (0.904, 0.32, 0.388), (0.961, 0.418, 0.36),
              (0.987, 0.536, 0.382), (0.996, 0.654, 0.446), (0.997, 0.77, 0.535), (0.992, 0.884, 0.64),
              (0.987, 0.991, 0.75)),
    "RdBu_r": ((0.02, 0.188, 0.38), (0.127, 0.396, 0.669), (0.263, 0.576, 0.765), (0.566, 0.769, 0.869),
               (0.82, 0.898, 0.941), (0.969, 0.966, 0.965), (0.992, 0.859, 0.78), (0.955, 0.642, 0.506),
               (0.839, 0.376, 0.302), (0.692, 0.092, 0.168), (0.404, 0.0, 0.122)),
}


def _coloured(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """(..., 3) float RGB in [0, 1] of ``values`` through the colour map ``cmap`` over [vmin, vmax]."""
    points = np.asarray(COLOUR_MAPS[cmap], dtype=np.float32)
    t = np.clip((values - vmin) / (vmax - vmin), 0, 1) * (len(points) - 1)
    i0 = np.minimum(np.floor(t).astype(int), len(points) - 2)
    w = (t - i0)[..., None].astype(np.float32)
    return points[i0] * (1 - w) + points[i0 + 1] * w


def _upsampled(rgb: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(rgb, scale, 0), scale, 1)


def _colour_bar(cmap: str, height: int, width: int) -> np.ndarray:
    return _coloured(np.repeat(np.linspace(1, 0, height)[:, None], width, 1), cmap, 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _font(size: int):
    """Pillow's own TrueType face at ``size`` pixels (``load_default(size=...)``: Pillow >= 10.1)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _text(draw, xy: tuple[float, float], text: str, size: int, anchor: str) -> None:
    """Black ``text`` at ``xy`` (pixels) with a Pillow anchor ("mm": its middle; "lm": left, middle)."""
    draw.text(xy, text, fill="black", font=_font(size), anchor=anchor)


COLUMNS = ("checkerboard fixed / warped", "|fixed - moving| before", "|fixed - warped| after",
           "deformed grid on fixed", "Jacobian determinant")
DIFF_MAX = 0.5  # of the display window: the difference columns' colour scale
JACOBIAN_RANGE = (0.0, 2.0)  # centred on 1 (no volume change); <= 0 is folding


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
    panel_px: int = 300,
) -> Path:
    """Write the QC picture (PNG, atomically).

    The fifteen panels are composed as pixels (each display voxel ``panel_px / max(plane size)``
    pixels wide) and placed on the canvas unresampled; Pillow adds the text and writes the PNG.

    Args:
        fixed: the fixed image; ``moving_before`` the moving image on the fixed grid without
            registration; ``warped`` after registration (all scalar, any pixel type).
        displacement: the ITK displacement field of the mapping (LPS mm, any grid).
        jacobian: its Jacobian determinant.
        ncc: {'before': .., 'after': ..} for the title; ``folding_percent`` likewise.
        max_size: display grid voxels along the longest axis; ``panel_px`` pixels of a panel's
            longest side.
    """
    from PIL import Image, ImageDraw

    grid = display_grid(fixed, max_size)
    lo, hi = _window(fixed)
    centre = _bright_centre(fixed, grid, lo, hi)
    size = grid.GetSize()
    scale = max(1, round(panel_px / max(size)))
    grid_step = max(2.0, max(size) / 24.0)  # grid lines every ~1/24 of the field of view
    panels = []
    for plane in PLANES:
        # Only the three planes are resampled: the full display volume costs seconds on a CT.
        f2 = np.clip((_on_plane(fixed, grid, plane, centre) - lo) / (hi - lo), 0, 1)
        before = np.clip((_on_plane(moving_before, grid, plane, centre, lo) - lo) / (hi - lo), 0, 1)
        after = np.clip((_on_plane(warped, grid, plane, centre, lo) - lo) / (hi - lo), 0, 1)
        det = _on_plane(jacobian, grid, plane, centre, 1.0)
        mapped = _mapped_on_plane(displacement, grid, plane, centre)
        gray = np.repeat(f2[..., None], 3, -1)
        deformed = _upsampled(gray, scale)
        lines = np.zeros(deformed.shape[:2], dtype=bool)
        for comp in _plane_axes(plane):
            lines |= _grid_lines(mapped[comp], scale, grid_step)
        deformed[lines] = (1.0, 0.9, 0.0)
        panels.append([
            _upsampled(np.repeat(_checkerboard(f2, after)[..., None], 3, -1), scale),
            _upsampled(_coloured(np.abs(f2 - before), "magma", 0.0, DIFF_MAX), scale),
            _upsampled(_coloured(np.abs(f2 - after), "magma", 0.0, DIFF_MAX), scale),
            deformed,
            _upsampled(_coloured(det, "RdBu_r", *JACOBIAN_RANGE), scale),
        ])

    row_h = [cells[0].shape[0] for cells in panels]  # each row as tall as its plane: no empty bands
    cell_w = max(cells[0].shape[1] for cells in panels)
    gap, bar_w, bar_gap, tick_w = 8, 14, 6, 34
    left, top, bottom, right = 28, 64, 10, 10
    xs, x = [], left
    for col in range(5):
        xs.append(x)
        x += cell_w + gap
        if col in (2, 4):  # the colour bars of the difference and the Jacobian columns
            x += bar_gap + bar_w + tick_w - gap // 2
    width = x - gap + right
    ys = [top + sum(row_h[:row]) + row * gap for row in range(3)]
    height = ys[-1] + row_h[-1] + bottom
    canvas = np.ones((height, width, 3), dtype=np.float32)
    for row, cells in enumerate(panels):
        y, cell_h = ys[row], row_h[row]
        for col, rgb in enumerate(cells):
            w = rgb.shape[1]
            x0 = xs[col] + (cell_w - w) // 2  # centred in its column: the sagittal plane is narrower
            canvas[y:y + cell_h, x0:x0 + w] = rgb
        for col, cmap in ((2, "magma"), (4, "RdBu_r")):
            bx = xs[col] + cell_w + bar_gap
            canvas[y:y + cell_h, bx:bx + bar_w] = _colour_bar(cmap, cell_h, bar_w)

    picture = Image.fromarray((canvas * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for col, name in enumerate(COLUMNS):
        _text(draw, (xs[col] + cell_w / 2, top - 6), name, 13, "md")
    for row, plane in enumerate(PLANES):
        y, cell_h = ys[row], row_h[row]
        # Pillow draws no rotated text: the plane's name is drawn on a strip, turned, pasted.
        strip = Image.new("RGB", (cell_h, left - 4), "white")
        _text(ImageDraw.Draw(strip), (cell_h / 2, (left - 4) / 2), plane, 14, "mm")
        picture.paste(strip.transpose(Image.Transpose.ROTATE_90), (2, y))
        for col, (vmin, vmax) in ((2, (0.0, DIFF_MAX)), (4, JACOBIAN_RANGE)):
            bx = xs[col] + cell_w + bar_gap + bar_w + 3
            for frac in (0.0, 0.5, 1.0):
                _text(draw, (bx, y + (1 - frac) * (cell_h - 1)), f"{vmin + frac * (vmax - vmin):g}", 11, "lm")
    parts = [title] if title else []
    if ncc:
        b, a = ncc.get("before"), ncc.get("after")
        if b is not None and a is not None:
            parts.append(f"NCC {b:.3f} -> {a:.3f}")
    if folding_percent is not None:
        parts.append(f"folding {folding_percent:.3f} %")
    if parts:
        _text(draw, (width / 2, 8), "   |   ".join(parts), 16, "ma")
    path = Path(path)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="png", compress_level=3)
    return path

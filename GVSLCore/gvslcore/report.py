"""Quality-control pictures: a volume with a coloured label overlay in three orthogonal planes.

Generic on purpose (segmentation results, registration QC with warped labels, data checks):
:func:`overlay_png` takes any scalar image, an optional label image on the same physical space and
an optional label table. The planes go through the labels' centroid (or a given point), drawn in
millimetres so the physical aspect ratio is right whatever the spacing, and in radiological
orientation (axial seen from the feet, patient's right on the left of the picture; anterior up).
matplotlib runs with the Agg backend: no display needed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .errors import InputError
from .labels import LabelTable


def _oriented(image: sitk.Image) -> sitk.Image:
    """Reorient to LPS index axes (i: right->left, j: anterior->posterior, k: inferior->superior).

    Only permutes and flips axes (DICOMOrient); an oblique direction keeps its nearest axes.
    """
    return sitk.DICOMOrient(image, "LPS")


def label_colors(table: LabelTable | None, values: Sequence[int], distinct: bool) -> dict[int, tuple[float, float, float]]:
    """RGB in [0, 1] per label value: the table's colours, or (``distinct``) tab10 in the order of ``values``."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if distinct else "tab20"]
    if distinct:
        return {int(v): tuple(cmap(i % 10)[:3]) for i, v in enumerate(values)}
    known = {lab.value: tuple(lab.color) for lab in table} if table is not None else {}
    return {int(v): known.get(int(v), cmap(int(v) % 20)[:3]) for v in values}


def _window(arr: np.ndarray, window: Sequence[float] | None) -> tuple[float, float]:
    if window is not None:
        return float(window[0]), float(window[1])
    sample = arr[:: max(1, arr.shape[0] // 32)]
    lo, hi = np.percentile(sample, (1, 99))
    return float(lo), float(hi if hi > lo else lo + 1)


def _centre_index(image: sitk.Image, labels: sitk.Image | None, point: Sequence[float] | None) -> tuple[int, int, int]:
    """(i, j, k) index of the plane crossing on ``image``'s grid."""
    if point is None and labels is not None:
        mask = sitk.GetArrayViewFromImage(labels) > 0
        if mask.any():
            kji = np.argwhere(mask).mean(0)
            point = labels.TransformContinuousIndexToPhysicalPoint([float(kji[2]), float(kji[1]), float(kji[0])])
    size = image.GetSize()
    if point is None:
        return tuple(s // 2 for s in size)  # type: ignore[return-value]
    idx = image.TransformPhysicalPointToContinuousIndex([float(p) for p in point])
    return tuple(int(np.clip(round(i), 0, s - 1)) for i, s in zip(idx, size))  # type: ignore[return-value]


def overlay_png(
    image: sitk.Image,
    labels: sitk.Image | None,
    out: str | os.PathLike,
    label_table: LabelTable | None = None,
    *,
    title: str | None = None,
    point: Sequence[float] | None = None,
    window: Sequence[float] | None = None,
    alpha: float = 0.45,
    distinct_colors: bool = False,
    dpi: int = 110,
) -> Path:
    """Write a PNG with axial, coronal and sagittal planes of ``image`` and its ``labels``.

    Args:
        image: scalar volume (any geometry).
        labels: integer label image in the same physical space (resampled onto ``image``'s grid
            with nearest neighbour when its grid differs), or None for the image alone.
        out: the PNG path (written atomically).
        label_table: colours and names; unknown values get tab20 colours.
        title: figure title.
        point: physical LPS point (mm) where the planes cross; default the labels' centroid, or
            the volume centre without labels.
        window: display intensity range; default the 1st-99th percentile.
        alpha: overlay opacity.
        distinct_colors: a qualitative palette instead of the table's colours (Slicer's colours for
            neighbouring heart structures are close reds; QC pictures may want them apart).
            Label outlines are drawn either way.
    """
    try:
        import matplotlib
    except ImportError:
        raise InputError("pictures need matplotlib: pip install 'gvslcore[report]'") from None

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    image = sitk.Cast(image, sitk.sitkFloat32)
    if labels is not None:
        labels = sitk.Cast(labels, sitk.sitkUInt16)
        same = (labels.GetSize() == image.GetSize()
                and np.allclose(labels.GetSpacing(), image.GetSpacing())
                and np.allclose(labels.GetOrigin(), image.GetOrigin())
                and np.allclose(labels.GetDirection(), image.GetDirection()))
        if not same:
            labels = sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    img_o = _oriented(image)
    lab_o = _oriented(labels) if labels is not None else None
    i, j, k = _centre_index(img_o, lab_o, point)
    arr = sitk.GetArrayViewFromImage(img_o)  # (k, j, i) = (S, P, L) axes
    lab = sitk.GetArrayViewFromImage(lab_o) if lab_o is not None else None
    sx, sy, sz = img_o.GetSpacing()
    nx, ny, nz = img_o.GetSize()
    lo, hi = _window(np.asarray(arr), window)

    values = sorted(set(np.unique(lab).tolist()) - {0}) if lab is not None else []
    colors = label_colors(label_table, values, distinct_colors)
    lut = np.zeros((max(values, default=0) + 1, 4), dtype=np.float32)
    for v, c in colors.items():
        lut[v] = (*c, alpha)

    # (name, image plane, label plane, extent in mm, origin): rows/cols chosen for radiological views.
    planes = [
        ("axial", arr[k], None if lab is None else lab[k], (0, nx * sx, ny * sy, 0), "upper"),
        ("coronal", arr[:, j, :], None if lab is None else lab[:, j, :], (0, nx * sx, 0, nz * sz), "lower"),
        ("sagittal", arr[:, :, i], None if lab is None else lab[:, :, i], (0, ny * sy, 0, nz * sz), "lower"),
    ]
    widths = [p[3][1] - p[3][0] for p in planes]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), gridspec_kw={"width_ratios": widths})
    for ax, (name, plane, lplane, extent, origin) in zip(axes, planes):
        ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi, extent=extent, origin=origin,
                  interpolation="nearest", aspect="equal")
        if lplane is not None and values:
            lp = np.asarray(lplane)
            ax.imshow(lut[lp], extent=extent, origin=origin, interpolation="nearest", aspect="equal")
            for v in values:
                mask = (lp == v).astype(np.float32)
                if 0 < mask.sum() < mask.size:
                    ax.contour(mask, levels=[0.5], colors=[colors[v]], linewidths=0.9, extent=extent, origin=origin)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if values:
        names = {lab_.value: lab_.name for lab_ in label_table} if label_table is not None else {}
        handles = [Patch(color=colors[v], label=names.get(v, f"label {v}")) for v in values]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.08 if values else 0, 1, 1))
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return out

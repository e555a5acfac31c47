"""Segmentation metrics: Dice and the 95th-percentile Hausdorff distance (HD95) in millimetres.

Label maps are (z, y, x) integer arrays on one grid; ``spacing`` is the voxel size in mm in the
same (z, y, x) order (SimpleITK's ``GetSpacing()`` reversed). Distances are Euclidean in physical
space: the direction matrix is a rotation, so it does not change them.

HD95 follows the common definition (MONAI's ``compute_hausdorff_distance(percentile=95)``): the
larger of the two directed 95th percentiles of surface-to-surface distances, where a surface voxel
is a mask voxel with a 6-neighbour outside the mask.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import InputError
from .io import read_image, same_geometry
from .labels import LabelTable

_SIX_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return math.nan
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    # border_value=0: a mask touching the array edge has its surface there.
    return mask & ~ndimage.binary_erosion(mask, _SIX_NEIGHBOURS, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b``, and back.

    Both masks must be non-empty. The computation runs on the bounding box of both masks (plus a
    one-voxel margin): every surface voxel lies inside it, so the distances are exact.
    """
    both = np.argwhere(a | b)
    lo = np.maximum(both.min(0) - 1, 0)
    hi = np.minimum(both.max(0) + 2, a.shape)
    box = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi))
    sa, sb = _surface(a[box]), _surface(b[box])
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return to_b[sa], to_a[sb]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm.

    0 when both masks are empty, ``inf`` when exactly one is.
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    has_p, has_r = bool(pred.any()), bool(ref.any())
    if not has_p and not has_r:
        return 0.0
    if has_p != has_r:
        return math.inf
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    return float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))


def dice_per_label(pred: np.ndarray, ref: np.ndarray, values: Iterable[int]) -> dict[int, float]:
    """Dice for each label value (NaN where the label is absent from both)."""
    return {int(v): dice(pred == v, ref == v) for v in values}


def _finite_or_none(x: float) -> float | None:
    return None if (x is None or not math.isfinite(x)) else round(float(x), 4)


def evaluate_arrays(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    values: Iterable[int] | None = None,
    names: dict[int, str] | None = None,
    hausdorff: bool = True,
) -> dict[str, Any]:
    """Dice and HD95 per label and their means.

    Args:
        pred, ref: (z, y, x) integer label maps on the same grid.
        spacing_zyx: voxel size in mm, (z, y, x).
        values: labels to score (default: every non-zero value in either map).
        names: label names for the report.
        hausdorff: also compute HD95 (slower than Dice).

    Returns:
        ``{"labels": [{"value", "name", "dice", "hd95_mm", "ref_voxels", "pred_voxels"}],
        "mean": {"dice", "hd95_mm", "labels", "hd95_missing"}}``. Means run over the labels present
        in the reference; a label missing from the prediction counts Dice 0 and is left out of
        the HD95 mean (counted in ``hd95_missing``). JSON-ready: no NaN or inf (``None`` instead).
    """
    if pred.shape != ref.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {ref.shape}")
    if values is None:
        values = sorted((set(np.unique(pred).tolist()) | set(np.unique(ref).tolist())) - {0})
    names = names or {}
    rows: list[dict[str, Any]] = []
    dices: list[float] = []
    dists: list[float] = []
    missing = 0
    for v in values:
        p, r = pred == v, ref == v
        n_ref, n_pred = int(r.sum()), int(p.sum())
        d = dice(p, r)
        h = hd95(p, r, spacing_zyx) if hausdorff else math.nan
        rows.append({
            "value": int(v),
            "name": names.get(int(v), f"label {v}"),
            "dice": _finite_or_none(d),
            "hd95_mm": _finite_or_none(h) if hausdorff else None,
            "ref_voxels": n_ref,
            "pred_voxels": n_pred,
        })
        if n_ref:
            dices.append(d)
            if hausdorff:
                if math.isfinite(h):
                    dists.append(h)
                else:
                    missing += 1
    mean = {
        "dice": _finite_or_none(float(np.mean(dices))) if dices else None,
        "hd95_mm": _finite_or_none(float(np.mean(dists))) if dists else None,
        "labels": len(dices),
        "hd95_missing": missing,
    }
    return {"labels": rows, "mean": mean}


def evaluate_images(
    pred: sitk.Image,
    ref: sitk.Image,
    *,
    table: LabelTable | None = None,
    hausdorff: bool = True,
    pred_name: str = "prediction",
    ref_name: str = "reference",
) -> dict[str, Any]:
    """:func:`evaluate_arrays` for two label images, which must share one grid."""
    if not same_geometry(pred, ref):
        raise InputError(
            f"{pred_name} and {ref_name} lie on different grids (size {pred.GetSize()} vs {ref.GetSize()}, "
            f"spacing {tuple(round(s, 4) for s in pred.GetSpacing())} vs {tuple(round(s, 4) for s in ref.GetSpacing())}); "
            "resample the prediction onto the reference grid first"
        )
    names = {lab.value: lab.name for lab in table} if table is not None else None
    spacing_zyx = tuple(reversed(ref.GetSpacing()))
    return evaluate_arrays(
        sitk.GetArrayViewFromImage(pred).astype(np.int64, copy=False),
        sitk.GetArrayViewFromImage(ref).astype(np.int64, copy=False),
        spacing_zyx,
        names=names,
        hausdorff=hausdorff,
    )


def evaluate_files(
    pred: str | os.PathLike, ref: str | os.PathLike, *, table: LabelTable | None = None, hausdorff: bool = True
) -> dict[str, Any]:
    """Evaluate two label files (NIfTI/NRRD/.seg.nrrd/MHA). Names come from ``table``, else from a
    .seg.nrrd prediction or reference, else ``label N``."""
    pred, ref = Path(pred), Path(ref)
    if table is None:
        from .segfile import read_label_table

        for path in (pred, ref):
            if path.name.lower().endswith(".seg.nrrd"):
                table = read_label_table(path)
                break
    result = evaluate_images(
        _read_labels(pred), _read_labels(ref), table=table, hausdorff=hausdorff, pred_name=str(pred), ref_name=str(ref)
    )
    return {"pred": str(pred), "ref": str(ref), **result}


def _read_labels(path: Path) -> sitk.Image:
    image = read_image(path, label=True)
    return image


def to_csv(result: dict[str, Any]) -> str:
    """The per-label rows and the mean as CSV text."""
    lines = ["value,name,dice,hd95_mm,ref_voxels,pred_voxels"]

    def fmt(x: Any) -> str:
        return "" if x is None else str(x)

    for row in result["labels"]:
        name = str(row["name"]).replace('"', "'")
        lines.append(",".join([str(row["value"]), f'"{name}"', fmt(row["dice"]), fmt(row["hd95_mm"]),
                               str(row["ref_voxels"]), str(row["pred_voxels"])]))
    mean = result["mean"]
    lines.append(",".join(["mean", '"mean"', fmt(mean["dice"]), fmt(mean["hd95_mm"]), "", ""]))
    return "\n".join(lines) + "\n"

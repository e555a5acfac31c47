"""Array helpers for the panels (numpy only): checkerboard comparison, label maps, metrics text.

Arrays are (z, y, x) as everywhere in GVSL; both inputs of a comparison are on the same grid
(the registration writes the warped volume on the fixed grid).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def normalize_for_display(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Intensities mapped to [0, 1] by percentiles, so two modalities or windows compare fairly."""
    image = np.asarray(image, dtype=np.float32)
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros_like(image)
    lo, hi = np.percentile(finite, [low, high])
    if hi <= lo:
        return np.zeros_like(image)
    return np.clip((image - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32)


def checkerboard(fixed: np.ndarray, warped: np.ndarray, squares: int = 8, in_plane_only: bool = True) -> np.ndarray:
    """Alternating blocks of ``fixed`` and ``warped`` (both normalized to [0, 1]).

    Args:
        fixed, warped: (D, H, W) arrays on the same grid.
        squares: blocks along the longest in-plane axis.
        in_plane_only: alternate in y and x only, so every axial slice shows the pattern.

    Returns:
        (D, H, W) float32 in [0, 1].
    """
    fixed = np.asarray(fixed)
    warped = np.asarray(warped)
    if fixed.shape != warped.shape:
        raise ValueError(f"checkerboard needs arrays on one grid, got {fixed.shape} and {warped.shape}")
    if fixed.ndim != 3:
        raise ValueError(f"checkerboard needs (D, H, W) arrays, got {fixed.ndim} dimensions")
    squares = max(1, int(squares))
    size = max(1, int(np.ceil(max(fixed.shape[1:]) / squares)))
    z, y, x = np.indices(fixed.shape, sparse=True)
    parity = (y // size + x // size)
    if not in_plane_only:
        parity = parity + z // size
    mask = (parity % 2).astype(bool)
    return np.where(mask, normalize_for_display(warped), normalize_for_display(fixed)).astype(np.float32)


def compose_labelmap(masks: dict[int, np.ndarray], shape: tuple[int, ...] | None = None) -> np.ndarray:
    """One label map from binary masks: ``{value: mask}`` -> uint8/uint16 array.

    Where masks overlap, the smaller label value keeps the voxel: annotations rarely overlap, and
    a fixed rule keeps repeated exports identical.
    """
    if not masks:
        if shape is None:
            raise ValueError("no masks and no shape")
        return np.zeros(shape, dtype=np.uint8)
    shapes = {m.shape for m in masks.values()}
    if len(shapes) != 1:
        raise ValueError(f"masks have different shapes: {sorted(shapes)}")
    out_shape = shapes.pop()
    dtype = np.uint8 if max(masks) < 256 else np.uint16
    out = np.zeros(out_shape, dtype=dtype)
    for value in sorted(masks):
        mask = np.asarray(masks[value]).astype(bool)
        out[mask & (out == 0)] = value
    return out


def read_metrics(folder: str | os.PathLike) -> dict[str, Any]:
    """``metrics.json`` of a registration output folder ({} if absent or unreadable)."""
    try:
        data = json.loads(Path(folder, "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def metrics_text(metrics: dict[str, Any]) -> str:
    """'NCC 0.412 -> 0.781, folding 0.02 % of voxels' from registration metrics.

    Accepts gvsl's ``metrics.json`` (``{"ncc": {"before", "after"}, "folding_percent"}``) and the
    flat ``ncc_before`` / ``ncc_after`` form.
    """
    parts = []
    ncc = metrics.get("ncc") if isinstance(metrics.get("ncc"), dict) else {}
    before = ncc.get("before", metrics.get("ncc_before"))
    after = ncc.get("after", metrics.get("ncc_after"))
    if isinstance(before, (int, float)) and isinstance(after, (int, float)):
        parts.append(f"NCC {before:.3f} \u2192 {after:.3f}")
    elif isinstance(after, (int, float)):
        parts.append(f"NCC {after:.3f}")
    folding = metrics.get("folding_percent")
    if isinstance(folding, (int, float)):
        parts.append(f"folding {folding:.3g} % of voxels")
    return ", ".join(parts) if parts else "no metrics"


def jacobian_window(jacobian: np.ndarray) -> tuple[float, float]:
    """Display range centred on 1 (no volume change): symmetric, covering the 1-99 percentiles."""
    jacobian = np.asarray(jacobian, dtype=np.float32)
    finite = jacobian[np.isfinite(jacobian)]
    if finite.size == 0:
        return 0.0, 2.0
    lo, hi = np.percentile(finite, [1, 99])
    half = max(abs(1.0 - float(lo)), abs(float(hi) - 1.0), 0.05)
    return 1.0 - half, 1.0 + half


def volumes_text(volumes_ml: dict[str, Any] | None, limit: int = 8) -> str:
    """'left ventricle 152 ml, myocardium 98.5 ml' from a segmentation's per-label volumes."""
    if not volumes_ml:
        return ""
    parts = [f"{name} {value:.3g} ml" for name, value in list(volumes_ml.items())[:limit]
             if isinstance(value, (int, float))]
    return ", ".join(parts)


def plausibility_lines(result: dict[str, Any] | None) -> list[str]:
    """'right atrium: right atrium volume in 20-250 ml failed (1.5 ml)' for each failed anatomy check
    of a ``gvsl segment`` done event (its ``plausibility`` output); [] when all passed or unchecked."""
    lines = []
    for warning in (result or {}).get("warnings") or []:
        who = ", ".join(warning.get("structures") or []) or "layout"
        detail = warning.get("detail")
        lines.append(f"{who}: {warning.get('check')} failed" + (f" ({detail})" if detail else ""))
    return lines


LOW_CONFIDENCE = 0.7
"""Mean winning probability below which a structure is flagged, when the done event names no
``confidence_threshold`` (gvslcore.segment.LOW_CONFIDENCE; GVSLLib does not import gvslcore)."""


def confidence_lines(outputs: dict[str, Any] | None) -> list[str]:
    """'right atrium: low confidence 0.62 (31 % of its voxels below 0.5)' for each structure of a
    ``gvsl segment`` done event whose ``confidence`` (mean winning probability, 0-1) is below the
    event's ``confidence_threshold``; [] when every structure is above it or nothing was measured."""
    outputs = outputs or {}
    confidence = outputs.get("confidence") if isinstance(outputs.get("confidence"), dict) else {}
    uncertain = outputs.get("uncertain_fraction") if isinstance(outputs.get("uncertain_fraction"), dict) else {}
    threshold = outputs.get("confidence_threshold")
    threshold = float(threshold) if isinstance(threshold, (int, float)) else LOW_CONFIDENCE
    lines = []
    for name, value in confidence.items():
        if isinstance(value, (int, float)) and value < threshold:
            share = uncertain.get(name)
            detail = f" ({100 * share:.0f} % of its voxels below 0.5)" if isinstance(share, (int, float)) and share else ""
            lines.append(f"{name}: low confidence {value:.2f}{detail}")
    return lines


def metrics_warnings(metrics: dict[str, Any]) -> list[str]:
    """The warnings of a registration's ``metrics.json`` (folding, poor similarity, modality), one per line."""
    warnings = metrics.get("warnings")
    return [str(w) for w in warnings if w] if isinstance(warnings, list) else []


def not_a_3d_volume(name: str, dimensions: tuple[int, ...] | None) -> str:
    """Why a volume of these (x, y, z) dimensions cannot be segmented or registered ("" when it can)."""
    if dimensions is None:
        return f"'{name}' has no image data: load or choose a volume."
    if len(dimensions) != 3 or min(dimensions) < 2:
        size = " x ".join(str(d) for d in dimensions)
        return (f"'{name}' is not a 3-D volume (size {size}): GVSL needs at least 2 voxels along each axis. "
                "Choose a 3-D CT or MR volume.")
    return ""

"""The adult heart of a synthetic chest: chambers, myocardium, walls and the roots of the great vessels.

Shapes are defined in a *heart frame*: millimetres, LPS axes (+x patient left, +y posterior,
+z superior), origin at the heart's centre, before the case's rotation and scale. The left
ventricle is a truncated prolate ellipsoid along the long axis ``LONG_AXIS`` (base -> apex: left,
anterior, inferior); the right ventricle is the part of a larger ellipsoid on the septal side
(right and anterior) that lies outside the left ventricle's epicardium -- the crescent seen in a
short-axis view; the atria sit above the base plane (left atrium posterior, right atrium to the
right); the aortic root leaves the left ventricle in the middle of the heart and the pulmonary
trunk leaves the right ventricular outflow tract anterior, left and superior of it.

Cavities that overlap are separated by the surface of equal distance (a septum of wall
thickness), so the chambers abut each other as in a real heart instead of floating in fat.

Typical volumes at scale 1 (the case scale varies them by 0.6-1.8x): LV blood 90-130 ml, RV 90-130,
LA 55-75, RA 60-80, LV myocardium 120-160 ml; the whole heart 500-650 ml.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shapes import FAR, bezier, ellipsoid, frame, tube, unit
from .tissues import Tissue

LONG_AXIS = unit((0.60, -0.50, -0.62))
"""LV long axis, base -> apex (heart frame)."""
SEPTAL = frame(LONG_AXIS, (-0.55, -0.80, 0.25))[0]
"""Unit vector from the LV toward the RV, orthogonal to the long axis (right and anterior)."""
LV_FRAME = np.stack([SEPTAL, np.cross(LONG_AXIS, SEPTAL), LONG_AXIS])
"""Rows (septal, lateral-superior, long axis): the frame of the ventricles."""
BASE = np.array([-8.0, 12.0, 18.0])
"""Centre of the LV base (mitral and aortic annuli), heart frame, mm."""

BOX = ((-95.0, -80.0, -95.0), (95.0, 90.0, 120.0))
"""Heart-frame box (mm) that holds every heart shape with the walls and fat around them."""


@dataclass(frozen=True)
class HeartShape:
    """Per-case shape factors of the heart (dimensionless unless stated)."""

    lv: float = 1.0        # LV cavity size
    rv: float = 1.0
    la: float = 1.0
    ra: float = 1.0
    myo_mm: float = 10.5   # LV wall thickness
    rv_wall_mm: float = 3.5
    atrial_wall_mm: float = 2.5
    aorta: float = 1.0     # aortic radius factor
    pulmonary: float = 1.0
    fat_mm: float = 4.0    # mean epicardial fat thickness
    papillary: float = 1.0  # papillary muscle size (0: none)


def sample_shape(rng: np.random.Generator) -> HeartShape:
    """Random shape factors of one heart (independent of its pose and overall scale)."""
    return HeartShape(
        lv=rng.uniform(0.92, 1.18), rv=rng.uniform(0.9, 1.15), la=rng.uniform(0.9, 1.2), ra=rng.uniform(0.9, 1.2),
        myo_mm=rng.uniform(8.0, 13.5), rv_wall_mm=rng.uniform(2.5, 5.0), atrial_wall_mm=rng.uniform(1.5, 3.0),
        aorta=rng.uniform(0.85, 1.2), pulmonary=rng.uniform(0.85, 1.2), fat_mm=rng.uniform(0.5, 9.0),
        papillary=rng.uniform(0.0, 1.2),
    )


def _lv_coords(h: np.ndarray) -> np.ndarray:
    """Heart-frame points (3, N) in the ventricular frame relative to the base centre (c1, c2, c3)."""
    return LV_FRAME.astype(np.float32) @ (h - BASE.astype(np.float32)[:, None])


def landmarks(shape: HeartShape) -> dict[str, np.ndarray]:
    """Points (heart frame, mm) where the heart joins the vessels of the body, and the valve centres."""
    av = BASE + 14.0 * SEPTAL - 8.0 * LV_FRAME[1] - 4.0 * LONG_AXIS
    ao_dir = unit((-0.25, -0.30, 0.92))
    pv = av + np.array([18.0, -20.0, 14.0]) * (0.5 + 0.5 * shape.rv)
    bifurcation = pv + np.array([10.0, 25.0, 36.0]) * shape.pulmonary
    la_c = np.array([2.0, 38.0, 30.0]) + np.array([0.0, 4.0, 2.0]) * (shape.la - 1.0)
    ra_c = np.array([-42.0, 12.0, 14.0]) + np.array([-6.0, 0.0, 0.0]) * (shape.ra - 1.0)
    return {
        "av": av,
        "ao_root_top": av + 58.0 * ao_dir + np.array([-4.0, 2.0, 0.0]),
        "ao_dir": ao_dir,
        "pv": pv,
        "bifurcation": bifurcation,
        "lpa_end": bifurcation + np.array([28.0, 22.0, -2.0]),
        "rpa_end": bifurcation + np.array([-30.0, 18.0, -6.0]),
        "la": la_c,
        "ra": ra_c,
        "svc": ra_c + np.array([2.0, -4.0, 26.0]) * shape.ra,
        "ivc": ra_c + np.array([6.0, 8.0, -24.0]) * shape.ra,
        "pulmonary_veins": np.array([la_c + (sx * 25.0 * shape.la, 7.0, sz * 9.0) for sx in (-1.0, 1.0) for sz in (1.0, -1.0)]),
    }


def cavity_distances(h: np.ndarray, shape: HeartShape) -> dict[str, np.ndarray]:
    """Signed distances (mm, heart frame, unit scale) of the heart's shapes at points ``h`` (3, N).

    Keys: ``lv_epi``, ``lv``, ``rv``, ``la``, ``ra``, ``ao``, ``pa`` and ``papillary``; ``base``
    is the height above the LV base plane (mm, positive toward the atria).
    """
    c = _lv_coords(h)
    base = -c[2]  # > 0 above the base plane
    lm = landmarks(shape)
    a = 23.0 * shape.lv
    lv_center = BASE + (36.0 * shape.lv) * LONG_AXIS
    outer = a + shape.myo_mm
    epi = ellipsoid(h, BASE + (34.0 * shape.lv) * LONG_AXIS, (outer, outer, 40.0 * shape.lv + shape.myo_mm + 1.0), LV_FRAME)
    lv = np.maximum(ellipsoid(h, lv_center, (a, a, 40.0 * shape.lv), LV_FRAME), base)
    lvot = tube(h, np.array([lv_center - 8.0 * LONG_AXIS + 4.0 * SEPTAL, lm["av"]]), 10.0 * shape.aorta)
    rv_ell = ellipsoid(h, BASE + 26.0 * shape.rv * SEPTAL + 30.0 * LONG_AXIS, (21.0 * shape.rv, 40.0 * shape.rv, 44.0 * shape.rv), LV_FRAME)
    rvot_start = BASE + 28.0 * shape.rv * SEPTAL + 12.0 * LONG_AXIS - 12.0 * LV_FRAME[1]
    rvot = tube(h, bezier([rvot_start, rvot_start + 0.5 * (lm["pv"] - rvot_start) - 4.0 * SEPTAL, lm["pv"]], 6), 12.5 * shape.rv)
    rv = np.minimum(np.maximum(rv_ell, base - 6.0), rvot)
    ao_path = bezier([lm["av"], lm["av"] + 30.0 * lm["ao_dir"], lm["ao_root_top"]], 8)
    sinus = ellipsoid(h, lm["av"] + 10.0 * lm["ao_dir"], (16.0 * shape.aorta,) * 2 + (13.0 * shape.aorta,), frame(lm["ao_dir"]))
    ao = np.minimum(tube(h, ao_path, (13.5 * shape.aorta, 14.5 * shape.aorta)), sinus)
    pa = np.minimum.reduce([
        tube(h, np.array([lm["pv"], lm["bifurcation"]]), 13.0 * shape.pulmonary),
        tube(h, np.array([lm["bifurcation"], lm["lpa_end"]]), 10.5 * shape.pulmonary),
        tube(h, np.array([lm["bifurcation"], lm["rpa_end"]]), 10.0 * shape.pulmonary),
    ])
    la = ellipsoid(h, lm["la"], (32.0 * shape.la, 20.0 * shape.la, 24.0 * shape.la), frame((0.2, 0.3, 1.0), (1.0, 0.0, 0.0)))
    ra = ellipsoid(h, lm["ra"], (22.0 * shape.ra, 25.0 * shape.ra, 30.0 * shape.ra), frame((0.1, 0.2, 1.0), (1.0, 0.0, 0.0)))
    pap = np.full(h.shape[1], FAR, dtype=np.float32)
    if shape.papillary > 0.2:
        for side in (-1.0, 1.0):  # anterolateral and posteromedial muscles, off the free wall
            at = lv_center + 12.0 * LONG_AXIS + 0.55 * a * (side * 0.7 * SEPTAL - LV_FRAME[1])
            pap = np.minimum(pap, ellipsoid(h, at, (5.0 * shape.papillary, 5.0 * shape.papillary, 14.0 * shape.papillary), LV_FRAME))
    return {"lv_epi": np.maximum(epi, base), "lv": np.minimum(lv, lvot), "rv": rv, "la": la, "ra": ra, "ao": ao, "pa": pa,
            "papillary": np.maximum(pap, lv), "base": base}


# Blood-pool tissues, their wall tissue and wall thickness attribute, in the order of `paint_heart`.
_CHAMBERS = (
    ("rv", Tissue.RV, Tissue.HEART_WALL, "rv_wall_mm"),
    ("la", Tissue.LA, Tissue.HEART_WALL, "atrial_wall_mm"),
    ("ra", Tissue.RA, Tissue.HEART_WALL, "atrial_wall_mm"),
    ("ao", Tissue.AO, Tissue.SOFT, None),
    ("pa", Tissue.PA, Tissue.SOFT, None),
)
_VESSEL_WALL_MM = 1.8


def heart_tissues(d: dict[str, np.ndarray], shape: HeartShape, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Tissue values (uint8, 255 = not heart) and the distance (mm, true scale) to the heart's outer
    surface (walls included) at the points of ``d`` (:func:`cavity_distances`)."""
    n = d["lv"].shape[0]
    out = np.full(n, 255, dtype=np.uint8)
    inner = np.stack([d[key] for key, *_ in _CHAMBERS]) * np.float32(scale)  # (5, N) mm
    walls = np.array([getattr(shape, w) if w else _VESSEL_WALL_MM for *_, w in _CHAMBERS], dtype=np.float32)[:, None]
    # Outside the left ventricle's epicardium, overlapping cavities split at their equal-distance surface.
    order = np.argsort(inner, axis=0)
    first = np.take_along_axis(inner, order[:1], 0)[0]
    second = np.take_along_axis(inner, order[1:2], 0)[0]
    owner = order[0]
    wall_of_owner = walls[owner, 0]
    in_cavity = first < 0
    septum = in_cavity & (second < 0) & (second - first < np.minimum(wall_of_owner, walls[order[1], 0]) * 1.2)
    tissues = np.array([t for _, t, _, _ in _CHAMBERS], dtype=np.uint8)
    wall_tissues = np.array([w for _, _, w, _ in _CHAMBERS], dtype=np.uint8)
    out[in_cavity] = tissues[owner[in_cavity]]
    out[septum] = wall_tissues[owner[septum]]
    shell = ~in_cavity & ((inner - walls) < 0).any(axis=0)
    shell_owner = np.argmin(inner - walls, axis=0)
    out[shell] = wall_tissues[shell_owner[shell]]
    # The left ventricle comes first: its wall is the septum the right ventricle wraps around.
    epi = d["lv_epi"] * np.float32(scale)
    inside_epi = epi < 0
    out[inside_epi] = Tissue.MYO
    out[inside_epi & (d["lv"] < 0)] = Tissue.LV
    out[inside_epi & (d["papillary"] < 0)] = Tissue.PAPILLARY
    lvot = (d["lv"] < 0) & ~inside_epi & (d["base"] < 4.0)  # up to the aortic valve
    out[lvot] = Tissue.LV
    outer = np.minimum(epi, (inner - walls).min(axis=0))
    return out, outer

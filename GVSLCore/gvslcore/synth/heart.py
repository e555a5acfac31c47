"""The adult heart of a synthetic chest: chambers, myocardium, valve planes, appendages and the
roots of the great vessels and veins.

Shapes are defined in a *heart frame*: millimetres, LPS axes (+x patient left, +y posterior,
+z superior), origin at the heart's centre, before the case's rotation and scale.

- Left ventricle: a bullet along ``LONG_AXIS`` (base -> apex: left, anterior, inferior): round in
  short axis, nearly cylindrical over its basal half, an ellipsoidal apex, truncated at the base
  plane; the myocardium is the same bullet grown by the wall thickness (thinner at the apex).
- Right ventricle: the part of a tapered ellipsoid on the septal side (right, anterior) that lies
  outside the LV epicardium -- a crescent wrapping the septum in short axis, triangular in the long
  axis (widest at the tricuspid annulus, not reaching the apex); the outflow tract (infundibulum)
  rises anterior-left of the aortic root to the pulmonary valve.
- Atria above the AV groove: the left atrium wider than tall, the most posterior chamber, with four
  pulmonary veins entering its posterolateral wall and the appendage curling from its
  left-anterior-superior aspect over the LV base along the left of the pulmonary trunk; the right
  atrium the rightmost chamber, with its broad appendage toward the aortic root, the superior vena
  cava entering its roof and the inferior vena cava its floor, and the coronary sinus, which runs in
  the posterior AV groove, entering between the IVC and the tricuspid valve.
- Valves are planes: mitral (LA above, LV below) and tricuspid (RA / RV) discs in the AV junction;
  outside their orifices the junction is an AV groove (myocardium, atrial wall, fat). The aortic
  valve plane separates the LV outflow tract from the aortic root (three sinuses of Valsalva), the
  pulmonary valve plane the RV outflow tract from the pulmonary trunk.

Label extents (heart labels 1-7 of :data:`gvslcore.labels.HEART_LABELS`):

- LV blood pool (1): apex to the mitral valve plane and up to the aortic valve plane (LVOT
  included), papillary muscles included.
- RV (2): apex to the tricuspid valve plane and up to the pulmonary valve plane (infundibulum
  included).
- LA (3): to the mitral valve plane, the appendage included, up to the pulmonary veins' ostia (the LA
  wall's surface); the veins beyond are tissue PULMONARY_VEIN.
- RA (4): to the tricuspid valve plane, the appendage included, up to the ostia of both venae cavae
  and of the coronary sinus (the RA wall's surface); beyond: tissues SVC, IVC, CORONARY_SINUS.
- LV myocardium (5): the LV wall and the septum, up to the base plane.
- Ascending aorta (6): from the aortic valve plane (sinuses included) to the start of the arch, just
  below the brachiocephalic trunk (``ao_root_top``); the arch, its branches and the descending aorta
  are tissue ARTERY.
- Pulmonary artery (7): from the pulmonary valve plane through the bifurcation to
  :data:`PA_BRANCH_MM` along each branch; the branches beyond are tissue PULMONARY_BRANCH.

Chamber sizes are fitted per case (:func:`fit_volumes`) to volumes drawn from adult diastolic CTA
ranges (:func:`sample_volumes`), so every case is physiological whatever its shape factors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .shapes import FAR, bezier, ellipsoid, frame, in_box, tube, unit
from .tissues import Tissue

LONG_AXIS = unit((0.70, -0.45, -0.50))
"""LV long axis, base -> apex (heart frame)."""
SEPTAL = frame(LONG_AXIS, (-0.55, -0.80, 0.25))[0]
"""Unit vector from the LV toward the RV, orthogonal to the long axis (right and anterior)."""
LV_FRAME = np.stack([SEPTAL, np.cross(LONG_AXIS, SEPTAL), LONG_AXIS])
"""Rows (septal, inferior, long axis): the frame of the ventricles."""
INFERIOR = LV_FRAME[1]
"""Toward the LV's inferior (diaphragmatic) wall, orthogonal to the long axis (right, posterior, down)."""
BASE = np.array([-8.0, 12.0, 18.0])
"""Centre of the LV base (mitral and aortic annuli), heart frame, mm."""
TV_NORMAL = unit((-0.70, 0.62, 0.35))
"""Normal of the tricuspid valve plane, RV -> RA (right, posterior, superior)."""
PA_BRANCH_MM = 25.0
"""How far along each pulmonary branch, from the bifurcation, the pulmonary artery label reaches."""

BOX = ((-125.0, -110.0, -125.0), (120.0, 110.0, 140.0))
"""Heart-frame box (mm) searched for a case's heart; each case's own box is tighter (HeartShape.box)."""

_GROOVE_MM = 5.0   # depth of the AV groove outside the valve orifices (myocardial cap + fat + atrial wall)
_VESSEL_WALL_MM = 1.8
_VEIN_WALL_MM = 1.3


@dataclass(frozen=True)
class HeartShape:
    """Per-case shape factors of the heart (dimensionless unless stated; walls in true mm)."""

    lv: float = 1.0        # LV cavity size (linear)
    rv: float = 1.0
    la: float = 1.0
    ra: float = 1.0
    myo_mm: float = 10.0   # LV wall thickness
    rv_wall_mm: float = 4.0
    atrial_wall_mm: float = 2.2
    aorta: float = 1.0     # aortic radius factor
    pulmonary: float = 1.0
    fat_mm: float = 4.0    # mean epicardial fat thickness
    papillary: float = 1.0  # papillary muscle size (0: none)
    appendage: float = 1.0  # left atrial appendage length factor
    veins: float = 1.0     # caval, pulmonary-vein and coronary-sinus radius factor
    scale: float = 1.0     # heart frame -> true mm (the case's heart scale), so walls stay in true mm
    box: tuple[tuple[float, float, float], tuple[float, float, float]] = BOX  # heart-frame box of this heart


def sample_shape(rng: np.random.Generator) -> HeartShape:
    """Random shape factors of one heart (independent of its pose; sizes are fitted later)."""
    return HeartShape(
        lv=rng.uniform(0.92, 1.08), rv=rng.uniform(0.92, 1.08), la=rng.uniform(0.92, 1.08), ra=rng.uniform(0.92, 1.08),
        myo_mm=rng.uniform(8.0, 12.0), rv_wall_mm=rng.uniform(3.0, 5.0), atrial_wall_mm=rng.uniform(1.8, 3.0),
        aorta=rng.uniform(0.85, 1.2), pulmonary=rng.uniform(0.85, 1.2), fat_mm=rng.uniform(0.5, 7.0),
        papillary=rng.uniform(0.0, 1.2), appendage=rng.uniform(0.8, 1.25), veins=rng.uniform(0.85, 1.2),
    )


VOLUME_RANGES_ML = {"lv": (95.0, 210.0), "rv": (95.0, 220.0), "la": (55.0, 120.0), "ra": (55.0, 130.0)}
"""Where :func:`sample_volumes` draws the chambers' blood volumes (adult diastolic CTA, inside the
physiological ranges LV 90-220, RV 90-230, LA 50-130, RA 50-140 ml, with a margin for the fit)."""


MYO_RANGE_ML = (85.0, 190.0)
"""Where :func:`fit_volumes` keeps the LV myocardium (adult 80-200 ml), by adjusting the wall."""


def sample_volumes(rng: np.random.Generator) -> dict[str, float]:
    """Target blood volumes (ml) of one heart: a shared body size plus each chamber's own spread."""
    size = rng.uniform()
    out = {}
    for key, (lo, hi) in VOLUME_RANGES_ML.items():
        u = np.clip(0.6 * size + 0.4 * rng.uniform() + rng.normal(0.0, 0.08), 0.0, 1.0)
        out[key] = float(lo + (hi - lo) * u)
    return out


def _lv_coords(h: np.ndarray) -> np.ndarray:
    """Heart-frame points (3, N) in the ventricular frame relative to the base centre (c1, c2, c3)."""
    return LV_FRAME.astype(np.float32) @ (h - BASE.astype(np.float32)[:, None])


def _ellipsoid_q(q1, q2, q3, a1, a2, a3) -> np.ndarray:
    """:func:`~gvslcore.synth.shapes.ellipsoid` of local coordinates with per-point semi-axes."""
    x1, x2, x3 = q1 / a1, q2 / a2, q3 / a3
    k0 = np.sqrt(x1 * x1 + x2 * x2 + x3 * x3)
    k1 = np.sqrt((x1 / a1) ** 2 + (x2 / a2) ** 2 + (x3 / a3) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _bullet(c: np.ndarray, radius: float, base_cap: float, base_len: float, cyl_end: float, apex_len: float) -> np.ndarray:
    """A round bullet along c3 (LV coordinates): an ellipsoidal cap toward the base (semi-axis
    ``base_cap``, from c3 = ``base_len`` down), a cylinder of ``radius`` to c3 = ``cyl_end``, an
    ellipsoidal apex of semi-axis ``apex_len``. Exact distance along the cylinder."""
    c3 = c[2]
    below = c3 < base_len
    above = c3 > cyl_end
    z = np.where(below, c3 - base_len, np.where(above, c3 - cyl_end, 0.0)).astype(np.float32)
    a3 = np.where(below, base_cap, apex_len).astype(np.float32)
    return _ellipsoid_q(c[0], c[1], z, radius, radius, a3)


_CULL_MM = 32.0  # distances are exact enough this far out of a shape (epicardial fat <= 22 mm); FAR beyond


def _cull(p: np.ndarray, lo, hi, fn) -> np.ndarray:
    """``fn`` evaluated only at the points (3, N) inside the box [lo, hi] grown by :data:`_CULL_MM`."""
    out = np.full(p.shape[1], FAR, dtype=np.float32)
    idx = in_box(p, np.asarray(lo) - _CULL_MM, np.asarray(hi) + _CULL_MM)
    if idx.size:
        out[idx] = fn(np.ascontiguousarray(p[:, idx]))
    return out


def _ell(h: np.ndarray, center, axes, rows=None) -> np.ndarray:
    """An ellipsoid (:func:`~gvslcore.synth.shapes.ellipsoid`), evaluated near its bounding sphere only."""
    c = np.asarray(center, dtype=np.float64)
    r = float(np.max(axes))
    return _cull(h, c - r, c + r, lambda q: ellipsoid(q, c, axes, rows))


def _gap(rho: np.ndarray, radius: float) -> np.ndarray:
    """The AV groove's depth (mm) at radial distance ``rho`` from a valve's axis: 0 inside the orifice
    of ``radius``, rising over 4 mm to the full groove outside it."""
    return _GROOVE_MM * np.clip((rho - radius) / 4.0, 0.0, 1.0)


def _radial(h: np.ndarray, centre: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(signed height along ``normal``, distance from the axis) of points ``h`` about a valve."""
    d = h - centre.astype(np.float32)[:, None]
    s = normal.astype(np.float32) @ d
    rho = np.sqrt(np.maximum((d * d).sum(0) - s * s, 0.0))
    return s, rho


def _open_tube(h: np.ndarray, path: np.ndarray, radius, extend: float = 8.0):
    """(cavity, wall distance) of a vessel stump that continues outside the heart: the cavity ends
    flat at the path's last point; the wall distance is that of the same vessel extended by
    ``extend`` mm, so that no wall closes its open end (the chest paints the vessel beyond)."""
    path = np.asarray(path, dtype=np.float64)
    t = unit(path[-1] - path[-2])
    r1 = float(radius if np.ndim(radius) == 0 else radius[1])
    cavity = tube(h, path, radius)
    wall = np.minimum(cavity, tube(h, np.array([path[-1], path[-1] + extend * t]), r1))
    end = t.astype(np.float32) @ (h - path[-1].astype(np.float32)[:, None])
    return np.maximum(cavity, end), wall


def landmarks(shape: HeartShape) -> dict[str, np.ndarray]:
    """Points (heart frame, mm) where the heart joins the vessels of the body, the valve centres and
    the centre lines of the heart's own vessels."""
    av = BASE + 14.0 * SEPTAL - 8.0 * INFERIOR - 4.0 * LONG_AXIS
    ao_dir = unit((-0.18, -0.25, 0.95))
    pv = av + np.array([18.0, -20.0, 14.0]) * (0.5 + 0.5 * shape.rv)
    bifurcation = pv + np.array([10.0, 25.0, 36.0]) * shape.pulmonary
    mv = BASE - 7.0 * SEPTAL + 3.0 * INFERIOR
    tv = BASE + (22.0 * shape.rv) * SEPTAL + 6.0 * LONG_AXIS + 10.0 * INFERIOR
    ra_c = tv + (21.0 * shape.ra) * TV_NORMAL + np.array([-7.0, -5.0, 0.0]) * shape.ra  # the right heart border
    # The LA sits on the mitral valve: its floor dips below the base plane over the orifice.
    la_c = mv + (17.0 * shape.la) * -LONG_AXIS + np.array([8.0, 10.0, -2.0]) * shape.la
    la_rows = frame((0.2, 0.3, 1.0), (1.0, 0.0, 0.0))
    la_axes = np.array([33.0, 21.0, 24.0]) * shape.la
    veins = []
    for sx in (-1.0, 1.0):  # right, left
        for sz in (1.0, -1.0):  # superior, inferior
            ostium = la_c + la_rows.T @ (np.array([sx * 0.8, 0.5, sz * 0.42]) * la_axes)
            direction = unit((sx * 1.0, 0.6, sz * 0.45))
            veins.append((la_c + 0.6 * (ostium - la_c), ostium + 22.0 * direction))
    # The appendage: from the LA's left-superior edge (in front of the left superior pulmonary
    # vein) forward along the left of the pulmonary trunk, over the LV's anterolateral base,
    # tapering to its tip.
    k = shape.appendage * shape.la
    first = la_c + np.array([26.0, -4.0, 12.0]) * shape.la
    laa = [la_c + 0.4 * (first - la_c), first, first + np.array([14.0, -14.0, 8.0]) * k, first + np.array([10.0, -28.0, 8.0]) * k]
    # The coronary sinus: in the posterior AV groove, from the lateral wall around the inferior
    # wall to the RA's floor, between the IVC and the tricuspid valve.
    rho = 24.0 * shape.lv + shape.myo_mm / shape.scale + 7.0
    arc = [BASE + rho * (np.cos(t) * SEPTAL + np.sin(t) * INFERIOR) + 1.0 * -LONG_AXIS for t in np.deg2rad(np.arange(200.0, 95.0, -15.0))]
    cs = np.array([*arc, ra_c + np.array([8.0, 0.0, -10.0]) * shape.ra])
    return {
        "av": av,
        "ao_root_top": av + 58.0 * ao_dir,
        "ao_dir": ao_dir,
        "pv": pv,
        "bifurcation": bifurcation,
        "lpa_end": bifurcation + PA_BRANCH_MM * unit((28.0, 22.0, -2.0)),
        "rpa_end": bifurcation + PA_BRANCH_MM * unit((-26.0, 24.0, -6.0)),
        "mv": mv,
        "tv": tv,
        "la": la_c,
        "la_rows": la_rows,
        "la_axes": la_axes,
        "ra": ra_c,
        "svc_ostium": ra_c + np.array([-3.0, 5.0, 14.0]) * shape.ra,
        "svc": ra_c + np.array([-10.0, 2.0, 30.0 * shape.ra + 34.0]),
        "ivc_ostium": ra_c + np.array([-4.0, 10.0, -12.0]) * shape.ra,
        "ivc": ra_c + np.array([2.0, 18.0, -30.0 * shape.ra - 24.0]),
        "pulmonary_vein_paths": np.array(veins),
        "pulmonary_veins": np.array([end for _, end in veins]),
        "laa": bezier(laa, 8),
        "cs": cs,
    }


def chamber_centres(shape: HeartShape) -> dict[str, np.ndarray]:
    """Approximate centres (heart frame, mm) of the four blood pools."""
    lm = landmarks(shape)
    return {"lv": BASE + 40.0 * shape.lv * LONG_AXIS, "rv": BASE + 24.0 * shape.rv * SEPTAL + 26.0 * shape.rv * LONG_AXIS,
            "la": lm["la"], "ra": lm["ra"]}


def cavity_distances(h: np.ndarray, shape: HeartShape) -> dict[str, np.ndarray]:
    """Signed distances (mm, heart frame, unit scale) of the heart's shapes at points ``h`` (3, N).

    Keys: ``lv_epi``, ``lv``, ``papillary``, the cavities of :data:`_CAVITIES` (and ``KEY_wall`` for
    those whose wall distance differs from the cavity's), ``base`` (the height above the LV base
    plane, mm, positive toward the atria).
    """
    c = _lv_coords(h)
    base = -c[2]  # > 0 above the base plane
    lm = landmarks(shape)
    n = h.shape[1]
    w = shape.myo_mm / shape.scale  # LV wall in heart-frame mm
    # Vessel calibres are adult sizes in true mm, whatever the heart's scale.
    ao_r, pa_r, vein_r = shape.aorta / shape.scale, shape.pulmonary / shape.scale, shape.veins / shape.scale
    r = 24.0 * shape.lv
    lv_dims = (r, 28.0 * shape.lv, 12.0 * shape.lv, 34.0 * shape.lv, 50.0 * shape.lv)
    reach = r + w
    lv_lo, lv_hi = (-reach, -reach, -lv_dims[1] - w), (reach, reach, lv_dims[3] + lv_dims[4] + w)
    epi_dims = (r + w, lv_dims[1] + w, lv_dims[2], lv_dims[3], lv_dims[4] + 0.75 * w)  # the apex wall is thinner
    epi = np.maximum(_cull(c, lv_lo, lv_hi, lambda q: _bullet(q, *epi_dims)), base)
    mv_c = _lv_coords(lm["mv"][:, None])[:, 0]
    g_mv = _gap(np.hypot(c[0] - mv_c[0], c[1] - mv_c[1]), 15.0 * np.sqrt(shape.lv))
    lv = np.maximum(_cull(c, lv_lo, lv_hi, lambda q: _bullet(q, *lv_dims)), g_mv + base)
    # Outflow tracts and the valve planes at their ends.
    lv_mid = BASE + 40.0 * shape.lv * LONG_AXIS
    av_plane = lm["ao_dir"].astype(np.float32) @ (h - lm["av"].astype(np.float32)[:, None])  # > 0: aorta
    lvot_tube = tube(h, np.array([lv_mid - 14.0 * LONG_AXIS + 6.0 * SEPTAL, lm["av"]]), 11.0 * ao_r)
    lvot = np.maximum(lvot_tube, av_plane)
    # Other chambers keep off the outflow tract where it leaves the LV (its wall lies between).
    keep_off = 2.5 - lvot_tube
    ao_rows = frame(lm["ao_dir"], (0.0, -1.0, 0.0))
    sinuses = [_ell(h, lm["av"] + 9.0 * lm["ao_dir"] + 7.0 * ao_r * (np.cos(a) * ao_rows[0] + np.sin(a) * ao_rows[1]),
                         (10.5 * ao_r,) * 2 + (11.0 * ao_r,), ao_rows)
               for a in np.deg2rad((0.0, 120.0, 240.0))]  # right coronary (anterior), left, non-coronary sinus
    ao_path = bezier([lm["av"], lm["av"] + 30.0 * lm["ao_dir"], lm["ao_root_top"]], 8)
    ao_tube, ao_wall = _open_tube(h, ao_path, (12.0 * ao_r, 14.5 * ao_r))
    ao = np.maximum(np.minimum.reduce([ao_tube, *sinuses]), -av_plane)
    ao_wall = np.maximum(np.minimum.reduce([ao_wall, *sinuses]), -av_plane)
    # Right ventricle: a tapered ellipsoid on the septal side, closed at the tricuspid plane.
    s_tv, rho_tv = _radial(h, lm["tv"], TV_NORMAL)
    g_tv = _gap(rho_tv, 16.0 * np.sqrt(shape.rv))
    rv_axes = np.array([30.0, 44.0, 46.0]) * shape.rv
    centre3 = 28.0 * shape.rv
    rv_c = np.array([20.0 * shape.rv, 2.0, centre3])
    rv_half = rv_axes * np.array([1.35, 1.35, 1.0])

    def rv_shape(q: np.ndarray) -> np.ndarray:
        taper = np.clip(1.0 - 0.38 * (q[2] - centre3) / rv_axes[2], 0.45, 1.35).astype(np.float32)
        return _ellipsoid_q(q[0] - rv_c[0], q[1] - rv_c[1], q[2] - rv_c[2], rv_axes[0] * taper, rv_axes[1] * taper, rv_axes[2])

    rv_body = _cull(c, rv_c - rv_half, rv_c + rv_half, rv_shape)
    rv_body = np.maximum(rv_body, s_tv + g_tv)
    pv_dir = unit(lm["bifurcation"] - lm["pv"])
    pv_plane = pv_dir.astype(np.float32) @ (h - lm["pv"].astype(np.float32)[:, None])  # > 0: pulmonary artery
    rvot_start = BASE + 36.0 * shape.rv * SEPTAL + 16.0 * LONG_AXIS - 16.0 * INFERIOR
    rvot_path = bezier([rvot_start, 0.5 * (rvot_start + lm["pv"]) - 3.0 * SEPTAL, lm["pv"] - 8.0 * pv_dir, lm["pv"]], 6)
    rvot = np.maximum(tube(h, rvot_path, (14.0 * shape.rv, 12.5 * pa_r)), pv_plane)
    rv = np.maximum.reduce([np.minimum(rv_body, rvot), keep_off, pv_plane])
    pa_parts = [_open_tube(h, np.array([lm["bifurcation"], end]), 10.0 * pa_r) for end in (lm["lpa_end"], lm["rpa_end"])]
    trunk = np.minimum(tube(h, np.array([lm["pv"] - 6.0 * pv_dir, lm["bifurcation"]]), 13.0 * pa_r),
                       _ell(h, lm["pv"] + 8.0 * pv_dir, (15.0 * pa_r,) * 2 + (10.0 * pa_r,), frame(pv_dir)))
    pa = np.maximum(np.minimum.reduce([trunk] + [p[0] for p in pa_parts]), -pv_plane)
    pa_wall = np.maximum(np.minimum.reduce([trunk] + [p[1] for p in pa_parts]), -pv_plane)
    # Atria, their appendages and veins.
    la_body = _ell(h, lm["la"], lm["la_axes"], lm["la_rows"])
    laa = tube(h, lm["laa"], (10.0 * shape.la, 4.0 * shape.la))
    la = np.maximum(np.minimum(np.maximum(la_body, g_mv - base), laa), keep_off)
    ra_body = _ell(h, lm["ra"], np.array([22.0, 24.0, 30.0]) * shape.ra, frame((0.1, 0.2, 1.0), (1.0, 0.0, 0.0)))
    raa = _ell(h, lm["ra"] + np.array([12.0, -24.0, 14.0]) * shape.ra, np.array([16.0, 10.0, 11.0]) * shape.ra,
                    frame((0.35, -0.85, 0.4), (0.0, 0.0, 1.0)))
    # ... and the RA keeps off the mitral orifice (the interatrial septum lies between them).
    mv_keep_off = 15.0 * np.sqrt(shape.lv) + 3.0 - np.hypot(c[0] - mv_c[0], c[1] - mv_c[1])
    ra = np.maximum.reduce([np.minimum(ra_body, raa), g_tv - s_tv, keep_off, mv_keep_off])
    v = vein_r
    pvs = np.full(n, FAR, dtype=np.float32)
    pvs_wall = np.full(n, FAR, dtype=np.float32)
    for start, end in lm["pulmonary_vein_paths"]:
        cav, wall = _open_tube(h, np.array([start, end]), 7.5 * v * np.sqrt(shape.la))
        np.minimum(pvs, cav, out=pvs)
        np.minimum(pvs_wall, wall, out=pvs_wall)
    svc, svc_wall = _open_tube(h, bezier([lm["svc_ostium"], lm["svc_ostium"] + (-3.0, -1.0, 20.0), lm["svc"]], 4), 10.0 * v)
    ivc, ivc_wall = _open_tube(h, bezier([lm["ivc_ostium"], lm["ivc_ostium"] + (3.0, 4.0, -20.0), lm["ivc"]], 4), 12.0 * v)
    cs = tube(h, lm["cs"], (3.5 * v, 6.0 * v))
    # Veins end where they enter their atrium: the ostium is the atrium's surface.
    pap = np.full(n, FAR, dtype=np.float32)
    if shape.papillary > 0.2:
        for side in (-1.0, 1.0):  # anterolateral and posteromedial muscles, off the free wall
            at = BASE + 50.0 * shape.lv * LONG_AXIS + 0.55 * r * (-0.6 * SEPTAL + side * 0.75 * INFERIOR)
            pap = np.minimum(pap, _ell(h, at, (5.0 * shape.papillary, 5.0 * shape.papillary, 14.0 * shape.papillary), LV_FRAME))
    return {
        "lv_epi": epi, "lv": np.minimum(lv, lvot), "papillary": np.maximum(pap, lv), "base": base,
        "rv": rv, "pa": pa, "pa_wall": pa_wall, "la": la, "pvs": np.maximum(pvs, -la), "pvs_wall": np.maximum(pvs_wall, -la),
        "ra": ra, "svc": np.maximum(svc, -ra), "svc_wall": np.maximum(svc_wall, -ra), "ivc": np.maximum(ivc, -ra),
        "ivc_wall": np.maximum(ivc_wall, -ra), "cs": np.maximum(cs, -ra), "ao": ao, "ao_wall": ao_wall, "lvot": lvot,
    }


# Cavities: (key, blood tissue, wall tissue, wall thickness attribute of HeartShape or mm). Cavities
# that touch (valve planes, ostia) meet without a wall; those that overlap split at their
# equal-distance surface with a septum; the LV and its myocardium are painted over all of them.
_CAVITIES = (
    ("rv", Tissue.RV, Tissue.HEART_WALL, "rv_wall_mm"),
    ("pa", Tissue.PA, Tissue.SOFT, _VESSEL_WALL_MM),
    ("la", Tissue.LA, Tissue.HEART_WALL, "atrial_wall_mm"),
    ("pvs", Tissue.PULMONARY_VEIN, Tissue.SOFT, _VEIN_WALL_MM),
    ("ra", Tissue.RA, Tissue.HEART_WALL, "atrial_wall_mm"),
    ("svc", Tissue.SVC, Tissue.SOFT, _VEIN_WALL_MM),
    ("ivc", Tissue.IVC, Tissue.SOFT, _VEIN_WALL_MM),
    ("cs", Tissue.CORONARY_SINUS, Tissue.SOFT, _VEIN_WALL_MM),
    ("ao", Tissue.AO, Tissue.SOFT, _VESSEL_WALL_MM),
    ("lvot", Tissue.LV, Tissue.HEART_WALL, 2.0),
)


_PAIRS_OPEN = (("ra", "rv"), ("ra", "svc"), ("ra", "ivc"), ("ra", "cs"), ("la", "pvs"), ("rv", "pa"), ("lvot", "ao"))
"""Cavities open to each other (valves, ostia): no wall between them where they touch."""
_OPEN = np.eye(len(_CAVITIES), dtype=bool)
for _a, _b in _PAIRS_OPEN:
    _i, _j = (next(k for k, c in enumerate(_CAVITIES) if c[0] == key) for key in (_a, _b))
    _OPEN[_i, _j] = _OPEN[_j, _i] = True


def heart_tissues(d: dict[str, np.ndarray], shape: HeartShape, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Tissue values (uint8, 255 = not heart) and the distance (mm, true scale) to the heart's outer
    surface (walls included) at the points of ``d`` (:func:`cavity_distances`)."""
    n = d["lv"].shape[0]
    out = np.full(n, 255, dtype=np.uint8)
    s = np.float32(scale)
    walls = np.array([getattr(shape, w) if isinstance(w, str) else w for *_, w in _CAVITIES], dtype=np.float32)
    tissues = np.array([t for _, t, _, _ in _CAVITIES], dtype=np.uint8)
    wall_tissues = np.array([w for _, _, w, _ in _CAVITIES], dtype=np.uint8)
    epi = d["lv_epi"] * s
    outer = epi.copy()
    for (key, *_), wall in zip(_CAVITIES, walls):
        np.minimum(outer, d[key] * s - wall, out=outer)
    # Only points near some cavity can be anything but "not heart" (open vessel ends: a little farther).
    near = np.flatnonzero(outer < 8.0)
    inner = np.stack([d[key][near] for key, *_ in _CAVITIES]) * s  # (K, M) true mm
    wall_d = np.stack([d.get(key + "_wall", d[key])[near] for key, *_ in _CAVITIES]) * s
    sub = inner
    owner = np.argmin(sub, axis=0)
    cols = np.arange(near.size)
    first = sub[owner, cols]
    rest = sub.copy()
    rest[owner, cols] = FAR
    second_owner = np.argmin(rest, axis=0)
    second = rest[second_owner, cols]
    in_cavity = first < 0
    # Overlapping cavities split at their equal-distance surface, a septum of wall thickness (the
    # difference of the two distances grows by about 2 per mm across it).
    septum = in_cavity & (second < 0) & (second - first < np.minimum(walls[owner], walls[second_owner]) * 2.0)
    values = np.full(near.size, 255, dtype=np.uint8)
    values[in_cavity] = tissues[owner[in_cavity]]
    values[septum] = wall_tissues[owner[septum]]
    # Walls: within a wall's thickness of a cavity, outside it (open vessel ends have no wall) --
    # also inside a neighbouring cavity that merely touches it, unless the two are open to each
    # other (a valve or an ostium): touching chambers get a wall between them.
    wsub = wall_d
    in_wall = (wsub >= 0) & (wsub < walls[:, None])
    in_wall &= ~((wsub < 0) & ~in_cavity[None]).any(axis=0)[None]
    in_wall[:, in_cavity] &= ~_OPEN[owner[in_cavity]].T
    shell = in_wall.any(axis=0) & ~septum
    shell_owner = np.argmin(np.where(in_wall, wsub - walls[:, None], FAR), axis=0)
    values[shell] = wall_tissues[shell_owner[shell]]
    out[near] = values
    # The left ventricle comes last: its wall is the septum the right ventricle wraps around.
    inside_epi = epi < 0
    out[inside_epi] = Tissue.MYO
    out[inside_epi & (d["lv"] < 0)] = Tissue.LV
    out[inside_epi & (d["papillary"] < 0)] = Tissue.PAPILLARY
    return out, outer


# -- per-case sizes -------------------------------------------------------------------------------

_FIT_STEP = 4.0  # mm (heart frame): lattice on which a case's chamber volumes are measured


def _lattice(lo, hi, step: float) -> np.ndarray:
    axes = [np.arange(a + step / 2, b, step, dtype=np.float32) for a, b in zip(lo, hi)]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return np.stack([xx.ravel(), yy.ravel(), zz.ravel()])


_MEASURED = {"lv": (Tissue.LV, Tissue.PAPILLARY), "rv": (Tissue.RV,), "la": (Tissue.LA,), "ra": (Tissue.RA,),
             "myo": (Tissue.MYO,)}


def measure(shape: HeartShape, stretch: float = 1.0, step: float = _FIT_STEP) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Blood and myocardium volumes (ml, true size: heart-frame volume x ``stretch``, the case's
    scale cubed times its aspect) of a heart on a lattice, and the heart-frame box (lo, hi) holding
    the heart's tissues."""
    p = _lattice(*BOX, step)
    values, _ = heart_tissues(cavity_distances(p, shape), shape, shape.scale)
    ml = step**3 * stretch / 1000.0
    vol = {k: float(np.isin(values, [int(t) for t in ts]).sum() * ml) for k, ts in _MEASURED.items()}
    inside = p[:, values != 255]
    return vol, inside.min(axis=1), inside.max(axis=1)


def fit_volumes(shape: HeartShape, targets_ml: dict[str, float], stretch: float, iterations: int = 4) -> HeartShape:
    """``shape`` with its chamber factors rescaled so that the blood volumes (true ml, see
    :func:`measure`) match ``targets_ml``; ``box`` becomes the heart's own box plus the room its
    epicardial fat and pericardium need."""
    # Newton steps in log-log space: volume ~ factor^k, k = 3 at first (a chamber alone), then the
    # slope measured between steps (the RV crescent, cut by the LV, grows faster than cubically).
    slope = {k: 3.0 for k in targets_ml}
    previous: dict[str, tuple[float, float]] = {}
    for _ in range(iterations):
        vol, _, _ = measure(shape, stretch)
        factors = {}
        for k, target in targets_ml.items():
            f, v = getattr(shape, k), max(vol[k], 1.0)
            if k in previous and abs(np.log(f / previous[k][0])) > 1e-3:
                slope[k] = float(np.clip(np.log(v / previous[k][1]) / np.log(f / previous[k][0]), 1.5, 6.0))
            previous[k] = (f, v)
            factors[k] = f * float(np.clip(target / v, 0.4, 2.5)) ** (1.0 / slope[k])
        shape = replace(shape, **factors)
    # The myocardium follows the LV's size and wall; a thick wall round a large LV is thinned so
    # that the muscle stays in the adult range (MYO_RANGE_ML).
    vol, lo, hi = measure(shape, stretch)
    lo_myo, hi_myo = MYO_RANGE_ML
    if not lo_myo <= vol["myo"] <= hi_myo:
        wall = shape.myo_mm * float(np.clip(np.clip(vol["myo"], lo_myo, hi_myo) / vol["myo"], 0.75, 1.3))
        shape = replace(shape, myo_mm=float(np.clip(wall, 7.0, 13.0)))
        _, lo, hi = measure(shape, stretch)
    room = 26.0 / shape.scale + _FIT_STEP
    box = (tuple(float(v) for v in np.maximum(lo - room, BOX[0])), tuple(float(v) for v in np.minimum(hi + room, BOX[1])))
    return replace(shape, box=box)  # type: ignore[arg-type]


def heart_points(h: np.ndarray, shape: HeartShape) -> np.ndarray:
    """Indices of the heart-frame points (3, N) inside the case's heart box."""
    return in_box(h, *shape.box)

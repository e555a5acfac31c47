"""Synthetic cardiac CT angiography phantoms: the labeled data that ships with the code.

A phantom is a contrast-enhanced chest CT (float32 HU) with a label map of the seven heart structures
of :data:`gvslcore.labels.HEART_LABELS` (0 is everything else). All anatomy is defined as implicit
shapes in PHYSICAL coordinates (mm, LPS: +x patient left, +y posterior, +z superior), centred on
the physical origin, so one seed gives the same anatomy on any grid (size, spacing, direction); only
the sampling, the partial-volume blur and the noise depend on the grid.

Per case (seed) the body size, the heart's size, position and 3-D orientation, the contrast timing,
a smooth deformation of the whole case, noise and blur vary. :func:`make_pair` builds registration
pairs with a known ITK displacement field; :func:`write_dataset` writes an nnU-Net-like folder.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import __version__
from .atomic import ensure_writable_dir, write_json
from .errors import InputError
from .events import Reporter
from .io import write_image
from .labels import HEART_LABELS
from .synth import shapes

DEFAULT_FOV_MM = 192.0
"""Default field of view along each axis: spacing = FOV / size (covers the scaled thorax)."""

MIN_SIZE = 16

LV, RV, LA, RA, MYO, AO, PA = 1, 2, 3, 4, 5, 6, 7

AIR_HU = -1000.0
_FAR = shapes.FAR  # "distance" of points outside a shape's bounding box

SizeLike = int | Sequence[int]


# -- grid ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """A voxel grid in physical space (SimpleITK conventions, x-y-z order).

    Attributes:
        size: voxels along x, y, z.
        spacing: mm along x, y, z.
        origin: physical position (mm, LPS) of voxel (0, 0, 0).
        direction: 3x3 direction cosines, row-major (columns are the index axes).
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The array shape (z, y, x)."""
        return (self.size[2], self.size[1], self.size[0])

    def image(self, pixel_id: int = sitk.sitkFloat32) -> sitk.Image:
        """An empty image on this grid."""
        img = sitk.Image([int(s) for s in self.size], pixel_id)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def points(self) -> np.ndarray:
        """Physical coordinates (mm, LPS) of every voxel centre: (3, z*y*x) float32, rows x, y, z."""
        d = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        axes = [np.arange(n, dtype=np.float64) * s for n, s in zip(self.size, self.spacing)]
        # physical = origin + D @ (spacing * index), built per axis by broadcasting.
        pts = np.empty((3, *self.shape), dtype=np.float32)
        for c in range(3):
            pts[c] = (self.origin[c]
                      + d[c, 0] * axes[0][None, None, :]
                      + d[c, 1] * axes[1][None, :, None]
                      + d[c, 2] * axes[2][:, None, None])
        return pts.reshape(3, -1)


def _as_size(size: SizeLike) -> tuple[int, int, int]:
    if isinstance(size, (int, np.integer)):
        out = (int(size),) * 3
    else:
        out = tuple(int(s) for s in size)
    if len(out) != 3 or min(out) < MIN_SIZE:
        raise InputError(f"phantom size {size} is not valid; give one or three integers >= {MIN_SIZE} (x y z)")
    return out  # type: ignore[return-value]


def make_grid(
    size: SizeLike = 64,
    spacing: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
) -> Grid:
    """A grid whose centre lies at the physical origin unless ``origin`` is given.

    Args:
        size: voxels, one integer (cube) or (x, y, z).
        spacing: mm (x, y, z); default ``DEFAULT_FOV_MM / size`` per axis.
        direction: 9 direction cosines (row-major, orthonormal); default identity.
        origin: physical position of voxel (0, 0, 0); default centres the grid on (0, 0, 0).
    """
    sz = _as_size(size)
    if spacing is None:
        sp = tuple(DEFAULT_FOV_MM / n for n in sz)
    else:
        sp = tuple(float(s) for s in spacing)
        if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
            raise InputError(f"phantom spacing {spacing} is not valid; give three positive numbers in mm (x y z)")
    if direction is None:
        dmat = np.eye(3)
    else:
        dmat = np.asarray(direction, dtype=np.float64)
        if dmat.size != 9 or not np.allclose(dmat.reshape(3, 3) @ dmat.reshape(3, 3).T, np.eye(3), atol=1e-5):
            raise InputError(f"phantom direction {tuple(direction)} is not valid; give 9 numbers of an orthonormal 3x3 matrix (row-major)")
        dmat = dmat.reshape(3, 3)
    if origin is None:
        half = np.array([(n - 1) * s / 2.0 for n, s in zip(sz, sp)])
        org = tuple(float(v) for v in -(dmat @ half))
    else:
        org = tuple(float(v) for v in origin)
        if len(org) != 3:
            raise InputError(f"phantom origin {origin} is not valid; give three numbers in mm")
    return Grid(sz, sp, org, tuple(float(v) for v in dmat.ravel()))  # type: ignore[arg-type]


def grid_of(image: sitk.Image) -> Grid:
    """The grid of an existing 3-D image."""
    return Grid(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),  # type: ignore[arg-type]
                tuple(image.GetDirection()))


# -- implicit shapes (approximate signed distances in mm, negative inside) ----------------------

_unit = shapes.unit
_frame = shapes.frame
_ellipsoid = shapes.ellipsoid
_curve = shapes.bezier
_in_box = shapes.in_box
_tube = shapes.tube
_wave_field = shapes.wave_field
_random_rotation = shapes.random_rotation


# -- the anatomy of one case ---------------------------------------------------------------------

@dataclass(frozen=True)
class Anatomy:
    """Random parameters of one phantom (all lengths in mm, intensities in HU)."""

    body_axes: tuple[float, float]  # half width (x), half depth (y)
    body_center: tuple[float, float]
    fat_mm: float
    muscle_mm: float
    heart_center: np.ndarray  # (3,) LPS mm
    heart_rotation: np.ndarray  # (3, 3): heart frame -> body
    heart_scale: float
    diaphragm_z: float
    warp_freqs: np.ndarray  # (K, 3) cycles/mm
    warp_phases: np.ndarray  # (K,)
    warp_amps: np.ndarray  # (K, 3) mm
    lung_freqs: np.ndarray  # (2, K, 3)
    lung_phases: np.ndarray  # (2, K)
    left_hu: float
    right_hu: float
    myo_hu: float
    liver_hu: float
    noise_hu: float
    blur_vox: float


def sample_anatomy(seed: int) -> Anatomy:
    """Draw the parameters of case ``seed`` (independent of any grid)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0]))
    ax = rng.uniform(80.0, 90.0)
    ay = ax * rng.uniform(0.70, 0.78)
    k = 4
    dirs = rng.normal(size=(k, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    warp_freqs = dirs / rng.uniform(90.0, 180.0, size=(k, 1))
    warp_amps = rng.normal(size=(k, 3)) * rng.uniform(1.5, 3.5) / np.sqrt(k)
    kl = 6
    ldirs = rng.normal(size=(2, kl, 3))
    ldirs /= np.linalg.norm(ldirs, axis=2, keepdims=True)
    lung_freqs = ldirs / rng.uniform(25.0, 55.0, size=(2, kl, 1))
    left = rng.uniform(320.0, 450.0)
    return Anatomy(
        body_axes=(ax, ay),
        body_center=(rng.uniform(-3, 3), rng.uniform(-3, 3)),
        fat_mm=rng.uniform(2.0, 6.0),
        muscle_mm=rng.uniform(3.0, 5.0),
        heart_center=np.array([12.0, -12.0, -6.0]) + rng.uniform(-4.0, 4.0, size=3),
        heart_rotation=_random_rotation(rng, 15.0, 3.0),
        heart_scale=rng.uniform(0.9, 1.1),
        diaphragm_z=rng.uniform(-48.0, -36.0),
        warp_freqs=warp_freqs,
        warp_phases=rng.uniform(0, 2 * np.pi, size=k),
        warp_amps=warp_amps,
        lung_freqs=lung_freqs,
        lung_phases=rng.uniform(0, 2 * np.pi, size=(2, kl)),
        left_hu=left,
        right_hu=left + rng.uniform(-110.0, 110.0),
        myo_hu=rng.uniform(90.0, 130.0),
        liver_hu=rng.uniform(60.0, 100.0),
        noise_hu=rng.uniform(10.0, 20.0),
        blur_vox=rng.uniform(0.5, 1.0),
    )


# The heart in its own frame (mm, LPS axes before the case's rotation, origin at the heart centre).
_LV_AXIS = _unit((0.62, -0.42, -0.66))  # base -> apex: left, anterior, inferior
_LV_C = np.array([8.0, 4.0, -8.0])
_LV_FRAME = _frame(_LV_AXIS)
_LV_BASE = 16.0  # the mitral/aortic plane, mm from the LV centre toward the base
_RV_C = np.array([-5.0, -12.0, -5.0])
_RV_FRAME = _frame(_LV_AXIS, _RV_C - _LV_C)
_LA_C = np.array([-2.0, 15.0, 12.0])
_RA_C = np.array([-26.0, 1.0, 6.0])
_AO_PATH = _curve([(-3.0, 6.0, 0.0), (-7.0, 0.0, 20.0), (-8.0, 0.0, 38.0), (-6.0, 4.0, 52.0)], 8)
_PA_PATH = _curve([(-1.0, -16.0, -2.0), (7.0, -18.0, 16.0), (11.0, -8.0, 30.0), (8.0, 6.0, 40.0)], 8)
_LPA_PATH = _curve([(8.0, 6.0, 40.0), (24.0, 14.0, 43.0), (40.0, 22.0, 36.0)], 6)
_RPA_PATH = _curve([(8.0, 6.0, 40.0), (-8.0, 19.0, 40.0), (-36.0, 19.0, 32.0)], 6)


def _lv_height(h: np.ndarray) -> np.ndarray:
    """Position along the LV long axis (mm from the LV centre, + toward the apex) of points (3, N)."""
    return _LV_AXIS.astype(np.float32) @ (h - _LV_C.astype(np.float32)[:, None])


# Box (heart frame, mm) holding every heart shape plus the margins the lungs keep from them.
_HEART_BOX = ((-62.0, -52.0, -62.0), (62.0, 48.0, 78.0))


def _heart(anat: Anatomy, h: np.ndarray) -> dict[str, np.ndarray]:
    """Signed distances (mm) of the heart's shapes at heart-frame points ``h`` (3, N)."""
    s = anat.heart_scale
    height = _lv_height(h)
    base = -height - _LV_BASE
    rv_height = _LV_AXIS.astype(np.float32) @ (h - _RV_C.astype(np.float32)[:, None])
    d = {
        "lv_out": np.maximum(_ellipsoid(h, _LV_C + 2.0 * _LV_AXIS, (20.0, 20.0, 31.0), _LV_FRAME), base),
        "lv_cav": np.maximum(_ellipsoid(h, _LV_C, (13.0, 13.0, 25.0), _LV_FRAME), base),
        "rv": np.maximum(_ellipsoid(h, _RV_C, (13.0, 23.0, 25.0), _RV_FRAME), -rv_height - 18.0),
        "la": _ellipsoid(h, _LA_C, (20.0, 12.0, 14.0)),
        "ra": _ellipsoid(h, _RA_C, (15.0, 15.0, 18.0)),
        "ao": _tube(h, _AO_PATH, (11.0, 10.0)),
        "pa": np.minimum.reduce([_tube(h, _PA_PATH, 9.0), _tube(h, _LPA_PATH, (7.0, 5.0)), _tube(h, _RPA_PATH, (6.5, 5.0))]),
        "pvs": np.minimum.reduce([
            _tube(h, np.array([_LA_C + (sx * 12.0, 4.0, sz * 6.0), _LA_C + (sx * 36.0, 10.0, sz * 11.0)]), 4.5)
            for sx in (-1.0, 1.0) for sz in (-1.0, 1.0)
        ]),
    }
    return {k: v * np.float32(s) for k, v in d.items()}


@dataclass
class _Torso:
    """The body at deformed points ``q``: coordinates, the body ellipse, and the layers of the wall
    (mm inside the skin); arrays (N,)."""

    qx: np.ndarray
    qy: np.ndarray
    qz: np.ndarray
    bx: float
    by: float
    ay: float
    depth: np.ndarray
    inside: np.ndarray
    fat_end: np.ndarray
    pect: np.ndarray
    muscle_end: np.ndarray
    wall_end: np.ndarray
    cavity: np.ndarray


def _to_body(anat: Anatomy, points: Sequence[float]) -> np.ndarray:
    """Heart-frame points (mm) in the body frame: c + s R h."""
    return anat.heart_center + anat.heart_scale * (anat.heart_rotation @ np.asarray(points, dtype=np.float64))


def _heart_at(anat: Anatomy, q: np.ndarray) -> dict[str, np.ndarray]:
    """Heart shapes' signed distances at deformed points ``q`` (3, N): the heart frame is
    q = c + s R h, and the shapes are evaluated only inside the heart's box (``_FAR`` elsewhere)."""
    n = q.shape[1]
    s = anat.heart_scale
    h = (anat.heart_rotation.T.astype(np.float32) @ (q - anat.heart_center.astype(np.float32)[:, None])) / np.float32(s)
    idx = _in_box(h, *_HEART_BOX)
    heart = {}
    for key, val in _heart(anat, np.ascontiguousarray(h[:, idx])).items():
        heart[key] = np.full(n, _FAR, dtype=np.float32)
        heart[key][idx] = val
    return heart


def _torso(anat: Anatomy, q: np.ndarray) -> _Torso:
    """The body ellipse (tapering toward the shoulders) and the depth of every point inside the skin."""
    qx, qy, qz = q[0], q[1], q[2]
    ax, ay = anat.body_axes
    bx, by = anat.body_center
    taper = 1.0 - 0.06 * np.clip(qz, -100, 100) / 100.0  # a little narrower toward the shoulders
    ax_eff = ax * taper
    ay_eff = np.where(qy > by, ay, ay * 0.94) * taper
    ex = (qx - bx) / ax_eff
    ey = (qy - by) / ay_eff
    k0 = np.sqrt(ex * ex + ey * ey)
    k1 = np.sqrt((ex / ax_eff) ** 2 + (ey / ay_eff) ** 2)
    depth = -(k0 * (k0 - 1.0) / np.maximum(k1, 1e-6))  # mm inside the skin
    inside = depth > 0
    fat_end = 1.5 + anat.fat_mm * (1.0 + 0.25 * np.cos(2 * np.arctan2(qy - by, qx - bx)))
    pect = 8.0 * np.exp(-(((np.abs(qx) - 40.0) / 22.0) ** 2)) * (qy < by - 20)
    spinal = 24.0 * np.exp(-((qx / 22.0) ** 2)) * (qy > by)
    muscle_end = fat_end + anat.muscle_mm + pect + spinal
    wall_end = muscle_end + 5.0  # ribs and intercostal muscle
    return _Torso(qx, qy, qz, bx, by, ay, depth, inside, fat_end, pect, muscle_end, wall_end, depth > wall_end)


def _paint_wall(t: _Torso, hu: np.ndarray) -> None:
    """Table, body wall (skin, subcutaneous fat, muscle), ribs and sternum."""
    qx, qy, qz, by = t.qx, t.qy, t.qz, t.by
    # Table under the patient.
    table_y = by + t.ay + 9.0
    hu[(qy > table_y) & (qy < table_y + 6.0) & (np.abs(qx) < 95.0)] = 150.0
    # Body wall: skin, subcutaneous fat, muscle (pectorals in front, paraspinal muscles behind).
    hu[t.inside] = 20.0
    hu[t.inside & (t.depth > 1.5) & (t.depth < t.fat_end)] = -105.0
    hu[t.inside & (t.depth >= t.fat_end)] = 50.0
    # Ribs: arcs running down toward the front, in bands along z.
    phase = np.mod(qz + 0.45 * (by - qy) + 0.15 * np.abs(qx), 21.0)
    ribs = (t.depth > t.muscle_end) & (t.depth < t.wall_end) & (phase < 7.0) & ~((qy < by - 20) & (np.abs(qx) < 20))
    hu[ribs] = 450.0
    hu[ribs & (phase > 2.0) & (phase < 5.0)] = 220.0  # marrow
    # Sternum.
    sternum_y = by - t.ay * 0.94 + t.fat_end + 8.0 + t.pect
    sternum = (np.abs(qx) < 13.0) & (np.abs(qy - sternum_y) < 5.0) & t.inside
    hu[sternum] = 250.0
    hu[sternum & ((np.abs(qx) > 10.5) | (np.abs(qy - sternum_y) > 3.0))] = 500.0


def _paint_spine(t: _Torso, hu: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Vertebral bodies with discs, canal, posterior arch; (body centre y, body radius, spine region)."""
    qx, qy, qz = t.qx, t.qy, t.qz
    vb_x, vb_y, vb_r = t.bx, t.by + t.ay - 27.0, 13.0
    r_vb = np.sqrt((qx - vb_x) ** 2 + (qy - vb_y) ** 2)
    vertebra = r_vb < vb_r
    hu[vertebra] = 260.0
    hu[vertebra & (r_vb > vb_r - 2.0)] = 650.0
    hu[vertebra & (np.mod(qz + 7.0, 24.0) < 5.0)] = 90.0  # discs
    canal_y = vb_y + vb_r + 7.0
    r_canal = np.sqrt((qx - vb_x) ** 2 + (qy - canal_y) ** 2)
    arch = (r_canal < 11.0) & (r_canal >= 7.0) & ~vertebra
    spinous = (np.abs(qx - vb_x) < 3.0) & (qy > canal_y) & (qy < canal_y + 24.0)
    hu[arch | spinous] = 480.0
    hu[r_canal < 7.0] = 25.0
    return vb_y, vb_r, (r_vb < vb_r + 4.0) | (r_canal < 14.0) | ((np.abs(qx - vb_x) < 7.0) & (qy > vb_y))


def _paint_abdomen(anat: Anatomy, t: _Torso, q: np.ndarray, spine_region: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """Diaphragm (two domes, the right one higher) and the abdomen below it: liver right, stomach
    gas left. Returns the points below the diaphragm."""
    qx, qy, qz, bx, by = t.qx, t.qy, t.qz, t.bx, t.by
    r2 = (qy - by - 5.0) ** 2
    below = qz < np.maximum(anat.diaphragm_z + 8.0 - ((qx + 35.0) ** 2 + r2) / 160.0,
                            anat.diaphragm_z - ((qx - 38.0) ** 2 + r2) / 160.0)
    abdomen = t.cavity & below & ~spine_region
    hu[abdomen] = 45.0
    liver = abdomen & (qx < bx + 12.0 + 0.3 * (qy - by))
    hu[liver] = anat.liver_hu
    gas = _ellipsoid(q, (bx + 45.0, by - 15.0, anat.diaphragm_z - 22.0), (20.0, 16.0, 10.0)) < 0
    hu[abdomen & ~liver & gas] = -950.0
    return below


def _body_tubes(anat: Anatomy, t: _Torso, q: np.ndarray, vb_y: float) -> dict[str, np.ndarray]:
    """Signed distances of the great vessels, airway and esophagus in the body frame, joined to the
    (rotated) heart: aorta (arch and descending), svc, ivc, airway, eso."""
    bx = t.bx
    z_top = 110.0
    desc_x, desc_y = bx + 17.0, vb_y - 12.0
    ao_top = _to_body(anat, _AO_PATH[-1])
    arch_path = _curve([ao_top, ao_top + (-1.0, 6.0, 16.0), (desc_x - 4.0, desc_y - 6.0, ao_top[2] + 22.0),
                        (desc_x, desc_y, ao_top[2] + 2.0), (desc_x, desc_y, ao_top[2] - 20.0)], 12)
    d_aorta = np.minimum(_tube(q, arch_path, 10.0), _tube(q, np.array([arch_path[-1], (desc_x, desc_y, -z_top)]), 9.5))
    ra_top = _to_body(anat, _RA_C + (2.0, 0.0, 12.0))
    svc_path = [(ra_top[0] + 2.0, ra_top[1] - 4.0, z_top), (ra_top[0] + 3.0, ra_top[1] - 2.0, ra_top[2] + 30.0), ra_top]
    d_svc = _tube(q, _curve(svc_path, 6), 7.5)
    ra_bottom = _to_body(anat, _RA_C + (6.0, 4.0, -12.0))
    d_ivc = _tube(q, np.array([ra_bottom, (ra_bottom[0] + 6.0, ra_bottom[1] + 8.0, -z_top)]), 9.0)
    carina = np.array([bx + 1.0, vb_y - 26.0, ao_top[2] + 4.0])
    d_airway = np.minimum.reduce([
        _tube(q, np.array([(bx + 1.0, vb_y - 28.0, z_top), carina]), 8.0),
        _tube(q, _curve([carina, carina + (-18.0, 4.0, -8.0), carina + (-34.0, 8.0, -22.0)], 4), (6.0, 4.0)),
        _tube(q, _curve([carina, carina + (20.0, 4.0, -10.0), carina + (36.0, 10.0, -26.0)], 4), (5.5, 4.0)),
    ])
    d_eso = _tube(q, np.array([(bx + 3.0, vb_y - 18.0, z_top), (bx + 5.0, vb_y - 18.0, -z_top)]), 6.0)
    return {"aorta": d_aorta, "svc": d_svc, "ivc": d_ivc, "airway": d_airway, "eso": d_eso}


def _lung_mask(anat: Anatomy, t: _Torso, heart: dict[str, np.ndarray], chambers: np.ndarray,
               tubes: dict[str, np.ndarray], below: np.ndarray, spine_region: np.ndarray, vb_y: float,
               vb_r: float) -> np.ndarray:
    """The cavity minus the mediastinum (heart, vessels, airway walls, spine, a central band that is
    narrow in front of the heart and wider behind it)."""
    vessels = np.minimum.reduce([heart["ao"], heart["pa"], heart["pvs"], tubes["aorta"], tubes["svc"], tubes["ivc"]])
    heart_y = float(anat.heart_center[1])
    band_half = np.where(t.qy > heart_y + 10.0, 25.0, 9.0)
    mediastinum = (np.abs(t.qx - t.bx - 2.0) < band_half) & (t.qy < vb_y + vb_r)
    return (t.cavity & ~below & ~mediastinum & ~spine_region & (chambers > 5.0) & (vessels > 3.0)
            & (tubes["airway"] > 2.0) & (tubes["eso"] > 3.0))


def _paint_lungs(anat: Anatomy, t: _Torso, q: np.ndarray, lung: np.ndarray, hu: np.ndarray) -> None:
    """Lung parenchyma (denser posteriorly) with a vessel-like texture: where two smooth random
    fields both come near zero (curves, not sheets), thicker near the hila."""
    li = np.flatnonzero(lung)
    lq = q[:, li]
    f1 = np.cos((2 * np.pi * anat.lung_freqs[0]).astype(np.float32) @ lq + anat.lung_phases[0].astype(np.float32)[:, None]).sum(0)
    f2 = np.cos((2 * np.pi * anat.lung_freqs[1]).astype(np.float32) @ lq + anat.lung_phases[1].astype(np.float32)[:, None]).sum(0)
    r_hil = np.minimum.reduce([np.sqrt(((lq - _to_body(anat, (sx * 34.0, 16.0, 34.0)).astype(np.float32)[:, None]) ** 2).sum(0))
                               for sx in (-1.0, 1.0)])
    thick = 0.32 * (1.0 + 1.5 * np.exp(-r_hil / 35.0))
    vessel = (np.abs(f1) < thick) & (np.abs(f2) < thick)
    lung_hu = -870.0 + 50.0 * np.clip((lq[1] - t.by + t.ay) / (2 * t.ay), 0, 1)  # denser posteriorly
    hu[li] = np.where(vessel, 100.0 + 0.4 * anat.right_hu, lung_hu)


def _paint_mediastinum(anat: Anatomy, heart: dict[str, np.ndarray], chambers: np.ndarray,
                       tubes: dict[str, np.ndarray], hu: np.ndarray, lab: np.ndarray) -> None:
    """Airway, esophagus, pericardial fat, contrast vessels, walls, then the labeled heart
    structures (later wins)."""
    # Airway: wall then air; esophagus.
    hu[tubes["airway"] < 1.5] = 40.0
    hu[tubes["airway"] < 0.0] = -1000.0
    hu[tubes["eso"] < 0.0] = 35.0
    # Pericardial fat around the heart and the roots of the great vessels.
    hu[(chambers < 4.0) | (np.minimum(heart["ao"], heart["pa"]) < 3.0)] = -80.0
    # Unlabeled contrast vessels.
    hu[tubes["ivc"] < 0.0] = anat.liver_hu + 15.0
    hu[tubes["svc"] < 0.0] = anat.right_hu + 120.0
    hu[heart["pvs"] < 0.0] = anat.left_hu
    hu[tubes["aorta"] < 0.0] = anat.left_hu
    # Walls (myocardium of the other chambers), then the labeled structures; later wins.
    hu[np.minimum.reduce([heart["rv"], heart["ra"], heart["la"]]) < 2.5] = 70.0
    hu[np.minimum(heart["pa"], heart["ao"]) < 1.5] = 60.0
    left, right = anat.left_hu, anat.right_hu
    for key, value, label in (
        ("pa", right, PA),
        ("ra", right + 30.0, RA),
        ("la", left, LA),
        ("rv", right, RV),
        ("lv_out", anat.myo_hu, MYO),
        ("ao", left, AO),
        ("lv_cav", left, LV),
    ):
        m = heart[key] < 0.0
        hu[m] = value
        lab[m] = label


def _render(anat: Anatomy, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free, unblurred HU (float32) and labels (uint8) at physical points ``x`` (3, N).

    A painter's algorithm: each step paints over the previous ones, in this order.
    """
    n = x.shape[1]
    hu = np.full(n, AIR_HU, dtype=np.float32)
    lab = np.zeros(n, dtype=np.uint8)
    # A smooth deformation of the whole case: anatomy is evaluated at q = x + w(x).
    q = x + _wave_field(x, anat.warp_freqs, anat.warp_phases, anat.warp_amps)
    heart = _heart_at(anat, q)
    t = _torso(anat, q)
    _paint_wall(t, hu)
    vb_y, vb_r, spine_region = _paint_spine(t, hu)
    hu[t.cavity] = -90.0  # thoracic cavity: mediastinal fat by default; lungs painted below
    below = _paint_abdomen(anat, t, q, spine_region, hu)
    tubes = _body_tubes(anat, t, q, vb_y)
    chambers = np.minimum.reduce([heart["lv_out"], heart["rv"], heart["la"], heart["ra"]])
    _paint_lungs(anat, t, q, _lung_mask(anat, t, heart, chambers, tubes, below, spine_region, vb_y, vb_r), hu)
    _paint_mediastinum(anat, heart, chambers, tubes, hu, lab)
    return hu, lab


def _render_grid(seed: int, grid: Grid) -> tuple[np.ndarray, np.ndarray, Anatomy]:
    """Blurred, noise-free HU (z, y, x) float32, labels (z, y, x) uint8 and the case parameters."""
    anat = sample_anatomy(seed)
    hu, lab = _render(anat, grid.points())
    hu = hu.reshape(grid.shape)
    # Partial volume: the scanner's point spread, in voxels of this grid.
    hu = ndimage.gaussian_filter(hu, anat.blur_vox, mode="nearest")
    return hu, lab.reshape(grid.shape), anat


def _ct_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_hu: float) -> np.ndarray:
    """Gaussian noise with CT-like fine grain (slightly correlated), standard deviation ``sigma_hu``."""
    white = rng.standard_normal(shape, dtype=np.float32)
    grain = ndimage.gaussian_filter(white, 0.6, mode="wrap")
    return grain * np.float32(sigma_hu / max(float(grain.std()), 1e-6))


def _to_images(hu: np.ndarray, lab: np.ndarray, grid: Grid) -> tuple[sitk.Image, sitk.Image]:
    ref = grid.image()
    image = sitk.GetImageFromArray(hu.astype(np.float32, copy=False))
    image.CopyInformation(ref)
    labels = sitk.GetImageFromArray(lab.astype(np.uint8, copy=False))
    labels.CopyInformation(ref)
    return image, labels


def make_phantom(
    seed: int,
    size: SizeLike = 64,
    spacing: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
) -> tuple[sitk.Image, sitk.Image]:
    """One synthetic cardiac CT angiogram and its heart label map.

    Args:
        seed: the case; the same seed gives the same anatomy (in mm) on any grid.
        size: voxels, one integer (cube) or (x, y, z).
        spacing: mm (x, y, z); default ``DEFAULT_FOV_MM / size``.
        direction: 9 direction cosines (row-major); default identity.
        origin: position of voxel (0, 0, 0); default centres the grid on the physical origin.

    Returns:
        (image, labels): float32 HU and uint8 labels 0..7 (:data:`HEART_LABELS`), same geometry.
    """
    grid = make_grid(size, spacing, direction, origin)
    hu, lab, anat = _render_grid(seed, grid)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    hu = hu + _ct_noise(rng, grid.shape, anat.noise_hu)
    return _to_images(hu, lab, grid)


def _random_displacement(
    rng: np.random.Generator, grid: Grid, max_displacement_mm: float, affine: bool
) -> np.ndarray:
    """A smooth random field (+ small affine) on ``grid``: (z, y, x, 3) physical mm, x + d(x) = moving point."""
    x = grid.points().astype(np.float64).T  # (N, 3)
    lo, hi = x.min(0), x.max(0)
    fov = float(np.max(hi - lo))
    k = 6
    centers = lo + rng.uniform(0.1, 0.9, size=(k, 3)) * (hi - lo)
    sigmas = rng.uniform(0.15, 0.3, size=k) * fov
    amps = rng.normal(size=(k, 3))
    d = np.zeros_like(x)
    for c, sg, a in zip(centers, sigmas, amps):
        d += np.exp(-((x - c) ** 2).sum(1) / (2 * sg * sg))[:, None] * a
    peak = float(np.sqrt((d**2).sum(1)).max())
    if peak > 0 and max_displacement_mm > 0:
        d *= max_displacement_mm * rng.uniform(0.6, 1.0) / peak
    else:
        d[:] = 0.0
    if affine:
        center = (lo + hi) / 2
        a = _random_rotation(rng, 4.0) @ np.diag(rng.uniform(0.96, 1.04, size=3))
        d += (x - center) @ (a - np.eye(3)).T + rng.uniform(-3.0, 3.0, size=3)
    return d.reshape(*grid.shape, 3)


def make_pair(
    seed: int,
    size: SizeLike = 64,
    spacing: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    *,
    max_displacement_mm: float = 8.0,
    affine: bool = True,
) -> dict[str, sitk.Image]:
    """A registration pair with a known displacement field.

    MOVING is a phantom; FIXED is MOVING resampled through a smooth random field (plus a small
    random affine when ``affine``), labels with nearest neighbour; each then gets its own noise.
    Fixed voxels that map outside MOVING's grid are air (-1000 HU, label 0).

    Args:
        seed, size, spacing, direction: as for :func:`make_phantom` (MOVING is that case's anatomy).
        max_displacement_mm: peak length of the non-linear part (drawn in 0.6-1.0 of it).
        affine: add a random affine about the grid centre (rotation <= 4 deg, scale 0.96-1.04,
            shift <= 3 mm per axis).

    Returns:
        dict with ``fixed``, ``moving`` (float32 HU), ``fixed_labels``, ``moving_labels`` (uint8) and
        ``displacement`` (sitkVectorFloat64 on the fixed grid, physical LPS mm, ITK convention: the
        moving point of fixed point x is x + d(x), so ``sitk.Resample(moving, fixed,
        sitk.DisplacementFieldTransform(d))`` reproduces fixed).
    """
    grid = make_grid(size, spacing, direction)
    hu, lab, anat = _render_grid(seed, grid)
    moving_clean, moving_labels = _to_images(hu, lab, grid)

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
    field = _random_displacement(rng, grid, float(max_displacement_mm), affine)
    disp = sitk.GetImageFromArray(field.astype(np.float64), isVector=True)
    disp.CopyInformation(moving_clean)
    transform = sitk.DisplacementFieldTransform(sitk.Image(disp))  # the transform takes its input over
    fixed_clean = sitk.Resample(moving_clean, moving_clean, transform, sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)
    fixed_labels = sitk.Resample(moving_labels, moving_labels, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)

    noise_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 3]))
    out = {}
    for name, clean in (("moving", moving_clean), ("fixed", fixed_clean)):
        arr = sitk.GetArrayFromImage(clean) + _ct_noise(noise_rng, grid.shape, anat.noise_hu)
        img = sitk.GetImageFromArray(arr.astype(np.float32))
        img.CopyInformation(clean)
        out[name] = img
    out["moving_labels"] = moving_labels
    out["fixed_labels"] = fixed_labels
    out["displacement"] = disp
    return out


# -- data set on disk ----------------------------------------------------------------------------

def case_seed(seed: int, index: int, stream: int = 0) -> int:
    """The phantom seed of case ``index`` (stream 0) or pair ``index`` (stream 1) of data set ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(stream), int(index)]).generate_state(1)[0])


def _remove_stale(folder: Path, pattern: re.Pattern[str], keep: set[str]) -> None:
    """Delete our own earlier outputs (matching ``pattern``) that the new data set does not list."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.is_file() and pattern.fullmatch(entry.name) and entry.name not in keep:
            entry.unlink()


def _as_int16(image: sitk.Image) -> sitk.Image:
    """HU rounded to int16 (CT's usual storage; a quarter of the float32 size once compressed)."""
    arr = np.clip(np.rint(sitk.GetArrayViewFromImage(image)), -32768, 32767).astype(np.int16)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out


_PAIR_FILES = ("fixed", "moving", "fixed_labels", "moving_labels", "displacement")


def write_dataset(
    out: str | os.PathLike,
    cases: int,
    size: SizeLike = 64,
    seed: int = 0,
    pairs: bool = False,
    reporter: Reporter | None = None,
    spacing: Sequence[float] | None = None,
) -> dict:
    """Write ``cases`` phantoms (and registration pairs) as an nnU-Net-like data set.

    Layout: ``OUT/images/case_000.nii.gz``, ``OUT/labels/case_000.nii.gz`` (same names),
    ``OUT/dataset.json`` and, with ``pairs``, ``OUT/pairs/pair_000/{fixed,moving,fixed_labels,
    moving_labels,displacement}.nii.gz`` (``max(1, cases // 2)`` pairs). Every file is written atomically.

    Returns:
        The outputs: paths of the folders and dataset.json, counts, seconds per case.
    """
    if int(cases) < 1:
        raise InputError(f"--cases {cases} is not valid; give at least 1 case")
    grid = make_grid(size, spacing)  # validates size and spacing before anything is written
    out = ensure_writable_dir(out)
    images_dir = ensure_writable_dir(out / "images")
    labels_dir = ensure_writable_dir(out / "labels")
    n_pairs = max(1, cases // 2) if pairs else 0
    width = max(3, len(str(max(cases, n_pairs) - 1)))
    total = cases + n_pairs
    if reporter is not None:
        reporter.start("phantom", total=total)

    training = []
    t0 = time.monotonic()
    for i in range(cases):
        name = f"case_{i:0{width}d}.nii.gz"
        cs = case_seed(seed, i)
        image, labels = make_phantom(cs, grid.size, grid.spacing, grid.direction, grid.origin)
        write_image(_as_int16(image), images_dir / name)
        write_image(labels, labels_dir / name)
        training.append({"image": f"images/{name}", "label": f"labels/{name}", "seed": cs})
        if reporter is not None:
            reporter.progress(i + 1, stage=f"case {i + 1}/{cases}")
    case_s = (time.monotonic() - t0) / cases
    case_pattern = re.compile(r"case_\d{3,}\.nii\.gz")
    for folder in (images_dir, labels_dir):
        _remove_stale(folder, case_pattern, {Path(t["image"]).name for t in training})

    pair_entries = []
    pairs_dir = out / "pairs"
    for j in range(n_pairs):
        folder = ensure_writable_dir(pairs_dir / f"pair_{j:0{width}d}")
        ps = case_seed(seed, j, stream=1)
        pair = make_pair(ps, grid.size, grid.spacing, grid.direction)
        entry = {"seed": ps}
        for key in _PAIR_FILES:
            img = pair[key]
            if key in ("fixed", "moving"):
                img = _as_int16(img)
            write_image(img, folder / f"{key}.nii.gz")
            entry[key] = f"pairs/{folder.name}/{key}.nii.gz"
        pair_entries.append(entry)
        if reporter is not None:
            reporter.progress(cases + j + 1, stage=f"pair {j + 1}/{n_pairs}")
    if pairs_dir.is_dir():
        pair_pattern = re.compile(r"pair_\d{3,}")
        keep = {Path(e["fixed"]).parent.name for e in pair_entries}
        for entry in pairs_dir.iterdir():
            if entry.is_dir() and pair_pattern.fullmatch(entry.name) and entry.name not in keep:
                for key in _PAIR_FILES:
                    (entry / f"{key}.nii.gz").unlink(missing_ok=True)
                try:
                    entry.rmdir()
                except OSError:
                    pass  # the user put something else there: leave it

    dataset = {
        "name": "GVSL cardiac CT phantom",
        "description": "Synthetic contrast-enhanced cardiac CT (HU) with seven heart structures, "
                       "made by `gvsl phantom` (anatomy in physical LPS mm; per-case size, pose, "
                       "deformation, contrast, noise and blur vary).",
        "modality": {"0": "CT"},
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{lab.name: lab.value for lab in HEART_LABELS}},
        "label_table": HEART_LABELS.to_list(),
        "file_ending": ".nii.gz",
        "numTraining": cases,
        "training": training,
        "seed": int(seed),
        "size": list(grid.size),
        "spacing": list(grid.spacing),
        "direction": list(grid.direction),
        "provenance": f"gvsl phantom {__version__}",
    }
    if n_pairs:
        dataset["numPairs"] = n_pairs
        dataset["pairs"] = pair_entries
    dataset_json = out / "dataset.json"
    write_json(dataset_json, dataset)
    outputs = {
        "dataset": str(out),
        "dataset_json": str(dataset_json),
        "images": str(images_dir),
        "labels": str(labels_dir),
        "cases": cases,
        "seconds_per_case": round(case_s, 3),
    }
    if n_pairs:
        outputs["pairs"] = str(pairs_dir)
        outputs["num_pairs"] = n_pairs
    if reporter is not None:
        reporter.done(outputs)
    return outputs

"""An adult chest as a tissue map: body wall, skeleton, lungs, mediastinum, heart and upper abdomen.

:func:`sample_chest` draws the parameters of one case from a seed; :func:`render_chest` paints its
tissues (:class:`gvslcore.synth.tissues.Tissue`) on a grid. Coordinates are physical millimetres
in LPS (+x patient left, +y posterior, +z superior) with the origin at the heart's centre; all
anatomy is implicit (signed distances), so a case can be rendered on any grid.

Sizes are adult (chest 300-420 mm wide; chamber volumes fitted per case to adult diastolic ranges), the relations are those a reader of a
chest CT expects: the right ventricle behind the sternum, the left atrium in front of the
esophagus and the descending aorta, the liver under the right and central diaphragm touching the
heart's inferior wall, the lungs around it all. The diaphragm is shaped around each case's heart
(``_Chest.heart_support``, on a lattice of the case's own, so any grid or sub-grid of a case gives
the same tissues), so the heart always rests on it as in a supine patient. The venae cavae, the
pulmonary veins and arteries and the aortic arch continue the heart's own stumps
(:mod:`gvslcore.synth.heart`); the superior vena cava runs right of and behind the ascending aorta
with mediastinal fat between them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from .heart import (
    HeartShape,
    cavity_distances,
    chamber_centres,
    fit_volumes,
    heart_points,
    heart_tissues,
    landmarks,
    sample_shape,
    sample_volumes,
)
from .shapes import FAR, bezier, ellipsoid, random_rotation, random_waves, tube, unit, wave_field
from .tissues import Tissue

T = Tissue
_LUMENS = np.array([int(t) for t in (T.ARTERY, T.SVC, T.IVC, T.PULMONARY_VEIN, T.PULMONARY_BRANCH)], dtype=np.uint8)


@dataclass(frozen=True)
class ChestParams:
    """The random parameters of one synthetic chest (lengths in mm)."""

    seed: int
    half_width: float          # body, x
    half_depth: float          # body, y
    body_center: tuple[float, float]
    fat_mm: float              # subcutaneous fat
    muscle_mm: float
    heart_scale: float
    heart_aspect: tuple[float, float, float]  # extra stretch along x, y, z of the heart frame
    heart_rotation: np.ndarray  # (3, 3) heart frame -> body
    heart: HeartShape
    dome_right: float          # height of the right and left diaphragm domes above the heart's lowest point
    dome_left: float
    liver_reach: float         # how far the left lobe reaches left of the midline
    spine_radius: float
    spine_depth: float         # vertebral body centre to the posterior skin
    rib_pitch: float
    arms_down: bool
    breasts: bool
    stent: bool
    calcium: int
    warp: tuple[np.ndarray, np.ndarray, np.ndarray]
    vessel_waves: tuple[np.ndarray, ...]
    fat_waves: tuple[np.ndarray, np.ndarray, np.ndarray]

    @property
    def spine_center(self) -> tuple[float, float]:
        """(x, y) of the vertebral bodies' centre line."""
        bx, by = self.body_center
        return bx, by + self.half_depth - self.spine_depth

    @property
    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi): a physical box (mm) holding the case, arms and table included."""
        bx, by = self.body_center
        wx = self.half_width + (70.0 if self.arms_down else 12.0)
        return (np.array([bx - wx, by - self.half_depth - 40.0, -165.0]),
                np.array([bx + wx, by + self.half_depth + 18.0, 190.0]))


_UNIT_VOLUME_ML = 316.0
"""LV + RV + LA + RA blood (ml) of the heart of :class:`HeartShape` () at scale 1 (measured)."""


def sample_chest(seed: int) -> ChestParams:
    """Draw case ``seed`` (independent of any grid)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 72]))
    targets = sample_volumes(rng)
    aspect = (rng.uniform(0.95, 1.06), rng.uniform(0.88, 1.0), rng.uniform(0.95, 1.06))  # extra stretch of the heart frame
    # The scale carries the heart's overall size (positions, walls); the chamber factors are then
    # fitted to the drawn volumes, so they stay near 1 and the proportions stay adult.
    s = float((sum(targets.values()) / _UNIT_VOLUME_ML) ** (1.0 / 3.0) * rng.uniform(0.95, 1.05))
    yaw = random_rotation_about(rng, (0.0, 0.0, 1.0), 15.0)
    tilt = random_rotation_about(rng, (0.0, 1.0, 0.0), 10.0)
    rotation = random_rotation(rng, 8.0) @ yaw @ tilt
    warp = random_waves(rng, 4, (110.0, 220.0), rng.uniform(2.0, 6.0), channels=3)
    heart = replace(sample_shape(rng), scale=s)
    # The anatomy warp changes volumes by its Jacobian: fit each chamber to the volume that the
    # warp brings back to its target where that chamber lies.
    centres = chamber_centres(heart)
    world = (rotation @ (s * np.asarray(aspect)[:, None] * np.array([centres[k] for k in targets]).T)).T
    jac = {k: _warp_jacobian(warp, x) for k, x in zip(targets, world)}
    heart = fit_volumes(heart, {k: v * jac[k] for k, v in targets.items()}, s**3 * float(np.prod(aspect)))
    fat = 3.0 + 27.0 * rng.uniform() ** 1.5  # most patients are lean; some are not
    muscle = rng.uniform(6.0, 18.0)
    spine_r = rng.uniform(15.0, 20.0)
    # Front to back: wall, a gap, the heart (its own anterior and posterior extent), the esophagus,
    # the spine, the back.
    room = 26.0 / s + 4.0  # the margin fit_volumes left around the heart's tissues
    anterior = -(heart.box[0][1] + room) * s * aspect[1]
    posterior = (heart.box[1][1] + room) * s * aspect[1]
    anterior_wall = 0.6 * (fat + muscle) + 10.0  # over the sternum: thinner fat, no pectoral muscle
    gap = rng.uniform(0.0, 8.0)
    front = anterior_wall + gap + anterior
    back_of_spine = 40.0 + 0.5 * fat + rng.uniform(0.0, 15.0)  # vertebral body's back to the skin
    back = min(posterior, 75.0 * s) + 6.0 + 2.0 * spine_r + back_of_spine
    half_depth = (front + back) / 2.0
    by = half_depth - front  # the heart centre lies ``front`` behind the anterior skin
    return ChestParams(
        seed=int(seed),
        half_width=half_depth / rng.uniform(0.70, 0.86),  # depth / width: 0.72 in the shared chest CTA
        half_depth=half_depth,
        body_center=(-rng.uniform(8.0, 28.0), by),
        fat_mm=fat,
        muscle_mm=muscle,
        heart_scale=s,
        heart_aspect=aspect,
        heart_rotation=rotation,
        heart=heart,
        dome_right=rng.uniform(-10.0, 22.0),
        dome_left=rng.uniform(-30.0, 0.0),
        liver_reach=rng.uniform(-10.0, 55.0),
        spine_radius=spine_r,
        spine_depth=back_of_spine + spine_r,
        rib_pitch=rng.uniform(26.0, 36.0),
        arms_down=bool(rng.random() < 0.3),
        breasts=bool(rng.random() < 0.3),
        stent=bool(rng.random() < 0.1),
        calcium=int(rng.integers(0, 12)),
        warp=warp,
        vessel_waves=tuple(random_waves(rng, 6, (18.0, 45.0), 1.0)[:2] for _ in range(2)),  # type: ignore[arg-type]
        fat_waves=random_waves(rng, 5, (40.0, 90.0), 1.0),
    )


def _warp_jacobian(warp: tuple[np.ndarray, np.ndarray, np.ndarray], at: np.ndarray) -> float:
    """det(d(p + warp(p)) / dp) at the point ``at`` (3,): how much the anatomy warp of
    :func:`render_chest` shrinks volumes there (a shape of volume V in anatomy space covers V / det)."""
    freqs, phases, amps = warp
    arg = 2 * np.pi * freqs @ np.asarray(at, dtype=np.float64) + phases  # (K,)
    grad = (amps * np.cos(arg)[:, None]).T @ (2 * np.pi * freqs)  # (C, 3): d warp_c / d p_j
    return float(np.linalg.det(np.eye(3) + grad))


def random_rotation_about(rng: np.random.Generator, axis, max_deg: float) -> np.ndarray:
    """A rotation about ``axis`` by an angle in [-max_deg, max_deg]."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


@dataclass
class _Canvas:
    """Points being painted: q (3, N) anatomy coordinates, tissue (N,) uint8, grid shape (z, y, x)."""

    q: np.ndarray
    tissue: np.ndarray
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def paint(self, mask: np.ndarray, tissue: Tissue) -> None:
        self.tissue[mask] = int(tissue)


class _Chest:
    """Painter's-order rendering of one case; each method paints one system."""

    def __init__(self, params: ChestParams, canvas: _Canvas) -> None:
        self.p = params
        self.c = canvas
        self.q = canvas.q
        self.lm = landmarks(params.heart)

    def to_world(self, h) -> np.ndarray:
        """Heart-frame point(s) (3,) or (M, 3) -> world (same shape)."""
        return heart_to_world(self.p, h)

    # -- heart ------------------------------------------------------------------------------------
    def heart_fields(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """At anatomy points ``q`` (3, N): heart tissue values (255: not heart), the distance (mm) to
        the heart's outer surface, the height (mm) above the LV base plane and the epicardial fat
        thickness (mm). A pure function of the points, so any grid (or sub-grid) agrees."""
        p = self.p
        n = q.shape[1]
        # Heart frame: undo the rotation, the scale and the stretch (distances stay in scaled mm).
        stretch = (p.heart_scale * np.asarray(p.heart_aspect)).astype(np.float32)[:, None]
        h = (p.heart_rotation.T.astype(np.float32) @ q) / stretch
        idx = heart_points(h, p.heart)
        d = cavity_distances(np.ascontiguousarray(h[:, idx]), p.heart)
        values_in, outer_in = heart_tissues(d, p.heart, p.heart_scale)
        values = np.full(n, 255, dtype=np.uint8)
        values[idx] = values_in
        outer = np.full(n, FAR, dtype=np.float32)
        outer[idx] = outer_in
        base = np.full(n, FAR, dtype=np.float32)
        base[idx] = d["base"] * np.float32(p.heart_scale)
        fat_field = wave_field(q, *p.fat_waves)[0]
        # Epicardial fat: thicker in the atrioventricular groove (near the base plane) and in patches.
        groove = np.exp(-((base + 4.0) / 14.0) ** 2) * 6.0
        fat = np.clip(p.heart.fat_mm * (1.0 + 0.6 * fat_field) + groove * (p.heart.fat_mm / 5.0), 0.6, 22.0)
        return values, outer, base, fat

    def heart(self) -> None:
        """Heart tissues and the distance to the heart's outer surface (``self.heart_outer``)."""
        self.heart_values, self.heart_outer, self.heart_base, self.fat_thickness = self.heart_fields(self.q)

    def heart_envelope(self, margin: float = 0.0) -> np.ndarray:
        """Points inside the pericardium (heart, epicardial fat, pericardium) plus ``margin`` mm."""
        return self.heart_outer < self.fat_thickness + 1.5 + margin

    def paint_heart(self) -> None:
        c = self.c
        # Veins and arteries pass through the pericardium into the heart: its fat and serosa are
        # not painted over their lumens.
        open_ = ~np.isin(c.tissue, _LUMENS)
        c.paint(self.heart_envelope() & open_, T.SOFT)
        c.paint((self.heart_outer < self.fat_thickness) & open_, T.MEDIASTINAL_FAT)
        inside = self.heart_values != 255
        c.tissue[inside] = self.heart_values[inside]

    # -- body wall and skeleton --------------------------------------------------------------------
    def body_depth(self) -> np.ndarray:
        """Millimetres inside the skin (negative outside), on an ellipse that tapers toward the shoulders."""
        p = self.p
        qx, qy, qz = self.q
        bx, by = p.body_center
        taper = 1.0 - 0.05 * np.clip(qz, -150, 150) / 150.0
        ax = p.half_width * taper
        ay = np.where(qy > by, p.half_depth * 0.97, p.half_depth) * taper
        ex, ey = (qx - bx) / ax, (qy - by) / ay
        k0 = np.sqrt(ex * ex + ey * ey)
        k1 = np.sqrt((ex / ax) ** 2 + (ey / ay) ** 2)
        return -(k0 * (k0 - 1.0) / np.maximum(k1, 1e-6))

    def body_wall(self) -> None:
        p, c = self.p, self.c
        qx, qy, qz = self.q
        bx, by = p.body_center
        depth = self.body_depth()
        self.depth = depth
        angle = np.arctan2(qy - by, qx - bx)
        inside = depth > 0
        c.paint(inside, T.SKIN)
        fat_end = 2.0 + p.fat_mm * (1.0 + 0.3 * np.cos(2 * angle) + 0.2 * np.sin(angle))
        c.paint(inside & (depth > 2.0) & (depth < fat_end), T.FAT)
        front = qy < by - 0.3 * p.half_depth
        pect = 10.0 * np.exp(-(((np.abs(qx - bx) - 0.45 * p.half_width) / (0.3 * p.half_width)) ** 2)) * front * (qz > -60)
        back = 38.0 * np.exp(-(((qx - bx) / 34.0) ** 2)) * (qy > by)
        lateral = 8.0 * np.exp(-((np.abs(angle) - np.pi / 2) ** 2) * 2.0) * (qy > by - 0.2 * p.half_depth)
        muscle_end = fat_end + p.muscle_mm + pect + back + lateral
        c.paint(inside & (depth >= fat_end), T.MUSCLE)
        self.muscle_end = muscle_end
        self.wall_end = muscle_end + 12.0
        self.cavity = depth > self.wall_end
        self.fat_end = fat_end

    def ribs(self) -> None:
        p, c = self.p, self.c
        qx, qy, qz = self.q
        bx, by = p.body_center
        band = (self.depth > self.muscle_end + 1.0) & (self.depth < self.wall_end - 1.0)
        # Each rib runs from the spine around the chest, descending about 0.4 mm per mm of arc, so an
        # axial slice cuts every rib into a short oblique segment.
        around = np.abs(np.arctan2(qx - bx, qy - by))  # 0 at the spine, pi at the sternum
        arc = around * 0.5 * (p.half_width + p.half_depth)
        phase = np.mod(qz + 0.4 * arc + 7.0 * p.seed, p.rib_pitch)
        rib = band & (phase < 11.0)
        anterior = (qy < by - 0.55 * p.half_depth) & (np.abs(qx - bx) < 0.55 * p.half_width)
        c.paint(rib & ~anterior, T.CORTEX)
        c.paint(rib & ~anterior & (phase > 2.0) & (phase < 9.0), T.MARROW)
        c.paint(rib & anterior, T.CARTILAGE)
        # Sternum, down to the xiphoid just below the heart.
        xiphoid = -60.0 * p.heart_scale
        sternum = (np.abs(qx - bx) < 17.0) & (self.depth > self.muscle_end - 2.0) & (self.depth < self.muscle_end + 12.0) \
            & (qy < by) & (qz > xiphoid)
        c.paint(sternum, T.CORTEX)
        c.paint(sternum & (np.abs(qx - bx) < 14.0) & (self.depth > self.muscle_end + 1.0) & (self.depth < self.muscle_end + 9.0), T.MARROW)
        # Scapulae: thin plates in the posterior-lateral muscle, upper chest.
        angle = np.arctan2(qy - by, np.abs(qx - bx))
        scap = (np.abs(angle - 0.7) < 0.25) & (np.abs(self.depth - (self.muscle_end - 10.0)) < 2.0) & (qz > -20.0)
        c.paint(scap, T.CORTEX)

    def spine(self) -> None:
        p, c = self.p, self.c
        qx, qy, qz = self.q
        sx, sy = p.spine_center
        r = p.spine_radius
        r_vb = np.sqrt(((qx - sx) / 1.1) ** 2 + (qy - sy) ** 2)
        body = r_vb < r
        c.paint(body, T.MARROW)
        c.paint(body & (r_vb > r - 2.0), T.CORTEX)
        c.paint(body & (np.mod(qz + 3.0 * p.seed, 27.0) > 22.0), T.SOFT)  # discs
        canal_y = sy + r + 10.0
        r_canal = np.sqrt((qx - sx) ** 2 + (qy - canal_y) ** 2)
        level = np.mod(qz + 3.0 * p.seed, 27.0)  # position within one vertebra (27 mm)
        arch = (r_canal < 15.0) & (r_canal >= 10.0) & ~body & (level < 20.0)
        spinous = (np.abs(qx - sx) < 4.0) & (qy > canal_y) & (qy < canal_y + 38.0) & (np.abs(level - 8.0 - 0.3 * (qy - canal_y)) < 6.0)
        transverse = (np.abs(qy - canal_y + 0.25 * np.abs(qx - sx)) < 5.0) & (np.abs(qx - sx) < 34.0) & (np.abs(qx - sx) > 10.0) \
            & (np.abs(level - 10.0) < 6.0)
        c.paint(arch | spinous | transverse, T.CORTEX)
        c.paint(r_canal < 10.0, T.CSF)
        self.spine_region = (r_vb < r + 5.0) | (r_canal < 18.0) | ((np.abs(qx - sx) < 10.0) & (qy > sy))

    def extremities(self) -> None:
        """Arms at the sides (when down), breasts, the table under the back."""
        p, c = self.p, self.c
        qx, qy, qz = self.q
        bx, by = p.body_center
        if p.arms_down:
            for side in (-1.0, 1.0):
                ax = bx + side * (p.half_width + 42.0)
                r = np.sqrt((qx - ax) ** 2 + ((qy - by - 10.0) / 1.15) ** 2)
                c.paint(r < 44.0, T.SKIN)
                c.paint((r < 42.0) & (r > 30.0), T.FAT)
                c.paint(r < 30.0, T.MUSCLE)
                c.paint(r < 12.0, T.CORTEX)
                c.paint(r < 9.0, T.MARROW)
        if p.breasts:
            for side in (-1.0, 1.0):
                center = (bx + side * 0.5 * p.half_width, by - p.half_depth + 8.0, -25.0)
                d = ellipsoid(self.q, center, (0.4 * p.half_width, 42.0, 55.0))
                outside = self.depth <= 2.0
                c.paint((d < 0) & outside, T.FAT)
                c.paint((d < -14.0) & outside, T.GLAND)
                c.paint((d < 0) & (d > -2.0) & outside, T.SKIN)
        table_y = by + p.half_depth + 6.0 + 0.0006 * (qx - bx) ** 2
        c.paint((qy > table_y) & (qy < table_y + 7.0) & (np.abs(qx - bx) < 230.0), T.TABLE)

    def shoulders(self) -> None:
        """Clavicles from the top of the sternum out to the shoulders, with the subclavian vessels under them."""
        p, c = self.p, self.c
        bx, by = p.body_center
        z = self.arch_top + 25.0 + 10.0 * (p.seed % 4)
        for side in (-1.0, 1.0):
            path = bezier([(bx + side * 18.0, by - p.half_depth + p.fat_mm + 8.0, z),
                           (bx + side * 0.45 * p.half_width, by - p.half_depth + p.fat_mm + 2.0, z + 8.0),
                           (bx + side * 0.85 * p.half_width, by - 0.35 * p.half_depth, z + 22.0)], 8)
            d = tube(self.q, path, 7.5)
            inside = self.depth > 1.0
            c.paint(inside & (d < 0), T.CORTEX)
            c.paint(inside & (d < -2.0), T.MARROW)
            under = path + np.array([0.0, 14.0, -10.0])
            c.paint(inside & (tube(self.q, under, 5.0) < 0), T.SVC)
            c.paint(inside & (tube(self.q, under + (0.0, 12.0, -7.0), 4.5) < 0), T.ARTERY)  # behind the vein, apart

    # -- vessels and airways ------------------------------------------------------------------------
    def great_vessels(self) -> None:
        """Centre lines (world mm) and distances of the aorta, caval veins, airway and esophagus."""
        p = self.p
        q = self.q
        sx, sy = p.spine_center
        w = self.to_world
        lm = self.lm
        spine_front = sy - p.spine_radius
        ao_top = w(lm["ao_root_top"])
        bif = w(lm["bifurcation"])
        carina = np.array([sx + 2.0, spine_front - 22.0, max(bif[2] + 8.0, ao_top[2] - 6.0)])
        desc = np.array([sx + p.spine_radius + 4.0, spine_front + 2.0])
        arch_top = ao_top[2] + 14.0
        arch = bezier([ao_top, ao_top + (2.0, 6.0, 12.0), (desc[0] - 6.0, carina[1] - 4.0, arch_top + 4.0),
                       (desc[0], desc[1] - 6.0, arch_top - 6.0), (desc[0], desc[1], arch_top - 30.0)], 12)
        descending = bezier([arch[-1], (desc[0], desc[1], -60.0), (sx + 4.0, spine_front - 2.0, -170.0)], 8)
        self.d_arch = np.minimum(tube(q, arch, (14.0 * p.heart.aorta, 12.0)), tube(q, descending, (12.0, 10.5)))
        branches = [tube(q, bezier([arch[k], arch[k] + (dx, dy, 25.0), arch[k] + (1.5 * dx, dy, 80.0)], 4), r)
                    for k, dx, dy, r in ((2, -10.0, -8.0, 7.0), (4, 2.0, -2.0, 5.0), (6, 8.0, 4.0, 5.5))]
        self.d_branches = np.minimum.reduce(branches)
        # The superior vena cava continues the heart's stump straight up, right of and behind the
        # ascending aorta, to the brachiocephalic confluence; the left brachiocephalic vein crosses
        # in front of the arch's branches.
        v = p.heart.veins
        up = unit(w(lm["svc"]) - w(lm["svc_ostium"]))
        svc_start = w(lm["svc"]) - 6.0 * up
        svc_top = np.array([svc_start[0] - 3.0, svc_start[1] - 4.0, 200.0])
        svc_path = bezier([svc_start, svc_start + 30.0 * up + (0.0, 0.0, 10.0), svc_top], 6)
        self.svc_path = svc_path
        self.d_svc = np.minimum(tube(q, svc_path, (10.0 * v, 9.0 * v)),
                                tube(q, bezier([svc_path[4], (svc_path[4][0] + 45.0, svc_path[4][1] - 12.0, svc_path[4][2] + 12.0),
                                                (svc_path[4][0] + 95.0, svc_path[4][1] - 4.0, svc_path[4][2] + 22.0)], 4), 6.5))
        down = unit(w(lm["ivc"]) - w(lm["ivc_ostium"]))
        ivc_start = w(lm["ivc"]) - 6.0 * down
        ivc_path = bezier([ivc_start, ivc_start + 30.0 * down + (2.0, 6.0, 0.0), (sx - 22.0, spine_front - 4.0, -170.0)], 6)
        self.d_ivc = tube(q, ivc_path, 12.0 * v)
        self.d_azygos = tube(q, bezier([(sx - 12.0, sy - 2.0, -170.0), (sx - 12.0, sy - 4.0, carina[2]),
                                        (svc_path[1][0], svc_path[1][1] + 10.0, carina[2] + 8.0), svc_path[1]], 6), 4.0)
        trachea = np.array([(sx + 1.0, carina[1] - 4.0, 200.0), carina])
        right_bronchus = bezier([carina, carina + (-20.0, 4.0, -10.0), carina + (-48.0, 14.0, -24.0)], 4)
        left_bronchus = bezier([carina, carina + (24.0, 4.0, -12.0), carina + (52.0, 16.0, -30.0)], 4)
        self.airway = [(trachea, 9.5), (right_bronchus, (7.0, 5.0)), (left_bronchus, (6.5, 4.5))]
        self.d_airway = np.minimum.reduce([tube(q, path, r) for path, r in self.airway])
        eso = bezier([(sx + 3.0, spine_front - 6.0, 200.0), (sx + 8.0, spine_front - 8.0, 0.0),
                      (sx + 25.0, spine_front - 18.0, -120.0)], 6)
        self.d_eso = tube(q, eso, 7.5)
        self.hila = {side: carina + (side * 55.0, 16.0, -26.0) for side in (-1.0, 1.0)}
        self.calcium_paths = [arch, descending, bezier([w(lm["av"]), ao_top], 4)]
        # Mediastinal fat between the superior vena cava and the ascending aorta, so the right lung
        # never slips between them: a sleeve along their mid-line, as wide as their separation.
        svc_line = np.vstack([w(lm["svc_ostium"]), w(lm["svc"]), svc_path[1:4]])
        ao_line = np.vstack([w(lm["av"]), w(lm["ao_root_top"]), arch[1:3]])
        levels = np.linspace(max(svc_line[0, 2], ao_line[0, 2]) + 8.0, min(svc_line[-1, 2], ao_line[-1, 2]), 6)
        svc_at = np.stack([np.interp(levels, svc_line[:, 2], svc_line[:, k]) for k in range(3)], axis=1)
        ao_at = np.stack([np.interp(levels, ao_line[:, 2], ao_line[:, k]) for k in range(3)], axis=1)
        half = 0.5 * np.linalg.norm(svc_at - ao_at, axis=1)
        self.d_svc_aorta = np.minimum.reduce([
            tube(q, 0.5 * (svc_at[k : k + 2] + ao_at[k : k + 2]), float(half[k : k + 2].max()) + 2.0, margin=4.0)
            for k in range(len(levels) - 1)])
        self.arch_top = float(arch_top)

    def pulmonary_vessels(self) -> None:
        """Pulmonary arteries beyond the labelled trunk and the pulmonary veins, out to the hila."""
        q = self.q
        w = self.to_world
        lm = self.lm
        arteries, veins = [], []
        r_branch = 9.8 * self.p.heart.pulmonary
        for side, key in ((1.0, "lpa_end"), (-1.0, "rpa_end")):
            end = w(lm[key])
            along = unit(end - w(lm["bifurcation"]))
            hil = self.hila[side] + (0.0, -6.0, 6.0)
            # On from the labelled stump in its own direction, then to the hilum (the right branch
            # behind the superior vena cava).
            arteries.append(tube(q, bezier([end - 4.0 * along, end + 22.0 * along, hil], 4), (r_branch, 7.0)))
            for dy, dz in ((-25.0, 30.0), (10.0, -45.0), (30.0, -5.0)):
                arteries.append(tube(q, bezier([hil, hil + (side * 25.0, dy * 0.5, dz * 0.5), hil + (side * 45.0, dy, dz)], 3), (5.5, 3.0)))
        r_vein = 7.5 * self.p.heart.veins * np.sqrt(self.p.heart.la)
        for (inner, vein_end) in lm["pulmonary_vein_paths"]:
            start, along = w(vein_end), unit(w(vein_end) - w(inner))
            side = 1.0 if along[0] > 0 else -1.0
            target = start + (side * 45.0, 18.0, 6.0 if vein_end[2] > lm["la"][2] else -16.0)
            veins.append(tube(q, bezier([start - 6.0 * along, start + 18.0 * along, target], 4), (r_vein, 5.0)))
        self.d_pulm_artery = np.minimum.reduce(arteries)
        self.d_pulm_vein = np.minimum.reduce(veins)

    # -- diaphragm and abdomen -----------------------------------------------------------------------
    def heart_support(self, step: float = 3.0) -> None:
        """The heart's underside as maps on a fixed (y, x) lattice of the case (grid-independent):
        ``support`` (the heart's inferior wall where it lies within 25 mm of its lowest point,
        spread 40 mm sideways with a downward slope of 0.5 mm/mm, so the diaphragm rises to carry
        the heart) and ``ceiling`` (the lowest pericardial point of every column, which the
        diaphragm never passes: the right atrium or the outflow tracts may overhang it, but never
        sit inside the liver)."""
        p = self.p
        lo_h, hi_h = (np.asarray(b, dtype=np.float64) for b in p.heart.box)
        corners = np.array([[a[0], b[1], c[2]] for a in (lo_h, hi_h) for b in (lo_h, hi_h) for c in (lo_h, hi_h)])
        world = self.to_world(corners)
        lo = np.floor((world.min(0) - (45.0, 45.0, 0.0)) / step) * step
        hi = np.ceil((world.max(0) + (45.0, 45.0, 0.0)) / step) * step
        axes = [np.arange(a, b + step / 2, step, dtype=np.float32) for a, b in zip(lo, hi)]
        zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        q = np.stack([xx.ravel(), yy.ravel(), zz.ravel()])
        _, outer, _, fat = self.heart_fields(q)
        e = (outer - fat - 1.5).reshape(zz.shape)  # < 0 inside the pericardium
        inside = e < 0
        hit = inside.any(axis=0)
        first = np.argmax(inside, axis=0)
        below = np.maximum(first - 1, 0)
        e_in = np.take_along_axis(e, first[None], 0)[0]
        e_out = np.take_along_axis(e, below[None], 0)[0]
        # Sub-lattice height of the envelope's lowest point: where e crosses zero below ``first``.
        frac = np.where(first > 0, e_out / np.maximum(e_out - e_in, 1e-6), 0.0)
        lowest = np.where(hit, axes[2][below] + step * np.clip(frac, 0.0, 1.0), np.inf)
        self.heart_floor = float(lowest[hit].min()) if hit.any() else -60.0
        contact = np.where(lowest < self.heart_floor + 25.0, lowest, -1e4)
        radius = int(round(40.0 / step))
        ky, kx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        dist = np.hypot(ky, kx) * step
        footprint = dist <= 40.0
        support = ndimage.grey_dilation(contact, footprint=footprint, structure=np.where(footprint, -0.5 * dist, 0.0))
        self.support_map = np.where(support < -5e3, -1e4, support + 0.5).astype(np.float32)
        self.ceiling_map = np.where(hit, lowest + 0.5, 1e4).astype(np.float32)
        self.support_origin, self.support_step = (float(axes[1][0]), float(axes[0][0])), step

    def _at_columns(self, grid: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Bilinear lookup of a (y, x) support-lattice map at the canvas points ``idx``."""
        (y0, x0), step = self.support_origin, self.support_step
        coords = np.stack([(self.q[1, idx] - y0) / step, (self.q[0, idx] - x0) / step])
        return ndimage.map_coordinates(grid, coords, order=1, mode="nearest").astype(np.float32)

    def diaphragm(self) -> np.ndarray:
        """Points below the diaphragm (the abdomen), the dome shaped around the heart's underside."""
        p = self.p
        qx, qy, qz = self.q
        bx, by = p.body_center
        r2 = (qy - by - 5.0) ** 2
        curvature = 0.005 / p.heart_scale
        self.heart_support()
        floor = self.heart_floor
        self.dome_right, self.dome_left = floor + p.dome_right, floor + p.dome_left
        dome = np.maximum(self.dome_right - curvature * ((qx - bx + 0.35 * p.half_width) ** 2 + r2),
                          self.dome_left - curvature * ((qx - bx - 0.4 * p.half_width) ** 2 + r2))
        dome -= 0.25 * np.clip(qy - by, 0.0, None)  # deeper posterior recesses
        # The heart's maps only matter below their highest point (the diaphragm's reach).
        surface = dome.copy()
        cap = max(float(self.support_map.max()), float(dome.max())) + 1.0
        near = np.flatnonzero(qz < cap)
        surface[near] = np.minimum(np.maximum(dome[near], self._at_columns(self.support_map, near)),
                                   self._at_columns(self.ceiling_map, near))
        self.diaphragm_depth = surface - qz  # mm below the diaphragm's upper surface
        return (qz < surface) & (self.heart_outer > self.fat_thickness + 2.0)

    def abdomen(self, below: np.ndarray) -> None:
        p, c = self.p, self.c
        qx, qy, qz = self.q
        bx, by = p.body_center
        abdomen = self.cavity & below & ~self.spine_region
        c.paint(abdomen, T.ABDOMEN)
        # The diaphragm itself, a muscle sheet between the pericardium or lungs and the abdomen.
        sheet = abdomen & (self.diaphragm_depth < 3.0 + 2.0 * (p.seed % 3))
        abdomen = abdomen & ~sheet
        liver = abdomen & (qx - bx < p.liver_reach + 0.35 * (by - qy) - 0.25 * np.clip(self.dome_left - qz, 0, None))
        c.paint(liver, T.LIVER)
        sz = self.dome_left - 40.0
        stomach = ellipsoid(self.q, (bx + 0.45 * p.half_width, by - 15.0, sz), (0.28 * p.half_width, 38.0, 42.0)) < 0
        c.paint(abdomen & ~liver & stomach, T.STOMACH)
        c.paint(abdomen & ~liver & stomach & (qy < by - 28.0), T.GAS)
        spleen_at = (bx + 0.62 * p.half_width, by + 0.45 * p.half_depth, self.dome_left - 45.0)
        spleen = ellipsoid(self.q, spleen_at, (24.0, 0.32 * p.half_depth, 50.0)) < 0
        c.paint(abdomen & ~liver & spleen, T.SPLEEN)
        for side in (-1.0, 1.0):
            kidney = ellipsoid(self.q, (bx + side * 70.0, by + 0.55 * p.half_depth, self.dome_right - 115.0), (28.0, 22.0, 55.0)) < 0
            c.paint(abdomen & kidney, T.KIDNEY)
        c.paint(sheet, T.MUSCLE)
        self.abdomen_mask = abdomen | sheet

    # -- lungs and mediastinum -----------------------------------------------------------------------
    def lungs(self, below: np.ndarray) -> None:
        p, c = self.p, self.c
        qx, qy, qz = self.q
        bx, by = p.body_center
        sx, sy = p.spine_center
        vessels = np.minimum.reduce([self.d_arch, self.d_branches, self.d_svc, self.d_azygos, self.d_ivc])
        # The mediastinum between the lungs: narrow in front of the heart, wider above it.
        centre_x = bx + 4.0 + 0.08 * np.clip(qz, -100, 0)
        superior = np.clip((qz - 40.0 * p.heart_scale) / 40.0, 0.0, 1.0)
        band = np.where(qy > sy - p.spine_radius - 40.0, 22.0, 5.0 + 20.0 * superior)
        mediastinum = (np.abs(qx - centre_x) < band) & (qy < sy + p.spine_radius)
        mediastinum |= self.heart_envelope(1.0) | (vessels < 3.0) | (self.d_eso < 4.0) | self.spine_region
        mediastinum |= (self.d_airway < 2.5) & (np.abs(qx - sx) < 32.0)
        mediastinum |= self.d_svc_aorta < 0
        mediastinum |= (self.d_pulm_artery < 2.0) & (np.abs(qx - sx) < 60.0)
        lung = self.cavity & ~below & ~mediastinum
        li = np.flatnonzero(lung)
        lq = self.q[:, li]
        (f1, ph1), (f2, ph2) = self.p.vessel_waves
        field1 = np.cos((2 * np.pi * f1).astype(np.float32) @ lq + ph1.astype(np.float32)[:, None]).sum(0)
        field2 = np.cos((2 * np.pi * f2).astype(np.float32) @ lq + ph2.astype(np.float32)[:, None]).sum(0)
        r_hil = np.minimum.reduce([np.sqrt(((lq - h.astype(np.float32)[:, None]) ** 2).sum(0)) for h in self.hila.values()])
        thick = 0.36 * (1.0 + 1.2 * np.exp(-r_hil / 50.0))
        vessel = (np.abs(field1) < thick) & (np.abs(field2) < thick)
        tissue = np.where(vessel, int(T.LUNG_VESSEL), int(T.LUNG)).astype(np.uint8)
        tissue[(self.d_pulm_artery[li] < 0) | (self.d_pulm_vein[li] < 0)] = int(T.LUNG_VESSEL)
        c.tissue[li] = tissue
        self.lung = lung

    def mediastinum(self) -> None:
        """Mediastinal fat, esophagus, airway, great vessels with their walls; nodes and thymus."""
        c = self.c
        inner = self.cavity & ~self.lung & ~self.abdomen_mask & ~self.spine_region
        c.paint(inner, T.MEDIASTINAL_FAT)
        nodes = np.full(self.q.shape[1], FAR, dtype=np.float32)
        rng = np.random.default_rng([self.p.seed, 5])
        carina = self.airway[0][0][1]
        for _ in range(int(rng.integers(2, 8))):
            at = carina + rng.normal(0.0, 1.0, size=3) * (22.0, 14.0, 18.0) + (0.0, -15.0, 0.0)
            nodes = np.minimum(nodes, ellipsoid(self.q, at, rng.uniform(3.0, 8.0, size=3)))
        c.paint(inner & (nodes < 0), T.SOFT)
        c.paint(self.d_eso < 0, T.SOFT)
        c.paint(self.d_airway < 2.0, T.SOFT)
        c.paint(self.d_airway < 0, T.AIRWAY)
        for d, lumen in ((self.d_arch, T.ARTERY), (self.d_branches, T.ARTERY), (self.d_svc, T.SVC),
                         (self.d_azygos, T.SVC), (self.d_ivc, T.IVC), (self.d_pulm_artery, T.PULMONARY_BRANCH),
                         (self.d_pulm_vein, T.PULMONARY_VEIN)):
            near = (d < 1.8) & ~self.lung
            c.paint(near, T.SOFT)
            c.paint(d < 0, lumen)

    def dense(self) -> None:
        """Calcified plaques on the aortic wall and, in some cases, a stent graft in the descending aorta."""
        p, c = self.p, self.c
        rng = np.random.default_rng([p.seed, 9])
        spots = np.full(self.q.shape[1], FAR, dtype=np.float32)
        for _ in range(p.calcium):
            path = self.calcium_paths[int(rng.integers(len(self.calcium_paths)))]
            at = path[int(rng.integers(len(path)))] + rng.normal(0.0, 9.0, size=3)
            spots = np.minimum(spots, ellipsoid(self.q, at, rng.uniform(1.0, 3.5, size=3)))
        c.paint((spots < 0) & (self.d_arch > -4.0) & (self.d_arch < 2.0), T.DENSE)
        if p.stent:
            qz = self.q[2]
            z0 = rng.uniform(-60.0, 20.0)
            strut = (np.abs(self.d_arch + 0.8) < 0.9) & (np.mod(qz, 8.0) < 2.5) & (qz > z0) & (qz < z0 + 110.0)
            c.paint(strut, T.DENSE)


def render_chest(params: ChestParams, points: np.ndarray, shape: tuple[int, int, int],
                 spacing: tuple[float, float, float]) -> np.ndarray:
    """Tissue values (uint8, (N,)) at the grid ``points`` (3, N) (physical mm, z-major order of a
    (z, y, x) grid of ``shape`` with identity direction and ``spacing`` (x, y, z))."""
    q = (points + wave_field(points, *params.warp)).astype(np.float32)
    canvas = _Canvas(q, np.zeros(points.shape[1], dtype=np.uint8), shape, spacing)
    chest = _Chest(params, canvas)
    chest.heart()
    chest.body_wall()
    chest.extremities()
    chest.ribs()
    chest.spine()
    chest.great_vessels()
    chest.shoulders()
    chest.pulmonary_vessels()
    below = chest.diaphragm()
    chest.abdomen(below)
    chest.lungs(below)
    chest.mediastinum()
    chest.paint_heart()
    chest.dense()
    return canvas.tissue


def heart_to_world(params: ChestParams, h) -> np.ndarray:
    """Heart-frame point(s) (3,) or (M, 3) -> physical mm (anatomy space, before the warp)."""
    h = np.asarray(h, dtype=np.float64)
    stretch = params.heart_scale * np.asarray(params.heart_aspect)[:, None]
    return (params.heart_rotation @ (stretch * h.reshape(-1, 3).T)).T.reshape(h.shape)


def case_grid(params: ChestParams, spacing: float = 2.0) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """(size (x, y, z), origin) of the identity-direction grid of ``spacing`` mm covering the case."""
    lo, hi = params.extent
    size = tuple(int(np.ceil((b - a) / spacing)) + 1 for a, b in zip(lo, hi))
    return size, tuple(float(v) for v in lo)  # type: ignore[return-value]


def heart_region(params: ChestParams, margin_mm: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi): a physical box (mm, LPS) holding the heart, its epicardial fat and pericardium,
    the roots of its vessels and ``margin_mm`` more on every side."""
    heart = params.heart
    room = 26.0 / heart.scale + 4.0  # what fit_volumes added around the heart's tissues
    lo_h, hi_h = np.asarray(heart.box[0]) + room, np.asarray(heart.box[1]) - room
    corners = np.array([[a[0], b[1], c[2]] for a in (lo_h, hi_h) for b in (lo_h, hi_h) for c in (lo_h, hi_h)])
    stretch = params.heart_scale * np.asarray(params.heart_aspect)
    world = (params.heart_rotation @ (stretch[:, None] * corners.T)).T
    warp = float(np.abs(params.warp[2]).sum(axis=0).max())  # the anatomy warp's largest displacement
    pad = margin_mm + 26.0 + warp
    lo, hi = params.extent
    return np.maximum(world.min(0) - pad, lo), np.minimum(world.max(0) + pad, hi)


def _grid_points(origin, spacing: float, start, count) -> np.ndarray:
    """(3, N) points of voxels ``start`` .. ``start + count - 1`` (x, y, z) of a case grid, z-major;
    the same float32 values for a voxel whatever the sub-grid."""
    axes = [origin[k] + spacing * np.arange(start[k], start[k] + count[k], dtype=np.float32) for k in range(3)]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return np.stack([xx.ravel(), yy.ravel(), zz.ravel()]).astype(np.float32)


def render_case(seed: int, spacing: float = 2.0, region: str = "chest", margin_mm: float = 20.0):
    """The tissue map of case ``seed`` as a uint8 ``SimpleITK.Image`` (identity direction, LPS mm).

    ``region="chest"`` renders the whole case (:func:`case_grid`); ``region="heart"`` only the box
    of :func:`heart_region` (``margin_mm`` around the heart), on the same grid: every voxel it holds
    has the value of the same voxel of the whole render, so a fine heart bank costs a fraction of a
    fine chest.
    """
    import SimpleITK as sitk

    params = sample_chest(seed)
    size, origin = case_grid(params, spacing)
    start, count = np.zeros(3, dtype=int), np.asarray(size)
    if region == "heart":
        lo, hi = heart_region(params, margin_mm)
        start = np.clip(np.floor((lo - np.asarray(origin)) / spacing).astype(int), 0, count - 1)
        stop = np.clip(np.ceil((hi - np.asarray(origin)) / spacing).astype(int), 0, count - 1)
        count = stop - start + 1
    elif region != "chest":
        raise ValueError(f"region must be 'chest' or 'heart', not {region!r}")
    points = _grid_points(origin, spacing, start, count)
    shape = (int(count[2]), int(count[1]), int(count[0]))
    tissue = render_chest(params, points, shape, (spacing,) * 3).reshape(shape)
    image = sitk.GetImageFromArray(tissue)
    image.SetSpacing((spacing,) * 3)
    image.SetOrigin(tuple(float(origin[k] + spacing * start[k]) for k in range(3)))
    return image

"""Implicit shapes for procedural anatomy: approximate signed distances in mm (negative inside).

Every function takes points ``p`` as a (3, N) float32 array of physical coordinates (mm, LPS) and
returns (N,) distances, so that anatomy can be evaluated on any grid (or any point set) without
voxelizing intermediate shapes. Shapes far from a point return a large positive value cheaply
(:data:`FAR`), which keeps whole-body rendering affordable on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FAR = np.float32(1e4)
"""The "distance" reported for points outside a shape's bounding box."""


def unit(v: Sequence[float]) -> np.ndarray:
    """``v`` scaled to length 1 (float64)."""
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def frame(long_axis: Sequence[float], toward: Sequence[float] | None = None) -> np.ndarray:
    """Rows (e1, e2, e3): e3 = ``long_axis``, e1 = the part of ``toward`` orthogonal to it."""
    e3 = unit(long_axis)
    t = np.asarray(toward if toward is not None else (0.0, 0.0, 1.0), dtype=np.float64)
    e1 = t - (t @ e3) * e3
    if np.linalg.norm(e1) < 1e-6:
        e1 = np.cross(e3, (1.0, 0.0, 0.0))
    e1 = e1 / np.linalg.norm(e1)
    return np.stack([e1, np.cross(e3, e1), e3])


def ellipsoid(p: np.ndarray, center: Sequence[float], axes: Sequence[float], rows: np.ndarray | None = None) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid; ``rows`` (3, 3) are its axis directions."""
    q = p - np.asarray(center, dtype=np.float32)[:, None]
    if rows is not None:
        q = rows.astype(np.float32) @ q
    a = np.asarray(axes, dtype=np.float32)[:, None]
    q /= a
    k0 = np.sqrt((q * q).sum(0))
    q /= a
    k1 = np.sqrt((q * q).sum(0))
    # k0 (k0 - 1) / k1: a close, cheap estimate of the Euclidean distance near the surface.
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def bezier(points: Sequence[Sequence[float]], n: int = 10) -> np.ndarray:
    """(n + 1, 3) points along the Bezier curve of control ``points`` (de Casteljau)."""
    ctrl = np.asarray(points, dtype=np.float64)
    out = []
    for t in np.linspace(0.0, 1.0, n + 1):
        c = ctrl.copy()
        while len(c) > 1:
            c = (1 - t) * c[:-1] + t * c[1:]
        out.append(c[0])
    return np.asarray(out)


def in_box(p: np.ndarray, lo: Sequence[float], hi: Sequence[float]) -> np.ndarray:
    """Indices of the points (3, N) inside the axis-aligned box [lo, hi]."""
    m = (p[0] >= lo[0]) & (p[0] <= hi[0])
    m &= (p[1] >= lo[1]) & (p[1] <= hi[1])
    m &= (p[2] >= lo[2]) & (p[2] <= hi[2])
    return np.flatnonzero(m)


def tube(p: np.ndarray, path: np.ndarray, radius: Sequence[float] | float, margin: float = 12.0) -> np.ndarray:
    """Signed distance (mm) to a tube along polyline ``path`` (M, 3).

    ``radius`` is one number or (start, end), linear in arc length. Points farther than ``margin``
    outside the tube's bounding box get :data:`FAR`.
    """
    path = np.asarray(path, dtype=np.float32)
    r0, r1 = (float(radius), float(radius)) if np.ndim(radius) == 0 else (float(radius[0]), float(radius[1]))  # type: ignore[index]
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)]) / max(float(seg.sum()), 1e-6)
    r = (r0 + (r1 - r0) * arc).astype(np.float32)
    out = np.full(p.shape[1], FAR, dtype=np.float32)
    idx = in_box(p, path.min(0) - r.max() - margin, path.max(0) + r.max() + margin)
    if idx.size == 0:
        return out
    sub = p[:, idx]
    best = np.full(idx.size, FAR, dtype=np.float32)
    for i in range(len(path) - 1):
        a, ab = path[i], path[i + 1] - path[i]
        diff = sub - a[:, None]
        t = np.clip((ab @ diff) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
        diff -= ab[:, None] * t
        d = np.sqrt((diff * diff).sum(0)) - (r[i] + t * (r[i + 1] - r[i]))
        np.minimum(best, d, out=best)
    out[idx] = best
    return out


def wave_field(p: np.ndarray, freqs: np.ndarray, phases: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Sum of plane waves: ``sum_k amps[k] sin(2 pi freqs[k] . p + phases[k])``; (C, N) for amps (K, C)."""
    arg = (2 * np.pi * freqs).astype(np.float32) @ p + phases.astype(np.float32)[:, None]  # (K, N)
    return amps.T.astype(np.float32) @ np.sin(arg)


def random_rotation(rng: np.random.Generator, max_deg: float, min_deg: float = 0.0) -> np.ndarray:
    """A rotation matrix about a random axis by an angle drawn in [min_deg, max_deg]."""
    axis = unit(rng.normal(size=3))
    angle = np.deg2rad(rng.uniform(min_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def random_waves(rng: np.random.Generator, count: int, wavelength_mm: tuple[float, float],
                 amplitude: float, channels: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parameters (freqs (K, 3), phases (K,), amps (K, C)) of a smooth random field for :func:`wave_field`
    whose standard deviation is about ``amplitude``."""
    dirs = rng.normal(size=(count, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freqs = dirs / rng.uniform(*wavelength_mm, size=(count, 1))
    amps = rng.normal(size=(count, channels)) * amplitude * np.sqrt(2.0 / count)
    return freqs, rng.uniform(0, 2 * np.pi, size=count), amps

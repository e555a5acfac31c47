"""Appearance transforms of the Models Genesis family (used by GVSL for the restoration task) and
a light spatial augmentation.

Appearance transforms work on one (D, H, W) float32 array in [0, 1] with an explicit
``numpy.random.Generator``, so a sample is a pure function of its seed (resumable, worker-safe).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .spatial import affine_to_displacement


@dataclass
class AppearanceConfig:
    """Probabilities of each transform (the authors' training defaults)."""

    local_shuffle: float = 0.8
    nonlinear: float = 0.9
    paint: float = 0.9
    inpaint_given_paint: float = 0.2  # else out-painting
    shuffle_blocks: int = 2000


def bezier_intensity(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map intensities through a random cubic Bezier curve from (0, 0) to (1, 1), or its mirror.

    Monotone in x (the curve's x is monotone when both inner control points lie in [0, 1]^2);
    half of the time the output is inverted, as in Models Genesis.
    """
    p1, p2 = rng.random(2), rng.random(2)
    t = np.linspace(0.0, 1.0, 1000)
    bx = 3 * (1 - t) ** 2 * t * p1[0] + 3 * (1 - t) * t**2 * p2[0] + t**3
    by = 3 * (1 - t) ** 2 * t * p1[1] + 3 * (1 - t) * t**2 * p2[1] + t**3
    if rng.random() < 0.5:
        by = 1.0 - by  # inverted curve
    order = np.argsort(bx)
    return np.interp(x, bx[order], by[order]).astype(np.float32)


def local_pixel_shuffle(x: np.ndarray, rng: np.random.Generator, blocks: int = 2000) -> np.ndarray:
    """Shuffle voxels inside many small random blocks (each block ~1/20 of the extent per axis).

    Destroys local texture while keeping the global intensity layout; vectorized gather/scatter.
    """
    shape = np.array(x.shape)
    size = np.maximum(1, shape // 20)
    if np.any(size >= shape):
        return x.copy()
    starts = np.stack([rng.integers(0, s - b, size=blocks) for s, b in zip(shape, size)], axis=1)
    offsets = np.stack(np.meshgrid(*[np.arange(b) for b in size], indexing="ij"), axis=-1).reshape(-1, 3)
    coords = starts[:, None, :] + offsets[None, :, :]  # (blocks, n, 3)
    flat = np.ravel_multi_index((coords[..., 0], coords[..., 1], coords[..., 2]), x.shape)
    values = x.reshape(-1)[flat]
    values = rng.permuted(values, axis=1)
    out = x.copy().reshape(-1)
    out[flat] = values
    return out.reshape(x.shape)


def _random_box(rng: np.random.Generator, shape, lo: float, hi: float):
    sizes = [int(rng.integers(max(1, int(s * lo)), max(2, int(s * hi)))) for s in shape]
    starts = [int(rng.integers(0, max(1, s - b))) for s, b in zip(shape, sizes)]
    return tuple(slice(a, a + b) for a, b in zip(starts, sizes))


def inpaint(x: np.ndarray, rng: np.random.Generator, max_boxes: int = 5) -> np.ndarray:
    """Replace a few random boxes (1/10 to 1/5 of the extent per axis... up to 1/3) by uniform noise."""
    out = x.copy()
    for _ in range(int(rng.integers(1, max_boxes + 1))):
        box = _random_box(rng, x.shape, 0.1, 0.33)
        out[box] = rng.random(out[box].shape, dtype=np.float32)
    return out


def outpaint(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep one large inner box (about 1/2 to 4/5 of the extent) and fill the rest with noise."""
    out = rng.random(x.shape, dtype=np.float32)
    box = _random_box(rng, x.shape, 0.5, 0.8)
    out[box] = x[box]
    return out


def appearance_transform(x: np.ndarray, rng: np.random.Generator, config: AppearanceConfig | None = None) -> np.ndarray:
    """The transform t of the paper: shuffle, then intensity curve, then in- or out-painting."""
    cfg = config or AppearanceConfig()
    out = np.asarray(x, dtype=np.float32)
    if rng.random() < cfg.local_shuffle:
        out = local_pixel_shuffle(out, rng, cfg.shuffle_blocks)
    if rng.random() < cfg.nonlinear:
        out = bezier_intensity(out, rng)
    if rng.random() < cfg.paint:
        out = inpaint(out, rng) if rng.random() < cfg.inpaint_given_paint else outpaint(out, rng)
    return out.astype(np.float32, copy=False)


def random_affine_displacement(
    batch: int,
    shape,
    generator: torch.Generator | None = None,
    *,
    max_rotation: float = np.pi / 12,
    max_scale: float = 0.15,
    max_translation: float = 0.05,
    device=None,
) -> torch.Tensor:
    """Random affine pull fields (B, 3, D, H, W) for spatial augmentation, one per sample.

    Shared by every view of a sample (fixed, its transformed copy, moving) so that the
    correspondence between them is unchanged, as in the authors' training.
    """
    from .nets.gvsl import affine_matrix_from_parameters

    def uniform(n: int, bound: float) -> torch.Tensor:
        return (torch.rand(batch, n, generator=generator) * 2 - 1) * bound

    extent = torch.tensor([shape[2] - 1, shape[1] - 1, shape[0] - 1], dtype=torch.float32)
    matrix = affine_matrix_from_parameters(
        uniform(3, max_rotation), 1 + uniform(3, max_scale), uniform(3, max_translation) * extent, torch.zeros(batch, 6)
    )
    return affine_to_displacement(matrix.to(device), shape)

"""Training samples from a bank of synthetic chests: a random view, painted, at the working grid.

A sample is a pure function of (seed, index): pick a case of the bank, a centre (near the heart for
a fraction ``foreground`` of samples, anywhere in the body otherwise), a pose (rotation, scale and a
smooth elastic warp about that centre); sample the tissue map through that pose on a fine grid
(the bank's spacing) with nearest neighbour; paint it (:mod:`gvslcore.synth.appearance`), blur it,
then take the working grid's voxels from it by trilinear interpolation; the labels are read from the
bank (nearest neighbour) at the same physical points. Image and labels therefore agree to the
sub-voxel, whatever the pose.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..io import normalize_ct
from .appearance import AppearanceConfig, add_noise, paint, scanner, smooth_noise
from .tissues import Tissue, target_lookup


@dataclass
class BankCase:
    """One tissue map on an identity-direction grid."""

    tissue: torch.Tensor  # (D, H, W) uint8
    origin: np.ndarray  # (x, y, z) mm of voxel (0, 0, 0)
    spacing: float  # mm, isotropic
    heart_voxels: np.ndarray  # (N, 3) z, y, x indices of heart tissue (subsampled)
    body_box: tuple[np.ndarray, np.ndarray]  # (lo, hi) z, y, x indices of the body

    @staticmethod
    def from_image(image: sitk.Image, seed: int = 0) -> BankCase:
        arr = sitk.GetArrayFromImage(image).astype(np.uint8)
        lut = target_lookup()
        heart = np.argwhere(lut[arr] > 0)
        rng = np.random.default_rng(seed)
        if len(heart) > 4000:
            heart = heart[rng.choice(len(heart), 4000, replace=False)]
        body = np.argwhere(arr[::4, ::4, ::4] != int(Tissue.AIR)) * 4
        return BankCase(torch.from_numpy(arr), np.asarray(image.GetOrigin(), dtype=np.float64),
                        float(image.GetSpacing()[0]), heart.astype(np.int32), (body.min(0), body.max(0)))


@dataclass(frozen=True)
class SampleConfig:
    """How views are drawn."""

    patch: tuple[int, int, int] = (80, 80, 80)  # working voxels (z, y, x)
    spacing: float = 3.0  # working grid, mm
    foreground: float = 0.8
    max_rotation_deg: float = 12.0
    scale: tuple[float, float] = (0.88, 1.12)
    elastic_mm: float = 6.0
    centre_jitter_mm: float = 25.0  # sd of a foreground view's centre around a heart voxel
    paint_step: float | None = None  # grid (mm) the tissue map is painted on; None: the bank's spacing
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _grid(n: tuple[int, int, int], step: float) -> torch.Tensor:
    """(D, H, W, 3) offsets (mm, z y x) of a grid of ``n`` voxels of ``step`` mm centred on 0."""
    axes = [(torch.arange(k, dtype=torch.float64) - (k - 1) / 2.0) * step for k in n]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


class SyntheticHeartPatches(torch.utils.data.Dataset):
    """Sample ``index``: (image (1, *patch) float32 in [0, 1], labels (*patch) int64 0..7).

    Args:
        bank: the tissue maps.
        config: view and appearance settings.
        seed: the data stream; sample i of seed s is always the same.
    """

    def __init__(self, bank: list[BankCase], config: SampleConfig = SampleConfig(), seed: int = 0) -> None:
        if not bank:
            raise ValueError("the bank holds no case")
        self.bank = bank
        self.cfg = config
        self.seed = int(seed)
        self.lut = torch.from_numpy(target_lookup().astype(np.int64))

    def __len__(self) -> int:
        return 2**62

    def _centre(self, case: BankCase, rng: np.random.Generator) -> np.ndarray:
        """A view centre in the case's voxel indices (z, y, x)."""
        if len(case.heart_voxels) and rng.random() < self.cfg.foreground:
            voxel = case.heart_voxels[int(rng.integers(len(case.heart_voxels)))].astype(np.float64)
            return voxel + rng.normal(0.0, self.cfg.centre_jitter_mm / case.spacing, size=3)
        lo, hi = case.body_box
        return rng.uniform(lo, hi)

    def view(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The sample's HU at the working grid (D, H, W), its labels, and what was drawn."""
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, 23, int(index)])
        case = self.bank[int(rng.integers(len(self.bank)))]
        centre = self._centre(case, rng)
        linear = _rotation(rng, cfg.max_rotation_deg) @ np.diag(rng.uniform(*cfg.scale, size=3))
        # Painting finer than the working grid needs buys nothing: a coarse model paints coarsely.
        fine_step = max(case.spacing, cfg.paint_step or 0.0)
        extent = np.asarray(cfg.patch) * cfg.spacing
        # The pose is smooth: compute it on a lattice 4x coarser than the fine grid and interpolate
        # (exact for the affine part); fine_n - 1 is a multiple of 4 so that the two grids align.
        coarse_n = tuple(int(np.ceil((e / fine_step + 2) / 4)) + 1 for e in extent)
        fine_n = tuple(4 * (k - 1) + 1 for k in coarse_n)
        offsets = _grid(coarse_n, 4.0 * fine_step)
        warp = torch.stack([smooth_noise(coarse_n, rng, 4) for _ in range(3)], dim=-1).double()
        warp = warp * float(rng.uniform(0.0, cfg.elastic_mm))
        # View frame (mm, z y x) -> case voxel indices: centre + (linear @ offset + warp) / spacing.
        coarse = torch.from_numpy(centre) + ((offsets + warp) @ torch.from_numpy(linear).T) / case.spacing
        coords = F.interpolate(coarse.permute(3, 0, 1, 2)[None].float(), size=fine_n, mode="trilinear",
                               align_corners=True)[0].permute(1, 2, 3, 0)
        tissue = _sample_nearest(case.tissue, coords)
        hu, phase = paint(tissue, fine_step, rng, cfg.appearance)
        hu = scanner(hu, fine_step, rng, cfg.appearance)
        # Working voxels: their centres, in fine-grid index units.
        work = _grid(cfg.patch, cfg.spacing) / fine_step + (torch.tensor(fine_n, dtype=torch.float64) - 1) / 2.0
        image = _sample(hu[None, None], work, "bilinear")[0, 0]
        # Labels straight from the bank at the working voxels' centres (one rounding, not two).
        work_coords = _sample(coords.permute(3, 0, 1, 2)[None], work, "bilinear")[0].permute(1, 2, 3, 0)
        labels = self.lut[_sample_nearest(case.tissue, work_coords)]
        image = add_noise(image, rng, cfg.appearance)
        if rng.random() < cfg.appearance.p_fov_cut:
            image = _fov_cut(image, rng)
        return image, labels, {"phase": phase, "case": case}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels, _ = self.view(index)
        x = torch.from_numpy(normalize_ct(image.numpy()))
        return x[None].float(), labels


def _normalized(coords: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Index coordinates (..., 3) z y x -> grid_sample's (..., 3) x y z in [-1, 1] (align_corners)."""
    size = torch.tensor(shape, dtype=coords.dtype)
    norm = 2.0 * coords / (size - 1).clamp_min(1) - 1.0
    return norm.flip(-1)


def _sample(volume: torch.Tensor, coords: torch.Tensor, mode: str) -> torch.Tensor:
    """``grid_sample`` of (1, 1, D, H, W) at index coordinates (d, h, w, 3)."""
    grid = _normalized(coords, tuple(volume.shape[2:])).float()[None]
    return F.grid_sample(volume, grid, mode=mode, padding_mode="border", align_corners=True)


def _sample_nearest(tissue: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Tissue values (long) at index coordinates (d, h, w, 3) by nearest neighbour; outside the map: air."""
    shape = torch.tensor(tissue.shape)
    lo = torch.floor(coords.reshape(-1, 3).amin(0)).long().clamp(min=0)
    hi = (torch.ceil(coords.reshape(-1, 3).amax(0)).long() + 1).minimum(shape)
    if (hi <= lo).any():
        return torch.zeros(coords.shape[:-1], dtype=torch.long)
    crop = tissue[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].float()[None, None]
    local = coords - lo.to(coords.dtype)
    grid = _normalized(local, tuple(crop.shape[2:])).float()[None]
    values = F.grid_sample(crop, grid, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0]
    return values.long()


def _fov_cut(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The reconstruction circle of a narrow field of view: air outside a random vertical cylinder."""
    d, h, w = image.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    radius = rng.uniform(0.45, 0.8) * max(h, w)
    outside = ((yy - cy) ** 2 + (xx - cx) ** 2) > radius**2
    return torch.where(outside[None], torch.full_like(image, -1024.0), image)

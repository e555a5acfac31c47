"""The training data of a fine-tuning run: (image, labels) cases matched by name, read, checked,
resampled and split; and the training patches (foreground oversampling, spatial and intensity
augmentation), each a pure function of (seed, index).

Arrays are (z, y, x) = (D, H, W); images in [0, 1] float32, labels uint8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..data import Preprocessing, preprocess_image
from ..errors import InputError
from ..io import list_images, read_image, resample_to_spacing, same_geometry
from ..labels import LabelTable


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def pair_cases(images: str | Path, labels: str | Path) -> list[tuple[Path, Path]]:
    """(image, label) files matched by name (``case_000.nii.gz`` in both folders; the extension
    may differ). Every image needs a label map."""
    image_files = list_images(images)
    if not image_files:
        raise InputError(f"{images} holds no NIfTI/NRRD/MHA volume or DICOM series; point --images at the image folder")
    label_files = {_stem(p): p for p in list_images(labels)}
    pairs = []
    for img in image_files:
        lab = label_files.get(_stem(img))
        if lab is None:
            raise InputError(f"no label map for {img.name} in {labels}; give each image a label file of the same name")
        pairs.append((img, lab))
    return pairs


@dataclass
class Case:
    """One preprocessed training case on the working grid."""

    name: str
    image: np.ndarray  # (D, H, W) float32 in [0, 1]
    labels: np.ndarray  # (D, H, W) uint8
    foreground: dict[int, np.ndarray]  # class -> (N, 3) voxel indices (subsampled)


def load_case(image_path: Path, label_path: Path, prep: Preprocessing, table: LabelTable, cache: Path | None = None,
              max_locations: int = 20000, seed: int = 0) -> Case:
    """Read, check, resample and normalize one (image, labels) pair.

    Raises:
        InputError: different grids, label values unknown to ``table``.
    """
    image = read_image(image_path)
    labels = read_image(label_path, label=True)
    if not same_geometry(image, labels):
        raise InputError(
            f"image {image_path} and labels {label_path} lie on different grids (size {image.GetSize()} vs "
            f"{labels.GetSize()}, spacing/origin/direction may differ too); resample the labels onto the image grid"
        )
    values = set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist()) - {0}
    unknown = sorted(values - set(table.values))
    if unknown:
        known = ", ".join(f"{lab.value} {lab.name}" for lab in table)
        raise InputError(
            f"{label_path} has label values {unknown} that the label table does not know (it has {known}); "
            "relabel the file or give a matching --label-table"
        )
    arr, resampled = preprocess_image(image, prep)
    lab_img = resample_to_spacing(labels, prep.spacing, label=True)
    lab = sitk.GetArrayFromImage(lab_img).astype(np.uint8)
    if lab.shape != arr.shape:  # same input grid -> same output grid; guard against rounding surprises
        lab = sitk.GetArrayFromImage(sitk.Resample(labels, resampled, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    rng = np.random.default_rng([seed, len(image_path.name)])
    fg = {}
    for v in sorted(values):
        where = np.argwhere(lab == v)
        if len(where) > max_locations:
            where = where[rng.choice(len(where), max_locations, replace=False)]
        if len(where):
            fg[int(v)] = where.astype(np.int32)
    return Case(_stem(image_path), arr.astype(np.float32), lab, fg)


def split_cases(names: list[str], val_fraction: float, val_cases: int | None, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices), a deterministic shuffle by ``seed``; no validation
    with a single case."""
    n = len(names)
    order = list(np.random.default_rng([seed, 7]).permutation(n))
    n_val = val_cases if val_cases is not None else math.ceil(val_fraction * n) if val_fraction > 0 else 0
    n_val = min(max(0, n_val), n - 1)
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return train, val


def _crop(volume: np.ndarray, start: np.ndarray, size: tuple[int, ...], fill: float) -> np.ndarray:
    """Crop ``size`` at ``start`` (may extend beyond the volume: padded with ``fill``)."""
    out = np.full(size, fill, dtype=volume.dtype)
    src = [slice(max(0, s), min(d, s + n)) for s, n, d in zip(start, size, volume.shape)]
    dst = [slice(a.start - s, a.stop - s) for a, s in zip(src, start)]
    if all(a.stop > a.start for a in src):
        out[tuple(dst)] = volume[tuple(src)]
    return out


@dataclass
class AugmentConfig:
    """Augmentation probabilities and ranges (nnU-Net-like, no mirroring)."""

    p_spatial: float = 0.5
    max_rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    p_contrast: float = 0.3
    contrast: tuple[float, float] = (0.75, 1.25)
    p_brightness: float = 0.3
    brightness: tuple[float, float] = (-0.05, 0.05)
    p_noise: float = 0.2
    noise_std: float = 0.03


def _rotation_matrix(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    mats = []
    for axis, a in enumerate(angles):
        c, s = np.cos(a), np.sin(a)
        m = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        mats.append(m)
    return mats[0] @ mats[1] @ mats[2]


def spatial_sample(image: np.ndarray, labels: np.ndarray, centre: np.ndarray, patch: tuple[int, int, int],
                   matrix: np.ndarray, spacing_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample a patch around ``centre`` (voxel, z y x) through ``matrix`` (rotation x scale, mm).

    Output voxel p maps to input ``centre + S^-1 M S (p - c_patch)`` (S the spacing), so rotations
    stay rotations on anisotropic grids. A region large enough for any such patch is cropped first,
    so padding only appears beyond the volume itself.
    """
    half = (np.asarray(patch) - 1) / 2.0
    linear = np.diag(1 / spacing_zyx) @ matrix @ np.diag(spacing_zyx)
    reach = np.abs(linear) @ half
    lo = np.floor(centre - reach).astype(int) - 1
    size = tuple(int(x) for x in (np.ceil(centre + reach).astype(int) + 2 - lo))
    region_img = torch.from_numpy(_crop(image, lo, size, 0.0))[None, None]
    region_lab = torch.from_numpy(_crop(labels, lo, size, 0).astype(np.float32))[None, None]
    grid = np.stack(np.meshgrid(*[np.arange(p, dtype=np.float64) - h for p, h in zip(patch, half)], indexing="ij"), -1)
    coords = grid @ linear.T + (centre - lo)  # voxel coordinates in the region, (z, y, x)
    norm = 2.0 * coords / np.maximum(np.asarray(size) - 1, 1) - 1.0
    g = torch.from_numpy(norm[..., ::-1].copy()).float()[None]  # grid_sample wants (x, y, z)
    img = F.grid_sample(region_img, g, mode="bilinear", padding_mode="border", align_corners=True)[0, 0]
    lab = F.grid_sample(region_lab, g, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0]
    return img.numpy(), lab.numpy().astype(np.uint8)


def intensity_augment(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Gamma, contrast, brightness and noise on a [0, 1] patch."""
    if rng.random() < cfg.p_gamma:
        x = np.clip(x, 0, None) ** rng.uniform(*cfg.gamma)
    if rng.random() < cfg.p_contrast:
        m = float(x.mean())
        x = (x - m) * rng.uniform(*cfg.contrast) + m
    if rng.random() < cfg.p_brightness:
        x = x + rng.uniform(*cfg.brightness)
    if rng.random() < cfg.p_noise:
        x = x + rng.normal(0.0, rng.uniform(0, cfg.noise_std), size=x.shape)
    return x.astype(np.float32)


class SegPatchDataset(torch.utils.data.Dataset):
    """Training patches: sample ``index`` is a pure function of (seed, index) (bit-for-bit resume).

    Returns (image (1, *patch) float32, labels (*patch) int64).
    """

    def __init__(self, cases: list[Case], patch: tuple[int, int, int], spacing_zyx, seed: int = 0,
                 foreground: float = 0.67, augment: AugmentConfig | None = None) -> None:
        if not cases:
            raise InputError("no training cases left after the validation split; add labeled cases")
        self.cases = cases
        self.patch = tuple(int(p) for p in patch)
        self.spacing = np.asarray(spacing_zyx, dtype=np.float64)
        self.seed = int(seed)
        self.foreground = float(foreground)
        self.augment = augment

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 11, int(index)])
        case = self.cases[int(rng.integers(len(self.cases)))]
        shape = np.asarray(case.image.shape)
        patch = np.asarray(self.patch)
        if case.foreground and rng.random() < self.foreground:
            classes = sorted(case.foreground)
            locs = case.foreground[classes[int(rng.integers(len(classes)))]]
            voxel = locs[int(rng.integers(len(locs)))].astype(np.float64)
            # The chosen voxel lands anywhere in the patch's central half, not always the centre.
            centre = voxel + rng.uniform(-0.25, 0.25, size=3) * patch
        else:
            centre = np.array([rng.uniform((p - 1) / 2, max((p - 1) / 2, s - 1 - (p - 1) / 2)) for s, p in zip(shape, patch)])
        aug = self.augment
        # Keep the patch inside the volume, as every inference window is: GroupNorm statistics of
        # a zero-padded patch differ from those of a full window, and a linear probe on frozen
        # features cannot adapt to that difference (measured: it collapsed to background).
        half = (patch - 1) / 2
        centre = np.where(shape >= patch, np.clip(centre, half, shape - 1 - half), (shape - 1) / 2)
        # Patch voxels on whole input voxels: no half-voxel blur of the image against its labels.
        centre = np.round(centre - half) + half
        if aug is not None and rng.random() < aug.p_spatial:
            matrix = _rotation_matrix(rng, aug.max_rotation_deg) * rng.uniform(*aug.scale)
            img, lab = spatial_sample(case.image, case.labels, centre, self.patch, matrix, self.spacing)
        else:
            start = np.round(centre - (patch - 1) / 2).astype(int)
            img = _crop(case.image, start, self.patch, 0.0)
            lab = _crop(case.labels, start, self.patch, 0)
        if aug is not None:
            img = intensity_augment(img, rng, aug)
        return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None], torch.from_numpy(lab.astype(np.int64))



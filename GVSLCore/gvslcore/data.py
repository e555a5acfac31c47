"""Data for training: volumes preprocessed once into a memory-mapped cache, random patches, and
samples that are pure functions of (seed, index) so that runs resume bit-for-bit and DataLoader
workers or distributed ranks never repeat each other.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .atomic import atomic_path
from .augment import AppearanceConfig, appearance_transform
from .errors import InputError
from .io import guess_modality, list_images, normalize, read_image, resample_to_spacing


@dataclass(frozen=True)
class Preprocessing:
    """How a volume becomes a network input: working spacing (mm, x-y-z) and intensity mapping.

    ``modality`` 'auto' picks CT (HU window) or MR (percentiles) per volume.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    modality: str = "auto"


def preprocess_image(image: sitk.Image, prep: Preprocessing) -> tuple[np.ndarray, sitk.Image]:
    """Resample to the working spacing and normalize to [0, 1].

    Returns the (z, y, x) float32 array and the resampled image (whose geometry maps the array).
    """
    modality = guess_modality(image) if prep.modality == "auto" else prep.modality
    background = -1024.0 if modality == "CT" else float(np.min(sitk.GetArrayViewFromImage(image)))
    resampled = resample_to_spacing(image, prep.spacing, default_value=background)
    return normalize(sitk.GetArrayFromImage(resampled), modality), resampled


def collect_volumes(folders: Sequence[str | os.PathLike]) -> list[Path]:
    """Every volume file / DICOM series directly in ``folders`` (an 'images/' sub-folder is used
    when a folder has no volume of its own, so `gvsl phantom` output works as is)."""
    found: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_file():
            found.append(folder)
            continue
        items = list_images(folder)
        if not items and (folder / "images").is_dir():
            items = list_images(folder / "images")
        if not items:
            raise InputError(f"{folder} holds no NIfTI/NRRD/MHA volume or DICOM series; point --data at a folder of volumes")
        found += items
    return found


class VolumeCache:
    """Preprocessed volumes stored once as .npy in ``folder`` and memory-mapped on use.

    The key covers the file's path, size and modification time and the preprocessing, so a
    changed file or setting is preprocessed again; reading never touches the source again.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _key(self, path: Path, prep: Preprocessing) -> str:
        stat = path.stat()
        ident = json.dumps([str(path.resolve()), stat.st_size, int(stat.st_mtime), asdict(prep)])
        return hashlib.sha1(ident.encode()).hexdigest()[:16]

    def get(self, path: str | os.PathLike, prep: Preprocessing) -> np.ndarray:
        path = Path(path)
        target = self.folder / f"{path.name.split('.')[0]}-{self._key(path, prep)}.npy"
        if not target.exists():
            array, _ = preprocess_image(read_image(path), prep)
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, array)
        return np.load(target, mmap_mode="r")


def random_patch(
    volume: np.ndarray, patch: Sequence[int], rng: np.random.Generator, relative: Sequence[float] | None = None
) -> np.ndarray:
    """A (z, y, x) crop of size ``patch``; volumes smaller than the patch are zero-padded (centred)
    first, so any volume size works.

    ``relative`` in [0, 1]^3 places the crop at that fraction of the free range (same anatomy
    region in two scans of one body part); None draws it at random.
    """
    pads = [max(0, p - s) for p, s in zip(patch, volume.shape)]
    if any(pads):
        volume = np.pad(volume, [(d // 2, d - d // 2) for d in pads])
    if relative is None:
        starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(volume.shape, patch)]
    else:
        starts = [int(round(r * (s - p))) for r, s, p in zip(relative, volume.shape, patch)]
    crop = volume[tuple(slice(a, a + p) for a, p in zip(starts, patch))]
    return np.array(crop, dtype=np.float32)


def body_box(volume: np.ndarray, threshold: float = 0.25, step: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) voxel indices (z, y, x) of the voxels above ``threshold`` (the body: -512 HU in the CT
    window), read on every ``step``-th voxel; the whole volume when nothing is above it."""
    sub = np.asarray(volume[::step, ::step, ::step]) > threshold
    where = np.argwhere(sub)
    if where.size == 0:
        return np.zeros(3, dtype=np.int64), np.asarray(volume.shape, dtype=np.int64) - 1
    hi = np.minimum(where.max(0) * step + step - 1, np.asarray(volume.shape) - 1)
    return where.min(0) * step, hi


def body_patch(volume: np.ndarray, box: tuple[np.ndarray, np.ndarray], size: Sequence[int],
               relative: Sequence[float]) -> np.ndarray:
    """A (z, y, x) crop of ``size`` whose centre lies at fraction ``relative`` of the body ``box``
    (zero-padded where it leaves the volume): two scans of a body region cropped at the same
    fraction of their bodies show roughly the same anatomy, whatever their fields of view."""
    lo, hi = (np.asarray(b, dtype=np.float64) for b in box)
    out = np.zeros(tuple(size), dtype=np.float32)
    src, dst = [], []
    for axis, n in enumerate(size):
        centre = lo[axis] + float(relative[axis]) * (hi[axis] - lo[axis])
        start = int(round(centre - (n - 1) / 2.0))
        a, b = max(start, 0), min(start + n, volume.shape[axis])
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - start, b - start))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def _zoomed(crop: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """``crop`` resampled (trilinear, align_corners) onto ``patch`` voxels."""
    if tuple(crop.shape) == tuple(patch):
        return crop
    t = torch.from_numpy(np.ascontiguousarray(crop))[None, None]
    return torch.nn.functional.interpolate(t, size=tuple(patch), mode="trilinear", align_corners=True)[0, 0].numpy()


class PairPatchDataset(torch.utils.data.Dataset):
    """GVSL training samples: (A, t(A), B) patches of two different volumes.

    Sample ``index`` is drawn with ``numpy.random.default_rng([seed, index])``: identical whatever
    the worker, rank or restart.

    Args:
        volumes: preprocessed (z, y, x) arrays in [0, 1].
        patch: network patch (z, y, x) voxels.
        seed: the sample stream.
        appearance: the appearance transforms of the view t(A).
        groups: a group id per volume (e.g. its body region); the two volumes of a pair come from
            one group (None: any two volumes).
        zoom: (lo, hi) range of a field-of-view factor drawn per pair: both crops take
            ``zoom * patch`` voxels, resampled to ``patch`` (scale augmentation; None: no zoom).
        body_relative: place both crops at one fraction of each volume's body box (None keeps the
            original behaviour: one fraction of each volume's free range).
        weights: how often each volume is the fixed one of a pair (None: equally often).

    Returns three float32 tensors (1, *patch): fixed A, its appearance-transformed view t(A)
    (the network input), and moving B.
    """

    def __init__(
        self,
        volumes: Sequence[np.ndarray],
        patch: Sequence[int],
        seed: int = 0,
        appearance: AppearanceConfig | None = None,
        groups: Sequence[int] | None = None,
        zoom: tuple[float, float] | None = None,
        body_relative: bool = False,
        weights: Sequence[float] | None = None,
    ) -> None:
        if len(volumes) < 2:
            raise InputError("GVSL pre-training needs at least two different volumes to pair; add more volumes to --data")
        self.volumes = list(volumes)
        self.patch = tuple(int(p) for p in patch)
        self.seed = int(seed)
        self.appearance = appearance or AppearanceConfig()
        self.zoom = zoom
        self.boxes = [body_box(v) for v in self.volumes] if body_relative else None
        self.weights = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(self.volumes),) or (w < 0).any() or w.sum() <= 0:
                raise ValueError("one non-negative weight per volume, not all zero")
            self.weights = w / w.sum()
        group_of = list(groups) if groups is not None else [0] * len(self.volumes)
        if len(group_of) != len(self.volumes):
            raise ValueError("one group per volume")
        members: dict[int, list[int]] = {}
        for i, g in enumerate(group_of):
            members.setdefault(int(g), []).append(i)
        # A volume alone in its group is paired with any other volume.
        self.partners = [[j for j in (members[int(g)] if len(members[int(g)]) > 1 else range(len(self.volumes))) if j != i]
                         for i, g in enumerate(group_of)]

    def __len__(self) -> int:
        return 2**62

    def _pair(self, rng: np.random.Generator) -> tuple[int, int]:
        plain = self.boxes is None and self.zoom is None and self.weights is None
        if plain and all(len(p) == len(self.volumes) - 1 for p in self.partners):
            i, j = rng.choice(len(self.volumes), size=2, replace=False)  # the original stream, unchanged
            return int(i), int(j)
        i = int(rng.choice(len(self.volumes), p=self.weights)) if self.weights is not None else int(rng.integers(len(self.volumes)))
        return i, int(self.partners[i][int(rng.integers(len(self.partners[i])))])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        i, j = self._pair(rng)
        # Both crops at the same relative place: the pair shows roughly the same anatomy, so
        # there is a correspondence to learn (two unrelated regions teach matching nothing).
        where = rng.random(3)
        size = self.patch
        if self.zoom is not None:
            factor = float(rng.uniform(*self.zoom))
            size = tuple(max(2, int(round(p * factor))) for p in self.patch)
        if self.boxes is not None:
            # The box's corners are air around a round body: keep the centres off its outer fifth.
            where = 0.2 + 0.6 * where
            fixed = body_patch(self.volumes[i], self.boxes[i], size, where)
            moving = body_patch(self.volumes[j], self.boxes[j], size, where)
        else:
            fixed = random_patch(self.volumes[i], size, rng, where)
            moving = random_patch(self.volumes[j], size, rng, where)
        fixed, moving = _zoomed(fixed, self.patch), _zoomed(moving, self.patch)
        view = appearance_transform(fixed, rng, self.appearance)
        return torch.from_numpy(fixed[None]), torch.from_numpy(view[None]), torch.from_numpy(moving[None])


class StepSampler(torch.utils.data.Sampler):
    """Sample indices for steps ``start..total`` of batch ``batch`` on ``rank`` of ``world``.

    Step s on rank r uses indices ((s * world + r) * batch + k), k < batch: disjoint across ranks,
    and the same sequence whether a run went straight through or was resumed.
    """

    def __init__(self, start_step: int, total_steps: int, batch: int, rank: int = 0, world: int = 1) -> None:
        self.start, self.total, self.batch, self.rank, self.world = start_step, total_steps, batch, rank, world

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start, self.total):
            base = (step * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)

    def __len__(self) -> int:
        return max(0, self.total - self.start) * self.batch



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


class PairPatchDataset(torch.utils.data.Dataset):
    """GVSL training samples: (A, t(A), B) patches of two different volumes.

    Sample ``index`` is drawn with ``numpy.random.default_rng([seed, index])``: identical whatever
    the worker, rank or restart.

    Returns three float32 tensors (1, *patch): fixed A, its appearance-transformed view t(A)
    (the network input), and moving B.
    """

    def __init__(
        self,
        volumes: Sequence[np.ndarray],
        patch: Sequence[int],
        seed: int = 0,
        appearance: AppearanceConfig | None = None,
    ) -> None:
        if len(volumes) < 2:
            raise InputError("GVSL pre-training needs at least two different volumes to pair; add more volumes to --data")
        self.volumes = list(volumes)
        self.patch = tuple(int(p) for p in patch)
        self.seed = int(seed)
        self.appearance = appearance or AppearanceConfig()

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        i, j = rng.choice(len(self.volumes), size=2, replace=False)
        # Both crops at the same relative place: the pair shows roughly the same anatomy, so
        # there is a correspondence to learn (two unrelated regions teach matching nothing).
        where = rng.random(3)
        fixed = random_patch(self.volumes[i], self.patch, rng, where)
        moving = random_patch(self.volumes[j], self.patch, rng, where)
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



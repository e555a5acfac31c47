"""Fine-tuning a segmentation model: the (GVSL-pre-trained) U-Net backbone plus a one-layer 3x3x3 head.

Modes (DESIGN.md, the paper's downstream protocol):

- fine-tune (default): every weight trains, the backbone starts from ``--pretrained``;
- linear probe (``--linear-probe``): the backbone is frozen, only the head trains (the paper's
  linear evaluation of the representation);
- from scratch (``--from-scratch``): random backbone (the baseline); with ``--linear-probe`` it
  gives the random-feature linear baseline;
- incremental (``--init MODEL``): continue from an earlier fine-tuned model (the annotators' loop).

Loss: soft Dice (foreground) + cross-entropy. Patches: a fixed fraction centred on a random voxel
of a random foreground class (nnU-Net-style oversampling), the rest anywhere; spatial (rotation,
scale) and intensity (gamma, contrast, brightness, noise) augmentation; no mirroring, because the
left/right structures are not mirror-symmetric. A validation split picks the best model by Dice;
early stopping after ``patience`` validations without improvement. Same run folder, progress
events, checkpoints, resume and cancel as pre-training (:mod:`gvslcore.engine`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from . import __version__
from .atomic import atomic_path
from .bundle import default_metadata, resolve_model, save_model
from .data import Preprocessing, StepSampler, preprocess_image
from .distributed import (
    DistContext,
    StopAgreement,
    broadcast_object,
    init_distributed,
    load_latest_together,
    loader_options,
    reduce_mean,
    shutdown,
    wrap_model,
    write_debug_digest,
)
from .engine import TrainingRun, rng_state, set_rng_state
from .errors import InputError
from .events import log
from .io import list_images, read_image, resample_to_spacing, same_geometry
from .labels import HEART_LABELS, LabelTable
from .losses import dice_ce_loss

logger = logging.getLogger("gvsl.finetune")

MODES = ("finetune", "linear-probe")


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (written to RUN/config.json)."""

    images: str
    labels: str
    out: str
    run: str | None = None
    pretrained: str | None = None
    init: str | None = None
    linear_probe: bool = False
    from_scratch: bool = False
    readout: str | None = None  # 'last' (default) or 'hypercolumn' (see gvslcore.nets.SegNet)
    steps: int = 2000
    patch: tuple[int, int, int] = (96, 96, 96)
    batch: int = 2
    width: int = 32
    lr: float | None = None
    seed: int = 0
    spacing: tuple[float, float, float] | None = None
    modality: str | None = None
    label_table: list[dict] | None = None
    val_fraction: float = 0.2
    val_cases: int | None = None
    val_every: int = 100
    patience: int = 10
    foreground: float = 0.67
    augment: bool = True
    checkpoint_every: int = 100
    keep: int = 3
    log_every: int = 10
    workers: int = 0
    device: str = "auto"
    bf16: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        if self.run:
            return Path(self.run)
        out = Path(self.out)
        return out.with_name(out.name.removesuffix(".safetensors") + "_run")

    @property
    def mode(self) -> str:
        base = "scratch" if self.from_scratch else "pretrained"
        return f"{base}-linear-probe" if self.linear_probe else f"{base}-finetune"

    @property
    def head_readout(self) -> str:
        """What the new head reads (see :class:`gvslcore.nets.SegNet`)."""
        return self.readout or "last"

    def learning_rate(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return 5e-2 if self.linear_probe else 1e-3


# -- data -------------------------------------------------------------------------------------------

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


# -- patches and augmentation -----------------------------------------------------------------------

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


# -- model set-up -----------------------------------------------------------------------------------

def _backbone_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    backbone = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    if not backbone:
        raise InputError(f"{source} has no U-Net backbone weights (unet.*); give a GVSL pre-trained or fine-tuned model")
    return backbone


def _check_model_meta(meta: dict[str, Any], source: str, modality: str | None) -> None:
    arch = meta.get("architecture", {})
    if int(arch.get("in_channels", 1)) != 1:
        raise InputError(f"{source} expects {arch.get('in_channels')} input channels; "
                         "fine-tuning here uses one channel, give a single-channel model")
    model_modality = str(meta.get("preprocessing", {}).get("modality", "CT")).upper()
    if modality is not None and modality.upper() != model_modality:
        raise InputError(f"{source} was trained on {model_modality} but --modality is {modality}; "
                         f"use a {modality} model or drop --modality")


@dataclass
class ModelStart:
    """How the network starts: width, label table, preprocessing and provenance."""

    width: int
    table: LabelTable
    spacing: tuple[float, float, float]
    modality: str
    backbone: dict[str, torch.Tensor] | None = None
    full_state: dict[str, torch.Tensor] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def model_start(cfg: FinetuneConfig) -> ModelStart:
    """Resolve ``--pretrained`` / ``--init`` / ``--from-scratch`` into a :class:`ModelStart`."""
    from .zoo import locate_model

    given_table = LabelTable.from_list(cfg.label_table) if cfg.label_table else None
    if sum(bool(x) for x in (cfg.init, cfg.pretrained and not cfg.from_scratch)) > 1:
        raise InputError("give either --init (continue a fine-tuned model) or --pretrained (a backbone), not both")
    if cfg.init:
        path = locate_model(cfg.init)
        state, meta = resolve_model(path)
        if meta.get("task") != "segmentation":
            raise InputError(f"--init {path} is a {meta.get('task')} model; --init continues a fine-tuned "
                             "segmentation model (use --pretrained for a backbone)")
        _check_model_meta(meta, str(path), cfg.modality)
        from .nets import SegNet

        file_readout = SegNet.head_options(state)["readout"]
        if cfg.readout and cfg.readout != file_readout:
            raise InputError(f"--readout {cfg.readout} differs from {path}'s '{file_readout}' head; drop --readout "
                             "when continuing a model (or start from --pretrained)")
        table = LabelTable.from_list(meta.get("labels") or []) if meta.get("labels") else HEART_LABELS
        if given_table is not None and given_table.values != table.values:
            raise InputError(f"--label-table has values {given_table.values} but {path} predicts {table.values}; "
                             "drop --label-table or start from --pretrained")
        prep = meta.get("preprocessing", {})
        spacing = tuple(cfg.spacing or prep.get("spacing", (1.0, 1.0, 1.0)))
        if cfg.spacing and not np.allclose(cfg.spacing, prep.get("spacing", cfg.spacing)):
            raise InputError(f"--spacing {cfg.spacing} differs from {path}'s {prep.get('spacing')}; drop --spacing when continuing a model")
        prov = dict(meta.get("provenance") or {})
        return ModelStart(int(meta["architecture"]["width"]), table, spacing, str(prep.get("modality", "CT")).upper(),  # type: ignore[arg-type]
                          full_state=state, provenance={"init": str(path), "pretrained": prov.get("pretrained"),
                                                        "init_provenance": prov})
    table = given_table or HEART_LABELS
    if cfg.from_scratch:
        if cfg.pretrained:
            raise InputError("--from-scratch trains a random backbone: drop --pretrained")
        spacing = tuple(cfg.spacing or (1.0, 1.0, 1.0))
        return ModelStart(int(cfg.width), table, spacing, (cfg.modality or "CT").upper(), provenance={"pretrained": None})  # type: ignore[arg-type]
    if not cfg.pretrained:
        raise InputError("give --pretrained MODEL (a GVSL pre-trained model or run), --init MODEL, or --from-scratch")
    path = locate_model(cfg.pretrained)
    state, meta = resolve_model(path)
    _check_model_meta(meta, str(path), cfg.modality)
    prep = meta.get("preprocessing", {})
    spacing = tuple(cfg.spacing or prep.get("spacing", (1.0, 1.0, 1.0)))
    return ModelStart(
        int(meta["architecture"]["width"]), table, spacing, str(prep.get("modality", "CT")).upper(),  # type: ignore[arg-type]
        backbone=_backbone_state(state, str(path)),
        provenance={"pretrained": str(path), "pretrained_task": meta.get("task"),
                    "pretrained_provenance": meta.get("provenance", {})},
    )


def build_network(start: ModelStart, device: torch.device, readout: str = "last"):
    """The SegNet to train: ``--init`` weights (their own head), or a backbone plus a new ``readout`` head."""
    from .nets import SegNet

    head = SegNet.head_options(start.full_state) if start.full_state is not None else {"readout": readout}
    net = SegNet(start.table.num_classes, start.width, **head)  # type: ignore[arg-type]
    if start.full_state is not None:
        try:
            net.load_state_dict(start.full_state, strict=True)
        except RuntimeError as exc:
            raise InputError(f"--init weights do not fit: {str(exc).splitlines()[0]}") from None
    elif start.backbone is not None:
        try:
            net.unet.load_state_dict(start.backbone, strict=True)
        except RuntimeError as exc:
            raise InputError(f"--pretrained backbone does not fit a width-{start.width} U-Net: {str(exc).splitlines()[0]}") from None
    return net.to(device)


def model_metadata(cfg: FinetuneConfig, start: ModelStart, step: int, summary: dict[str, Any],
                   readout: str = "last") -> dict[str, Any]:
    meta = default_metadata("segmentation", start.width)
    meta["architecture"]["num_classes"] = start.table.num_classes
    meta["architecture"]["readout"] = readout
    meta["preprocessing"].update({"modality": start.modality, "spacing": [float(s) for s in start.spacing]})
    meta["labels"] = start.table.to_list()
    meta["inference"] = {"window": list(cfg.patch), "overlap": 0.5}
    meta["provenance"] = {
        "software": f"gvslcore {__version__}",
        "method": cfg.mode,
        **start.provenance,
        "data": {"images": str(cfg.images), "labels": str(cfg.labels)},
        "steps": step,
        "best_validation_dice": summary.get("best_dice"),
        "best_step": summary.get("best_step"),
    }
    meta["training"] = {
        "mode": cfg.mode,
        "steps": step,
        "patch": list(cfg.patch),
        "batch": cfg.batch,
        "lr": cfg.learning_rate(),
        "seed": cfg.seed,
        "foreground_fraction": cfg.foreground,
        "augment": cfg.augment,
        **{k: v for k, v in summary.items() if k not in ("best_dice", "best_step")},
    }
    return meta


# -- linear probe -----------------------------------------------------------------------------------

Statistics = list[tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def feature_statistics(net: torch.nn.Module, dataset: SegPatchDataset, device: torch.device, patches: int = 8,
                       batch: int = 2) -> Statistics:
    """Per-channel mean and std (C_i,) of each frozen map the head reads (``net.head_inputs``) over
    ``patches`` training patches (sample indices of their own, so the training samples are unchanged)."""
    batches = []
    for i in range(0, patches, batch):
        x = torch.stack([dataset[2**40 + i + k][0] for k in range(min(batch, patches - i))]).to(device)
        batches.append([f.float().transpose(0, 1).flatten(1) for f in net.head_inputs(x)])
    stats = []
    for maps in zip(*batches):  # one map the head reads, over every batch: (C_i, N)
        f = torch.cat(maps, dim=1)
        stats.append((f.mean(1), f.std(1).clamp_min(1e-6)))
    return stats


def standardize(inputs: list[torch.Tensor], stats: Statistics) -> list[torch.Tensor]:
    """``(f - mean) / std`` per channel of each map."""
    return [(f.float() - m.view(1, -1, 1, 1, 1)) / s.view(1, -1, 1, 1, 1) for f, (m, s) in zip(inputs, stats)]


def fold_standardization(state: dict[str, torch.Tensor], stats: Statistics) -> dict[str, torch.Tensor]:
    """A state dict whose head acts on raw features like the trained head on standardized ones:
    ``W * ((f - m) / s) + b = (W / s) * f + (b - sum_k (W / s) m)``. Exact for the 3x3x3 head
    (replicate padding commutes with a per-channel affine map) and for the hypercolumn head (trilinear
    upsampling keeps constants: its weights sum to one)."""
    # One weight per map the head reads: the 3x3x3 conv's, or one 1x1x1 projection per block.
    keys = [f"head.projections.{i}.weight" for i in range(len(stats))] if "head.projections.0.weight" in state \
        else ["head.weight"]
    out = dict(state)
    bias = state["head.bias"]
    for key, (mean, std) in zip(keys, stats, strict=True):
        w = state[key] / std.to(state[key]).view(1, -1, 1, 1, 1)
        out[key] = w
        bias = bias - (w * mean.to(w).view(1, -1, 1, 1, 1)).sum(dim=(1, 2, 3, 4))
    out["head.bias"] = bias
    return out


def class_weights(cases: list[Case], num_classes: int) -> torch.Tensor:
    """Inverse square-root class frequencies of the training labels, mean 1 (for the probe's CE)."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for case in cases:
        counts += np.bincount(case.labels.ravel(), minlength=num_classes)[:num_classes]
    w = np.sqrt(counts.sum() / (counts + 1.0))
    return torch.tensor(w / w.mean(), dtype=torch.float32)


# -- validation -------------------------------------------------------------------------------------

@torch.no_grad()
def validate(net: torch.nn.Module, cases: list[Case], values: list[int], window: tuple[int, int, int],
             device: torch.device, overlap: float = 0.5) -> tuple[float, dict[int, float]]:
    """Mean Dice over cases (each case: mean over labels present in its reference) and per label."""
    from .metrics import dice
    from .segment import WindowPredictor, sliding_window_labels

    was_training = net.training
    net.eval()
    predictor = WindowPredictor(net, device, batch=4 if device.type == "cuda" else 2)
    per_case, per_label = [], {v: [] for v in values}
    for case in cases:
        pred = sliding_window_labels(case.image, predictor, net.num_classes, window, overlap)
        scores = []
        for v in values:
            if (case.labels == v).any():
                d = dice(pred == v, case.labels == v)
                per_label[v].append(d)
                scores.append(d)
        if scores:
            per_case.append(float(np.mean(scores)))
    net.train(was_training)
    mean = float(np.mean(per_case)) if per_case else math.nan
    return mean, {v: float(np.mean(s)) for v, s in per_label.items() if s}


# -- the run ----------------------------------------------------------------------------------------

def _poly_lr(base: float, step: int, total: int) -> float:
    return base * (1.0 - min(step, total - 1) / total) ** 0.9


def run_finetune(cfg: FinetuneConfig, progress: str = "bar", resume: bool = False) -> int:
    """Train; returns the exit code (0 done, 130/143 cancelled). Writes ``cfg.out`` when done.
    One process, or one rank of a torchrun job (:mod:`gvslcore.distributed`)."""
    ctx = init_distributed(cfg.device)
    try:
        return _run_finetune(cfg, progress, resume, ctx)
    finally:
        shutdown(ctx)


def _run_finetune(cfg: FinetuneConfig, progress: str, resume: bool, ctx: DistContext) -> int:
    device = ctx.device
    if not str(cfg.out).endswith(".safetensors"):
        raise InputError(f"--out {cfg.out} must be a model file name ending in .safetensors")
    if cfg.steps < 1:
        raise InputError("--steps must be at least 1")
    if not 0.0 <= cfg.foreground <= 1.0:
        raise InputError(f"--foreground {cfg.foreground} must lie in [0, 1]")
    start = model_start(cfg)  # bad model input fails before the run folder exists
    pairs = pair_cases(cfg.images, cfg.labels)
    prep = Preprocessing(tuple(start.spacing), start.modality)  # type: ignore[arg-type]
    cases = [load_case(img, lab, prep, start.table, seed=cfg.seed) for img, lab in pairs]  # all checked up front
    train_idx, val_idx = split_cases([c.name for c in cases], cfg.val_fraction, cfg.val_cases, cfg.seed)
    train_cases = [cases[i] for i in train_idx]
    val_cases = [cases[i] for i in val_idx]
    torch.manual_seed(cfg.seed)
    config = asdict(cfg)
    config.update({"mode": cfg.mode, "lr_used": cfg.learning_rate(), "spacing_used": list(start.spacing),
                   "modality_used": start.modality, "train_cases": [c.name for c in train_cases],
                   "validation_cases": [c.name for c in val_cases]})
    run_dir = cfg.run_dir
    with TrainingRun(run_dir, "finetune", config, cfg.steps, resume=resume, progress=progress, keep=cfg.keep) as run:
        net = build_network(start, device, cfg.head_readout)
        if cfg.linear_probe:
            net.unet.requires_grad_(False)
            params = list(net.head.parameters())
        else:
            params = list(net.parameters())
        base_lr = cfg.learning_rate()
        optimizer = torch.optim.Adam(params, lr=base_lr, weight_decay=0.0)
        spacing_zyx = tuple(reversed(start.spacing))
        dataset = SegPatchDataset(train_cases, cfg.patch, spacing_zyx, cfg.seed, cfg.foreground,
                                  AugmentConfig() if cfg.augment else None)
        # Linear probe (the paper's linear evaluation): the frozen features are standardized per
        # channel and the head learns with class-weighted cross-entropy. Both are measured
        # necessities at small widths: on raw features, Dice + CE leaves a linear head on the
        # all-background solution for hundreds of steps, for pretrained and random backbones alike.
        # The standardization is folded into the saved head, so the model is a plain SegNet.
        if cfg.linear_probe:
            net.eval()
            f_stats = feature_statistics(net, dataset, device)
            ce_weights = class_weights(train_cases, start.table.num_classes).to(device)
        state = load_latest_together(run, ctx)
        step = 0
        best = {"best_dice": -1.0, "best_step": 0, "bad_validations": 0, "validations": 0}
        if state is not None:
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"], device)
            step = int(state["step"])
            best.update(json.loads(state["best"]))
        run.reporter.start("finetune", cfg.steps, step=step)
        loss_name = "ce" if cfg.linear_probe else "dice_ce"
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.batch,
            sampler=StepSampler(step, cfg.steps, cfg.batch, ctx.rank, ctx.world_size),
            **loader_options(cfg.workers, ctx),
        )
        use_bf16 = cfg.bf16 and device.type == "cuda"
        values = [v for v in start.table.values]
        best_path = run_dir / "best.safetensors"
        summary: dict[str, Any] = {}
        stopped_early = False
        sums: dict[str, torch.Tensor] = {}
        count = 0
        first_loss: float | None = best.get("first_loss")  # type: ignore[assignment]
        net.train()
        if cfg.linear_probe:
            net.unet.eval()
        # DDP over what trains (the head alone in a linear probe); identity in one process.
        model = wrap_model(net.head if cfg.linear_probe else net, ctx)
        stop = StopAgreement(ctx, run.stop)

        def export_state() -> dict[str, torch.Tensor]:
            """The weights as a plain SegNet (the probe's standardization folded into the head)."""
            if cfg.linear_probe:
                return fold_standardization(net.state_dict(), f_stats)
            return net.state_dict()

        def exported_net() -> torch.nn.Module:
            if not cfg.linear_probe:
                return net
            import copy

            twin = copy.deepcopy(net)
            twin.load_state_dict(export_state())
            return twin

        def metadata(at: int) -> dict[str, Any]:
            return model_metadata(cfg, start, at, {**summary, "best_dice": best["best_dice"] if val_cases else None,
                                                   "best_step": best["best_step"] if val_cases else None}, net.readout)

        def checkpoint(at: int) -> None:
            run.save_checkpoint(at, {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng_state(device),
                "best": json.dumps({**best, "first_loss": first_loss}),
                "metadata": json.dumps(metadata(at)),
            })

        def validate_now(at: int) -> bool:
            """Validate the weights of step ``at``, keep the best, and say whether to stop early."""
            # Rank 0 validates and tells the others, so that early stopping is decided once.
            mean, per_label = validate(exported_net(), val_cases, values, cfg.patch, device) if ctx.is_main else (None, None)
            mean, per_label = broadcast_object((mean, per_label), ctx)
            if cfg.linear_probe:
                net.unet.eval()
            best["validations"] += 1
            improved = mean > best["best_dice"]
            if improved:
                best.update(best_dice=mean, best_step=at, bad_validations=0)
                if run.is_main:
                    summary["best_per_label"] = {start.table.name_of(v): round(d, 4) for v, d in per_label.items()}
                    save_model(best_path, export_state(), metadata(at))
            else:
                best["bad_validations"] += 1
            run.reporter.progress(at, stage="validation",
                                  validation={"dice": mean, "best_dice": best["best_dice"], "best_step": best["best_step"]})
            logger.info("step %d validation dice %.4f (best %.4f at %d)", at, mean, best["best_dice"], best["best_step"])
            if cfg.patience and best["bad_validations"] >= cfg.patience and at < cfg.steps:
                log(f"early stopping at step {at}: no better validation Dice in {cfg.patience} validations")
                return True
            return False

        if best.pop("pending_validation", None) == step and step > 0:
            stopped_early = validate_now(step)
            checkpoint(step)

        for images, labels in loader:
            if stopped_early:  # decided by the pending validation of a resumed run
                break
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = _poly_lr(base_lr, step, cfg.steps)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                if cfg.linear_probe:
                    with torch.no_grad():
                        features = standardize(net.head_inputs(images), f_stats)
                    logits = net.read_out(model(features), images.shape[2:])
                else:
                    logits = model(images)
            if cfg.linear_probe:
                loss = F.cross_entropy(logits.float(), labels, weight=ce_weights)
            else:
                loss = dice_ce_loss(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            sums[loss_name] = sums.get(loss_name, 0.0) + loss.detach()  # on the device: no per-step sync
            count += 1
            if first_loss is None:
                first_loss = float(loss.detach())
            stopping = stop.poll()  # agreed by every rank
            if step % cfg.log_every == 0 or step == cfg.steps or stopping:
                means = reduce_mean(sums, ctx, count)
                run.reporter.progress(step, loss=means, lr=optimizer.param_groups[0]["lr"])
                logger.info("step %d %s=%.4f", step, loss_name, means[loss_name])
                summary["last_loss"] = means[loss_name]
                sums, count = {}, 0
            due = bool(val_cases) and (step % cfg.val_every == 0 or step == cfg.steps)
            if due and stopping:
                best["pending_validation"] = step  # validated first thing on --resume, as a straight run would
            elif due:
                stopped_early = validate_now(step)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping or stopped_early:
                checkpoint(step)
            if stopping or stopped_early:
                break
        stop.close()
        write_debug_digest(net, optimizer, ctx, step)
        outputs: dict[str, Any] = {"run": str(run_dir)}
        if not run.stop.requested and run.is_main:
            summary.update(first_loss=first_loss, stopped_early=stopped_early, final_step=step,
                           train_cases=[c.name for c in train_cases], validation_cases=[c.name for c in val_cases])
            if val_cases and best_path.is_file():
                from .bundle import load_model_file

                weights, _ = load_model_file(best_path)
                chosen_step = best["best_step"]
            else:
                weights, chosen_step = export_state(), step
            meta = model_metadata(cfg, start, chosen_step, {
                **summary, "best_dice": best["best_dice"] if val_cases else None,
                "best_step": best["best_step"] if val_cases else None}, net.readout)
            model_path = save_model(cfg.out, weights, meta)
            run.reporter.artifact("model", model_path)
            outputs.update(model=str(model_path), best_validation_dice=best["best_dice"] if val_cases else None,
                           best_step=chosen_step)
            note = f" (best validation Dice {best['best_dice']:.3f} at step {chosen_step})" if val_cases else ""
            log(f"fine-tuning done: {model_path}{note}")
        return run.finish(outputs)


def write_label_table(path: str | Path, table: LabelTable) -> None:
    """Write a label table as JSON (for ``--label-table``)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(table.to_list(), indent=2) + "\n", encoding="utf-8")


def read_label_table_json(path: str | Path) -> list[dict]:
    """``--label-table FILE``: a JSON list of {value, name, color, [category], [type]}."""
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(items, dict):
            items = items.get("labels") or items.get("label_table")
        table = LabelTable.from_list(items)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InputError(f"cannot read label table {path} ({exc}); give a JSON list of {{value, name, color}}") from None
    if not table.labels or len(set(table.values)) != len(table.values) or min(table.values) < 1 or max(table.values) > 255:
        raise InputError(f"label table {path} needs unique label values 1..255")
    return table.to_list()

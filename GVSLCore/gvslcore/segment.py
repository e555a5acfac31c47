"""Segmentation inference: a fine-tuned model applied to a whole volume.

Pipeline: read (file or DICOM folder) -> resample to the model's spacing -> normalize -> sliding
windows with Gaussian blending -> argmax -> optional largest connected component per label ->
back onto the input grid (exact size, spacing, origin, direction) -> .seg.nrrd / .nii.gz / .nrrd.

Memory stays bounded: windows are processed row by row along z, and only a slab one window deep
of class scores is held; finished slices are reduced to labels as soon as no later window can
touch them. Windows are batched; on CUDA they run under bf16 (fp16 where bf16 is missing)
autocast, and an out-of-memory error halves the batch, then falls back to the CPU with a warning.

Each label's confidence (the mean probability of the winning class over its voxels) is summed slab
by slab as the labels are finalized, so it costs no volume of its own.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from .errors import InputError
from .events import Reporter, log
from .io import guess_modality, lps_grid, normalize, read_image, resample_to_lps_grid, resample_to_spacing
from .labels import HEART_LABELS, LabelTable

logger = logging.getLogger("gvsl.segment")

# Intensity test-time augmentation: gamma curves the network saw during fine-tuning.
TTA_GAMMAS = (1.0, 0.8, 1.25)

UNCERTAIN_PROBABILITY = 0.5
"""A voxel whose winning class has less probability than this is uncertain: no class holds a majority."""
LOW_CONFIDENCE = 0.7
"""A structure whose mean winning probability is below this is reported as low confidence (logged,
and shown in GVSL Segment's panel): on average almost a third of the probability went elsewhere. The
bundled heart model gives 0.77-0.97 per structure on synthetic chest CTs whose anatomy checks pass."""


@dataclass
class InferenceSettings:
    """How a volume is tiled and predicted.

    Attributes:
        overlap: fraction of a window shared with its neighbour along each axis (0 <= overlap < 1).
        window: window size (z, y, x) in voxels; None = the model's training patch.
        batch: windows per forward pass (None: 4 on CUDA, 2 on CPU).
        tta: average over intensity variants (gamma 0.8 / 1 / 1.25) of every window.
        largest_component: keep only the largest connected piece of each label; None: as the model's
            metadata recommends (``inference.largest_component``; the default heart model does).
        smooth_resample: map labels back to the input grid through linearly resampled one-hot
            masks (smooth boundaries when the model grid is coarser) instead of nearest neighbour.
        device: 'auto' | 'cpu' | 'cuda[:N]'.
        amp: half-precision autocast on CUDA, and bf16 on CPUs with native bf16 arithmetic
            (AVX512-BF16 or AMX; :func:`cpu_has_bf16`), about twice as fast there.
        sigma_scale: Gaussian importance sigma as a fraction of the window.
        refine_blood_pool: for a heart model on a contrast CT, move the myocardium label's voxels that
            are as bright as blood into their chamber, on the input's grid
            (:func:`gvslcore.heartrefine.refine_blood_pool`); other models and scans are untouched.
    """

    overlap: float = 0.5
    window: tuple[int, int, int] | None = None
    batch: int | None = None
    tta: bool = False
    largest_component: bool | None = None
    smooth_resample: bool = True
    device: str = "auto"
    amp: bool = True
    sigma_scale: float = 0.125
    refine_blood_pool: bool = True

    @staticmethod
    def fast(**overrides: Any) -> InferenceSettings:
        """The light CPU setting: a quarter overlap (about 3x fewer windows than 0.5 in 3-D), no
        TTA, nearest-neighbour mapping back to the input grid."""
        base = {"overlap": 0.25, "tta": False, "smooth_resample": False}
        base.update(overrides)
        return InferenceSettings(**base)


@dataclass
class Segmenter:
    """A loaded segmentation model: the network, its metadata and label table."""

    network: torch.nn.Module
    metadata: dict[str, Any]
    table: LabelTable
    spacing: tuple[float, float, float]
    modality: str
    window: tuple[int, int, int]
    num_classes: int
    source: str = ""
    orientation: str | None = None  # "LPS": the network works on an axis-aligned grid (see prepare_input)
    extra: dict[str, Any] = field(default_factory=dict)
    locator: Segmenter | None = None  # a coarse first stage that finds the region this model segments
    region_margin_mm: float = 0.0  # margin around the locator's labels


def check_segmentation_metadata(meta: dict[str, Any], source: str) -> None:
    """Input errors for models that cannot segment: wrong task, channel count, missing classes."""
    arch = meta.get("architecture", {})
    if meta.get("task") != "segmentation" or arch.get("name") != "SegNet":
        raise InputError(
            f"{source} is a {meta.get('task', 'unknown')} model without a segmentation head; "
            "fine-tune it first with `gvsl finetune --pretrained` and segment with the result"
        )
    if int(arch.get("in_channels", 1)) != 1:
        raise InputError(
            f"{source} expects {arch.get('in_channels')} input channels; gvsl segment feeds one volume, "
            "use a single-channel model"
        )
    if int(arch.get("num_classes", 0)) < 2:
        raise InputError(f"{source} has no class count in its metadata; it is not a gvsl segmentation model")


LOCATOR_PREFIX = "locator."
"""Weights of a model's first (locating) stage carry this prefix in the model file; the rest is the
main network (so a two-stage file still loads as a plain SegNet wherever only one network is wanted)."""


def split_locator(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(main network, locator) weights of a model file's tensors."""
    main = {k: v for k, v in state.items() if not k.startswith(LOCATOR_PREFIX)}
    locator = {k[len(LOCATOR_PREFIX):]: v for k, v in state.items() if k.startswith(LOCATOR_PREFIX)}
    return main, locator


def _build_segmenter(state: dict[str, torch.Tensor], meta: dict[str, Any], source: str, device) -> Segmenter:
    """One stage: a SegNet from its weights and the metadata that describes it."""
    from .nets import SegNet

    arch = meta["architecture"]
    net = SegNet(int(arch["num_classes"]), int(arch["width"]), int(arch.get("in_channels", 1)),
                 **SegNet.head_options(state))  # type: ignore[arg-type]
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{source}: weights do not fit the architecture in its metadata ({str(exc).splitlines()[0]})") from None
    net.eval().to(device)
    table = LabelTable.from_list(meta.get("labels") or []) if meta.get("labels") else HEART_LABELS
    prep = meta.get("preprocessing", {})
    window = meta.get("inference", {}).get("window") or meta.get("training", {}).get("patch") or [96, 96, 96]
    return Segmenter(
        network=net,
        metadata=meta,
        table=table,
        spacing=tuple(float(s) for s in prep.get("spacing", (1.0, 1.0, 1.0))),  # type: ignore[arg-type]
        modality=str(prep.get("modality", "CT")).upper(),
        window=tuple(int(w) for w in window),  # type: ignore[arg-type]
        num_classes=int(arch["num_classes"]),
        source=source,
        orientation=prep.get("orientation"),
    )


def load_segmenter(model: str | os.PathLike, device: str | torch.device = "cpu") -> Segmenter:
    """Load a segmentation model file, checkpoint, run folder or installed catalog id.

    A model whose metadata has a ``locator`` section is two-stage: the locator (a coarse SegNet,
    weights ``locator.*``) finds the region, the main network segments it at its own spacing.
    """
    from .bundle import resolve_model
    from .zoo import locate_model

    path = locate_model(model)
    state, meta = resolve_model(path)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # fp16 files
    check_segmentation_metadata(meta, str(path))
    main, located = split_locator(state)
    seg = _build_segmenter(main, meta, str(path), device)
    loc_meta = meta.get("locator")
    if loc_meta:
        if not located:
            raise InputError(f"{path}: its metadata names a locator stage but the file has no locator.* weights")
        loc_full = {**meta, **loc_meta, "labels": meta.get("labels")}
        seg.locator = _build_segmenter(located, loc_full, f"{path} (locator)", device)
        seg.region_margin_mm = float(loc_meta.get("margin_mm", 20.0))
    return seg


# -- sliding windows -------------------------------------------------------------------------------

@dataclass
class ConfidenceTally:
    """Per-class sums over the voxels of a prediction, added slab by slab (no full-size volume).

    Attributes:
        num_classes: K; classes are the label values 0 .. K-1.
        voxels: (K,) voxels labelled with each class.
        probability: (K,) sum over those voxels of the winning class's probability (each in [0, 1]).
        uncertain: (K,) those voxels whose winning probability is below UNCERTAIN_PROBABILITY.
    """

    num_classes: int
    voxels: np.ndarray = field(init=False)
    probability: np.ndarray = field(init=False)
    uncertain: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.voxels = np.zeros(self.num_classes, dtype=np.int64)
        self.probability = np.zeros(self.num_classes, dtype=np.float64)
        self.uncertain = np.zeros(self.num_classes, dtype=np.int64)

    def add(self, labels: np.ndarray, winning: np.ndarray) -> None:
        """Count voxels of any shape: ``labels`` (integers in [0, K)) and ``winning`` (their class's probability)."""
        labels = np.asarray(labels).ravel()
        winning = np.asarray(winning, dtype=np.float64).ravel()  # float64 sums: millions of voxels
        k = self.num_classes
        self.voxels += np.bincount(labels, minlength=k)[:k]
        self.probability += np.bincount(labels, weights=winning, minlength=k)[:k]
        self.uncertain += np.bincount(labels[winning < UNCERTAIN_PROBABILITY], minlength=k)[:k]

    def report(self, table: LabelTable) -> dict[str, dict[str, float]]:
        """``{"confidence": {name: mean winning probability}, "uncertain_fraction": {name: share of voxels
        below UNCERTAIN_PROBABILITY}}``, both in [0, 1] and rounded to 3 decimals, for each label of
        ``table`` that has voxels (a label the network never chose has no confidence)."""
        confidence: dict[str, float] = {}
        uncertain: dict[str, float] = {}
        for lab in table:
            if 0 < lab.value < self.num_classes and self.voxels[lab.value] > 0:
                n = float(self.voxels[lab.value])
                confidence[lab.name] = round(min(1.0, max(0.0, float(self.probability[lab.value]) / n)), 3)
                uncertain[lab.name] = round(float(self.uncertain[lab.value]) / n, 3)
        return {"confidence": confidence, "uncertain_fraction": uncertain}


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Evenly spread window starts covering ``[0, size)`` with at least ``overlap`` shared."""
    if window >= size:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    n = math.ceil((size - window) / step) + 1
    return sorted({round(i * (size - window) / (n - 1)) for i in range(n)})


def gaussian_importance(window: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """(D, H, W) Gaussian weights, 1 in the centre, never below 1e-3 (so borders still count)."""
    axes = []
    for w in window:
        x = torch.arange(w, dtype=torch.float32) - (w - 1) / 2.0
        sigma = max(w * sigma_scale, 1e-3)
        axes.append(torch.exp(-0.5 * (x / sigma) ** 2))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (g / g.max()).clamp_min(1e-3)


def count_windows(shape: Sequence[int], window: Sequence[int], overlap: float) -> int:
    w = [min(a, b) for a, b in zip(window, shape)]
    return math.prod(len(window_starts(s, x, overlap)) for s, x in zip(shape, w))


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux: the avx512_bf16 or amx_bf16 flag); elsewhere
    False, since emulated bf16 is slower than float32."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


class WindowPredictor:
    """Runs batches of windows through a network and returns class probabilities, falling back
    from a failing CUDA batch to smaller batches, then to the CPU.

    Args:
        network: maps (B, 1, d, h, w) to logits (B, K, d, h, w).
        device: where the network runs.
        batch: windows per forward pass.
        amp: half-precision autocast (CUDA: bf16 or fp16; CPU: bf16 where native, see :func:`cpu_has_bf16`).
        gammas: intensity variants averaged per window (TTA); (1.0,) for none.
    """

    def __init__(self, network: torch.nn.Module, device: torch.device, batch: int, *, amp: bool = True,
                 gammas: Sequence[float] = (1.0,)) -> None:
        self.network = network
        self.device = device
        self.batch = max(1, int(batch))
        self.amp = amp
        self.gammas = tuple(gammas)
        self.fallbacks: list[str] = []

    def _autocast(self):
        if self.device.type == "cuda" and self.amp:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.device.type == "cpu" and self.amp and cpu_has_bf16())

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        total = None
        for gamma in self.gammas:
            xin = x if gamma == 1.0 else x.clamp_min(0).pow(gamma)
            with self._autocast():
                logits = self.network(xin)
            p = logits.float().softmax(dim=1)
            total = p if total is None else total + p
        return total / len(self.gammas)

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, 1, d, h, w) CPU windows -> (N, K, d, h, w) probabilities on ``self.device``."""
        outputs = []
        i = 0
        while i < windows.shape[0]:
            chunk = windows[i : i + self.batch]
            try:
                outputs.append(self._forward(chunk))
                i += chunk.shape[0]
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                if not _is_oom(exc):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if self.batch > 1:
                    self.batch //= 2
                    message = f"out of memory: retrying with {self.batch} window(s) per batch"
                elif self.device.type != "cpu":
                    self.device = torch.device("cpu")
                    self.network.to(self.device)
                    outputs = [o.to(self.device) for o in outputs]
                    message = "out of GPU memory even with one window per batch: continuing on the CPU (slower)"
                else:
                    raise InputError("out of memory on the CPU with one window per batch; use --fast or a smaller --window") from None
                self.fallbacks.append(message)
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                log(f"warning: {message}")
        return torch.cat(outputs, dim=0) if outputs else torch.empty(0)


def sliding_window_labels(
    volume: np.ndarray,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    window: Sequence[int],
    overlap: float = 0.5,
    *,
    sigma_scale: float = 0.125,
    reporter: Reporter | None = None,
    progress_offset: int = 0,
    confidence: ConfidenceTally | None = None,
) -> np.ndarray:
    """Label map of a whole (z, y, x) volume by Gaussian-blended sliding windows.

    Args:
        volume: (D, H, W) float32 network input (already resampled and normalized).
        predictor: (N, 1, d, h, w) windows -> (N, K, d, h, w) probabilities (any device).
        num_classes: K.
        window: (d, h, w); clipped to the volume size.
        overlap: fraction shared by neighbouring windows.
        reporter: gets a progress event per row of windows (step = windows done).
        confidence: if given, gets every finalized voxel's label and winning-class probability (on this,
            the network's grid, before any cleanup of the labels).

    Returns:
        (D, H, W) uint8 argmax labels.

    Only a (K, d, H, W) slab of scores is kept: rows of windows are visited in z order and the
    slices no later row reaches are finalized. Blending weights need no normalization for the
    argmax (the weight sum is a common positive factor of all classes).
    """
    shape = volume.shape
    win = tuple(min(int(w), int(s)) for w, s in zip(window, shape))
    starts = [window_starts(s, w, overlap) for s, w in zip(shape, win)]
    weight = gaussian_importance(win, sigma_scale)
    out = np.zeros(shape, dtype=np.uint8)
    src = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    depth = win[0]
    slab: torch.Tensor | None = None  # (K, depth, H, W) scores for z in [slab_z0, slab_z0 + depth)
    slab_z0 = 0
    done = progress_offset

    def finalize(upto: int) -> None:
        """Write argmax labels for z in [slab_z0, upto) and shift the slab."""
        nonlocal slab, slab_z0
        n = upto - slab_z0
        if n <= 0 or slab is None:
            return
        n = min(n, depth)  # windows overlap or touch along z, so nothing lies beyond the slab
        out[slab_z0 : slab_z0 + n] = slab[:, :n].argmax(dim=0).to(torch.uint8).cpu().numpy()
        if confidence is not None:
            # Each window's probabilities sum to 1 over the classes, so the class sum of the blended
            # scores is the voxel's weight sum: max / sum is the winning class's blended probability.
            scores = slab[:, :n]
            winning = (scores.amax(dim=0) / scores.sum(dim=0).clamp_min(1e-12)).clamp_(0.0, 1.0)
            confidence.add(out[slab_z0 : slab_z0 + n], winning.cpu().numpy())
        rest = torch.zeros_like(slab)
        if n < depth:
            rest[:, : depth - n] = slab[:, n:]
        slab, slab_z0 = rest, upto

    for z in starts[0]:
        finalize(z)
        boxes = [(y, x) for y in starts[1] for x in starts[2]]
        i = 0
        while i < len(boxes):
            # One batch at a time, added to the slab at once: class scores of a whole row of
            # windows would cost more memory than the slab itself.
            part = boxes[i : i + max(1, int(getattr(predictor, "batch", 4)))]
            windows = torch.stack([src[z : z + win[0], y : y + win[1], x : x + win[2]] for y, x in part])[:, None]
            probs = predictor(windows)
            if slab is None or slab.device != probs.device:
                fresh = torch.zeros((num_classes, depth, shape[1], shape[2]), dtype=torch.float32, device=probs.device)
                if slab is not None:
                    fresh.copy_(slab.to(probs.device))
                slab = fresh
            w = weight.to(probs.device)
            dz = z - slab_z0
            for (y, x), p in zip(part, probs):
                slab[:, dz : dz + win[0], y : y + win[1], x : x + win[2]].add_(p * w)
            del probs
            i += len(part)
            done += len(part)
            if reporter is not None:
                reporter.progress(done, stage="inference")
    finalize(shape[0])
    return out


def keep_largest_components(labels: np.ndarray, values: Sequence[int] | None = None) -> np.ndarray:
    """Keep only the largest 26-connected piece of each label (the rest becomes background)."""
    from scipy import ndimage

    out = labels.copy()
    structure = ndimage.generate_binary_structure(3, 3)
    for v in values if values is not None else sorted(set(np.unique(labels).tolist()) - {0}):
        mask = labels == v
        pieces, n = ndimage.label(mask, structure)
        if n <= 1:
            continue
        sizes = np.bincount(pieces.ravel())
        sizes[0] = 0
        out[mask & (pieces != int(sizes.argmax()))] = 0
    return out


def _label_region(labels: sitk.Image, reference: sitk.Image) -> tuple[list[int], list[int]] | None:
    """(index, size) of the part of ``reference``'s grid that the labelled voxels of ``labels`` (one
    working voxel of margin) can reach; None when nothing is labelled."""
    arr = sitk.GetArrayViewFromImage(labels)
    where = np.argwhere(arr > 0)
    if where.size == 0:
        return None
    lo = np.maximum(where.min(0) - 1, 0)[::-1]
    hi = np.minimum(where.max(0) + 1, np.asarray(arr.shape) - 1)[::-1]  # x y z
    corners = [labels.TransformContinuousIndexToPhysicalPoint([float(c) for c in (i, j, k)])
               for i in (lo[0], hi[0]) for j in (lo[1], hi[1]) for k in (lo[2], hi[2])]
    idx = np.array([reference.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    size = np.asarray(reference.GetSize())
    start = np.clip(np.floor(idx.min(0)).astype(int) - 1, 0, size)
    stop = np.clip(np.ceil(idx.max(0)).astype(int) + 2, 0, size)
    if (stop <= start).any():
        return None
    return [int(v) for v in start], [int(v) for v in stop - start]


def labels_to_grid(labels: sitk.Image, reference: sitk.Image, values: Sequence[int], smooth: bool = True) -> sitk.Image:
    """Map a label image onto ``reference``'s grid (exact geometry).

    ``smooth``: each label's mask is resampled linearly and each voxel takes the label with the
    highest value (two float buffers of the labelled region, whatever the label count); otherwise
    nearest neighbour. Only the region of the reference grid that the labels can reach is
    resampled (the rest is background), so a large scan with a small heart maps back quickly.
    """
    out = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=np.uint8)
    region = _label_region(labels, reference)
    if region is not None:
        start, size = region
        sub = sitk.Image(size, sitk.sitkUInt8)
        sub.SetSpacing(reference.GetSpacing())
        sub.SetDirection(reference.GetDirection())
        sub.SetOrigin(reference.TransformIndexToPhysicalPoint(start))
        if smooth:
            mapped = _smooth_labels(labels, sub, values)
        else:
            mapped = sitk.GetArrayFromImage(sitk.Resample(labels, sub, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                          sitk.sitkUInt8))
        z, y, x = start[2], start[1], start[0]
        out[z : z + size[2], y : y + size[1], x : x + size[0]] = mapped
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(reference)
    return image


def _smooth_labels(labels: sitk.Image, grid: sitk.Image, values: Sequence[int]) -> np.ndarray:
    """Per-voxel label of the highest linearly resampled one-hot mask on ``grid``."""
    best = None
    arg = np.zeros(sitk.GetArrayViewFromImage(grid).shape, dtype=np.uint8)
    for v in [0, *values]:
        mask = sitk.Cast(sitk.Equal(labels, int(v)), sitk.sitkFloat32)
        fill = 1.0 if v == 0 else 0.0  # outside the model grid: background
        res = sitk.GetArrayFromImage(sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkLinear, fill, sitk.sitkFloat32))
        if best is None:
            best = res
        else:
            better = res > best
            arg[better] = v
            np.maximum(best, res, out=best)
    return arg


# -- memory --------------------------------------------------------------------------------------

def available_memory() -> int | None:
    """Bytes of memory available to this process (Linux MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def estimate_memory(input_size: Sequence[int], working_shape: Sequence[int], num_classes: int, window: Sequence[int],
                    smooth: bool) -> int:
    """Peak bytes of :func:`segment_image` beside the network: input, working volume, label maps,
    the score slab (plus the confidence tally's three class-free slab buffers) and the resampling buffers."""
    n_in = math.prod(input_size)
    n_work = math.prod(working_shape)
    slab = (num_classes + 3) * min(window[0], working_shape[0]) * working_shape[1] * working_shape[2] * 4
    back = n_in * (4 * 3 + 1) if smooth else n_in * 2
    return n_in * 4 + n_work * (4 * 2 + 2) + slab + back


def check_memory(needed: int, source: str) -> None:
    free = available_memory()
    if free is not None and needed > 0.9 * free:
        raise InputError(
            f"segmenting {source} needs about {needed / 2**30:.1f} GiB of memory but only {free / 2**30:.1f} GiB "
            "is available; crop the volume, close other programs, or use --fast"
        )


# -- whole volumes -----------------------------------------------------------------------------------

def prepare_input(image: sitk.Image, seg: Segmenter, source: str, check_modality: bool = True) -> tuple[np.ndarray, sitk.Image]:
    """Resample to the model spacing and normalize; returns (array, resampled image)."""
    if check_modality:
        seen = guess_modality(image)
        if seen != seg.modality:
            raise InputError(
                f"{source} looks like {seen} but the model {Path(seg.source).name} was trained on {seg.modality}; "
                f"give a {seg.modality} volume or a model for {seen} (add --no-modality-check to force)"
            )
    background = -1024.0 if seg.modality == "CT" else float(np.min(sitk.GetArrayViewFromImage(image)))
    if seg.orientation == "LPS":
        resampled = resample_to_lps_grid(image, seg.spacing, default_value=background)
    else:
        resampled = resample_to_spacing(image, seg.spacing, default_value=background)
    array = normalize(sitk.GetArrayFromImage(resampled), seg.modality)
    return array, resampled


def _working_shape(image: sitk.Image, seg: Segmenter) -> tuple[int, int, int]:
    if seg.orientation == "LPS":
        size = lps_grid(image, seg.spacing)[1]
    else:
        size = [max(1, round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), seg.spacing)]
    return tuple(int(n) for n in reversed(size))  # type: ignore[return-value]


def _predict_working(image: sitk.Image, seg: Segmenter, settings: InferenceSettings, device: torch.device,
                     reporter: Reporter | None, source: str, check_modality: bool, *,
                     progress_offset: int = 0) -> tuple[sitk.Image, dict[str, Any]]:
    """One stage on one image: labels on the model's working grid (an image with that grid's
    geometry) and what ran (windows, device, fallbacks)."""
    window = tuple(settings.window or seg.window)
    working_shape = _working_shape(image, seg)
    check_memory(estimate_memory(image.GetSize(), working_shape, seg.num_classes, window, settings.smooth_resample), source)
    array, resampled = prepare_input(image, seg, source, check_modality)
    batch = settings.batch or (4 if device.type == "cuda" else 2)
    gammas = TTA_GAMMAS if settings.tta else (1.0,)
    seg.network.to(device)
    predictor = WindowPredictor(seg.network, device, batch, amp=settings.amp, gammas=gammas)
    tally = ConfidenceTally(seg.num_classes)
    labels_arr = sliding_window_labels(array, predictor, seg.num_classes, window, settings.overlap,
                                       sigma_scale=settings.sigma_scale, reporter=reporter,
                                       progress_offset=progress_offset, confidence=tally)
    values = [v for v in seg.table.values if v < seg.num_classes]
    largest = settings.largest_component
    if largest is None:
        largest = bool(seg.metadata.get("inference", {}).get("largest_component", False))
    if largest:
        labels_arr = keep_largest_components(labels_arr, values)
    labels_work = sitk.GetImageFromArray(labels_arr)
    labels_work.CopyInformation(resampled)
    info = {"windows": count_windows(array.shape, window, settings.overlap), "window": list(window),
            "working_shape": list(array.shape), "device": str(predictor.device), "batch": predictor.batch,
            "fallbacks": predictor.fallbacks, **tally.report(seg.table), "confidence_threshold": LOW_CONFIDENCE}
    return labels_work, info


def _to_input_grid(labels_work: sitk.Image, image: sitk.Image, seg: Segmenter, smooth: bool) -> sitk.Image:
    values = [v for v in seg.table.values if v < seg.num_classes]
    same_grid = (labels_work.GetSize() == image.GetSize() and np.allclose(labels_work.GetSpacing(), image.GetSpacing())
                 and np.allclose(labels_work.GetOrigin(), image.GetOrigin())
                 and np.allclose(labels_work.GetDirection(), image.GetDirection()))
    if same_grid:
        out = sitk.Image(labels_work)
        out.CopyInformation(image)  # bit-exact geometry, not merely within tolerance
        return out
    return labels_to_grid(labels_work, image, values, smooth=smooth)


def region_around(labels_work: sitk.Image, image: sitk.Image, margin_mm: float) -> tuple[list[int], list[int]] | None:
    """(index, size) of the part of ``image``'s grid within ``margin_mm`` (along the working grid's
    axes) of the largest connected labelled piece of ``labels_work``; None when nothing is labelled."""
    from scipy import ndimage

    arr = sitk.GetArrayViewFromImage(labels_work) > 0
    pieces, n = ndimage.label(arr, ndimage.generate_binary_structure(3, 3))
    if n == 0:
        return None
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    where = np.argwhere(pieces == int(sizes.argmax()))
    pad = np.asarray(labels_work.GetSpacing())  # one working voxel: the label's own extent
    lo = where.min(0)[::-1] - (margin_mm / pad + 0.5)  # x y z continuous index of the working grid
    hi = where.max(0)[::-1] + (margin_mm / pad + 0.5)
    corners = [labels_work.TransformContinuousIndexToPhysicalPoint([float(c) for c in (i, j, k)])
               for i in (lo[0], hi[0]) for j in (lo[1], hi[1]) for k in (lo[2], hi[2])]
    idx = np.array([image.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    size = np.asarray(image.GetSize())
    start = np.clip(np.floor(idx.min(0)).astype(int), 0, size)
    stop = np.clip(np.ceil(idx.max(0)).astype(int) + 1, 0, size)
    if (stop <= start).any():
        return None
    return [int(v) for v in start], [int(v) for v in stop - start]


def segment_image(
    image: sitk.Image,
    seg: Segmenter,
    settings: InferenceSettings | None = None,
    *,
    reporter: Reporter | None = None,
    source: str = "the input",
    check_modality: bool = True,
) -> tuple[sitk.Image, dict[str, Any]]:
    """Segment one volume; the label image has ``image``'s exact grid.

    A two-stage model (``seg.locator``) first finds its region with the locator on the whole
    volume (a quarter overlap, no TTA), then segments only that region (``seg.region_margin_mm``
    around the locator's largest labelled piece) at its own spacing; outside it, background.

    Returns:
        (labels uint8 image, info dict: windows, working shape, device, fallbacks, region, and per label
        name ``confidence`` and ``uncertain_fraction`` (see :meth:`ConfidenceTally.report`): measured on
        the main network's working grid over its argmax labels, before the largest-component cleanup and
        the mapping back to the input grid).
    """
    from .engine import resolve_device

    settings = settings or InferenceSettings()
    if not 0.0 <= settings.overlap < 1.0:
        raise InputError(f"--overlap {settings.overlap} is not valid; give a fraction in [0, 1), e.g. 0.5")
    device = resolve_device(settings.device)
    target, region, done = image, None, 0
    info: dict[str, Any] = {}
    if seg.locator is not None:
        loc_settings = InferenceSettings(overlap=0.25, tta=False, largest_component=True, smooth_resample=False,
                                         device=settings.device, amp=settings.amp, batch=settings.batch)
        loc_windows = count_windows(_working_shape(image, seg.locator), seg.locator.window, loc_settings.overlap)
        if reporter is not None:
            reporter.start("segment", loc_windows)
            reporter.stage("locating the region", step=0)
        located, loc_info = _predict_working(image, seg.locator, loc_settings, device, reporter, source, check_modality)
        check_modality, done = False, loc_windows
        region = region_around(located, image, seg.region_margin_mm)
        info["locator"] = {k: loc_info[k] for k in ("windows", "working_shape")}
        if region is None:
            log("warning: the locating stage found nothing; segmenting the whole volume")
        else:
            target = sitk.RegionOfInterest(image, region[1], region[0])
    n_windows = count_windows(_working_shape(target, seg), settings.window or seg.window, settings.overlap)
    if reporter is not None:
        reporter.close()
        reporter.start("segment", done + n_windows, step=done)
    labels_work, main_info = _predict_working(target, seg, settings, device, reporter, source, check_modality,
                                              progress_offset=done)
    if reporter is not None:
        reporter.stage("resampling to the input grid", step=done + n_windows)
    labels_t = _to_input_grid(labels_work, target, seg, settings.smooth_resample)
    if region is None:
        labels_out = labels_t
    else:
        full = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
        (x, y, z), (nx, ny, nz) = region
        full[z : z + nz, y : y + ny, x : x + nx] = sitk.GetArrayViewFromImage(labels_t)
        labels_out = sitk.GetImageFromArray(full)
        labels_out.CopyInformation(image)
        info["region"] = {"index": region[0], "size": region[1]}
    main_info["windows"] += done
    info.update(main_info)
    if settings.refine_blood_pool and _is_heart_ct(seg):
        from .heartrefine import refine_blood_pool

        if reporter is not None:
            reporter.stage("refining the blood pool", step=done + n_windows)
        labels_out, info["blood_pool"] = refine_blood_pool(labels_out, image)
    return labels_out, info


def _is_heart_ct(seg: Segmenter) -> bool:
    from .heartcheck import is_heart_table

    return is_heart_table(seg.table) and str(seg.modality).upper() == "CT"


def segment_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    model: str | os.PathLike,
    settings: InferenceSettings | None = None,
    *,
    reporter: Reporter | None = None,
    check_modality: bool = True,
) -> dict[str, Any]:
    """``gvsl segment``: read, segment, write; returns the outputs for the ``done`` event."""
    from .segfile import check_label_output, write_labels

    settings = settings or InferenceSettings()
    output_path = check_label_output(output_path)
    from .engine import resolve_device

    device = resolve_device(settings.device)
    seg = load_segmenter(model, device)
    image = read_image(input_path)
    labels, info = segment_image(image, seg, settings, reporter=reporter, source=str(input_path),
                                 check_modality=check_modality)
    if reporter is not None:
        reporter.stage("writing", step=info["windows"])
    path = write_labels(labels, output_path, seg.table)
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=seg.num_classes)
    spacing_ml = math.prod(image.GetSpacing()) / 1000.0
    volumes = {lab.name: round(float(counts[lab.value]) * spacing_ml, 3) for lab in seg.table if lab.value < len(counts)}
    outputs = {"segmentation": str(path), "model": seg.source, "volumes_ml": volumes, **info}
    for line in low_confidence_lines(outputs["confidence"], outputs["uncertain_fraction"]):
        log(f"check: {line}")
    outputs.update(_check_result(labels, image, seg, Path(path), info))
    return outputs


def low_confidence_lines(confidence: dict[str, float], uncertain: dict[str, float],
                         threshold: float = LOW_CONFIDENCE) -> list[str]:
    """'right atrium: low confidence 0.62 (31 % of its voxels below 0.5)' for each structure whose mean
    winning probability is below ``threshold``."""
    lines = []
    for name, value in confidence.items():
        if value < threshold:
            share = uncertain.get(name)
            detail = f" ({100 * share:.0f} % of its voxels below {UNCERTAIN_PROBABILITY:g})" if share else ""
            lines.append(f"{name}: low confidence {value:.2f}{detail}")
    return lines


def plausibility_path(output: Path) -> Path:
    """The sidecar beside a segmentation: ``heart.seg.nrrd`` -> ``heart.plausibility.json``."""
    name = output.name
    for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return output.with_name(name + ".plausibility.json")


def _check_result(labels: sitk.Image, image: sitk.Image, seg: Segmenter, path: Path,
                  info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Plausibility of a heart result (gvslcore.heartcheck) in the sidecar JSON and the done event;
    nothing for other label tables, whose anatomy we do not know. The sidecar also keeps the
    per-structure ``confidence`` and ``uncertain_fraction`` of ``info`` (segment_image's)."""
    from .atomic import write_json
    from .heartcheck import plausibility, warning_lines

    if not _is_heart_ct(seg):
        return {}
    result = plausibility(labels, image)
    result["segmentation"] = path.name
    for key in ("confidence", "uncertain_fraction", "confidence_threshold"):
        if info and key in info:
            result[key] = info[key]
    sidecar = plausibility_path(path)
    write_json(sidecar, result)
    for line in warning_lines(result):
        log(f"check: {line}")
    return {"plausibility": {k: result[k] for k in ("passed", "total", "warnings")}, "plausibility_file": str(sidecar)}

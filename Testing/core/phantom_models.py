"""Shared, cached artefacts for the fine-tuning tests: a phantom data set and one GVSL-pretrained
backbone per test session (pre-training is the expensive part, so test modules share it).

Not a test module; the tests import it (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from gvslcore.cli import main

# CI-sized settings: 3 mm phantoms of 48^3 voxels (144 mm, the heart fits), width-8 networks.
# Pre-training sees whole phantoms (as the authors pre-train on whole, cropped volumes: with 32^3
# crops the linear probe measured no better than a random backbone); fine-tuning uses 32^3 patches.
# Measured figures are in benchmarks/linear_probe.py's output.
SIZE = 48
SPACING = 3.0
WIDTH = 8
PATCH = 32
PRETRAIN_STEPS = int(os.environ.get("GVSL_TEST_PRETRAIN_STEPS", "400"))
FINETUNE_STEPS = int(os.environ.get("GVSL_TEST_FINETUNE_STEPS", "800"))

_cache: dict[str, Path] = {}


def phantom_set(root: Path, name: str, cases: int, seed: int) -> Path:
    """``gvsl phantom`` output (images/, labels/) written once per session."""
    key = f"set-{name}"
    if key not in _cache:
        out = root / name
        assert main(["phantom", str(out), "--cases", str(cases), "--size", str(SIZE), "--spacing",
                     str(SPACING), str(SPACING), str(SPACING), "--seed", str(seed), "--progress", "none"]) == 0
        _cache[key] = out
    return _cache[key]


def pretrained_backbone(root: Path) -> Path:
    """A GVSL model pre-trained on unlabeled phantoms (the training set's images plus more)."""
    if "pretrained" not in _cache:
        data = phantom_set(root, "unlabeled", 12, seed=100)
        run = root / "pretrain"
        assert main(["pretrain", "--data", str(data / "images"), "--out", str(run), "--steps", str(PRETRAIN_STEPS),
                     "--patch", str(SIZE), "--width", str(WIDTH), "--spacing", str(SPACING), str(SPACING), str(SPACING),
                     "--checkpoint-every", str(PRETRAIN_STEPS), "--progress", "none", "--seed", "0"]) == 0
        _cache["pretrained"] = run / "model.safetensors"
    return _cache["pretrained"]


def held_out_dice(model: Path, test_set: Path, out: Path) -> float:
    """Mean Dice of ``model`` over every case of ``test_set`` (gvsl segment + metrics)."""
    from gvslcore.metrics import evaluate_images
    from gvslcore.segment import InferenceSettings, load_segmenter, segment_image

    seg = load_segmenter(model)
    scores = []
    for image_path in sorted((test_set / "images").glob("*.nii.gz")):
        image = sitk.ReadImage(str(image_path))
        ref = sitk.ReadImage(str(test_set / "labels" / image_path.name))
        labels, _ = segment_image(image, seg, InferenceSettings(device="cpu"))
        result = evaluate_images(labels, sitk.Cast(ref, sitk.sitkUInt8), hausdorff=False)
        scores.append(result["mean"]["dice"])
    return float(np.mean(scores))

"""The shipped default heart model (Resources/Models/gvsl-heart-ct.safetensors): what it is, and that
it segments a synthetic chest it never saw and a real CTA crop (the full real-CTA check is
benchmarks/heart_real_ct.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from gvslcore.bundle import read_metadata
from gvslcore.cli import main
from gvslcore.heartcheck import check_heart
from gvslcore.labels import HEART_LABELS
from gvslcore.metrics import dice
from gvslcore.segment import InferenceSettings, load_segmenter, segment_image
from gvslcore.zoo import DEFAULT_SEGMENTATION_MODEL, locate_model

from realdata import shared_file


@pytest.fixture(scope="module")
def shipped():
    return locate_model(DEFAULT_SEGMENTATION_MODEL)


def test_the_shipped_model_says_what_it_is(shipped):
    meta = read_metadata(shipped)  # the safetensors header alone: nothing is unpickled
    assert meta["task"] == "segmentation" and meta["architecture"]["name"] == "SegNet"
    assert [lab["name"] for lab in meta["labels"]] == [lab.name for lab in HEART_LABELS]
    assert meta["preprocessing"]["orientation"] == "LPS" and meta["preprocessing"]["modality"] == "CT"
    provenance = meta["provenance"]
    assert "no real image" in provenance["method"]
    assert provenance["command"].startswith("gvsl models build gvsl-heart-ct")
    assert 0 < provenance["steps"] <= provenance["recipe"]["steps"]
    assert shipped.stat().st_size <= 20 * 2**20
    from safetensors import safe_open

    with safe_open(str(shipped), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


def _painted_chest(seed: int) -> tuple[sitk.Image, np.ndarray]:
    """A synthetic chest outside the model's bank (another seed stream), painted as an arterial CTA."""
    from gvslcore.synth.appearance import AppearanceConfig, add_noise, paint, scanner
    from gvslcore.synth.chest import render_case
    from gvslcore.synth.tissues import tissues_to_labels

    tissue = render_case(seed, 2.0)
    t = torch.from_numpy(sitk.GetArrayFromImage(tissue).astype(np.int64))
    rng = np.random.default_rng(seed)
    cfg = AppearanceConfig(p_noncontrast=0.0, p_venous=0.0, p_shuffle=0.0, p_fov_cut=0.0)
    hu, _ = paint(t, 2.0, rng, cfg)
    hu = add_noise(scanner(hu, 2.0, rng, cfg), rng, cfg)
    image = sitk.GetImageFromArray(hu.numpy().astype(np.float32))
    image.CopyInformation(tissue)
    return image, tissues_to_labels(t.numpy())


def test_the_shipped_model_segments_a_synthetic_chest_it_never_saw(shipped):
    image, truth = _painted_chest(987_654_321)
    labels, _ = segment_image(image, load_segmenter(shipped), InferenceSettings(device="cpu"))
    got = sitk.GetArrayFromImage(labels)
    assert dice(np.isin(got, (1, 2, 3, 4, 5)), np.isin(truth, (1, 2, 3, 4, 5))) > 0.85
    per_label = [dice(got == v, truth == v) for v in range(1, 8)]
    assert np.mean(per_label) > 0.6, per_label


def test_the_shipped_model_segments_a_real_cta_crop(shipped, tmp_path):
    """A 192 mm crop of the real chest CTA around the heart: `gvsl segment` without --model."""
    ct = sitk.ReadImage(str(shared_file("chest_cta", "ct.nii.gz")))
    mask = sitk.ReadImage(str(shared_file("chest_cta", "heart.nii.gz")))
    centre = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0).mean(0)[::-1]  # x y z index
    half = 64  # voxels of 1.5 mm
    lo = [int(max(0, c - half)) for c in centre]
    size = [int(min(n - a, 2 * half)) for a, n in zip(lo, ct.GetSize())]
    crop = sitk.RegionOfInterest(ct, size, lo)
    crop_mask = sitk.RegionOfInterest(mask, size, lo)
    sitk.WriteImage(crop, str(tmp_path / "crop.nii.gz"))
    out = tmp_path / "crop.seg.nrrd"
    assert main(["segment", str(tmp_path / "crop.nii.gz"), str(out), "--progress", "none", "--device", "cpu"]) == 0
    from gvslcore.io import read_image

    labels = read_image(out, label=True)
    assert labels.GetSize() == crop.GetSize() and labels.GetOrigin() == crop.GetOrigin()
    report = check_heart(labels, crop, crop_mask, contrast=True)
    assert report.values["whole-heart Dice"] > 0.75, json.dumps(report.to_dict())
    for name in ("LV left of RV", "LA the most posterior chamber", "RA the rightmost chamber",
                 "aorta right of the pulmonary trunk", "all seven labels present"):
        assert report.checks[name], name


def test_models_build_runs_end_to_end_and_resumes(tmp_path):
    """`gvsl models build gvsl-heart-ct` in miniature: bank, training, validation, export, --resume."""
    out = tmp_path / "heart.safetensors"
    run = tmp_path / "run"
    tiny = ["--cases", "3", "--val-cases", "1", "--bank-spacing", "6", "--spacing", "8", "--patch", "16", "--width", "4",
            "--val-every", "3", "--locator-steps", "3", "--locator-patch", "12", "--locator-width", "4",
            "--locator-spacing", "12", "--pretrained", "none", "--workers", "0", "--bank-workers", "1", "--device", "cpu",
            "--progress", "none"]
    assert main(["models", "build", "gvsl-heart-ct", str(out), "--run", str(run), "--steps", "4", *tiny]) == 0
    assert sorted(p.name for p in (run / "bank").iterdir()) == [f"chest_{i:04d}.nii.gz" for i in range(3)]
    meta = read_metadata(out)
    assert meta["preprocessing"]["spacing"] == [8.0] * 3 and meta["locator"]["preprocessing"]["spacing"] == [12.0] * 3
    assert meta["provenance"]["steps"] == {"locator": 3, "fine": 4}
    assert meta["provenance"]["synthetic_validation"]["fine"]["step"] in (3, 4)  # the best validation is exported
    assert main(["models", "build", "gvsl-heart-ct", str(out), "--run", str(run), "--steps", "4", *tiny]) == 2  # no overwrite
    bank_times = [p.stat().st_mtime_ns for p in sorted((run / "bank").iterdir())]
    assert main(["models", "build", "gvsl-heart-ct", str(out), "--run", str(run), "--steps", "6", "--resume", *tiny]) == 0
    assert [p.stat().st_mtime_ns for p in sorted((run / "bank").iterdir())] == bank_times  # the bank is reused
    steps = [json.loads(line).get("step") for line in (run / "fine" / "events.jsonl").read_text().splitlines()
             if json.loads(line).get("event") == "progress" and "loss" in json.loads(line)]
    assert steps[-1] == 6 and json.loads((run / "fine" / "status.json").read_text())["status"] == "done"
    image = sitk.Image([40, 36, 30], sitk.sitkFloat32) - 1000.0
    image.SetSpacing((4.0, 4.0, 5.0))
    labels, _ = segment_image(image, load_segmenter(out), InferenceSettings(device="cpu"), check_modality=False)
    assert labels.GetSize() == image.GetSize()


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    from pathlib import Path

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not __import__("os").path.isdir("/proc"), reason="reads the process table from /proc (Linux)")
def test_sigterm_while_the_bank_renders_stops_its_workers_and_resumes(tmp_path):
    """`kill` of a build during the bank: exit 143, no rendering worker left behind, only whole cases
    (the resume that reuses them is tested above)."""
    import os
    import signal
    import time

    from gvslproc import start_gvsl

    out, run = tmp_path / "heart.safetensors", tmp_path / "run"
    args = ["models", "build", "gvsl-heart-ct", str(out), "--run", str(run), "--cases", "12", "--val-cases", "1",
            "--bank-spacing", "3", "--bank-workers", "2", "--pretrained", "none", "--device", "cpu", "--progress", "none"]
    child = start_gvsl(args)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:  # the pool's two workers (and its resource tracker)
        workers = [p for p in _children(child.pid) if "spawn_main" in open(f"/proc/{p}/cmdline").read()]
        time.sleep(0.2)
    assert len(workers) == 2, "the bank's workers did not start"
    time.sleep(1.0)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143, err
    assert "--resume renders the rest" in err
    time.sleep(0.5)
    assert not [p for p in workers if os.path.exists(f"/proc/{p}")], "rendering workers outlived the build"
    names = sorted(p.name for p in (run / "bank").iterdir())
    assert len(names) < 12 and all(n.startswith("chest_") and n.endswith(".nii.gz") for n in names), names

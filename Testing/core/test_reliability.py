"""Nothing lost, nothing wrong: failed writes, damaged inputs, run folders, outputs over inputs,
absurd options (issue 13). Every probe answers with one line and exit code 2, never a traceback,
and leaves nothing half-written."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from gvslcore import engine
from gvslcore.atomic import write_json, write_text
from gvslcore.cli import main
from gvslcore.errors import OutputError
from gvslcore.io import read_image, write_image


def _volume(shape=(40, 60, 60), seed=0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(size=shape).astype(np.float32))
    image.SetSpacing((1.5, 1.0, 2.0))
    return image


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KiB tmpfs: a real full disk (root only; skipped where it cannot be mounted)."""
    folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def _left_over(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- 1. failed writes never report success -------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_full_disk_image_write_is_an_output_error_and_leaves_nothing(small_disk, suffix):
    target = small_disk / f"v{suffix}"
    with pytest.raises(OutputError, match=f"writing {target} failed"):
        write_image(_volume(), target, compress=False)  # 576 kB of float32 on a 400 kB disk
    assert _left_over(small_disk) == []
    small = write_image(_volume((8, 8, 8)), target)  # what fits is written
    assert read_image(small).GetSize() == (8, 8, 8)


def test_full_disk_keeps_the_old_file(small_disk):
    target = small_disk / "v.nii.gz"
    write_image(_volume((8, 8, 8)), target)
    before = target.read_bytes()
    with pytest.raises(OutputError):
        write_image(_volume(), target, compress=False)
    assert target.read_bytes() == before and _left_over(small_disk) == ["v.nii.gz"]


def test_full_disk_text_write(small_disk):
    with pytest.raises(OutputError, match="failed"):
        write_text(small_disk / "big.txt", "x" * 500_000)
    assert _left_over(small_disk) == []
    write_json(small_disk / "ok.json", {"a": 1})
    assert json.loads((small_disk / "ok.json").read_text()) == {"a": 1}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_a_writer_that_writes_a_short_file_without_raising_is_caught(tmp_path, monkeypatch, suffix):
    real = sitk.WriteImage

    def short_writer(image, path, useCompression=True):  # noqa: N803 - SimpleITK's name
        real(image, path, useCompression=useCompression)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) * 2 // 3])

    monkeypatch.setattr(sitk, "WriteImage", short_writer)
    target = tmp_path / f"out{suffix}"
    with pytest.raises(OutputError, match=f"writing {target} failed"):
        write_image(_volume((10, 12, 14)), target)
    assert _left_over(tmp_path) == []


def _run(tmp_path: Path) -> engine.TrainingRun:
    return engine.TrainingRun(tmp_path / "run", "pretrain", {"width": 4}, 10, progress="none")


def test_a_failed_checkpoint_write_marks_the_run_failed(tmp_path, monkeypatch):
    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 not a whole archive")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OutputError, match="writing checkpoint .*step_000003.pt failed"):
        with _run(tmp_path) as run:
            run.save_checkpoint(3, {"model": {}})
    status = engine.read_status(tmp_path / "run")
    assert status["status"] == "failed" and status["bad_input"] and "checkpoint" in status["message"]
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []


def test_checkpoint_on_a_full_disk(small_disk):
    with pytest.raises(OutputError, match="failed"):
        with engine.TrainingRun(small_disk / "run", "pretrain", {"width": 4}, 10, progress="none") as run:
            run.save_checkpoint(1, {"model": {"w": torch.randn(200_000)}})  # 800 kB
    assert engine.read_status(small_disk / "run")["status"] == "failed"
    assert list((small_disk / "run" / "checkpoints").iterdir()) == []


def test_cli_full_disk_is_one_line(small_disk, tmp_path, capsys):
    pred = tmp_path / "p.nii.gz"
    write_image(sitk.Cast(_volume((8, 8, 8)) > 0, sitk.sitkUInt8), pred)
    with pytest.raises(OSError), open(small_disk / "filler", "wb") as f:
        for _ in range(200):
            f.write(b"\0" * 4096)
            f.flush()
    assert main(["evaluate", str(pred), str(pred), "--json", str(small_disk / "r.json"), "--no-hd95"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "r.json" in err
    assert _left_over(small_disk) == ["filler"]

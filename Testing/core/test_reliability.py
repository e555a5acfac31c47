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
from gvslcore.errors import InputError, OutputError
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
    def broken_save(obj, f, *a, **k):  # writes a stub and reports success, as on a full disk
        f.write(b"PK\x03\x04 not a whole archive")

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


# -- 3. run folders ---------------------------------------------------------------------------------


def pretrain(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(data), "--out", str(out), "--steps", str(steps), "--patch", "16", "--width", "4",
            "--spacing", "2", "2", "2", "--log-every", "1", "--checkpoint-every", "2", "--progress", "none",
            "--device", "cpu", *extra]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_a_second_run_on_a_locked_folder_is_refused(tmp_path, volumes, capsys):
    run = tmp_path / "run"
    assert main(pretrain(volumes, run, 2)) == 0
    capsys.readouterr()
    lock = engine.RunLock(run)
    lock.acquire()  # another process training in this folder
    try:
        assert main(pretrain(volumes, run, 4, "--resume")) == 2
        assert "in use by another gvsl run" in _one_line(capsys)
    finally:
        lock.release()
    assert engine.read_status(run)["status"] == "done"  # the refused run wrote nothing
    assert main(pretrain(volumes, run, 4, "--resume")) == 0


def test_the_lock_goes_with_the_process(tmp_path):
    import sys

    code = ("import sys, time; from gvslcore.engine import RunLock; "
            "lock = RunLock(sys.argv[1]); lock.acquire(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"pid {proc.pid}"):
            engine.RunLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    lock = engine.RunLock(tmp_path)
    lock.acquire()  # SIGKILL released it: no stale lock
    lock.release()


def test_resume_refuses_changed_settings_and_names_them(tmp_path, volumes, capsys):
    run = tmp_path / "run"
    assert main(pretrain(volumes, run, 2)) == 0
    capsys.readouterr()
    argv = pretrain(volumes, run, 4, "--resume")
    argv[argv.index("--width") + 1] = "8"
    argv[argv.index("--patch") + 1] = "24"
    assert main(argv) == 2
    err = _one_line(capsys)
    assert "--width 4 -> 8" in err and "--patch 16 16 16 -> 24 24 24" in err and "--steps" in err and "--lr" in err
    assert engine.read_status(run)["status"] == "done"
    # what may change does: more steps and a new learning rate
    assert main(pretrain(volumes, run, 4, "--resume", "--lr", "2e-4")) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 4 and config["lr"] == 2e-4 and config["width"] == 4
    payload = torch.load(run / "checkpoints" / "step_000004.pt", weights_only=True)
    assert payload["optimizer"]["param_groups"][0]["lr"] == 2e-4


def test_resume_falls_back_to_the_newest_readable_checkpoint(tmp_path, volumes):
    run = tmp_path / "run"
    assert main(pretrain(volumes, run, 4)) == 0
    last = run / "checkpoints" / "step_000004.pt"
    last.write_bytes(last.read_bytes()[:1000])  # a crash while writing, on a filesystem without rename
    assert main(pretrain(volumes, run, 6, "--resume")) == 0
    assert (run / "checkpoints" / "step_000004.pt.damaged").exists()
    starts = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in starts if e["event"] == "start"] == [0, 2]
    assert torch.load(run / "checkpoints" / "step_000006.pt", weights_only=True)["step"] == 6


def test_running_with_a_dead_pid_reads_as_interrupted(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "status.json").write_text(json.dumps({"status": "running", "pid": dead.pid}))
    assert engine.read_status(tmp_path)["status"] == "interrupted"
    (tmp_path / "status.json").write_text(json.dumps({"status": "running", "pid": __import__("os").getpid()}))
    assert engine.read_status(tmp_path)["status"] == "running"

"""Pre-training runs: run folder, resume bit-for-bit, SIGKILL + resume, SIGTERM cancel, bad input."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from gvslproc import start_gvsl

from gvslcore.bundle import resolve_model
from gvslcore.cli import main


@pytest.fixture(scope="module")
def volume_dir(tmp_path_factory) -> Path:
    from scipy.ndimage import gaussian_filter

    folder = tmp_path_factory.mktemp("volumes")
    for i, shape in enumerate([(20, 24, 28), (24, 24, 24), (22, 26, 20)]):
        rng = np.random.default_rng(i)
        hu = gaussian_filter(rng.normal(size=shape), 2.0) * 4000.0
        image = sitk.GetImageFromArray(hu.astype(np.float32))
        image.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(image, str(folder / f"vol{i}.nii.gz"))
    return folder


def args(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(data), "--out", str(out), "--steps", str(steps), "--patch", "16",
            "--width", "4", "--spacing", "2", "2", "2", "--log-every", "1", "--progress", "none", *extra]


def progress_losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "progress" and "loss" in event:
            out[event["step"]] = event["loss"]["total"]
    return out


def test_run_folder_and_bit_for_bit_resume(tmp_path, volume_dir):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(args(volume_dir, straight, 6, "--checkpoint-every", "3")) == 0
    assert main(args(volume_dir, split, 3, "--checkpoint-every", "3")) == 0
    assert main(args(volume_dir, split, 6, "--checkpoint-every", "3", "--resume")) == 0
    for name in ("config.json", "events.jsonl", "log.txt", "status.json", "model.safetensors"):
        assert (straight / name).exists(), name
    assert json.loads((straight / "status.json").read_text())["status"] == "done"
    a, _ = resolve_model(straight / "model.safetensors")
    b, meta = resolve_model(split / "model.safetensors")
    assert meta["task"] == "pretrain" and meta["provenance"]["steps"] == 6
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    losses_a, losses_b = progress_losses(straight), progress_losses(split)
    assert sorted(losses_b) == [1, 2, 3, 4, 5, 6]
    assert all(losses_a[s] == losses_b[s] for s in losses_a)


def _wait_for(predicate, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(0.1)


def test_sigkill_then_resume_continues_step_count_and_loss_curve(tmp_path, volume_dir):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main(args(volume_dir, reference, 16, "--checkpoint-every", "4")) == 0
    proc = start_gvsl(args(volume_dir, killed, 16, "--checkpoint-every", "4"))
    _wait_for(lambda: len(list((killed / "checkpoints").glob("step_*.pt"))) >= 2 or proc.poll() is not None)
    proc.kill()
    proc.wait()
    if json.loads((killed / "status.json").read_text())["status"] == "done":
        pytest.fail("the run finished before it could be killed; make it longer")
    last = max(int(p.stem.split("_")[1]) for p in (killed / "checkpoints").glob("step_*.pt"))
    assert main(args(volume_dir, killed, 16, "--checkpoint-every", "4", "--resume")) == 0
    losses_ref, losses = progress_losses(reference), progress_losses(killed)
    assert max(losses) == 16
    # every step after the checkpoint is logged once more and equals the uninterrupted run
    for step in range(last + 1, 17):
        assert losses[step] == losses_ref[step], step
    assert json.loads((killed / "status.json").read_text())["status"] == "done"


def test_sigterm_leaves_a_clean_checkpoint_and_status_cancelled(tmp_path, volume_dir):
    run = tmp_path / "run"
    proc = start_gvsl(args(volume_dir, run, 100000, "--checkpoint-every", "1000"))
    _wait_for(lambda: (run / "events.jsonl").exists() and '"progress"' in (run / "events.jsonl").read_text().replace("stage", ""))
    _wait_for(lambda: any(json.loads(x).get("loss") for x in (run / "events.jsonl").read_text().splitlines()))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "cancelled"
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    assert ckpts and int(ckpts[-1].stem.split("_")[1]) == status["step"] > 0
    payload = torch.load(ckpts[-1], weights_only=True)
    assert payload["step"] == status["step"] and "optimizer" in payload
    assert not list(run.rglob(".*.pt"))  # no temporary left behind
    assert not (run / "model.safetensors").exists()


def test_bad_input(tmp_path, volume_dir, capsys):
    one = tmp_path / "one"
    one.mkdir()
    (one / "v.nii.gz").write_bytes((volume_dir / "vol0.nii.gz").read_bytes())
    assert main(args(one, tmp_path / "r1", 2)) == 2
    err = capsys.readouterr().err
    assert "only one volume" in err and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(args(empty, tmp_path / "r2", 2)) == 2
    assert "holds no" in capsys.readouterr().err
    (tmp_path / "r3" / "checkpoints").mkdir(parents=True)
    (tmp_path / "r3" / "config.json").write_text("{}")
    (tmp_path / "r3" / "checkpoints" / "step_000001.pt").write_bytes(b"")  # a started run
    assert main(args(volume_dir, tmp_path / "r3", 2)) == 2
    assert "--resume" in capsys.readouterr().err
    # a volume smaller than the patch is padded, not an error
    assert main(args(volume_dir, tmp_path / "r4", 1, "--patch", "40")) == 0

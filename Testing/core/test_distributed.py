"""Data-parallel pre-training: the helpers in one process, and real 2-process gloo runs through
``gvsl pretrain --nproc 2`` (torchrun): ranks stay identical, rank 0 alone writes, SIGTERM gives a
checkpoint and status cancelled, and every rank resumes from the same checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.distributed as dist

from gvslcore.cli import main
from gvslcore.distributed import (
    DIGEST_ENV,
    DistContext,
    StopAgreement,
    broadcast_object,
    default_workers,
    init_distributed,
    reduce_mean,
    state_digest,
    strip_option,
    unwrap,
    wrap_model,
)
from gvslcore.engine import StopFlag
from gvslcore.nets import GVSLNet


@pytest.fixture(scope="module")
def volume_dir(tmp_path_factory) -> Path:
    from scipy.ndimage import gaussian_filter

    folder = tmp_path_factory.mktemp("ddp_volumes")
    for i, shape in enumerate([(24, 28, 26), (26, 24, 24), (24, 26, 28)]):
        rng = np.random.default_rng(10 + i)
        hu = gaussian_filter(rng.normal(size=shape), 2.0) * 4000.0
        image = sitk.GetImageFromArray(hu.astype(np.float32))
        image.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(image, str(folder / f"vol{i}.nii.gz"))
    return folder


# -- helpers, one process ----------------------------------------------------------------------
def test_strip_option_removes_nproc_in_every_spelling():
    argv = ["pretrain", "--data", "d", "--nproc", "2", "--out", "r", "--nproc=3", "--npro", "4", "--no-bf16"]
    assert strip_option(argv, "--nproc") == ["pretrain", "--data", "d", "--out", "r", "--no-bf16"]
    assert strip_option(["pretrain", "--ncc-weight", "2"], "--nproc") == ["pretrain", "--ncc-weight", "2"]


def test_single_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed) == (0, 1, True, False)
    net = GVSLNet(4)
    assert wrap_model(net, ctx) is net
    assert broadcast_object({"a": 1}, ctx) == {"a": 1}
    means = reduce_mean({"x": torch.tensor(3.0), "y": torch.tensor(1.5)}, ctx, count=3)
    assert means == {"x": 1.0, "y": 0.5}
    flag = StopFlag()
    stop = StopAgreement(ctx, flag)
    assert not stop.poll()
    flag.signum = signal.SIGTERM
    assert stop.poll() and stop.close()  # one process: stops at once, no lag
    assert default_workers(-1, torch.device("cpu")) == 0 and default_workers(3, torch.device("cpu")) == 3


def test_state_digest_is_bit_exact():
    a = {"w": torch.zeros(3), "step": torch.tensor(2.0), "nested": {"m": torch.ones(2, 2)}}
    b = {"nested": {"m": torch.ones(2, 2)}, "step": torch.tensor(2.0), "w": torch.zeros(3)}
    assert state_digest(a) == state_digest(b)
    b["w"][1] = torch.finfo(torch.float32).tiny  # one denormal-sized change anywhere is seen
    assert state_digest(a) != state_digest(b)


def test_helpers_with_a_real_one_rank_gloo_group(tmp_path):
    """DDP wrapping, the asynchronous stop vote and the all-reduce, on an actual process group."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ctx = DistContext(0, 1, 0, 1, torch.device("cpu"), "gloo", dist.group.WORLD)
        net = GVSLNet(4)
        model = wrap_model(net, ctx)
        assert isinstance(model, torch.nn.parallel.DistributedDataParallel) and unwrap(model) is net
        out = model(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))
        (out.warped.mean() + out.restored.mean()).backward()
        assert all(p.grad is not None for p in net.parameters())
        assert reduce_mean({"loss": torch.tensor(4.0)}, ctx, count=2) == {"loss": 2.0}
        assert broadcast_object("checkpoints/step_000003.pt", ctx) == "checkpoints/step_000003.pt"
        flag = StopFlag()
        stop = StopAgreement(ctx, flag)
        assert not stop.poll()
        flag.signum = signal.SIGINT
        assert not stop.poll()  # the vote posted before the signal says "go on"
        assert stop.poll() and stop.signum == signal.SIGINT  # one step later every rank knows
        stop.close()
    finally:
        dist.destroy_process_group()


def test_nproc_bad_input_is_one_line_before_any_worker_starts(tmp_path, volume_dir, capsys):
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    (tmp_path / "r" / "config.json").write_text("{}")
    (tmp_path / "r" / "checkpoints" / "step_000001.pt").write_bytes(b"")  # a started run
    code = main(["pretrain", "--data", str(volume_dir), "--out", str(tmp_path / "r"), "--nproc", "2", "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "--resume" in err and err.count("\n") == 1
    tiny = ["--steps", "1", "--patch", "16", "--width", "4", "--progress", "none"]  # were it to train
    assert main(["pretrain", "--data", str(volume_dir), "--out", str(tmp_path / "s"), "--nproc", "0", *tiny]) == 2
    assert "--nproc 0" in capsys.readouterr().err


# -- two real processes ------------------------------------------------------------------------
def _argv(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gvslcore", "pretrain", "--data", str(data), "--out", str(out), "--steps", str(steps),
            "--patch", "20", "--width", "4", "--spacing", "2", "2", "2", "--log-every", "1", "--checkpoint-every", "1000",
            "--device", "cpu", "--workers", "0", "--progress", "json", "--nproc", "2", *extra]


def _env(digests: Path) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **{DIGEST_ENV: str(digests)})


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def _digests(folder: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]
    assert [r["rank"] for r in records] == [0, 1], "both ranks must report"
    return records


def test_two_process_gloo_run_sigterm_then_resume(tmp_path, volume_dir):
    run, first, second = tmp_path / "run", tmp_path / "d1", tmp_path / "d2"

    # 1. a long run, cancelled with SIGTERM sent to the launcher (as the Slicer module does)
    proc = subprocess.Popen(_argv(volume_dir, run, 100000), env=_env(first), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not ((run / "events.jsonl").exists() and '"loss"' in (run / "events.jsonl").read_text()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - t0 < 150, "no training step within 150 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]  # torchrun's SignalException is a cancel, not a crash
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "cancelled" and status["signal"] == signal.SIGTERM
    stopped = status["step"]
    assert stopped >= 1
    assert [p.name for p in (run / "checkpoints").glob("*.pt")] == [f"step_{stopped:06d}.pt"]
    assert not (run / "model.safetensors").exists()
    a, b = _digests(first)
    assert a["step"] == b["step"] == stopped
    assert a["model"] == b["model"] and a["optimizer"] == b["optimizer"], "replicas diverged"
    # rank 0 alone wrote: its pid in status.json, one event stream, each step reported once
    assert status["pid"] == a["pid"] != b["pid"]
    events = _events(run)
    assert [e["event"] for e in events].count("start") == 1 and events[0]["world_size"] == 2
    steps = [e["step"] for e in events if e["event"] == "progress" and "loss" in e]
    assert steps == list(range(1, stopped + 1))
    assert stdout.splitlines() == (run / "events.jsonl").read_text().splitlines()  # only rank 0 on stdout

    # 2. resume on both ranks from that checkpoint and run two more steps
    proc = subprocess.run([*_argv(volume_dir, run, stopped + 2), "--resume"], check=False, env=_env(second),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _digests(second)
    assert a["step"] == b["step"] == stopped + 2
    assert a["model"] == b["model"] and a["optimizer"] == b["optimizer"], "replicas diverged after resume"
    events = _events(run)
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["step"] == stopped
    steps = [e["step"] for e in events if e["event"] == "progress" and "loss" in e]
    assert steps == [*range(1, stopped + 1), stopped + 1, stopped + 2]
    assert [e["event"] for e in events].count("done") == 1
    assert json.loads((run / "status.json").read_text())["status"] == "done"
    # the exported model is rank 0's replica, identical to every rank's
    from safetensors.torch import load_file

    assert state_digest(load_file(str(run / "model.safetensors"))) == a["model"]
    assert len(list((run / "cache").glob("*.npy"))) == 3 and not list(run.rglob(".*"))


def test_two_process_finetune_keeps_replicas_identical(tmp_path):
    data, digests = tmp_path / "ph", tmp_path / "digests"
    assert main(["phantom", str(data), "--cases", "4", "--size", "32", "--spacing", "6", "6", "6", "--seed", "3",
                 "--progress", "none"]) == 0
    out = tmp_path / "m.safetensors"
    argv = [sys.executable, "-m", "gvslcore", "finetune", "--from-scratch", "--images", str(data / "images"),
            "--labels", str(data / "labels"), "--out", str(out), "--patch", "16", "--width", "4", "--spacing", "6", "6",
            "6", "--batch", "1", "--steps", "4", "--log-every", "1", "--val-cases", "1", "--val-every", "2",
            "--device", "cpu", "--progress", "json", "--nproc", "2"]
    proc = subprocess.run(argv, check=False, env=_env(digests), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _digests(digests)
    assert a["step"] == b["step"] == 4 and a["model"] == b["model"] and a["optimizer"] == b["optimizer"]
    events = _events(tmp_path / "m_run")
    assert [e["step"] for e in events if e["event"] == "progress" and "loss" in e] == [1, 2, 3, 4]
    assert sum(e.get("stage") == "validation" for e in events) == 2 and events[-1]["event"] == "done"
    assert out.is_file()

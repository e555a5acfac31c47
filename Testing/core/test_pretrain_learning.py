"""A short CPU pre-training on phantoms learns both tasks (the longer run is in the README:
benchmarks/pretrain_quality.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "pretrain_quality.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("pretrain_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_pretraining_warps_pairs_closer_and_restores_the_view(tmp_path):
    bench = load_benchmark()
    r = bench.run(steps=150, width=8, patch=32, cases=6, size=40, batch=2, lr=1e-3, out=tmp_path, log_every=50)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})
    # matching: over the last 50 steps the warped training pairs are clearly more alike
    # than the same pairs unwarped (held-out phantoms need longer runs: see README)
    assert r["train_ncc_warped"] < r["train_ncc_unwarped"] - 0.003, r
    # restoration: the head's output is much closer to the clean image than the transformed view,
    # on the training pairs and on held-out phantoms
    assert r["train_mse_restored"] < 0.5 * r["train_mse_view"], r
    assert r["mse_restored"] < 0.5 * r["mse_view"], r

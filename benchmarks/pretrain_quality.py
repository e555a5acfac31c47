"""Does GVSL pre-training learn? Pre-train on phantoms, then measure on held-out phantom pairs:

- matching: NCC loss of the pair before (unwarped) and after warping by the predicted field;
- restoration: MSE of the appearance-transformed view and of the restoration head's output.

    python benchmarks/pretrain_quality.py --steps 600 --width 8 --patch 32 --cases 10

or score a model pre-trained elsewhere (phantoms of --size voxels at 192/size mm, its own spacing):

    python benchmarks/pretrain_quality.py --evaluate RUN/model.safetensors --size 64 --pairs 24
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from gvslcore.bundle import resolve_model
from gvslcore.data import PairPatchDataset, Preprocessing, preprocess_image
from gvslcore.losses import local_ncc_loss, restoration_loss
from gvslcore.nets import GVSLNet
from gvslcore.phantom import make_phantom, write_dataset
from gvslcore.pretrain import PretrainConfig, run_pretrain


def evaluate(model_path: str | Path, cases: list[int], size: int, patch: int, pairs: int = 8, seed: int = 99) -> dict[str, float]:
    """Mean losses over ``pairs`` held-out pairs (clean fixed image for matching, as at inference)."""
    state, meta = resolve_model(model_path)
    model = GVSLNet(meta["architecture"]["width"])
    model.load_state_dict(state)
    model.eval()
    spacing = tuple(meta["preprocessing"]["spacing"])
    volumes = [preprocess_image(make_phantom(c, size)[0], Preprocessing(spacing, "CT"))[0] for c in cases]
    data = PairPatchDataset(volumes, (patch,) * 3, seed=seed)
    sums = {"ncc_unwarped": 0.0, "ncc_warped": 0.0, "mse_view": 0.0, "mse_restored": 0.0}
    with torch.no_grad():
        for k in range(pairs):
            fixed, view, moving = (t[None] for t in data[k])
            out = model(fixed, moving)
            sums["ncc_unwarped"] += local_ncc_loss(fixed, moving).item()
            sums["ncc_warped"] += local_ncc_loss(fixed, out.warped).item()
            restored = model(view, moving).restored
            sums["mse_view"] += restoration_loss(view, fixed).item()
            sums["mse_restored"] += restoration_loss(restored, fixed).item()
    return {k: v / pairs for k, v in sums.items()}


def run(steps: int, width: int, patch: int, cases: int, size: int, batch: int, lr: float, out: Path, seed: int = 0,
        log_every: int | None = None) -> dict:
    data = out / "phantoms"
    write_dataset(data, cases, size, seed)
    spacing = 192.0 / size  # the phantoms' own spacing: no resampling
    cfg = PretrainConfig(data=[str(data)], out=str(out / "run"), steps=steps, patch=(patch,) * 3, batch=batch,
                         width=width, lr=lr, seed=seed, spacing=(spacing,) * 3, modality="CT",
                         checkpoint_every=max(steps, 1), log_every=log_every or max(1, steps // 10))
    t0 = time.monotonic()
    assert run_pretrain(cfg, progress="none") == 0
    seconds = time.monotonic() - t0
    held_out = [10_000 + i for i in range(4)]  # seeds never used for training
    result = evaluate(out / "run" / "model.safetensors", held_out, size, patch)  # 8 pairs
    last = [json.loads(line) for line in (out / "run" / "events.jsonl").read_text().splitlines() if '"loss"' in line][-1]
    result.update(
        steps=steps,
        seconds=seconds,
        train_ncc_warped=last["loss"]["ncc"],
        train_ncc_unwarped=last["baseline"]["ncc_unwarped"],
        train_mse_restored=last["loss"]["mse"],
        train_mse_view=last["baseline"]["mse_view"],
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--size", type=int, default=40)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--evaluate", type=Path, default=None, help="only score this pre-trained model on held-out pairs")
    parser.add_argument("--pairs", type=int, default=8, help="held-out pairs to score")
    a = parser.parse_args()
    if a.evaluate:
        r = evaluate(a.evaluate, [10_000 + i for i in range(6)], a.size, a.patch, pairs=a.pairs)
        print(f"held-out phantom pairs ({a.pairs}, {a.size}^3 phantoms, {a.patch}^3 patches), model {a.evaluate}:")
        print(f"  NCC loss         {r['ncc_unwarped']:.4f} unwarped -> {r['ncc_warped']:.4f} warped")
        print(f"  restoration MSE  {r['mse_view']:.4f} transformed view -> {r['mse_restored']:.4f} restored")
        return
    out = a.out or Path(tempfile.mkdtemp(prefix="gvsl_quality_"))
    r = run(a.steps, a.width, a.patch, a.cases, a.size, a.batch, a.lr, out)
    print(json.dumps(r, indent=2))
    print("\n| held-out phantom pairs | before | after pre-training |")
    print("|---|---|---|")
    print(f"| NCC loss (1 - local NCC^2) | {r['ncc_unwarped']:.4f} (unwarped) | {r['ncc_warped']:.4f} (warped) |")
    print(f"| restoration MSE | {r['mse_view']:.4f} (transformed view) | {r['mse_restored']:.4f} (restored) |")
    print("\n| training pairs, last logging window | before | after |")
    print("|---|---|---|")
    print(f"| NCC loss | {r['train_ncc_unwarped']:.4f} (unwarped) | {r['train_ncc_warped']:.4f} (warped) |")
    print(f"| restoration MSE | {r['train_mse_view']:.4f} (view) | {r['train_mse_restored']:.4f} (restored) |")
    print(f"\n{r['steps']} steps in {r['seconds']:.0f} s; run folder {out / 'run'}")


if __name__ == "__main__":
    main()

"""The paper's central claim in miniature, on phantoms.

GVSL pre-training on unlabeled phantoms, then four segmentation models trained identically on the
same labeled phantoms and scored on held-out phantoms:

    linear probe  (frozen backbone, one linear head):  GVSL-pretrained  vs  random backbone
                  for each --readouts: 'last' (3x3x3 over the last decoder map, the authors' out_conv:
                  the paper's linear evaluation) and 'hypercolumn' (1x1x1 over all nine blocks)
    fine-tune     (all weights):                      GVSL-pretrained  vs  from scratch

Prints a table of mean and per-label Dice (and writes --json). CPU-sized by default; give more
steps for the longer run. Example:

    python benchmarks/linear_probe.py --out /tmp/lp --pretrain-steps 600 --probe-steps 400 --finetune-steps 1500
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def phantoms(out: Path, cases: int, size: int, spacing: float, seed: int) -> Path:
    from gvslcore.phantom import write_dataset

    if not (out / "dataset.json").exists():
        write_dataset(out, cases, size, seed=seed, spacing=(spacing,) * 3)
    return out


def held_out(model: Path, test: Path) -> dict:
    from gvslcore.metrics import evaluate_images
    from gvslcore.segment import InferenceSettings, load_segmenter, segment_image

    seg = load_segmenter(model)
    per_case, per_label = [], {}
    for image_path in sorted((test / "images").glob("*.nii.gz")):
        labels, _ = segment_image(sitk.ReadImage(str(image_path)), seg, InferenceSettings(device="cpu"))
        ref = sitk.Cast(sitk.ReadImage(str(test / "labels" / image_path.name)), sitk.sitkUInt8)
        result = evaluate_images(labels, ref, table=seg.table, hausdorff=False)
        per_case.append(result["mean"]["dice"])
        for row in result["labels"]:
            if row["dice"] is not None:
                per_label.setdefault(row["name"], []).append(row["dice"])
    return {"mean_dice": float(np.mean(per_case)), "per_label": {k: float(np.mean(v)) for k, v in per_label.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="work folder (reused: phantoms and runs are kept)")
    p.add_argument("--pretrained", type=Path, help="reuse a GVSL pre-trained model instead of pre-training")
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--probe-steps", type=int, default=300, help="linear-probe steps (both backbones)")
    p.add_argument("--finetune-steps", type=int, default=600, help="fine-tune / scratch steps (0: skip)")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--patch", type=int, default=32, help="fine-tune patch (voxels per side)")
    p.add_argument("--probe-patch", type=int, help="linear-probe patch and window (default: --size, the whole phantom: "
                                                  "a frozen backbone's features depend on the context it sees)")
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--spacing", type=float, default=3.0)
    p.add_argument("--train-cases", type=int, default=10)
    p.add_argument("--test-cases", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain-patch", type=int, help="pre-training patch (default: --size, whole phantoms, as the "
                                                     "authors pre-train on whole volumes)")
    p.add_argument("--readouts", default="last,hypercolumn", help="probe read-outs to compare (comma-separated)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)

    from gvslcore.finetune import FinetuneConfig, run_finetune
    from gvslcore.pretrain import PretrainConfig, run_pretrain

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    sp = (args.spacing,) * 3
    unlabeled = phantoms(out / "unlabeled", 12, args.size, args.spacing, seed=100)
    train = phantoms(out / "train", args.train_cases, args.size, args.spacing, seed=200)
    test = phantoms(out / "test", args.test_cases, args.size, args.spacing, seed=300)
    timings = {}

    pretrained = args.pretrained
    if pretrained is None:
        pretrain_patch = args.pretrain_patch or args.size
        run = out / f"pretrain_w{args.width}_s{args.pretrain_steps}_p{pretrain_patch}"
        pretrained = run / "model.safetensors"
        if not pretrained.exists():
            t = time.monotonic()
            code = run_pretrain(PretrainConfig(data=[str(unlabeled / "images")], out=str(run), steps=args.pretrain_steps,
                                               patch=(pretrain_patch,) * 3, width=args.width, spacing=sp, modality="CT",
                                               seed=args.seed, checkpoint_every=args.pretrain_steps, device="cpu"),
                                progress="bar" if sys.stderr.isatty() else "none", resume=(run / "config.json").exists())
            if code:
                return code
            timings["pretrain_s"] = round(time.monotonic() - t, 1)

    readouts = [r.strip() for r in args.readouts.split(",") if r.strip()]
    variants = []
    for readout in readouts:
        variants += [
            (f"probe {readout}, GVSL backbone", {"pretrained": str(pretrained), "linear_probe": True, "readout": readout},
             args.probe_steps),
            (f"probe {readout}, random backbone", {"from_scratch": True, "linear_probe": True, "readout": readout,
                                                   "width": args.width, "spacing": sp}, args.probe_steps),
        ]
    if args.finetune_steps:
        variants += [
            ("fine-tune, GVSL backbone", {"pretrained": str(pretrained)}, args.finetune_steps),
            ("fine-tune, from scratch", {"from_scratch": True, "width": args.width, "spacing": sp}, args.finetune_steps),
        ]
    results = {}
    for name, kwargs, steps in variants:
        tag = name.replace(",", "").replace(" ", "_")
        model = out / f"{tag}_{steps}.safetensors"
        if not model.exists():
            t = time.monotonic()
            lr = 1e-2 if kwargs.get("linear_probe") else 3e-3
            patch = (args.probe_patch or args.size) if kwargs.get("linear_probe") else args.patch
            cfg = FinetuneConfig(images=str(train / "images"), labels=str(train / "labels"), out=str(model),
                                 steps=steps, patch=(patch,) * 3, batch=2, lr=lr, seed=args.seed, val_cases=2,
                                 val_every=max(50, steps // 4), patience=0, checkpoint_every=steps, device="cpu", **kwargs)
            run_dir = cfg.run_dir
            code = run_finetune(cfg, progress="none", resume=(run_dir / "config.json").exists())
            if code:
                return code
            timings[f"{tag}_s"] = round(time.monotonic() - t, 1)
        results[name] = held_out(model, test)
        print(f"{name:36s} held-out mean Dice {results[name]['mean_dice']:.3f}", file=sys.stderr, flush=True)

    print(f"\nHeld-out phantoms: {args.test_cases} cases, {args.size}^3 at {args.spacing} mm; width {args.width}, "
          f"patch {args.patch} (probe {args.probe_patch or args.size}); "
          f"pre-training {args.pretrain_steps if args.pretrained is None else 'given'} steps, "
          f"probe {args.probe_steps} steps, fine-tune {args.finetune_steps} steps; threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    labels = list(next(iter(results.values()))["per_label"])
    header = f"{'':36s} {'mean':>6s} " + " ".join(f"{n[:10]:>10s}" for n in labels)
    print(header)
    for name, r in results.items():
        print(f"{name:36s} {r['mean_dice']:6.3f} " + " ".join(f"{r['per_label'].get(n, float('nan')):10.3f}" for n in labels))
    print()
    margins = {}
    for readout in readouts:
        margins[readout] = (results[f"probe {readout}, GVSL backbone"]["mean_dice"]
                            - results[f"probe {readout}, random backbone"]["mean_dice"])
        print(f"linear-probe margin, {readout:11s} (GVSL - random): {100 * margins[readout]:+.1f} Dice points")
    summary = {"results": results, "linear_probe_margin": margins, "timings_s": timings,
               "args": {k: str(v) for k, v in vars(args).items()}}
    if args.finetune_steps:
        ft_margin = results["fine-tune, GVSL backbone"]["mean_dice"] - results["fine-tune, from scratch"]["mean_dice"]
        print(f"fine-tune margin (GVSL - scratch):               {100 * ft_margin:+.1f} Dice points")
        summary["finetune_margin"] = ft_margin
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

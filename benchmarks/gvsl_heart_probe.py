"""The paper's claim in miniature, on the synthetic heart labels: does the shipped GVSL model help?

The shipped GVSL model (``gvsl-pretrained-ct``: a GVSLNet pre-trained by ``gvsl pretrain`` without
labels on real chest CTs and painted synthetic chests) against random weights, on the seven heart
labels of the synthetic chests the heart model trains on (:mod:`gvslcore.synth`). Four arms, each
trained with the same number of steps on the same labeled chests and scored on held-out chests,
once per training seed:

    linear probe  (frozen backbone, one linear head, the paper's linear evaluation):
                  GVSL backbone  vs  random backbone (``from_scratch`` + ``linear_probe``, as
                  benchmarks/linear_probe.py: a randomly initialized U-Net, new for every seed)
    fine-tune     (all weights):  from the GVSL backbone  vs  from scratch

Data: painted synthetic chest CTs (:func:`gvslcore.synth.chest.render_case`, then the CT appearance
of :func:`gvslcore.gvslbuild.synthetic_ct`: a random contrast phase, scanner blur and noise per
chest), rendered with their heart labels at ``--render-spacing`` (2 mm), trained and segmented at
``--spacing`` (4 mm: the heart model's locator grid, and the coarse end of the GVSL model's
pre-training zoom, 2 mm crops zoomed 1-2x). Training and held-out chests come from two seed streams
of their own (checked disjoint from each other, from the GVSL model's synthetic pre-training chests
and from the heart model's bank). No real CT is used anywhere. The width is the GVSL file's (16);
the random arms use the same width. There is no validation split: every arm trains on all
training chests for exactly its steps, and its last weights are scored (equal steps, no selection).

Held-out Dice: every held-out chest is segmented whole (sliding window, the training patch, overlap
0.5, argmax, no largest-component filter) and mapped back to its render grid; a chest's score is the
mean Dice over the seven labels; an arm's score is the mean over chests, reported per seed and as
mean +- std (and min-max) over seeds, with per-label means over seeds. Paired margins pair the two
arms of one seed (same patch stream).

The study as run (defaults: 12 training and 6 held-out chests, seeds 0,1,2, probe 300 steps at patch 48,
fine-tune 400 steps at patch 32; 40 minutes on one CPU core, ``OMP_NUM_THREADS=1``, niced; each
probe arm about 3.4 min per seed, each fine-tune arm about 3.3 min, scoring included):

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/gvsl_heart_probe.py --out /work/scratch/probe \\
        --json /work/scratch/probe/gvsl_heart_probe.json

Every chest and every trained model is kept in ``--out``: a second run reuses them (resume after a
stop; add seeds or arms cheaply). A quick check: ``--train-chests 3 --test-chests 1 --seeds 0
--probe-steps 10 --finetune-steps 10``.
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

TRAIN_STREAM, TEST_STREAM = 83, 89  # SeedSequence tags of this benchmark's chests (GVSL: 61, heart bank: 31)


def chest_seeds(base: int, stream: int, count: int) -> list[int]:
    return [int(np.random.SeedSequence([base, stream, i]).generate_state(1)[0]) for i in range(count)]


def check_disjoint(train: list[int], test: list[int]) -> None:
    """Held-out chests are never trained on, and neither set is a chest the shipped models saw."""
    from gvslcore.gvslbuild import synthetic_seed
    from gvslcore.gvslrecipe import GVSLRecipe
    from gvslcore.heartmodel import bank_seed
    from gvslcore.heartrecipe import HeartRecipe

    gvsl, heart = GVSLRecipe(), HeartRecipe()
    seen = {synthetic_seed(gvsl, i) for i in range(gvsl.synthetic_cases)} | {bank_seed(heart, i) for i in range(heart.cases)}
    if set(train) & set(test):
        raise SystemExit("training and held-out chests share a seed")
    if (set(train) | set(test)) & seen:
        raise SystemExit("a chest of this benchmark is one the shipped models were trained on")


def painted_chest(seed: int, spacing: float) -> tuple[sitk.Image, sitk.Image]:
    """(int16 HU image, uint8 heart labels 0..7) of synthetic chest ``seed``, one render for both;
    the appearance is :func:`gvslcore.gvslbuild.synthetic_ct`'s."""
    import torch

    from gvslcore.synth.appearance import add_noise, paint, scanner
    from gvslcore.synth.chest import render_case
    from gvslcore.synth.tissues import tissues_to_labels

    tissue = render_case(seed, spacing)
    arr = sitk.GetArrayFromImage(tissue)
    rng = np.random.default_rng([seed, 97])
    hu, _ = paint(torch.from_numpy(arr.astype(np.int64)), spacing, rng)
    hu = add_noise(scanner(hu, spacing, rng), rng)
    image = sitk.GetImageFromArray(np.clip(hu.numpy(), -1024, 3071).astype(np.int16))
    image.CopyInformation(tissue)
    labels = sitk.GetImageFromArray(tissues_to_labels(arr).astype(np.uint8))
    labels.CopyInformation(tissue)
    return image, labels


def _write(image: sitk.Image, path: Path) -> None:
    tmp = path.with_name(".tmp_" + path.name)
    sitk.WriteImage(image, str(tmp), True)
    os.replace(tmp, path)


def chests(folder: Path, seeds: list[int], spacing: float) -> Path:
    """images/ and labels/ of the chests (missing ones rendered; names carry the seed)."""
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds):
        name = f"chest_{i:02d}_{seed}.nii.gz"
        if (folder / "images" / name).is_file() and (folder / "labels" / name).is_file():
            continue
        t = time.monotonic()
        image, labels = painted_chest(seed, spacing)
        _write(labels, folder / "labels" / name)
        _write(image, folder / "images" / name)
        print(f"  {folder.name} chest {i + 1}/{len(seeds)} (seed {seed}, {image.GetSize()}) "
              f"{time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    return folder


def held_out(model: Path, test: Path, overlap: float) -> dict:
    """Mean Dice over the held-out chests (each: mean over its labels), per chest and per label."""
    from gvslcore.metrics import evaluate_images
    from gvslcore.segment import InferenceSettings, load_segmenter, segment_image

    seg = load_segmenter(model)
    settings = InferenceSettings(device="cpu", overlap=overlap, largest_component=False)
    per_case, per_label = {}, {}
    for image_path in sorted((test / "images").glob("*.nii.gz")):
        labels, _ = segment_image(sitk.ReadImage(str(image_path)), seg, settings)
        ref = sitk.ReadImage(str(test / "labels" / image_path.name), sitk.sitkUInt8)
        result = evaluate_images(labels, ref, table=seg.table, hausdorff=False)
        per_case[image_path.name.removesuffix(".nii.gz")] = result["mean"]["dice"]
        for row in result["labels"]:
            if row["dice"] is not None:
                per_label.setdefault(row["name"], []).append(row["dice"])
    return {"mean_dice": float(np.mean(list(per_case.values()))), "per_case": per_case,
            "per_label": {k: float(np.mean(v)) for k, v in per_label.items()}}


def arms(args) -> list[tuple[str, dict, int, int, float]]:
    """(name, FinetuneConfig keywords, steps, patch, lr) of every arm."""
    sp = (args.spacing,) * 3
    out = []
    for readout in [r.strip() for r in args.readouts.split(",") if r.strip()]:
        out += [
            (f"probe {readout}, GVSL", {"pretrained": args.pretrained, "linear_probe": True, "readout": readout,
                                        "spacing": sp}, args.probe_steps, args.probe_patch, args.probe_lr),
            (f"probe {readout}, random", {"from_scratch": True, "linear_probe": True, "readout": readout,
                                          "width": args.width, "spacing": sp}, args.probe_steps, args.probe_patch,
             args.probe_lr),
        ]
    if args.finetune_steps:
        out += [
            ("fine-tune, GVSL", {"pretrained": args.pretrained, "spacing": sp}, args.finetune_steps, args.patch, args.lr),
            ("fine-tune, scratch", {"from_scratch": True, "width": args.width, "spacing": sp}, args.finetune_steps,
             args.patch, args.lr),
        ]
    return out


def _spread(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": len(v)}


def summarize(results: dict, seeds: list[int]) -> dict:
    summary = {}
    for name, by_seed in results.items():
        done = [s for s in seeds if str(s) in by_seed]
        if not done:
            continue
        labels = list(by_seed[str(done[0])]["per_label"])
        summary[name] = {"dice": _spread([by_seed[str(s)]["mean_dice"] for s in done]),
                         "per_seed": {str(s): by_seed[str(s)]["mean_dice"] for s in done},
                         "per_label": {n: float(np.mean([by_seed[str(s)]["per_label"].get(n, np.nan) for s in done]))
                                       for n in labels}}
    margins = {}
    for a, b in [(n, n.replace("GVSL", "random")) for n in results if "probe" in n and "GVSL" in n] + \
            [("fine-tune, GVSL", "fine-tune, scratch")]:
        if a in results and b in results:
            paired = [results[a][str(s)]["mean_dice"] - results[b][str(s)]["mean_dice"] for s in seeds
                      if str(s) in results[a] and str(s) in results[b]]
            if paired:
                margins[f"{a} - {b.split(', ')[-1]}"] = {**_spread(paired), "per_seed": paired}
    return {"arms": summary, "paired_margins": margins}


def print_table(summary: dict, seeds: list[int], header: str) -> None:
    print("\n" + header)
    arms_ = summary["arms"]
    if not arms_:
        return
    labels = list(next(iter(arms_.values()))["per_label"])
    short = {"left ventricle": "LV", "right ventricle": "RV", "left atrium": "LA", "right atrium": "RA",
             "left ventricular myocardium": "Myo", "ascending aorta": "Ao", "pulmonary artery": "PA"}
    cols = " ".join(f"{'seed ' + str(s):>7s}" for s in seeds)
    print(f"{'arm':22s} {'mean +- std':>14s} {'min-max':>12s} {cols}   " + " ".join(f"{short.get(n, n[:5]):>5s}" for n in labels))
    for name, r in arms_.items():
        d = r["dice"]
        per_seed = " ".join(f"{r['per_seed'][str(s)]:7.3f}" if str(s) in r["per_seed"] else f"{'-':>7s}" for s in seeds)
        print(f"{name:22s} {d['mean']:7.3f} +- {d['std']:.3f} {d['min']:5.3f}-{d['max']:5.3f} {per_seed}   "
              + " ".join(f"{r['per_label'].get(n, float('nan')):5.3f}" for n in labels))
    print()
    for name, m in summary["paired_margins"].items():
        print(f"{name:34s} {100 * m['mean']:+6.1f} +- {100 * m['std']:.1f} Dice points "
              f"(per seed: {', '.join(f'{100 * x:+.1f}' for x in m['per_seed'])})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="work folder (reused: chests and trained models are kept)")
    p.add_argument("--pretrained", default="gvsl-pretrained-ct", help="the GVSL model (bundled id or file)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds (head/backbone init, patches, augmentation)")
    p.add_argument("--train-chests", type=int, default=12)
    p.add_argument("--test-chests", type=int, default=6)
    p.add_argument("--chest-seed", type=int, default=0, help="base of the chests' seed streams")
    p.add_argument("--render-spacing", type=float, default=2.0, help="grid the chests and labels are rendered on (mm)")
    p.add_argument("--spacing", type=float, default=4.0, help="working grid of every arm (mm)")
    p.add_argument("--probe-steps", type=int, default=300)
    p.add_argument("--finetune-steps", type=int, default=400, help="fine-tune / scratch steps (0: skip)")
    p.add_argument("--probe-patch", type=int, default=48, help="linear-probe patch and window (the pre-training patch)")
    p.add_argument("--patch", type=int, default=32, help="fine-tune patch and window (voxels per side)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--probe-lr", type=float, default=1e-2)
    p.add_argument("--lr", type=float, default=2e-3, help="fine-tune / scratch learning rate (the locator's)")
    p.add_argument("--width", type=int, default=16, help="width of the random arms (the GVSL file's is fixed: 16)")
    p.add_argument("--readouts", default="last", help="probe read-outs, comma-separated: last, hypercolumn")
    p.add_argument("--overlap", type=float, default=0.5, help="held-out sliding-window overlap")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)

    import torch

    from gvslcore.finetune import FinetuneConfig, run_finetune
    from gvslcore.zoo import locate_model

    t_start = time.monotonic()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    pretrained_path = locate_model(args.pretrained)
    train_seeds = chest_seeds(args.chest_seed, TRAIN_STREAM, args.train_chests)
    test_seeds = chest_seeds(args.chest_seed, TEST_STREAM, args.test_chests)
    check_disjoint(train_seeds, test_seeds)
    rs = f"{args.render_spacing:g}mm"
    print(f"rendering chests at {rs} (torch threads {torch.get_num_threads()})", file=sys.stderr, flush=True)
    train = chests(out / f"train_{rs}", train_seeds, args.render_spacing)
    test = chests(out / f"test_{rs}", test_seeds, args.render_spacing)
    timings: dict[str, float] = {"chests_s": round(time.monotonic() - t_start, 1)}

    results: dict[str, dict[str, dict]] = {}
    tag_common = f"sp{args.spacing:g}_n{args.train_chests}_b{args.batch}"
    for seed in seeds:
        for name, kwargs, steps, patch, lr in arms(args):
            tag = name.replace(",", "").replace(" ", "_")
            model = out / "models" / f"{tag}_{tag_common}_p{patch}_s{steps}_lr{lr:g}_seed{seed}.safetensors"
            model.parent.mkdir(parents=True, exist_ok=True)
            if not model.exists():
                t = time.monotonic()
                cfg = FinetuneConfig(images=str(train / "images"), labels=str(train / "labels"), out=str(model),
                                     steps=steps, patch=(patch,) * 3, batch=args.batch, lr=lr, seed=seed, val_cases=0,
                                     patience=0, checkpoint_every=max(50, steps // 2), device="cpu", **kwargs)
                code = run_finetune(cfg, progress="none", resume=(cfg.run_dir / "config.json").exists())
                if code:
                    return code
                timings[f"{tag}_seed{seed}_train_s"] = round(time.monotonic() - t, 1)
            t = time.monotonic()
            score_file = model.with_suffix(f".heldout{args.test_chests}_o{args.overlap:g}.json")
            if score_file.is_file():
                score = json.loads(score_file.read_text())
            else:
                score = held_out(model, test, args.overlap)
                score_file.write_text(json.dumps(score, indent=2))
                timings[f"{tag}_seed{seed}_eval_s"] = round(time.monotonic() - t, 1)
            results.setdefault(name, {})[str(seed)] = score
            print(f"seed {seed} {name:22s} held-out mean Dice {score['mean_dice']:.3f} "
                  f"({(time.monotonic() - t_start) / 60:.1f} min so far)", file=sys.stderr, flush=True)
        summary = summarize(results, seeds)
        if args.json:  # after every seed, so that a stopped study still leaves its numbers
            args.json.write_text(json.dumps({**summary, "results": results, "timings_s": timings,
                                             "pretrained": str(pretrained_path), "train_chest_seeds": train_seeds,
                                             "test_chest_seeds": test_seeds,
                                             "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    wall = time.monotonic() - t_start
    header = (f"Held-out synthetic chests: {args.test_chests} (trained on {args.train_chests}), rendered at "
              f"{args.render_spacing:g} mm, worked at {args.spacing:g} mm; width {args.width}; seeds {args.seeds}; "
              f"probe {args.probe_steps} steps patch {args.probe_patch} lr {args.probe_lr:g}; fine-tune "
              f"{args.finetune_steps} steps patch {args.patch} lr {args.lr:g}; batch {args.batch}; "
              f"torch threads {torch.get_num_threads()}; wall {wall / 60:.1f} min\n"
              f"GVSL model: {pretrained_path}")
    print_table(summarize(results, seeds), seeds, header)
    if args.json:
        data = json.loads(args.json.read_text())
        data["timings_s"]["wall_s"] = round(wall, 1)
        args.json.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

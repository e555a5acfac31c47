"""`gvsl demo OUT`: the whole pipeline, CPU-sized (a few minutes on two cores).

phantoms -> GVSL pre-training -> fine-tuning on a few labeled phantoms -> segmentation of a held-out
phantom -> evaluation -> overlay PNGs; then the shipped default heart model (gvsl-heart-ct) on the
real chest CTA (when ../shared/data is present), with its whole-heart Dice and anatomy checks; then
a summary: the pre-training losses (first vs last logged, with their no-learning baselines), the
Dice per label on the held-out phantom and the real-CTA figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from ..cli import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on phantoms (and the real chest CTA when present)",
                       description=__doc__)
    p.add_argument("out", metavar="OUT", help="output folder (created)")
    p.add_argument("--cases", type=int, default=10, help="labeled phantom cases for fine-tuning (default 10)")
    p.add_argument("--pretrain-steps", type=int, default=150, help="GVSL pre-training steps (default 150)")
    p.add_argument("--finetune-steps", type=int, default=800, help="fine-tuning steps (default 800)")
    p.add_argument("--width", type=int, default=8, help="U-Net width (default 8: CPU-sized)")
    p.add_argument("--size", type=int, default=48, help="phantom size in voxels at 3 mm (default 48)")
    p.add_argument("--cta", default=None, help="real CT to segment (default: ../shared/data/chest_cta/ct.nii.gz when present)")
    p.add_argument("--no-cta", action="store_true", help="skip the real chest CTA")
    p.add_argument("--seed", type=int, default=0)
    add_common(p)
    p.set_defaults(func=run)


def default_cta() -> Path | None:
    """The chest CTA of ../shared/data next to the repository (or $GVSL_SHARED_DATA), if present."""
    base = os.environ.get("GVSL_SHARED_DATA")
    candidates = [Path(base)] if base else []
    candidates.append(Path(__file__).resolve().parents[3].parent / "shared" / "data")
    candidates.append(Path.cwd().parent / "shared" / "data")
    for folder in candidates:
        path = folder / "chest_cta" / "ct.nii.gz"
        if path.is_file():
            return path
    return None


MARKER = ".gvsl-demo"
DEMO_ENTRIES = ("phantoms", "held_out", "pretrain", "heart_phantom.safetensors", "heart_phantom_run",
                "held_out_segmentation.seg.nrrd", "chest_cta_segmentation.seg.nrrd", "held_out_metrics.json",
                "held_out_overlay.png", "held_out_reference.png", "chest_cta_overlay.png", "summary.json")


def clear_previous_demo(out: Path) -> None:
    import shutil

    for name in DEMO_ENTRIES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def cta_checks(cta: Path, segmentation: Path) -> dict[str, Any]:
    """Whole-heart Dice (against heart.nii.gz beside the CTA, when there) and the anatomy checks."""
    from ..heartcheck import check_heart
    from ..io import read_image

    ref_path = cta.parent / "heart.nii.gz"
    reference = read_image(ref_path, label=True) if ref_path.is_file() else None
    report = check_heart(read_image(segmentation, label=True), read_image(cta), reference)
    return {"whole_heart_dice": report.values.get("whole-heart Dice"),
            "checks_passed": f"{report.passed}/{len(report.checks)}", "failed_checks": report.failed()}


def pretraining_summary(run: Path) -> dict[str, Any]:
    """First and last logged losses and baselines of a pre-training run (from events.jsonl)."""
    logged = []
    for line in (run / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "progress" and "loss" in event:
            logged.append(event)
    if not logged:
        return {}
    first, last = logged[0], logged[-1]

    def pick(event: dict) -> dict[str, Any]:
        return {"step": event["step"], **{k: event["loss"].get(k) for k in ("ncc", "mse", "smooth", "total")},
                **(event.get("baseline") or {})}

    return {"first": pick(first), "last": pick(last)}


def run(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from ..atomic import ensure_writable_dir, write_json
    from ..errors import InputError
    from ..events import log
    from ..finetune import FinetuneConfig, run_finetune
    from ..io import read_image
    from ..labels import HEART_LABELS
    from ..metrics import evaluate_files
    from ..phantom import write_dataset
    from ..pretrain import PretrainConfig, run_pretrain
    from ..report import overlay_png
    from ..segment import InferenceSettings, segment_file
    from ..zoo import DEFAULT_SEGMENTATION_MODEL

    out = ensure_writable_dir(args.out)
    if any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise InputError(f"{out} is not empty and holds no earlier demo; give a new folder for the demo")
        clear_previous_demo(out)  # `make demo` twice: start over, touching only what a demo writes
    (out / MARKER).write_text("written by gvsl demo; the folder may be cleared by the next `gvsl demo`\n")
    if args.cases < 3:
        raise InputError("--cases must be at least 3 (training and validation cases)")
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    spacing = (3.0, 3.0, 3.0)

    def stage(name: str, start: float) -> None:
        timings[name] = round(time.monotonic() - start, 1)
        log(f"[demo] {name} done in {timings[name]:.0f} s")

    t = time.monotonic()
    log("[demo] 1/6 phantoms")
    labeled = out / "phantoms"
    held_out = out / "held_out"
    write_dataset(labeled, args.cases, args.size, seed=args.seed, spacing=spacing)
    write_dataset(held_out, 1, args.size, seed=args.seed + 1000, spacing=spacing)
    stage("phantoms", t)

    t = time.monotonic()
    log(f"[demo] 2/6 GVSL pre-training ({args.pretrain_steps} steps, width {args.width}, patch 32)")
    pre_run = out / "pretrain"
    code = run_pretrain(PretrainConfig(
        data=[str(labeled / "images")], out=str(pre_run), steps=args.pretrain_steps, patch=(32, 32, 32),
        width=args.width, spacing=spacing, modality="CT", seed=args.seed, checkpoint_every=max(50, args.pretrain_steps),
        device=args.device), progress="none")
    if code:
        return code
    stage("pretrain", t)

    t = time.monotonic()
    log(f"[demo] 3/6 fine-tuning on {args.cases} labeled phantoms ({args.finetune_steps} steps)")
    model = out / "heart_phantom.safetensors"
    code = run_finetune(FinetuneConfig(
        images=str(labeled / "images"), labels=str(labeled / "labels"), out=str(model),
        pretrained=str(pre_run / "model.safetensors"), steps=args.finetune_steps, patch=(32, 32, 32), batch=2,
        lr=3e-3, seed=args.seed, val_cases=2, val_every=max(50, args.finetune_steps // 3), patience=0,
        checkpoint_every=max(50, args.finetune_steps), device=args.device), progress="none")
    if code:
        return code
    stage("finetune", t)

    t = time.monotonic()
    log("[demo] 4/6 segmenting the held-out phantom")
    case = held_out / "images" / "case_000.nii.gz"
    phantom_seg = out / "held_out_segmentation.seg.nrrd"
    segment_file(case, phantom_seg, model, InferenceSettings(device=args.device))
    cta = None if args.no_cta else Path(args.cta) if args.cta else default_cta()
    cta_seg = out / "chest_cta_segmentation.seg.nrrd"
    cta_info: dict[str, Any] | None = None
    if cta is not None and cta.exists():
        log(f"[demo]     segmenting the real chest CTA {cta} with the default heart model ({DEFAULT_SEGMENTATION_MODEL})")
        cta_info = segment_file(cta, cta_seg, DEFAULT_SEGMENTATION_MODEL, InferenceSettings(device=args.device))
        cta_info["checks"] = cta_checks(cta, cta_seg)
    else:
        why = "skipped (--no-cta)" if args.no_cta else "not found (../shared/data/chest_cta/ct.nii.gz): skipped"
        log(f"[demo]     real chest CTA {why}")
    stage("segment", t)

    t = time.monotonic()
    log("[demo] 5/6 evaluation")
    metrics = evaluate_files(phantom_seg, held_out / "labels" / "case_000.nii.gz")
    write_json(out / "held_out_metrics.json", metrics)
    stage("evaluate", t)

    t = time.monotonic()
    log("[demo] 6/6 overlay pictures")
    pictures = [overlay_png(read_image(case), sitk.ReadImage(str(phantom_seg)), out / "held_out_overlay.png",
                            HEART_LABELS, title="held-out phantom: GVSL fine-tuned segmentation", window=(-200, 600),
                            distinct_colors=True)]
    pictures.append(overlay_png(read_image(case), read_image(held_out / "labels" / "case_000.nii.gz", label=True),
                                out / "held_out_reference.png", HEART_LABELS, title="held-out phantom: reference labels",
                                window=(-200, 600), distinct_colors=True))
    if cta_info is not None:
        pictures.append(overlay_png(read_image(cta), sitk.ReadImage(str(cta_seg)), out / "chest_cta_overlay.png",
                                    HEART_LABELS, title=f"real chest CTA: default heart model {DEFAULT_SEGMENTATION_MODEL}",
                                    window=(-200, 700), distinct_colors=True))
    stage("pictures", t)

    pre = pretraining_summary(pre_run)
    summary = {
        "pretraining": pre,
        "held_out_dice": {row["name"]: row["dice"] for row in metrics["labels"]},
        "held_out_mean_dice": metrics["mean"]["dice"],
        "held_out_mean_hd95_mm": metrics["mean"]["hd95_mm"],
        "chest_cta": cta_info and {"segmentation": str(cta_seg), "model": DEFAULT_SEGMENTATION_MODEL,
                                   "volumes_ml": cta_info["volumes_ml"], **cta_info["checks"]},
        "pictures": [str(p) for p in pictures],
        "model": str(model),
        "seconds": {**timings, "total": round(time.monotonic() - t0, 1)},
    }
    write_json(out / "summary.json", summary)
    print(format_summary(summary))
    return 0


def format_summary(s: dict[str, Any]) -> str:
    lines = ["GVSL demo summary", "================="]
    pre = s.get("pretraining") or {}
    if pre:
        f, last = pre["first"], pre["last"]
        nan = float("nan")
        # Each logged window has its own sample pairs, so each loss is shown next to its own
        # no-learning baseline (NCC of the unwarped pair, MSE of the transformed view).
        lines += [
            f"pre-training, first vs last logged window (steps {f['step']} and {last['step']}): loss (baseline)",
            f"  NCC           {f['ncc']:.4f} ({f.get('ncc_unwarped', nan):.4f})  ->  "
            f"{last['ncc']:.4f} ({last.get('ncc_unwarped', nan):.4f})",
            f"  MSE restore   {f['mse']:.4f} ({f.get('mse_view', nan):.4f})  ->  "
            f"{last['mse']:.4f} ({last.get('mse_view', nan):.4f})",
        ]
    lines.append(f"held-out phantom Dice (mean {s['held_out_mean_dice']:.3f}, HD95 {s['held_out_mean_hd95_mm']} mm):")
    for name, d in s["held_out_dice"].items():
        lines.append(f"  {name:30s} {d if d is None else f'{d:.3f}'}")
    cta = s.get("chest_cta")
    if cta:
        lines.append(f"real chest CTA, default heart model {cta['model']}: {cta['segmentation']}")
        if cta.get("whole_heart_dice") is not None:
            lines.append(f"  whole-heart Dice vs the reference mask  {cta['whole_heart_dice']:.3f}")
        lines.append(f"  anatomy checks passed                   {cta['checks_passed']}")
        lines.append("  volumes (ml): " + ", ".join(f"{k} {v:.0f}" for k, v in cta["volumes_ml"].items()))
    lines.append("pictures: " + ", ".join(Path(p).name for p in s["pictures"]))
    lines.append("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in s["seconds"].items()))
    return "\n".join(lines)

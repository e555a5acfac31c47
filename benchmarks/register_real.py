"""Registration on real CTs the GVSL model never saw: known deformations and an inter-subject pair.

Pairs (every CT here is validation data, never trained on: gvslcore.realct):

- ``chest_cta``: the shared chest CTA (1.5 mm) as MOVING; FIXED is the same scan pulled through a
  known transform S (rotation, translation and a smooth B-spline), so the true mapping from a fixed
  point to its moving point is S itself. Error = mean |u - u_true| in the heart mask (mm); Dice of the
  heart mask carried from moving to fixed.
- ``abdomen``: the shared abdominal CT resampled to 4 mm, treated the same way; Dice = mean over its
  organ labels present in both.
- ``cta_to_lidc``: inter-subject, the LIDC chest CT (fixed, 2 mm) and the chest CTA (moving, 2 mm):
  Dice of the whole-heart masks (TotalSegmentator's) after registration; no point error.

Methods, all in the same run: gvsl feed-forward only (``--iterations 0``), feed-forward + instance
optimization (the default), instance optimization alone (``--model none``), ANTs SyN (antspyx,
``type_of_transform="SyN"``, skipped with a note when not installed). Folding = % voxels with a
Jacobian determinant <= 0.

    python benchmarks/register_real.py [--pairs chest_cta abdomen cta_to_lidc] [--methods ff ff+io io ants]
        [--model gvsl-pretrained-ct] [--iterations N [N ...]] [--spacing MM]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))

import register_baselines as baselines  # noqa: E402 - the sibling module
from real_ct import SHARED  # noqa: E402


def known_transform(image: sitk.Image, seed: int, rotation_deg: float = 6.0, shift_mm: float = 8.0,
                    bspline_mm: float = 4.0) -> sitk.Transform:
    """S: a rigid motion about the image centre, then a B-spline (mesh 5^3, coefficients sd ``bspline_mm``)."""
    rng = np.random.default_rng(seed)
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()])
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(centre)
    rigid.SetRotation(*np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3)))
    rigid.SetTranslation(rng.uniform(-shift_mm, shift_mm, 3).tolist())
    bspline = sitk.BSplineTransformInitializer(image, [5, 5, 5], order=3)
    params = rng.normal(0.0, bspline_mm, len(bspline.GetParameters()))
    bspline.SetParameters(params.tolist())
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(rigid)  # ITK applies the last added first: rigid(bspline(p))
    composite.AddTransform(bspline)
    return composite


def _resample_iso(image: sitk.Image, spacing: float, label: bool = False) -> sitk.Image:
    from gvslcore.io import resample_to_spacing

    return resample_to_spacing(image, (spacing,) * 3, label=label, default_value=0 if label else -1024.0)


def _pull(image: sitk.Image, transform: sitk.Transform, label: bool) -> sitk.Image:
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return sitk.Resample(image, image, transform, interp, 0 if label else -1024.0,
                         image.GetPixelID() if label else sitk.sitkFloat32)


def synthetic_pair(ct: sitk.Image, labels: sitk.Image, seed: int) -> dict:
    s = known_transform(ct, seed)
    fixed = _pull(ct, s, False)
    return {"fixed": fixed, "moving": sitk.Cast(ct, sitk.sitkFloat32), "moving_labels": labels,
            "fixed_labels": _pull(labels, s, True), "truth": baselines._field_of(s, fixed)}


def build_pairs(names: list[str]) -> dict[str, dict]:
    from gvslcore.io import read_image
    from gvslcore.realct import VALIDATION, fetch_scans

    pairs: dict[str, dict] = {}
    cta = SHARED / "chest_cta"
    if "chest_cta" in names and (cta / "ct.nii.gz").is_file():
        pairs["chest_cta"] = synthetic_pair(read_image(cta / "ct.nii.gz"), read_image(cta / "heart.nii.gz", label=True), 1)
    abd = SHARED / "abdomen_ct_small"
    if "abdomen" in names and (abd / "ct.nii.gz").is_file():
        pairs["abdomen"] = synthetic_pair(_resample_iso(read_image(abd / "ct.nii.gz"), 4.0),
                                          _resample_iso(read_image(abd / "labels.nii.gz", label=True), 4.0, True), 2)
    if "cta_to_lidc" in names and (cta / "ct.nii.gz").is_file():
        lidc = next(s for s in VALIDATION if s.name == "lidc_cta")
        ct_path = fetch_scans([lidc])[0]
        lidc_ct = _resample_iso(read_image(ct_path), 2.0)
        lidc_lab = _resample_iso(read_image(ct_path.with_name("labels.nii.gz"), label=True), 2.0, True)
        heart = sitk.Cast(sitk.Equal(lidc_lab, 51) | sitk.Equal(lidc_lab, 61), sitk.sitkUInt8)  # heart + appendage
        cta_heart = _resample_iso(read_image(cta / "heart.nii.gz", label=True), 2.0, True) > 0
        pairs["cta_to_lidc"] = {"fixed": sitk.Cast(lidc_ct, sitk.sitkFloat32),
                                "moving": sitk.Cast(_resample_iso(read_image(cta / "ct.nii.gz"), 2.0), sitk.sitkFloat32),
                                "moving_labels": sitk.Cast(cta_heart, sitk.sitkUInt8), "fixed_labels": heart, "truth": None}
    return pairs


def ants_syn_timed(pair: dict) -> tuple[sitk.Image, float] | None:
    """(ANTs SyN's field, seconds) for a pair, or None with a note when antspyx is not installed."""
    try:
        import ants  # noqa: F401
    except ImportError:
        print("note: antspyx is not installed (pip install --no-deps antspyx): no ANTs SyN row")
        return None
    t = time.monotonic()
    field = baselines.ants_syn(pair["fixed"], pair["moving"])
    return field, time.monotonic() - t


def label_dice(a: np.ndarray, b: np.ndarray) -> float:
    scores = []
    for v in sorted(set(np.unique(b).tolist()) - {0}):
        x, y = a == v, b == v
        if y.sum() >= 20:
            scores.append(2.0 * float((x & y).sum()) / float(x.sum() + y.sum()))
    return float(np.mean(scores)) if scores else math.nan


def evaluate(field: sitk.Image, pair: dict) -> dict:
    from gvslcore.register.fields import folding_percent, jacobian_image

    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    carried = sitk.Resample(pair["moving_labels"], pair["fixed"], transform, sitk.sitkNearestNeighbor, 0,
                            pair["moving_labels"].GetPixelID())
    ref = sitk.GetArrayViewFromImage(pair["fixed_labels"])
    out = {"dice": label_dice(sitk.GetArrayViewFromImage(carried), ref),
           "folding_percent": folding_percent(jacobian_image(sitk.Cast(field, sitk.sitkVectorFloat64)))}
    if pair["truth"] is not None:
        out["error_mm"] = baselines._error(sitk.Cast(field, sitk.sitkVectorFloat64), pair["truth"], ref > 0)
    return out


def before(pair: dict) -> dict:
    zero = sitk.Image(pair["fixed"].GetSize(), sitk.sitkVectorFloat64, 3)
    zero.CopyInformation(pair["fixed"])
    return evaluate(zero, pair)


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="+", default=["chest_cta", "abdomen", "cta_to_lidc"])
    p.add_argument("--methods", nargs="+", default=["ff", "ff+io", "io", "ants"])
    p.add_argument("--model", default="gvsl-pretrained-ct")
    p.add_argument("--iterations", type=int, nargs="+", default=None,
                   help="per level (default: gvsl register's default); several values: a sweep, one row each")
    p.add_argument("--spacing", type=float, default=None, help="working spacing, mm (default: gvsl register's)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    from gvslcore.register import RegisterConfig, load_registration_model, register_images
    from gvslcore.zoo import DEFAULT_REGISTRATION_ITERATIONS

    sweep = args.iterations if args.iterations is not None else [DEFAULT_REGISTRATION_ITERATIONS]
    print(f"device: {'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only (no GPU here)'}, "
          f"{torch.get_num_threads()} threads", flush=True)
    model, meta = load_registration_model(args.model, torch.device("cpu"))
    pairs = build_pairs(args.pairs)
    rows = []
    for name, pair in pairs.items():
        rows.append({"pair": name, "method": "before", **before(pair), "seconds": 0.0})
        runs = [(m, n) for m in args.methods for n in (sweep if m in ("ff+io", "io") else [None])]
        for method, iterations in runs:
            if method == "ants":
                timed = ants_syn_timed(pair)
                if timed is None:
                    continue
                (field, seconds), stages = timed, {}
            else:
                cfg = RegisterConfig(iterations=iterations or 0, spacing=args.spacing)
                use = None if method == "io" else model
                t = time.monotonic()
                result = register_images(pair["fixed"], pair["moving"], model=use, metadata=meta if use else None, cfg=cfg)
                seconds, stages = time.monotonic() - t, result.metrics["seconds"]
                field = result.displacement
            label = {"ff": "gvsl feed-forward", "ff+io": "gvsl feed-forward + IO", "io": "gvsl --model none (IO)",
                     "ants": "ANTs SyN"}[method]
            if iterations is not None and len(sweep) > 1:
                label += f" {iterations}/level"
            row = {"pair": name, "method": label, **evaluate(field, pair), "seconds": round(seconds, 1), "stages": stages}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'pair':12} {'method':34} {'error mm':>9} {'Dice':>7} {'fold %':>7} {'s':>7}")
    for r in rows:
        err = f"{r['error_mm']:.2f}" if "error_mm" in r else "-"
        print(f"{r['pair']:12} {r['method']:34} {err:>9} {r['dice']:7.3f} {r['folding_percent']:7.3f} {r['seconds']:7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

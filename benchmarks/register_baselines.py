"""Registration on phantom pairs with a known deformation: ours against classical baselines.

Rows: GVSL Z-Matching feed-forward, the same plus instance optimization, instance optimization
alone (no model), SimpleITK affine + B-spline, and ANTs SyN (antspyx; skipped with a note when
it is not installed). Every method's mapping is turned into one ITK displacement field on the fixed
grid and judged the same way: Dice of the moving labels propagated label-wise onto the fixed image
(mean of the 7 heart labels), folding (% of voxels with Jacobian determinant <= 0), mean error of
the displacement against the ground truth inside the heart and inside the body (mm), and time
(wall and CPU seconds of this process, all threads; the machine may be shared, CPU is the steadier).

    python benchmarks/register_baselines.py --out /tmp/regbench --pairs 4 --size 64 --pretrain-steps 300
    python benchmarks/register_baselines.py --data PHANTOMS --model RUN/model.safetensors

antspyx is a benchmark-only dependency (``pip install antspyx``); nothing in gvslcore imports it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HEART = range(1, 8)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    scores = []
    for v in HEART:
        x, y = a == v, b == v
        total = int(x.sum()) + int(y.sum())
        if total:
            scores.append(2.0 * int((x & y).sum()) / total)
    return float(np.mean(scores)) if scores else math.nan


def _error(field: sitk.Image, truth: sitk.Image, mask: np.ndarray) -> float:
    e = sitk.GetArrayViewFromImage(field) - sitk.GetArrayViewFromImage(truth)
    return float(np.sqrt((e**2).sum(-1))[mask].mean())


def _field_of(transform: sitk.Transform, fixed: sitk.Image) -> sitk.Image:
    return sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(),
                                             fixed.GetSpacing(), fixed.GetDirection())


# -- methods: each returns the displacement field (fixed grid, LPS mm) ------------------------------

def ours(model_path: str | None, iterations: int, device: str) -> Callable:
    import torch

    from gvslcore.register import RegisterConfig, load_registration_model, register_images

    model, meta = (None, None)
    if model_path is not None:
        model, meta = load_registration_model(model_path, torch.device(device if device != "auto" else "cpu"))

    def run(fixed: sitk.Image, moving: sitk.Image) -> sitk.Image:
        cfg = RegisterConfig(iterations=iterations, device=device)
        return register_images(fixed, moving, model=model, metadata=meta, cfg=cfg).displacement

    return run


def simpleitk_bspline(fixed: sitk.Image, moving: sitk.Image) -> sitk.Image:
    """SimpleITK's classical pipeline: moments + affine (3 levels), then a B-spline (mesh 8^3,
    LBFGSB, 2 levels), both on correlation with 20 % random sampling."""
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed=1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200,
                                                 gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(initial, inPlace=False)
    affine = reg.Execute(fixed, moving)

    bspline = sitk.BSplineTransformInitializer(fixed, [8, 8, 8], order=3)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed=1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=100, maximumNumberOfCorrections=5,
                             maximumNumberOfFunctionEvaluations=1000, costFunctionConvergenceFactor=1e7)
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1, 0])
    reg.SetMovingInitialTransform(affine)
    reg.SetInitialTransform(bspline, inPlace=True)
    reg.Execute(fixed, moving)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)  # ITK applies the last added first: affine(bspline(x))
    composite.AddTransform(bspline)
    return _field_of(composite, fixed)


def ants_syn(fixed: sitk.Image, moving: sitk.Image) -> sitk.Image:
    """ANTs SyN (antspyx defaults: affine initialization, then SyN on mutual information)."""
    import ants

    with tempfile.TemporaryDirectory() as tmp:
        sitk.WriteImage(fixed, f"{tmp}/fixed.nii.gz")
        sitk.WriteImage(moving, f"{tmp}/moving.nii.gz")
        result = ants.registration(ants.image_read(f"{tmp}/fixed.nii.gz"), ants.image_read(f"{tmp}/moving.nii.gz"),
                                   type_of_transform="SyN", verbose=False, outprefix=f"{tmp}/ants_")
        warp_file, affine_file = result["fwdtransforms"]
        warp_field = sitk.ReadImage(warp_file, sitk.sitkVectorFloat64)
        affine = sitk.ReadTransform(affine_file)
        # antsApplyTransforms applies the last listed transform to the image first, so a fixed
        # point goes through the warp, then the affine: x -> affine(warp(x)).
        composite = sitk.CompositeTransform(3)
        composite.AddTransform(affine)
        composite.AddTransform(sitk.DisplacementFieldTransform(warp_field))
        return _field_of(composite, fixed)


# -- the benchmark -----------------------------------------------------------------------------------

def prepare_data(args: argparse.Namespace) -> Path:
    from gvslcore.phantom import write_dataset

    if args.data:
        return Path(args.data)
    out = Path(args.out) / "phantoms"
    if not (out / "dataset.json").exists():
        write_dataset(out, cases=2 * args.pairs, size=args.size, seed=args.seed, pairs=True)
    return out


def prepare_model(args: argparse.Namespace, data: Path) -> str | None:
    if args.model:
        return None if args.model == "none" else args.model
    if args.pretrain_steps <= 0:
        return None
    run = Path(args.out) / "pretrain"
    if not (run / "model.safetensors").exists():
        from gvslcore.pretrain import PretrainConfig, run_pretrain

        spacing = json.loads((data / "dataset.json").read_text())["spacing"]
        cfg = PretrainConfig(data=[str(data / "images")], out=str(run), steps=args.pretrain_steps, patch=(32, 32, 32),
                             width=args.width, spacing=tuple(spacing), checkpoint_every=args.pretrain_steps)
        t = time.monotonic()
        run_pretrain(cfg, "none", resume=(run / "config.json").exists())
        print(f"pretrained {args.pretrain_steps} steps (width {args.width}) in {time.monotonic() - t:.0f} s: {run}")
    return str(run / "model.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a `gvsl phantom --pairs` folder (default: written into --out)")
    parser.add_argument("--out", default="regbench", help="work folder (phantoms, pretrained model)")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="GVSL pre-trained model; 'none' skips the feed-forward rows")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="pretrain a model when --model is absent")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=50, help="instance optimization steps per level")
    parser.add_argument("--threads", type=int, default=2, help="torch / ITK threads for every method")
    parser.add_argument("--methods", nargs="+", default=["ff", "ff+io", "io", "sitk", "ants"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    data = prepare_data(args)
    model = prepare_model(args, data)
    methods: dict[str, Callable] = {}
    if "ff" in args.methods or "ff+io" in args.methods:
        if model is None:
            print("note: no model (--model none / --pretrain-steps 0): feed-forward rows skipped")
        else:
            if "ff" in args.methods:
                methods["GVSL feed-forward"] = ours(model, 0, args.device)
            if "ff+io" in args.methods:
                methods[f"GVSL + instance opt. ({args.iterations}/level)"] = ours(model, args.iterations, args.device)
    if "io" in args.methods:
        methods[f"instance opt. alone ({args.iterations}/level)"] = ours(None, args.iterations, args.device)
    if "sitk" in args.methods:
        methods["SimpleITK affine + B-spline"] = simpleitk_bspline
    if "ants" in args.methods:
        try:
            import ants  # noqa: F401
        except ImportError:
            print("note: antspyx is not installed (pip install antspyx): the ANTs SyN row is skipped")
        else:
            methods["ANTs SyN"] = ants_syn

    from gvslcore.register import folding_percent, jacobian_image, propagate_labels

    dataset = json.loads((data / "dataset.json").read_text())
    rows: dict[str, list[tuple[float, ...]]] = {name: [] for name in ["before (initial frames)", *methods]}
    for entry in dataset["pairs"]:
        def load(key: str, pixel=sitk.sitkFloat32, entry=entry) -> sitk.Image:
            return sitk.ReadImage(str(data / entry[key]), pixel)

        fixed, moving = load("fixed"), load("moving")
        fixed_labels = sitk.GetArrayFromImage(load("fixed_labels", sitk.sitkUInt8))
        moving_labels = load("moving_labels", sitk.sitkUInt8)
        truth = load("displacement", sitk.sitkVectorFloat64)
        heart = fixed_labels > 0
        body = sitk.GetArrayFromImage(fixed) > -500
        zero = sitk.Image(truth.GetSize(), sitk.sitkVectorFloat64, 3)
        zero.CopyInformation(truth)
        before = propagate_labels(moving_labels, fixed, sitk.TranslationTransform(3))
        rows["before (initial frames)"].append((_dice(sitk.GetArrayFromImage(before), fixed_labels), 0.0,
                                                _error(zero, truth, heart), _error(zero, truth, body), 0.0, 0.0))
        for name, method in methods.items():
            t, c = time.monotonic(), time.process_time()
            field = method(fixed, moving)
            wall, cpu = time.monotonic() - t, time.process_time() - c
            transform = sitk.DisplacementFieldTransform(sitk.Image(field))
            labels = sitk.GetArrayFromImage(propagate_labels(moving_labels, fixed, transform))
            rows[name].append((_dice(labels, fixed_labels), folding_percent(jacobian_image(field)),
                               _error(field, truth, heart), _error(field, truth, body), wall, cpu))
            print(f"{Path(entry['fixed']).parent.name}  {name:42s} dice {rows[name][-1][0]:.3f}  "
                  f"fold {rows[name][-1][1]:.3f} %  err heart {rows[name][-1][2]:.2f} mm  {wall:.1f} s", flush=True)

    size = dataset.get("size")
    print(f"\n{len(dataset['pairs'])} phantom pairs, {size} voxels at {dataset.get('spacing')} mm, {args.threads} threads, "
          f"model: {model}")
    header = f"{'method':44s} {'Dice':>6s} {'fold %':>7s} {'err heart mm':>13s} {'err body mm':>12s} {'wall s':>8s} {'CPU s':>8s}"
    print(header)
    print("-" * len(header))
    for name, values in rows.items():
        if not values:
            continue
        m = np.nanmean(np.array(values, dtype=float), axis=0)
        print(f"{name:44s} {m[0]:6.3f} {m[1]:7.3f} {m[2]:13.2f} {m[3]:12.2f} {m[4]:8.1f} {m[5]:8.1f}")


if __name__ == "__main__":
    main()

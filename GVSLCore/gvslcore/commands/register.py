"""`gvsl register`: register MOVING onto FIXED with the Z-Matching head (+ instance optimization)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import add_common, progress_mode
from ..zoo import DEFAULT_REGISTRATION_ITERATIONS as DEFAULT_ITERATIONS
from ..zoo import DEFAULT_REGISTRATION_MODEL


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "register",
        help="register two volumes (affine + deformable) and export ITK transforms",
        description="Align MOVING onto FIXED (files or DICOM folders, any orientation, spacing, size and origin): "
                    "initial alignment by centres of mass, the GVSL Z-Matching head's affine and deformable "
                    "prediction on a working grid, optional instance optimization. Writes into DIR: warped.nii.gz, "
                    "affine.tfm (ITK AffineTransform, LPS), displacement.nii.gz (ITK displacement field on the fixed "
                    "grid, LPS mm: full mapping), jacobian.nii.gz, metrics.json, qc.png and, with --moving-labels, "
                    "propagated.seg.nrrd.",
    )
    p.add_argument("fixed", metavar="FIXED", help="fixed volume (NIfTI/NRRD/MHA file or DICOM folder)")
    p.add_argument("moving", metavar="MOVING", help="moving volume (NIfTI/NRRD/MHA file or DICOM folder)")
    p.add_argument("--model", default=None, metavar="MODEL",
                   help="GVSL pre-trained model (file, checkpoint, run folder or installed/bundled id; default: the "
                        "bundled gvsl-pretrained-ct), or 'none' for instance optimization alone")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--iterations", type=int, default=None, metavar="N",
                   help="instance-optimization steps per resolution level on this pair (default "
                        f"{DEFAULT_ITERATIONS}; 0: the model's feed-forward field only)")
    p.add_argument("--moving-labels", metavar="SEG", default=None,
                   help="label map on the moving grid (.seg.nrrd/.nii.gz/.nrrd) to propagate onto the fixed image")
    p.add_argument("--levels", type=int, default=3, help="resolution levels of the instance optimization (default 3)")
    p.add_argument("--init", choices=["moments", "geometry", "none"], default="moments",
                   help="initial alignment: centres of mass (default), image centres, or none (physical space as is)")
    p.add_argument("--spacing", type=float, default=None, metavar="MM",
                   help="isotropic working spacing in mm (default 4, or the fixed image's spacing when coarser)")
    p.add_argument("--predict-spacing", type=float, default=4.0, metavar="MM",
                   help="grid of the network's feed-forward field when the working grid is finer, mm (default 4; "
                        "0: the working grid)")
    p.add_argument("--max-size", type=int, default=160, metavar="VOXELS",
                   help="largest working-grid axis; the spacing is coarsened beyond it (default 160)")
    p.add_argument("--smooth-weight", type=float, default=3.0, help="smoothness weight of instance optimization (default 3)")
    p.add_argument("--lr", type=float, default=0.1, help="instance-optimization step of the field, in voxels (default 0.1)")
    p.add_argument("--no-qc", action="store_true", help="skip qc.png")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..events import Reporter, log
    from ..register import OUTPUT_NAMES, RegisterConfig, run_register
    from .checks import check_device, check_not_inputs, positive

    positive(args.spacing, "--spacing", unit="mm")
    positive(args.lr, "--lr")
    positive(args.predict_spacing, "--predict-spacing", unit="mm", zero=True)
    positive(args.smooth_weight, "--smooth-weight", zero=True)
    check_device(args.device)
    if args.model is None:
        args.model = DEFAULT_REGISTRATION_MODEL
    if args.iterations is None:
        args.iterations = DEFAULT_ITERATIONS
    inputs = [args.fixed, args.moving, args.moving_labels, None if str(args.model).lower() == "none" else args.model]
    if Path(args.out).is_dir():
        for name in OUTPUT_NAMES.values():
            check_not_inputs(Path(args.out) / name, inputs, f"--out {args.out}: the output")
    cfg = RegisterConfig(
        iterations=args.iterations,
        levels=args.levels,
        init=args.init,
        spacing=args.spacing,
        predict_spacing=args.predict_spacing or None,
        max_size=args.max_size,
        smooth_weight=args.smooth_weight,
        lr=args.lr,
        device=args.device,
    )
    model = None if str(args.model).lower() == "none" else args.model
    from ..memory import keep_freed_memory

    keep_freed_memory()  # this process only registers: reuse freed arrays instead of page-faulting them in again
    reporter = Reporter(progress_mode(args))
    outputs = run_register(args.fixed, args.moving, model, args.out, cfg, moving_labels=args.moving_labels,
                           qc=not args.no_qc, reporter=reporter)
    reporter.done(outputs)
    if progress_mode(args) != "json":
        ncc = {k: "n/a" if v is None else f"{v:.3f}" for k, v in outputs["ncc"].items()}
        log(f"registered in {outputs['seconds']:.1f} s: NCC {ncc['before']} -> {ncc['after']}, "
            f"folding {outputs['folding_percent']:.3f} %; outputs in {args.out}")
    return 0

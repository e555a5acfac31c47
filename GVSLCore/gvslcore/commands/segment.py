"""`gvsl segment`: segment a volume (file or DICOM folder) with a fine-tuned model."""

from __future__ import annotations

import argparse
import json

from ..cli import add_common, progress_mode
from ..errors import InputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment a volume with a fine-tuned model",
        description="Resample to the model's spacing, run Gaussian-blended sliding windows, and write the "
                    "labels on the input's exact grid as a Slicer .seg.nrrd (names, colours, terminology) or a "
                    ".nii.gz / .nrrd label map.",
    )
    p.add_argument("input", metavar="INPUT", help="volume file (NIfTI/NRRD/MHA) or DICOM series folder")
    p.add_argument("output", metavar="OUTPUT", help="output .seg.nrrd, .nii.gz or .nrrd")
    p.add_argument("--model", default="gvsl-heart-ct", metavar="MODEL",
                   help="model file, checkpoint, run folder or model id (default gvsl-heart-ct, the bundled heart model)")
    p.add_argument("--overlap", type=float, default=None, help="window overlap fraction (default 0.5; 0.25 with --fast)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (average of 3 intensity variants; ~3x slower)")
    p.add_argument("--fast", action="store_true", help="lighter CPU setting: overlap 0.25, nearest-neighbour mapping back, no TTA")
    p.add_argument("--batch", type=int, default=None, help="windows per forward pass (default 4 on CUDA, 2 on CPU)")
    p.add_argument("--window", type=int, nargs="+", default=None, help="window size in voxels (default: the model's training patch)")
    p.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the largest connected piece of each label (default: as the model recommends)")
    p.add_argument("--no-modality-check", action="store_true", help="segment even when the input does not look like the model's modality")
    p.add_argument("--no-refine", action="store_true",
                   help="keep the heart model's labels as they come (default, on a contrast CT: myocardium voxels as "
                        "bright as blood move into their chamber, on the input's grid)")
    p.add_argument("--no-amp", action="store_true",
                   help="float32 throughout (default: bf16/fp16 autocast on CUDA and on CPUs with native bf16)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import parse_patch
    from ..events import Reporter, log
    from ..segment import InferenceSettings, segment_file
    from .checks import at_least, check_device, check_not_inputs

    at_least(args.batch, "--batch")
    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise InputError(f"--overlap {args.overlap:g} is not valid; give a fraction in [0, 1), e.g. 0.5")
    check_device(args.device)
    check_not_inputs(args.output, [args.input, args.model], "OUTPUT")
    common = {"batch": args.batch, "largest_component": args.largest_component, "device": args.device,
              "amp": not args.no_amp, "refine_blood_pool": not args.no_refine, "window": parse_patch(args.window) if args.window else None}
    if args.overlap is not None:
        common["overlap"] = args.overlap
    if args.fast:
        if args.tta:
            log("note: --tta is ignored with --fast")
        settings = InferenceSettings.fast(**common)
    else:
        settings = InferenceSettings(tta=args.tta, **common)
    reporter = Reporter(progress_mode(args))
    outputs = segment_file(args.input, args.output, args.model, settings, reporter=reporter,
                           check_modality=not args.no_modality_check)
    reporter.done(outputs)
    if progress_mode(args) != "json":
        log(f"wrote {outputs['segmentation']} ({outputs['windows']} windows on {outputs['device']}); volumes (ml): "
            + json.dumps(outputs["volumes_ml"]))
    return 0

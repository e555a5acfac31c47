"""`gvsl phantom`: write synthetic cardiac CT phantoms with heart labels (and registration pairs).

OUT/images/case_000.nii.gz and OUT/labels/case_000.nii.gz (same names), OUT/dataset.json
(nnU-Net-like, with the label table) and, with --pairs, OUT/pairs/pair_000/{fixed, moving,
fixed_labels, moving_labels, displacement}.nii.gz. The same --seed gives the same data set.
"""

from __future__ import annotations

import argparse
import math

from ..cli import add_common, progress_mode
from ..errors import InputError
from ..events import Reporter, log


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantom",
        help="write synthetic cardiac CT phantoms with heart labels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", help="output folder (created if needed)")
    p.add_argument("--cases", type=int, default=8, help="number of cases (default 8)")
    p.add_argument("--size", type=int, default=64, help="voxels per axis (default 64, at least 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the data set (default 0)")
    p.add_argument("--pairs", action="store_true",
                   help="also write max(1, cases // 2) registration pairs with their displacement fields")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="voxel spacing in mm (default 192 mm field of view / size)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..phantom import MIN_SIZE, write_dataset

    if args.cases < 1:
        raise InputError(f"--cases {args.cases} is not valid; give at least 1 case")
    if args.size < MIN_SIZE:
        raise InputError(f"--size {args.size} is too small; give at least {MIN_SIZE} voxels per axis")
    if args.spacing is not None and not all(math.isfinite(s) and s > 0 for s in args.spacing):
        raise InputError(f"--spacing {' '.join(map(str, args.spacing))} is not valid; give three positive numbers in mm")
    if args.spacing is not None and min(n * s for n, s in zip((args.size,) * 3, args.spacing)) < 150.0:
        log(f"note: a field of view of {args.size} x {min(args.spacing):g} mm may not hold the whole heart "
            "(the phantom's thorax is about 180 mm wide)")
    reporter = Reporter(progress_mode(args))
    outputs = write_dataset(args.out, args.cases, args.size, args.seed, pairs=args.pairs,
                            reporter=reporter, spacing=args.spacing)
    if reporter.mode != "json":
        log(f"wrote {outputs['cases']} phantom cases"
            + (f" and {outputs['num_pairs']} pairs" if outputs.get("num_pairs") else "")
            + f" to {outputs['dataset']} ({outputs['seconds_per_case']:.2f} s per case)")
    return 0

"""`gvsl evaluate`: Dice and HD95 (mm) per label between a predicted and a reference label map."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_common

    p = sub.add_parser(
        "evaluate",
        help="Dice and HD95 per label (JSON; CSV with --csv)",
        description="Compare two label maps on the same grid: Dice and the 95th-percentile Hausdorff distance "
                    "in mm per label and their means (over labels present in REF). Prints JSON on stdout.",
    )
    p.add_argument("pred", metavar="PRED", help="predicted labels (.seg.nrrd, .nii.gz, .nrrd)")
    p.add_argument("ref", metavar="REF", help="reference labels on the same grid")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    p.add_argument("--json", metavar="FILE", dest="json_out", help="also write the JSON to FILE")
    p.add_argument("--label-table", metavar="JSON", help="label names (default: from a .seg.nrrd, else 'label N')")
    p.add_argument("--no-hd95", action="store_true", help="Dice only (faster)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..atomic import write_json, write_text
    from ..labels import LabelTable
    from ..metrics import evaluate_files, to_csv
    from .checks import check_not_inputs

    if args.csv:
        check_not_inputs(args.csv, [args.pred, args.ref, args.label_table], "--csv")
    if args.json_out:
        check_not_inputs(args.json_out, [args.pred, args.ref, args.label_table], "--json")
    table = None
    if args.label_table:
        from ..finetune import read_label_table_json

        table = LabelTable.from_list(read_label_table_json(args.label_table))
    result = evaluate_files(args.pred, args.ref, table=table, hausdorff=not args.no_hd95)
    if args.csv:
        write_text(args.csv, to_csv(result))
    if args.json_out:
        write_json(args.json_out, result)
    print(json.dumps(result, indent=2))
    return 0

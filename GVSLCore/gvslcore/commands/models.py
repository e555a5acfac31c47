"""`gvsl models`: inspect model files and import the authors' released checkpoint.

Sub-commands: ``info FILE``, ``import-gvsl OFFICIAL.pth OUT.safetensors`` here; the catalog
(``list``, ``download``, ``install``) lives in :mod:`gvslcore.zoo` and registers through
:func:`add_catalog_commands` when present.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..cli import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="model files: info, import, catalog", description=__doc__)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")

    info = msub.add_parser("info", help="print a model file's metadata (architecture, preprocessing, labels, provenance)")
    info.add_argument("model", help="a .safetensors model file, a checkpoint or a run folder")
    info.add_argument("--json", action="store_true", help="print the metadata as JSON")
    add_common(info)
    info.set_defaults(func=run_info)

    imp = msub.add_parser("import-gvsl", help="convert the authors' GVSL_epoch_*.pth into a gvsl model file")
    imp.add_argument("official", help="the authors' checkpoint (a plain state_dict .pth)")
    imp.add_argument("out", help="output .safetensors")
    imp.add_argument("--modality", default="CT", choices=["CT", "MR"], help="the data it was trained on (default CT)")
    add_common(imp)
    imp.set_defaults(func=run_import)

    try:
        from ..zoo import add_catalog_commands
    except ModuleNotFoundError as exc:
        if exc.name != "gvslcore.zoo":
            raise
    else:
        add_catalog_commands(msub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def describe(meta: dict) -> str:
    """A readable summary of model metadata."""
    arch = meta.get("architecture", {})
    prep = meta.get("preprocessing", {})
    lines = [
        f"task:           {meta.get('task')}",
        f"architecture:   {arch.get('name')} width {arch.get('width')} in_channels {arch.get('in_channels')}"
        + (f" classes {arch.get('num_classes')}" if arch.get("num_classes") else ""),
        f"preprocessing:  {prep.get('modality')} spacing {prep.get('spacing')} mm"
        + (f" HU window {prep.get('ct_window')}" if prep.get("modality") == "CT" else ""),
    ]
    labels = meta.get("labels") or []
    if labels:
        lines.append("labels:")
        lines += [f"  {lab['value']:>3}  {lab['name']}" for lab in labels]
    prov = meta.get("provenance") or {}
    if prov:
        lines.append("provenance:")
        lines += [f"  {k}: {v}" for k, v in prov.items()]
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    from ..bundle import read_metadata, resolve_model

    if str(args.model).endswith(".safetensors"):
        meta = read_metadata(args.model)
    else:
        meta = resolve_model(args.model)[1]
    print(json.dumps(meta, indent=2) if args.json else describe(meta))
    return 0


def run_import(args: argparse.Namespace) -> int:
    from ..officialgvsl import import_official

    path, n = import_official(args.official, args.out, modality=args.modality)
    print(f"imported {n} tensors into {path}", file=sys.stderr)
    return 0

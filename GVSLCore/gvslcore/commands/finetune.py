"""`gvsl finetune`: a segmentation model from a (GVSL-pre-trained) backbone and labeled volumes."""

from __future__ import annotations

import argparse

from ..cli import add_common, add_nproc, add_training, progress_mode, training_options
from .checks import memory_errors_as_input


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="train a segmentation model (pre-trained backbone + head) on labeled volumes",
        description="Fine-tune the pre-trained U-Net with a segmentation head (Dice + cross-entropy). "
                    "Writes a run folder (checkpoints, events, status; --resume continues it) and, when done, "
                    "the best model by validation Dice to --out. --lr defaults to 1e-3 (5e-2 with --linear-probe, "
                    "which trains the head with class-weighted cross-entropy on standardized frozen features).",
    )
    p.add_argument("--pretrained", metavar="CKPT|MODEL", help="GVSL pre-trained model, checkpoint or run folder (or an installed id)")
    p.add_argument("--init", metavar="MODEL", help="continue from an earlier fine-tuned model (new labeled cases)")
    p.add_argument("--from-scratch", action="store_true", help="random backbone (the baseline)")
    p.add_argument("--linear-probe", action="store_true",
                   help="freeze the backbone, train only the linear head (the paper's linear evaluation)")
    p.add_argument("--readout", choices=["last", "hypercolumn"],
                   help="what the new head reads: 'last' (default) = a 3x3x3 conv of the last decoder map (the "
                        "authors' out_conv; with --linear-probe, the paper's linear evaluation), 'hypercolumn' = a "
                        "1x1x1 projection of all nine U-Net blocks, upsampled and summed (a much better frozen-backbone "
                        "model at small widths)")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images")
    p.add_argument("--labels", required=True, metavar="DIR", help="folder of label maps with the images' file names")
    p.add_argument("--out", required=True, metavar="MODEL.safetensors", help="the model file written at the end")
    p.add_argument("--run", metavar="DIR", help="run folder (default: OUT without .safetensors + '_run')")
    add_training(p, steps=2000, patch=96, batch=2, lr=1e-3)
    p.set_defaults(lr=None)
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="working spacing in mm (default: the pre-trained model's)")
    p.add_argument("--modality", choices=["CT", "MR"], help="intensity normalization (default: the pre-trained model's)")
    p.add_argument("--label-table", metavar="JSON",
                   help="labels as a JSON list of {value, name, color, type} (default: the heart template)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="fraction of cases held out for validation (default 0.2)")
    p.add_argument("--val-cases", type=int, help="number of validation cases (overrides --val-fraction)")
    p.add_argument("--val-every", type=int, default=100, help="steps between validations (default 100)")
    p.add_argument("--patience", type=int, default=10, help="stop after this many validations without a better Dice (0: never; default 10)")
    p.add_argument("--foreground", type=float, default=0.67, help="fraction of patches centred on a labeled voxel (default 0.67)")
    p.add_argument("--no-augment", action="store_true", help="no spatial or intensity augmentation")
    p.add_argument("--log-every", type=int, default=10, help="steps between progress events")
    p.add_argument("--no-bf16", action="store_true", help="train in float32 on CUDA")
    add_nproc(p, "finetune")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distributed import run_command
    from ..finetune import FinetuneConfig, read_label_table_json, run_finetune

    cfg = FinetuneConfig(
        images=str(args.images),
        labels=str(args.labels),
        out=str(args.out),
        run=args.run,
        pretrained=args.pretrained,
        init=args.init,
        linear_probe=args.linear_probe,
        from_scratch=args.from_scratch,
        readout=args.readout,
        spacing=tuple(args.spacing) if args.spacing else None,
        modality=args.modality,
        label_table=read_label_table_json(args.label_table) if args.label_table else None,
        val_fraction=args.val_fraction,
        val_cases=args.val_cases,
        val_every=args.val_every,
        patience=args.patience,
        foreground=args.foreground,
        augment=not args.no_augment,
        **training_options(args),
    )
    with memory_errors_as_input(args):
        return run_command(args, lambda progress: run_finetune(cfg, progress, resume=args.resume),
                           progress=progress_mode(args), device=cfg.device, run_dir=cfg.run_dir)

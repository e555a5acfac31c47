"""`gvsl pretrain`: GVSL self-supervised pre-training on a folder of unlabeled volumes."""

from __future__ import annotations

import argparse

from ..cli import add_common, add_nproc, add_training, progress_mode, training_options
from .checks import memory_errors_as_input


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="self-supervised GVSL pre-training on unlabeled volumes",
        description="Pre-train the shared 3-D U-Net with Z-Matching (affine + deformable registration of "
                    "two volumes) and restoration. Writes a run folder; RUN/model.safetensors when done.",
    )
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="folders of volumes (NIfTI/NRRD/MHA/DICOM)")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder (created)")
    add_training(p, steps=2000, patch=128)
    p.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 1.0], metavar=("X", "Y", "Z"),
                   help="working spacing in mm (default 1 1 1, the paper)")
    p.add_argument("--modality", choices=["auto", "CT", "MR"], default="auto", help="intensity normalization (default auto)")
    p.add_argument("--ncc-weight", type=float, default=1.0)
    p.add_argument("--smooth-weight", type=float, default=1.0)
    p.add_argument("--mse-weight", type=float, default=1.0)
    p.add_argument("--pairs", choices=["any", "folder"], default="any",
                   help="'folder': pair two volumes of the same --data folder (one folder per body region); default any")
    p.add_argument("--zoom", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="scale augmentation: each pair's crops cover LO..HI times the patch's field of view")
    p.add_argument("--body-relative", action="store_true",
                   help="crop both volumes of a pair at one fraction of their body (HU > -512) boxes")
    p.add_argument("--balance-folders", action="store_true",
                   help="each --data folder gives the first volume of a pair equally often, whatever its size")
    p.add_argument("--log-every", type=int, default=10, help="steps between loss read-backs and progress events")
    p.add_argument("--no-bf16", action="store_true", help="train in float32 on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow first steps; measure before use)")
    p.add_argument("--channels-last", action="store_true", help="channels-last-3d memory format (measure before use)")
    add_nproc(p, "pretrain")
    add_common(p)
    # Pre-training needs workers to keep a GPU busy (appearance transforms are numpy): default auto.
    p.set_defaults(func=run, workers=-1)
    for action in p._actions:
        if action.dest == "workers":
            action.help = "DataLoader worker processes per training process; -1 = auto: up to 8 per GPU, none on CPU (default -1)"


def run(args: argparse.Namespace) -> int:
    from ..distributed import run_command
    from ..pretrain import PretrainConfig, check_inputs, run_pretrain

    cfg = PretrainConfig(
        data=[str(d) for d in args.data],
        out=str(args.out),
        spacing=tuple(args.spacing),
        modality=args.modality,
        ncc_weight=args.ncc_weight,
        smooth_weight=args.smooth_weight,
        mse_weight=args.mse_weight,
        compile=args.compile,
        channels_last=args.channels_last,
        pairs=args.pairs,
        zoom=tuple(args.zoom) if args.zoom else None,
        body_relative=args.body_relative,
        balance_folders=args.balance_folders,
        **training_options(args),
    )
    with memory_errors_as_input(args):
        return run_command(
            args,
            lambda progress: run_pretrain(cfg, progress, resume=args.resume),
            progress=progress_mode(args),
            device=cfg.device,
            run_dir=cfg.out,
            preflight=lambda: check_inputs(cfg, args.resume, check_folder=True),
        )

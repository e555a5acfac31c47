"""The ``gvsl`` command line.

Each command lives in its own module that exposes ``add_parser(subparsers)``; the parser it adds
sets ``func(args) -> int``. Bad input raises :class:`InputError`, printed here as one line with
exit code 2 (and an ``error`` event with ``--progress json``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__
from .errors import InputError
from .events import PROGRESS_MODES

# Modules that add a sub-command, in the order `gvsl --help` lists them.
COMMAND_MODULES = (
    "gvslcore.commands.phantom",
    "gvslcore.commands.pretrain",
    "gvslcore.commands.finetune",
    "gvslcore.commands.segment",
    "gvslcore.commands.register",
    "gvslcore.commands.evaluate",
    "gvslcore.commands.models",
    "gvslcore.commands.demo",
)


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every command shares."""
    parser.add_argument("--progress", choices=PROGRESS_MODES, default=None,
                        help="progress display: bar (terminal), json (JSON lines on stdout) or none "
                             "(default: bar in a terminal, none otherwise)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")


def add_training(parser: argparse.ArgumentParser, *, steps: int, patch: int, batch: int = 1, lr: float = 1e-4) -> None:
    """Options the training commands share."""
    parser.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    parser.add_argument("--patch", type=int, nargs="+", default=[patch],
                        help=f"patch size in voxels: one number (cube) or three, z y x (default {patch})")
    parser.add_argument("--batch", type=int, default=batch, help=f"batch size (default {batch})")
    parser.add_argument("--width", type=int, default=32, help="channels at the first U-Net level (default 32, the paper)")
    parser.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default {lr:g})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100)")
    parser.add_argument("--keep", type=int, default=3, help="checkpoints to keep (default 3)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")


def training_options(args: argparse.Namespace) -> dict[str, Any]:
    """What :func:`add_training` (plus ``--device``, ``--log-every``, ``--no-bf16``) put in ``args``,
    as keyword arguments shared by ``PretrainConfig`` and ``FinetuneConfig``, each checked first
    (:func:`gvslcore.commands.checks.check_training`: one line, before the run folder exists)."""
    from .commands.checks import check_training

    patch = parse_patch(args.patch)
    check_training(args, patch)
    return {
        "steps": args.steps, "patch": patch, "batch": args.batch, "width": args.width,
        "lr": args.lr, "seed": args.seed, "checkpoint_every": args.checkpoint_every, "keep": args.keep,
        "log_every": args.log_every, "workers": args.workers, "device": args.device, "bf16": not args.no_bf16,
    }


def add_nproc(parser: argparse.ArgumentParser, command: str) -> None:
    """The ``--nproc N`` option of a training command."""
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="train data-parallel in N processes on this machine (one per GPU; gloo on CPU) "
                             "through torchrun; --batch is per process. For several machines run "
                             f"`torchrun ... -m gvslcore {command} ...` yourself (default 1)")


def parse_patch(values: Sequence[int]) -> tuple[int, int, int]:
    """``--patch 96`` or ``--patch 64 96 96`` (z y x) -> a 3-tuple of sizes, each at least 8 (any size: the network pads)."""
    if len(values) == 1:
        values = [values[0]] * 3
    if len(values) != 3 or min(values) < 8:
        raise InputError(f"--patch {' '.join(map(str, values))}: give one size or three (z y x), each at least 8 voxels")
    return (int(values[0]), int(values[1]), int(values[2]))


def progress_mode(args: argparse.Namespace) -> str:
    if getattr(args, "progress", None):
        return args.progress
    return "bar" if sys.stderr.isatty() else "none"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gvsl",
        description="Geometric Visual Similarity Learning for 3D medical images: "
                    "pre-train, fine-tune, segment and register.",
    )
    parser.add_argument("--version", action="version", version=f"gvsl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command not built yet
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # to re-launch (pretrain --nproc)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        message = str(exc)
        if progress_mode(args) == "json":
            from .events import Reporter

            Reporter("json").error(message)
        print(f"gvsl {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gvsl {args.command}: interrupted", file=sys.stderr)
        return 130


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` without the interpreter's teardown when nothing else is running.

    Once torch is loaded, the teardown (finalizers of every module and tensor) takes about half a
    second, a sixth of a small registration. By now every output was written atomically and closed;
    the streams and log handlers are flushed here. With a child process or a non-daemon thread still
    alive the normal exit runs, so nothing is cut short."""
    import logging
    import multiprocessing
    import threading

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it anyway
            pass
    logging.shutdown()
    busy = multiprocessing.active_children() or any(
        t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread())
    if busy:
        sys.exit(code)
    os._exit(code)


def entry() -> None:
    """The ``gvsl`` console script and ``python -m gvslcore``."""
    exit_now(main())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    entry()

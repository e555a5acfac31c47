"""Option checks every command makes before any work, file or run folder exists.

A zero batch, a NaN learning rate or a device this machine lacks used to surface as a traceback
from deep in torch, after the run folder was created; here each is one line naming the option
and what to give instead (an :class:`InputError`: exit code 2).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence

from ..errors import InputError


def _show(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_show(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def at_least(value: int | None, option: str, minimum: int = 1) -> None:
    """``value`` (when given) is an integer >= ``minimum``."""
    if value is not None and value < minimum:
        raise InputError(f"{option} {value} is not valid; give {minimum} or more")


def positive(value: float | Sequence[float] | None, option: str, *, unit: str = "", zero: bool = False) -> None:
    """Every number in ``value`` (when given) is finite and > 0 (>= 0 with ``zero``)."""
    if value is None:
        return
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if all(math.isfinite(v) and (v > 0 or (zero and v == 0)) for v in values):
        return
    what = "zero or a positive number" if zero else "a positive number"
    if len(values) > 1:
        what = "zeros or positive numbers" if zero else "positive numbers"
    raise InputError(f"{option} {_show(value)} is not valid; give {what}{' in ' + unit if unit else ''}")


def check_device(name: str) -> None:
    """The ``--device`` exists on this machine (cuda, cuda:N, mps or cpu)."""
    from ..engine import resolve_device

    resolve_device(name)


#: float32 bytes per voxel of one first-level feature map: the least a U-Net of width W needs per
#: patch voxel and channel while training (the real need is many times more).
_FEATURE_BYTES = 4


def device_memory(name: str) -> int:
    """Bytes a training run on ``name`` can use: the GPU's total memory, else free host memory."""
    from ..engine import resolve_device
    from ..memory import available_memory

    device = resolve_device(name)
    if device.type == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(device.index or 0).total_memory)
    return available_memory()


def check_patch_memory(patch: Sequence[int], batch: int, width: int, device: str) -> None:
    """Refuse a patch whose first feature maps alone exceed the device's memory (``--patch 4096``
    asks for petabytes: a MemoryError from torch otherwise, after the run folder was made)."""
    need = math.prod(patch) * batch * width * _FEATURE_BYTES
    have = device_memory(device)
    if need > have:
        raise InputError(f"--patch {_show(list(patch))} with --batch {batch} --width {width} is too large for memory: "
                         f"its first feature maps alone need {need / 2**30:.1f} GiB, the device has {have / 2**30:.1f} GiB; "
                         "give a smaller --patch (e.g. 96 or 128) or --batch")


def check_training(args: argparse.Namespace, patch: Sequence[int]) -> None:
    """The options :func:`gvslcore.cli.add_training` adds (plus ``--spacing``, ``--log-every``,
    ``--device``), checked before the run folder is created."""
    at_least(args.steps, "--steps")
    at_least(args.batch, "--batch")
    at_least(args.width, "--width")
    at_least(args.checkpoint_every, "--checkpoint-every")
    at_least(args.keep, "--keep")
    at_least(args.workers, "--workers", -1)
    at_least(getattr(args, "log_every", None), "--log-every")
    positive(args.lr, "--lr")
    positive(getattr(args, "spacing", None), "--spacing", unit="mm")
    check_device(args.device)
    check_patch_memory(patch, args.batch, args.width, args.device)


def check_not_inputs(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], option: str) -> None:
    """``output`` is none of ``inputs`` (the same file by another spelling, a symlink or a hard
    link included): an output never replaces what the command reads."""
    from ..atomic import check_output_file

    check_output_file(output, inputs=[p for p in inputs if p is not None], option=option)


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@contextlib.contextmanager
def memory_errors_as_input(args: argparse.Namespace) -> Iterator[None]:
    """A training that runs out of memory (past :func:`check_patch_memory`'s lower bound) ends in
    one line that names the settings to lower, not a traceback. The run folder is marked failed
    before it reaches here and holds no checkpoint from the failed start, so a rerun starts afresh."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not _is_out_of_memory(exc):
            raise
        patch = _show(list(args.patch))
        raise InputError(f"out of memory on {args.device} training with --patch {patch} --batch {args.batch} "
                         f"--width {args.width}; give a smaller --patch or --batch") from None

"""Data-parallel training on PyTorch's own distributed engine (``torchrun`` + DistributedDataParallel).

The training commands run unchanged in one process; under ``torchrun`` (or ``--nproc N``, which
launches torchrun) every process holds a model replica, draws its own samples (``StepSampler``
with this process's rank and world size) and DDP averages the gradients, so the replicas stay
identical. gloo on CPU, NCCL on CUDA (one GPU per local rank).

What a training loop calls (``pretrain.py`` is the worked example; ``finetune/loop.py`` does the same)::

    ctx = init_distributed(cfg.device)                      # reads torchrun's environment
    try:
        with TrainingRun(...) as run:                       # rank 0 alone writes the run folder
            net = Net(...).to(ctx.device)
            optimizer = ...
            state = load_latest_together(run, ctx)          # every rank: the same checkpoint
            ...load state into net / optimizer...
            model = wrap_model(net, ctx)                    # DDP (identity in one process)
            loader = DataLoader(dataset, batch_size=batch,
                                sampler=StepSampler(start, total, batch, ctx.rank, ctx.world_size),
                                **loader_options(cfg.workers, ctx))  # workers, pinned memory
            stop = StopAgreement(ctx, run.stop)
            for batch in loader:
                ...forward model, backward, step...
                stopping = stop.poll()                      # every step, agreed by all ranks
                if step % log_every == 0 or step == total or stopping:
                    means = reduce_mean(sums, ctx)          # the only host sync: every N steps
                if ...checkpoint...: run.save_checkpoint(step, {"model": net.state_dict(), ...})
                if stopping: break
            stop.close()
            write_debug_digest(net, optimizer, ctx, step)  # a test hook (env var), else nothing
            return run.finish(outputs)                      # rank 0 writes model and status
    finally:
        shutdown(ctx)

A command module adds ``cli.add_nproc(parser, "finetune")`` and ends ``run(args)`` with
``run_command(args, lambda progress: run_x(cfg, progress, resume=args.resume), progress=...,
device=cfg.device, run_dir=RUN)``: ``--nproc N`` then re-launches the same command line under
torchrun and forwards SIGINT/SIGTERM to it.

Rules every rank must follow: collectives (``reduce_mean``, ``barrier``, ``StopAgreement.poll``,
``load_latest_together``) are called at the same steps on every rank; only ``ctx.is_main`` writes
files; state dicts are taken from the unwrapped network (``unwrap``), never from the DDP wrapper.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .bundle import load_checkpoint
from .engine import EXIT_CODES, StopFlag, read_status, resolve_device
from .errors import InputError

if TYPE_CHECKING:
    from .engine import TrainingRun

logger = logging.getLogger("gvsl.distributed")

#: Environment variable naming a folder where every rank writes ``rank<R>.json`` with digests of
#: its weights and optimizer state at the end of training (how the tests prove ranks agree).
DIGEST_ENV = "GVSL_DEBUG_DIGEST_DIR"


@dataclass
class DistContext:
    """Where this process stands in a (possibly one-process) training job.

    Attributes:
        rank: global rank, 0..world_size-1.
        world_size: number of processes (1 outside torchrun).
        local_rank: rank on this node (picks the GPU).
        local_world_size: processes on this node.
        device: the device this process trains on (``cuda:<local_rank>`` under NCCL).
        backend: 'gloo' | 'nccl' | None (no process group).
        cpu_group: a gloo group for small host-side votes (stop requests) that must not wait for
            the GPU; the default group when the backend is gloo already, None in one process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    cpu_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None


def under_torchrun() -> bool:
    """True in a process started by torchrun (its environment names a rank and a world size)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join the torchrun job this process belongs to, or describe a plain single process.

    With WORLD_SIZE > 1 in the environment: NCCL with ``cuda:<LOCAL_RANK>`` when ``device`` resolves
    to CUDA, gloo on CPU. Otherwise no process group is created and everything below is a no-op.

    Raises:
        InputError: CUDA asked for but fewer GPUs than processes on this node.
    """
    resolved = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistContext(device=resolved)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if resolved.type == "cuda":
        if torch.cuda.device_count() < local_world:
            raise InputError(
                f"{local_world} processes on this node but only {torch.cuda.device_count()} CUDA GPU(s); "
                "lower --nproc / --nproc_per_node to the GPU count or use --device cpu"
            )
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"timeout": timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = resolved
        dist.init_process_group(backend, **kwargs)
    cpu_group = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    ctx = DistContext(rank, world, local_rank, local_world, resolved, backend, cpu_group)
    logger.info("rank %d of %d on %s (%s)", rank, world, resolved, backend)
    return ctx


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (call once, at exit, on every rank)."""
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here."""
    if not ctx.is_distributed:
        return
    if ctx.backend == "nccl":
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a small picklable object: a path, a step, a message)."""
    if not ctx.is_distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src, group=ctx.cpu_group)
    return box[0]


def wrap_model(model: torch.nn.Module, ctx: DistContext, **ddp_kwargs: Any) -> torch.nn.Module:
    """``model`` (already on ``ctx.device``) in DistributedDataParallel; itself in one process.

    DDP broadcasts rank 0's parameters at construction, so the replicas start identical even if
    ranks were seeded differently. Gradients are views of the communication buckets (less memory).
    """
    if not ctx.is_distributed:
        return model
    options: dict[str, Any] = {"gradient_as_bucket_view": True}
    options.update(ddp_kwargs)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **options)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain network inside DDP and/or ``torch.compile`` wrappers (for state dicts)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def reduce_mean(values: Mapping[str, torch.Tensor], ctx: DistContext, count: int = 1) -> dict[str, float]:
    """Mean over ranks of per-rank sums divided by ``count``: one all-reduce, one host read-back.

    Args:
        values: scalar tensors (sums over ``count`` steps), all on this rank's device.
        count: how many steps the sums cover.

    Returns:
        {name: float}, identical on every rank.
    """
    if not values:
        return {}
    names = list(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in names])
    if ctx.is_distributed:
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked = stacked / ctx.world_size
    return {k: v / count for k, v in zip(names, stacked.tolist())}


class StopAgreement:
    """Agree across ranks on stopping after a SIGINT/SIGTERM, at the same step, without stalling.

    torchrun forwards a signal to every worker, but each sees it at a different step; a rank that
    left the loop alone would leave the others waiting in DDP's all-reduce. Each step every rank
    posts its local signal number in an asynchronous all-reduce (MAX) on a CPU group and reads the
    result posted one step earlier, which is long complete: no host wait on the GPU, and every rank
    gets the same answer at the same step. In one process the local flag is answered directly.
    """

    def __init__(self, ctx: DistContext, flag: StopFlag) -> None:
        self.ctx = ctx
        self.flag = flag
        self._pending: tuple[Any, torch.Tensor] | None = None
        self.signum: int | None = None

    def poll(self) -> bool:
        """Call once per step on every rank; True when all ranks must stop after this step."""
        if self.signum is not None:
            return True
        if not self.ctx.is_distributed:
            if self.flag.signum is not None:
                self.signum = int(self.flag.signum)
            return self.signum is not None
        agreed = self._collect()
        if agreed:
            self.signum = agreed
            # Every rank ends as cancelled with the same signal, including ranks whose own
            # process was not signalled.
            self.flag.signum = self.flag.signum or signal.Signals(agreed)
            return True
        local = torch.tensor([int(self.flag.signum or 0)], dtype=torch.int64)
        work = dist.all_reduce(local, op=dist.ReduceOp.MAX, group=self.ctx.cpu_group, async_op=True)
        self._pending = (work, local)
        return False

    def _collect(self) -> int:
        if self._pending is None:
            return 0
        work, value = self._pending
        self._pending = None
        work.wait()
        return int(value.item())

    def close(self) -> bool:
        """Complete the last posted vote (every rank has exactly one outstanding, or none);
        True when a stop was agreed (a signal during the last step counts on every rank)."""
        if self.ctx.is_distributed and self.signum is None:
            agreed = self._collect()
            if agreed:
                self.signum = agreed
                self.flag.signum = self.flag.signum or signal.Signals(agreed)
        return self.signum is not None


def load_latest_together(run: TrainingRun, ctx: DistContext) -> dict[str, Any] | None:
    """The checkpoint payload to resume from, the same one on every rank (None when not resuming).

    Rank 0 picks the run's last checkpoint; every rank loads that file (map_location: its own
    device). When some rank cannot see the file (a node without the shared run folder), rank 0
    sends the payload instead.
    """
    if not ctx.is_distributed:
        return run.load_latest(ctx.device)
    name = None
    if ctx.is_main and run.resume:
        found = run.newest_readable_checkpoint("cpu")  # a damaged newest one is set aside
        name = str(found[0]) if found is not None else None
    name = broadcast_object(name, ctx)
    if name is None:
        return None
    visible = torch.tensor([1 if Path(name).is_file() else 0], dtype=torch.int64)
    dist.all_reduce(visible, op=dist.ReduceOp.MIN, group=ctx.cpu_group)
    if int(visible.item()) == 1:
        payload = load_checkpoint(name, device=str(ctx.device))
    else:
        payload = broadcast_object(load_checkpoint(name, device="cpu") if ctx.is_main else None, ctx)
    run.step = int(payload["step"])
    if ctx.is_main:
        logger.info("all %d ranks resume from %s at step %d", ctx.world_size, Path(name).name, run.step)
    return payload


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 of a (nested) state dict's tensors and numbers, in key order (bit-exact)."""
    h = hashlib.sha256()

    def feed(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key in sorted(value, key=str):
                feed(f"{prefix}.{key}", value[key])
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                feed(f"{prefix}[{i}]", item)
        elif isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"{prefix}:{t.dtype}:{tuple(value.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(f"{prefix}={value!r}".encode())

    feed("", state)
    return h.hexdigest()


def write_debug_digest(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, ctx: DistContext, step: int) -> None:
    """With ``$GVSL_DEBUG_DIGEST_DIR`` set, write ``rank<R>.json`` there: digests of this rank's
    weights and optimizer state. A test hook, costs nothing otherwise."""
    folder = os.environ.get(DIGEST_ENV)
    if not folder:
        return
    record = {
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "pid": os.getpid(),
        "step": step,
        "model": state_digest(unwrap(model).state_dict()),
        "optimizer": state_digest(optimizer.state_dict()["state"]) if optimizer is not None else None,
    }
    Path(folder).mkdir(parents=True, exist_ok=True)
    Path(folder, f"rank{ctx.rank}.json").write_text(json.dumps(record))


def default_workers(requested: int, device: torch.device, ctx: DistContext | None = None) -> int:
    """DataLoader workers: ``requested`` when >= 0; for -1 (auto) none on CPU (they would compete
    with the training threads for the same cores) and up to 8 per GPU process on CUDA."""
    if requested >= 0:
        return requested
    if device.type != "cuda":
        return 0
    # One 128^3 sample costs a worker a few hundred ms of numpy (benchmarks/pretrain_speed.py
    # prints the rate), so a GPU wants several; leave a core for the training process itself.
    per_process = (os.cpu_count() or 1) // max(1, ctx.local_world_size if ctx else 1)
    return max(1, min(8, per_process - 1))


def ignore_interrupts(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a terminal's Ctrl-C reaches the workers too; they leave it to
    the main process, which finishes its step and checkpoints while they keep serving batches."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def loader_options(workers: int, ctx: DistContext, prefetch: int = 2) -> dict[str, Any]:
    """DataLoader keyword arguments for training on ``ctx.device``: worker processes (-1 = auto,
    see :func:`default_workers`), pinned memory on CUDA (so ``.to(device, non_blocking=True)`` is
    truly asynchronous), workers that ignore SIGINT."""
    n = default_workers(workers, ctx.device, ctx)
    options: dict[str, Any] = {"num_workers": n, "pin_memory": ctx.device.type == "cuda"}
    if n > 0:
        options.update(worker_init_fn=ignore_interrupts, prefetch_factor=prefetch, persistent_workers=False)
    return options


# -- launching ---------------------------------------------------------------------------------
def strip_option(argv: Sequence[str], option: str, min_prefix: int = 4) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE`` (argparse abbreviations included)."""
    out: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        name, has_value, _ = token.partition("=")
        if name.startswith("--") and len(name) >= min_prefix and option.startswith(name):
            skip = not has_value
            continue
        out.append(token)
    return out


def run_command(
    args: argparse.Namespace,
    train: Callable[[str], int],
    *,
    progress: str,
    device: str,
    run_dir: str | os.PathLike,
    preflight: Callable[[], Any] | None = None,
) -> int:
    """What a training command's ``run(args)`` does with ``--nproc``.

    Outside torchrun with N > 1: ``preflight()`` (bad input: one line, exit 2, no worker started),
    then :func:`launch`. Otherwise ``train(progress)`` in this process; on ranks other than 0 with
    progress 'none', and bad input there exits 2 quietly (rank 0 reports it).
    """
    nproc = int(getattr(args, "nproc", 1))
    if nproc < 1:
        raise InputError(f"--nproc {nproc}: give at least 1 process")
    if nproc > 1 and not under_torchrun():
        if preflight is not None:
            preflight()
        check_nproc(nproc, device)
        argv = getattr(args, "argv", None) or sys.argv[1:]
        return launch(strip_option(argv, "--nproc"), nproc, run_dir=run_dir)
    if int(os.environ.get("RANK", "0")) != 0:
        try:
            return train("none")
        except InputError:
            return 2
    return train(progress)


def check_nproc(nproc: int, device: str = "auto") -> None:
    """Before launching: one GPU per process when ``device`` resolves to CUDA."""
    resolved = resolve_device(device)
    if resolved.type == "cuda" and torch.cuda.device_count() < nproc:
        raise InputError(
            f"--nproc {nproc} needs {nproc} CUDA GPUs, this machine has {torch.cuda.device_count()}; "
            "lower --nproc or add --device cpu"
        )


def _stop_with_parent() -> None:
    """``preexec_fn`` of torchrun: SIGTERM when the launcher dies (Linux PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the launcher's own forwarding has to do
        return
    if os.getppid() == 1:  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def launch(argv: Sequence[str], nproc: int, *, run_dir: str | os.PathLike | None = None) -> int:
    """Run ``python -m gvslcore ARGV`` under torchrun with ``nproc`` processes on this machine.

    SIGINT/SIGTERM/SIGHUP received here are forwarded once to torchrun, which passes them to every
    worker; the workers agree on a step, write a checkpoint and mark the run cancelled. torchrun
    runs in its own session so that a signal sent to this process's group (a terminal's Ctrl-C, a
    job supervisor) reaches it once, through this forwarding; and on Linux it gets SIGTERM when
    this process dies, even by SIGKILL, so that it still stops its workers cleanly.

    Returns:
        The exit code: the run's own (0, 130, 143, from ``run_dir``/status.json when it says done
        or cancelled; 2 when it failed on bad input), else torchrun's.
    """
    cmd = [
        sys.executable, "-m", "gvslcore._torchrun", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "gvslcore", *argv,
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # torchrun would otherwise pin every worker to one thread (and say so); share the cores.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    started = time.time()
    posix = os.name == "posix"
    proc = subprocess.Popen(cmd, env=env, start_new_session=posix, preexec_fn=_stop_with_parent if posix else None)
    forwarded: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        if forwarded:
            logger.warning("already stopping; waiting for the workers to write their checkpoint")
            return
        forwarded.append(signum)
        proc.send_signal(signum)

    handled = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {}
    for sig in handled:
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread
            pass
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    status = read_status(run_dir) if run_dir is not None else {}
    if status.get("updated", 0) < started:  # left by an earlier run in the same folder
        status = {}
    if status.get("status") == "done" and code != 0:
        logger.warning("torchrun exited with %d after the run finished", code)
        return 0
    if status.get("status") == "failed" and status.get("bad_input"):
        return 2  # rank 0 has printed the one line; the exit code says "bad input" as in one process
    if status.get("status") == "cancelled":
        return EXIT_CODES.get(signal.Signals(int(status.get("signal", signal.SIGINT))), 130)
    if forwarded:
        return EXIT_CODES.get(signal.Signals(forwarded[0]), 130)
    return code if code >= 0 else 128 - code

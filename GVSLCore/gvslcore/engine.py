"""What every training command shares: the run folder, checkpoints, resume, cancel, status.

A run folder (DESIGN.md section 3)::

    RUN/config.json      the configuration the run was started with
    RUN/events.jsonl     every progress event, appended
    RUN/log.txt          human-readable log
    RUN/checkpoints/     step_000100.pt ... (atomic writes, last K kept)
    RUN/status.json      {"status": running|done|failed|cancelled, "pid": ..., "step": ..., ...}

SIGINT/SIGTERM set a flag; the loop finishes its step, writes a checkpoint, marks the run
``cancelled`` and the command exits 130/143. ``--resume`` restarts from the last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path, ensure_writable_dir, write_json
from .bundle import latest_checkpoint, load_checkpoint
from .errors import InputError, OutputError
from .events import Reporter

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; an explicit 'cuda' without a GPU is an input error."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda") from None


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the training loop polls between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal API
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.signum is not None


class TrainingRun:
    """Run-folder bookkeeping for one training command (rank 0 writes; other ranks only read).

    Args:
        out: the run folder.
        command: 'pretrain' or 'finetune'.
        config: JSON-able configuration, written to config.json.
        total_steps: the step count the run aims for.
        resume: continue from the last checkpoint in ``out``.
        progress: 'bar' | 'json' | 'none' for the display.
        keep: checkpoints to keep.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        command: str,
        config: dict[str, Any],
        total_steps: int,
        *,
        resume: bool = False,
        progress: str = "bar",
        keep: int = 3,
    ) -> None:
        self.dir = Path(out)
        self.command = command
        self.config = config
        self.total_steps = total_steps
        self.resume = resume
        self.keep = max(1, keep)
        self.rank, self.world_size = distributed_rank()
        self.is_main = self.rank == 0
        self.progress_mode = progress
        self.stop = StopFlag()
        self.step = 0
        self.reporter: Reporter | None = None
        self.logger = logging.getLogger(f"gvsl.{command}")

    # -- life cycle ----------------------------------------------------------------------------
    def __enter__(self) -> TrainingRun:
        if self.is_main:
            ensure_writable_dir(self.dir)
            has_run = (self.dir / "config.json").exists()
            if has_run and not self.resume:
                raise InputError(f"{self.dir} already holds a run; add --resume to continue it or choose a new --out folder")
            if self.resume and not has_run:
                raise InputError(f"--resume: {self.dir} holds no run to continue; drop --resume to start one")
            (self.dir / "checkpoints").mkdir(exist_ok=True)
            if not has_run:
                write_json(self.dir / "config.json", self.config)
            self._setup_log()
            self.reporter = Reporter(self.progress_mode, events_file=self.dir / "events.jsonl")
        else:
            self.reporter = Reporter("none", enabled=False)
        self.stop.__enter__()
        self.write_status("running")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.stop.__exit__()
        if exc_type is None:
            return False
        if exc_type is SystemExit:
            return False
        bad_input = issubclass(exc_type, InputError)
        message = str(exc) if bad_input else f"{exc_type.__name__}: {exc}"
        self._write_final_status("failed", message=message, **({"bad_input": True} if bad_input else {}))
        if self.reporter is not None:
            self.reporter.error(message)
        self.logger.error("run failed: %s", message)
        return False

    def _write_final_status(self, status: str, **extra: Any) -> None:
        """The last status of a run, written even on a full disk: atomically when it can be, else
        over the old status.json in place (its blocks are already allocated). A run whose status
        cannot be written at all still reads as ``interrupted`` (:func:`read_status`: dead pid)."""
        try:
            self.write_status(status, **extra)
            return
        except (OSError, InputError) as exc:
            self.logger.warning("cannot write status.json atomically (%s); overwriting it in place", exc)
        path = self.dir / "status.json"
        text = json.dumps(self._status(status, **extra)) + "\n"
        try:
            with open(path, "r+" if path.exists() else "w", encoding="utf-8") as f:
                f.write(text)
                f.truncate()
        except OSError as exc:
            self.logger.error("cannot write %s (%s)", path, exc.strerror or exc)

    def _setup_log(self) -> None:
        handler = _QuietFileHandler(self.dir / "log.txt", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger("gvsl")
        root.setLevel(logging.INFO)
        root.addHandler(handler)
        self._log_handler = handler

    def _status(self, status: str, **extra: Any) -> dict[str, Any]:
        return {
            "status": status,
            "command": self.command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "step": self.step,
            "total": self.total_steps,
            "updated": time.time(),
            **extra,
        }

    def write_status(self, status: str, **extra: Any) -> None:
        if not self.is_main:
            return
        write_json(self.dir / "status.json", self._status(status, **extra))

    # -- checkpoints ---------------------------------------------------------------------------
    def load_latest(self, device: torch.device | str = "cpu") -> dict[str, Any] | None:
        """The last checkpoint's payload when resuming, else None."""
        if not self.resume:
            return None
        ckpt = latest_checkpoint(self.dir)
        if ckpt is None:
            return None
        payload = load_checkpoint(ckpt, device=str(device))
        self.step = int(payload["step"])
        self.logger.info("resumed from %s at step %d", ckpt.name, self.step)
        return payload

    def save_checkpoint(self, step: int, payload: dict[str, Any]) -> Path | None:
        """Atomically write checkpoints/step_XXXXXX.pt (rank 0 only), keep the last K."""
        self.step = step
        if not self.is_main:
            return None
        path = self.dir / "checkpoints" / f"step_{step:06d}.pt"
        with atomic_path(path, verify=lambda tmp: _verify_checkpoint(tmp, path)) as tmp:
            torch.save({"step": step, **payload}, tmp)
        for old in sorted(self.dir.glob("checkpoints/step_*.pt"))[: -self.keep]:
            old.unlink(missing_ok=True)
        self.reporter.artifact("checkpoint", path)
        self.write_status("running")
        return path

    # -- the end -------------------------------------------------------------------------------
    def finish(self, outputs: dict[str, Any]) -> int:
        """Mark the run done (or cancelled when a signal arrived); return the exit code."""
        if self.stop.requested:
            self.write_status("cancelled", signal=int(self.stop.signum))
            self.reporter.emit("cancelled", step=self.step)
            self.reporter.close()
            self.logger.info("cancelled at step %d", self.step)
            return EXIT_CODES.get(self.stop.signum, 130)
        self.write_status("done", outputs={k: str(v) for k, v in outputs.items()})
        self.reporter.done(outputs)
        self.logger.info("done at step %d", self.step)
        return 0


class _QuietFileHandler(logging.FileHandler):
    """log.txt on a full disk: the line is lost, not printed to stderr as a logging traceback."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging API
        pass


def _verify_checkpoint(tmp: Path, path: Path) -> None:
    """A checkpoint file is a zip archive (torch.save): every member must be there with its CRC."""
    try:
        with zipfile.ZipFile(tmp) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        bad = f"not a complete archive ({exc})"
    if bad:
        raise OutputError(f"writing checkpoint {path} failed: {bad} is damaged; "
                          "free disk space and --resume the run")


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir, "status.json")
    return json.loads(path.read_text()) if path.exists() else {}


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)

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

import contextlib
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
from .bundle import load_checkpoint
from .errors import InputError, OutputError
from .events import Reporter, log

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU. An explicit device this machine lacks (cuda
    without a GPU, cuda:N past the last GPU, mps off Apple silicon) is an input error: found
    here, before any run folder or output exists, not as a traceback at the first tensor."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name} was asked for but no CUDA GPU is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); pick one of them or use --device cuda")
        return device
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"--device {name} was asked for but Apple's MPS is not available here; use --device cpu")
        return device
    if device.type != "cpu":
        raise InputError(f"--device {name} is not supported; use auto, cpu or cuda")
    return device


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
            self._lock = RunLock(self.dir)
            try:
                self._open_folder()
            except BaseException:
                self._lock.release()
                raise
        else:
            self.reporter = Reporter("none", enabled=False)
        self.stop.__enter__()
        self.write_status("running")
        return self

    def _open_folder(self) -> None:
        """Rank 0, holding the lock: check the folder against ``resume``, write or compare config.json."""
        self._lock.acquire()
        state = check_run_folder(self.dir, self.resume)
        previous = read_status(self.dir)
        (self.dir / "checkpoints").mkdir(exist_ok=True)
        if state == "unstarted" and not self.resume:
            # Stopped (failed, interrupted) before its first checkpoint: nothing to continue, start afresh.
            with contextlib.suppress(OSError):
                (self.dir / "events.jsonl").unlink()
        if self.resume:
            saved = read_saved_config(self.dir)
            differences = config_differences(saved, self.config)
            if differences:
                shown = [k for k in RESUMABLE_KEYS if k in self.config and k not in ("out", "run", "extra", "lr_used")]
                may = ", ".join("--" + k.replace("_", "-") for k in shown)
                raise InputError(
                    f"--resume: {self.dir} was started with other settings ({'; '.join(differences)}); "
                    f"only {may} may change on resume: give the run's settings or start a new --out folder"
                )
            if _normal(saved) != _normal({**saved, **self.config}):
                write_json(self.dir / "config.json", {**saved, **self.config})
        else:
            write_json(self.dir / "config.json", self.config)
        self._setup_log()
        if state == "unstarted" and not self.resume:
            self.logger.info("starting afresh: the run in %s stopped before its first checkpoint (%s)",
                             self.dir, previous.get("status", "no status"))
        elif self.resume and previous.get("status") == "interrupted":
            self.logger.info("the previous process (pid %s) ended without a word; resuming", previous.get("pid"))
        self.reporter = Reporter(self.progress_mode, events_file=self.dir / "events.jsonl")

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.stop.__exit__()
        try:
            if exc_type is not None and exc_type is not SystemExit:
                bad_input = issubclass(exc_type, InputError)
                message = str(exc) if bad_input else f"{exc_type.__name__}: {exc}"
                self._write_final_status("failed", message=message, **({"bad_input": True} if bad_input else {}))
                if self.reporter is not None:
                    self.reporter.error(message)
                self.logger.error("run failed: %s", message)
        finally:
            if self.reporter is not None:
                self.reporter.close_file()
            handler = getattr(self, "_log_handler", None)
            if handler is not None:
                logging.getLogger("gvsl").removeHandler(handler)
                handler.close()
            lock = getattr(self, "_lock", None)
            if lock is not None:
                lock.release()
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
        """The newest readable checkpoint's payload when resuming, else None. A damaged newer
        checkpoint (a crash or a full disk while writing it) is renamed ``*.pt.damaged`` and the
        one before it is used."""
        if not self.resume:
            return None
        found = self.newest_readable_checkpoint(device)
        if found is None:
            return None
        ckpt, payload = found
        self.step = int(payload["step"])
        self.logger.info("resumed from %s at step %d", ckpt.name, self.step)
        return payload

    def newest_readable_checkpoint(self, device: torch.device | str = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """(path, payload) of the newest checkpoint that loads; None when the run has none."""
        ckpts = sorted(self.dir.glob("checkpoints/step_*.pt"), reverse=True)
        for ckpt in ckpts:
            try:
                payload = load_checkpoint(ckpt, device=str(device))
                if not isinstance(payload, dict) or "step" not in payload:
                    raise InputError(f"{ckpt} holds no step")
                return ckpt, payload
            except InputError:
                damaged = ckpt.with_name(ckpt.name + ".damaged")
                self.logger.warning("checkpoint %s is damaged; set aside as %s, trying the one before", ckpt, damaged.name)
                log(f"warning: checkpoint {ckpt} is damaged (set aside as {damaged.name}); resuming from the one before")
                with contextlib.suppress(OSError):
                    os.replace(ckpt, damaged)
        if ckpts:
            raise InputError(f"--resume: no checkpoint in {self.dir / 'checkpoints'} can be read (all damaged); "
                             "start a new run (drop --resume, choose a new --out)")
        return None

    def save_checkpoint(self, step: int, payload: dict[str, Any]) -> Path | None:
        """Atomically write checkpoints/step_XXXXXX.pt (rank 0 only), keep the last K."""
        self.step = step
        if not self.is_main:
            return None
        path = self.dir / "checkpoints" / f"step_{step:06d}.pt"
        with atomic_path(path, verify=lambda tmp: _verify_checkpoint(tmp, path)) as tmp:
            # Our own file object: closed when torch.save fails, so that the removed temporary file's
            # space is freed at once (torch's writer would keep it open through the traceback).
            with open(tmp, "wb") as f:
                torch.save({"step": step, **payload}, f)
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

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            super().flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            super().close()


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
    """RUN/status.json ({} when there is none). A ``running`` status whose process is gone (killed,
    the machine restarted: nobody could write the last word) reads as ``interrupted``."""
    path = Path(run_dir, "status.json")
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(status, dict):
        return {}
    if status.get("status") == "running" and not _process_alive(status):
        status = {**status, "status": "interrupted"}
    return status


def _process_alive(status: dict[str, Any]) -> bool:
    """Whether the pid in a status file lives (on this host; elsewhere we cannot tell: True)."""
    pid = status.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    if status.get("host") not in (None, socket.gethostname()):
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, belongs to someone else
        return True
    return True


# -- run folders -----------------------------------------------------------------------------------

LOCK_FILE = "run.lock"

# Settings a --resume may change; every other setting in config.json must stay as the run began
# (the network, its patches, spacing and data), or the checkpoint would not fit or not mean the same.
RESUMABLE_KEYS = ("steps", "lr", "lr_used", "checkpoint_every", "keep", "log_every", "val_every", "patience",
                  "workers", "device", "bf16", "compile", "channels_last", "out", "run", "extra")


class RunLock:
    """An exclusive ``flock`` on RUN/run.lock while a process trains in RUN: a second run or
    ``--resume`` on the same folder is refused instead of interleaving checkpoints. The kernel
    drops the lock when the process dies, however it dies (no stale lock files)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:  # Windows: no flock; the folder checks still apply
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot create {self.path}: {exc.strerror}; choose a writable --out folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (pid {int(os.pread(fd, 32, 0).decode().split()[0])})"
            os.close(fd)
            raise InputError(f"{self.path.parent} is in use by another gvsl run{holder}; wait for it to end "
                             "or stop it, or choose another --out folder") from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def check_run_folder(folder: str | os.PathLike, resume: bool) -> str:
    """What ``folder`` holds for a new run or a ``--resume``: 'empty' (no run), 'unstarted' (a
    config.json but no checkpoint: it stopped before its first, a rerun starts afresh) or
    'started'. Raises InputError for a started run without ``resume`` and for ``resume`` with no run."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        state = "empty"
    elif any(folder.glob("checkpoints/step_*.pt")) or (folder / "model.safetensors").exists():
        state = "started"
    else:
        state = "unstarted"
    if state == "started" and not resume:
        status = read_status(folder).get("status", "unknown")
        raise InputError(f"{folder} already holds a run ({status}); add --resume to continue it or choose a new --out folder")
    if resume and state == "empty":
        raise InputError(f"--resume: {folder} holds no run to continue; drop --resume to start one")
    return state


def read_saved_config(folder: Path) -> dict[str, Any]:
    try:
        saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"--resume: {folder / 'config.json'} cannot be read ({exc}); start a new run in another --out folder") from None
    if not isinstance(saved, dict):
        raise InputError(f"--resume: {folder / 'config.json'} is not a gvsl run configuration; start a new run in another --out folder")
    return saved


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def config_differences(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'--name old -> new' for each setting both configurations name that differs and may not
    change on resume (see RESUMABLE_KEYS)."""
    saved, new = _normal(saved), _normal(new)
    out = []
    for key in new:
        if key in RESUMABLE_KEYS or key not in saved or saved[key] == new[key]:
            continue
        out.append(f"--{key.replace('_', '-')} {_show(saved[key])} -> {_show(new[key])}")
    return out


def _show(value: Any) -> str:
    if isinstance(value, list) and all(not isinstance(v, (list, dict)) for v in value):
        return " ".join(map(str, value)) if value else "[]"
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)

"""A job seen from outside, as Slicer follows it: its description and status, new progress events
read from a timer, liveness of its processes (an orphan gets a final status), and cancel (SIGTERM to
the supervisor or the command's group, SIGKILL after the grace period)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import jobfiles as files
from . import jobprocess as proc
from .events import EventReader, JobProgress


@dataclass
class JobSummary:
    """One row of a jobs table."""

    id: str
    title: str
    kind: str
    status: str
    step: int
    total: int
    loss: float | None
    stage: str | None
    created: str
    message: str | None


class Job:
    """A job folder, seen from outside: status, events, cancel.

    Create with :func:`create_job` + :func:`start_job`, or :func:`attach` to an existing folder.
    Call :meth:`poll` periodically: it reads new events into :attr:`progress`, notices a job whose
    processes vanished without a final status, and finishes a pending cancel.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.progress = JobProgress()
        self._reader = EventReader(self.folder / files.EVENTS_FILE)
        self._proc: subprocess.Popen | None = None
        self._kill_at: float | None = None

    def __repr__(self) -> str:
        return f"Job({str(self.folder)!r})"

    # -- description -------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.folder.name

    @property
    def spec(self) -> dict[str, Any]:
        return files._read_json(self.folder / files.JOB_FILE)

    @property
    def kind(self) -> str:
        return str(self.spec.get("kind", ""))

    @property
    def title(self) -> str:
        spec = self.spec
        return str(spec.get("title") or spec.get("kind") or self.id)

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.spec.get("meta") or {})

    def update_meta(self, **values: Any) -> None:
        spec = self.spec
        spec["meta"] = {**(spec.get("meta") or {}), **values}
        files._write_json(self.folder / files.JOB_FILE, spec)

    def status_info(self) -> dict[str, Any]:
        info = files._read_json(self.folder / files.STATUS_FILE)
        info.setdefault("status", "created")
        return info

    @property
    def status(self) -> str:
        return str(self.status_info()["status"])

    @property
    def events_path(self) -> Path:
        return self.folder / files.EVENTS_FILE

    @property
    def log_path(self) -> Path:
        return self.folder / files.LOG_FILE

    def log_tail(self, lines: int = 20) -> str:
        return files.log_tail(self.folder, lines)

    # -- liveness ----------------------------------------------------------------------------
    def _supervisor_alive(self, info: dict[str, Any]) -> bool:
        if self._proc is not None and self._proc.poll() is None:
            return True
        if proc.pid_alive(info.get("pid"), info.get("pid_start")):
            return True
        # Between the launch and the supervisor's first status write only the launcher knows the pid.
        spec = self.spec
        return info.get("status") == "starting" and proc.pid_alive(spec.get("supervisor_pid"), spec.get("supervisor_start"))

    def _command_alive(self, info: dict[str, Any]) -> bool:
        if proc.IS_WINDOWS:
            return proc.pid_alive(info.get("child_pid"))
        return proc.group_alive(info.get("child_pgid")) or proc.pid_alive(info.get("child_pid"), info.get("child_start"))

    def is_alive(self) -> bool:
        """Whether any process of this job still runs."""
        info = self.status_info()
        return self._supervisor_alive(info) or self._command_alive(info)

    # -- polling -----------------------------------------------------------------------------
    def poll(self) -> str:
        """Read new events, reconcile the status with the processes; return the status."""
        self.progress.update_all(self._reader.read_new())
        info = self.status_info()
        status = info["status"]
        if status in files.ACTIVE_STATES and not self.is_alive():
            if status == "starting" and not self.spec.get("supervisor_pid"):
                age = time.time() - float(info.get("updated_ts", 0) or 0)
                if age < files.START_TIMEOUT_S:  # the launcher is between writing the status and the pid
                    return status
            self.progress.update_all(self._reader.read_new())
            status = self._finalize_orphan(info)
        if self._kill_at is not None:
            info = self.status_info()
            if not self.is_alive():
                self._kill_at = None
            elif time.monotonic() >= self._kill_at:
                self._kill_hard(info)
                self._kill_at = None
                status = self.status
        return status

    def _finalize_orphan(self, info: dict[str, Any]) -> str:
        """The job's processes are gone but its status was never finalized (killed, crashed, reboot)."""
        if self.progress.outputs is not None and self.progress.error is None:
            status, message = "done", None
        elif (self.folder / files.CANCEL_FILE).exists():
            status, message = "cancelled", "cancelled"
        elif info.get("status") == "starting":
            status = "failed"
            message = "the job supervisor did not start (see supervisor.err in the job folder)"
        else:
            status = "failed"
            message = self.progress.error or "the job's process ended without reporting (see log.txt)"
        info.update(status=status, message=message, ended=files._now(), updated_ts=time.time())
        files._write_json(self.folder / files.STATUS_FILE, info)
        return status

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> str:
        """Block until the job ends (tests, scripts); return its final status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.poll()
            if status in files.FINAL_STATES and not self.is_alive():
                if self._proc is not None:
                    self._proc.wait()
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {status} after {timeout} s")
            time.sleep(interval)

    # -- cancel ------------------------------------------------------------------------------
    def cancel(self, grace_s: float = files.DEFAULT_GRACE_S) -> None:
        """Ask the job to stop; does not block. Keep calling :meth:`poll` (or :meth:`wait`).

        The command gets SIGTERM (training saves a checkpoint), then SIGKILL after ``grace_s``.
        """
        info = self.status_info()
        if info["status"] in files.FINAL_STATES and not self.is_alive():
            return
        files._write_json(self.folder / files.CANCEL_FILE, {"requested": files._now(), "grace_s": grace_s})
        if self._supervisor_alive(info):
            if not proc.IS_WINDOWS and info.get("pid"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(info["pid"]), signal.SIGTERM)
            # on Windows the supervisor watches for the cancel file
        elif proc.IS_WINDOWS:
            proc._taskkill(info.get("child_pid"), force=False)
        else:
            proc._signal_group(info.get("child_pgid"), signal.SIGTERM)
        self._kill_at = time.monotonic() + grace_s + 5.0

    def _kill_hard(self, info: dict[str, Any]) -> None:
        """Last resort: kill every process of the job; record it as cancelled."""
        if proc.IS_WINDOWS:
            proc._taskkill(info.get("child_pid"), force=True)
            proc._taskkill(info.get("pid"), force=True)
        else:
            proc._signal_group(info.get("child_pgid"), signal.SIGKILL)
            proc._signal_group(info.get("pgid"), signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        info = self.status_info()
        if info["status"] not in files.FINAL_STATES:
            info.update(status="cancelled", message="killed after the grace period", ended=files._now(), updated_ts=time.time())
            files._write_json(self.folder / files.STATUS_FILE, info)
        files._append_log(self.folder, "killed after the grace period")

    # -- summary -----------------------------------------------------------------------------
    def summary(self) -> JobSummary:
        """Status and progress for a table row (call :meth:`poll` first for fresh values)."""
        info = self.status_info()
        spec = self.spec
        history = self.progress.history
        return JobSummary(
            id=self.id,
            title=str(spec.get("title") or self.id),
            kind=str(spec.get("kind", "")),
            status=str(info["status"]),
            step=self.progress.step,
            total=self.progress.total,
            loss=history[-1].total if history else None,
            stage=self.progress.stage,
            created=str(spec.get("created", "")),
            message=info.get("message"),
        )

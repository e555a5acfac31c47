"""The job supervisor: run as a script (``jobsupervisor.py --supervise JOB_FOLDER``) detached from
Slicer, it starts the job's command in a process group of its own, passes a cancel on to the whole
group (SIGTERM, then SIGKILL after the grace period), waits, and writes the final status with the
exit code, so the outcome is recorded even when nobody is watching.

Standard library only. The first argv element may be :data:`jobfiles.PYTHON`: the supervisor
replaces it with its own interpreter. In Slicer the supervisor runs under PythonSlicer, a launcher
that sets up the environment and starts the real interpreter; running the command with that
interpreter directly keeps the launcher out of the process tree, so signals reach Python itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

try:
    from . import jobfiles as files
    from . import jobprocess as proc
    from .events import JobProgress, read_events
except ImportError:  # run as a script: this folder is sys.path[0]
    import jobfiles as files  # type: ignore[no-redef]
    import jobprocess as proc  # type: ignore[no-redef]
    from events import JobProgress, read_events  # type: ignore[no-redef]

_stop_requested = False


def _on_stop_signal(signum: int, frame: Any) -> None:
    global _stop_requested
    _stop_requested = True


def _cancel_grace(folder: Path) -> float:
    value = files._read_json(folder / files.CANCEL_FILE).get("grace_s", files.DEFAULT_GRACE_S)
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return files.DEFAULT_GRACE_S


def supervise(folder: str | os.PathLike) -> int:
    """Run the job in ``folder`` to its end and record the outcome in status.json."""
    folder = Path(folder)
    spec = files._read_json(folder / files.JOB_FILE)
    status: dict[str, Any] = {
        "status": "running",
        "pid": os.getpid(),
        "pid_start": proc.process_start_token(os.getpid()),
        "pgid": None if proc.IS_WINDOWS else os.getpgid(0),
        "attempt": spec.get("attempts", 1),
        "started": files._now(),
        "updated_ts": time.time(),
        "child_pid": None,
        "child_pgid": None,
        "returncode": None,
        "message": None,
    }
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)
    if not proc.IS_WINDOWS:
        # Like nohup: a closing terminal must not end the job. Inherited by the command.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    files._write_json(folder / files.STATUS_FILE, status)
    try:
        return _run_command(folder, spec, status)
    except BaseException:  # noqa: BLE001 - record whatever went wrong in the supervisor itself
        files._append_log(folder, "supervisor error:\n" + traceback.format_exc())
        status.update(status="failed", message="internal error in the job supervisor (see log.txt)", ended=files._now())
        files._write_json(folder / files.STATUS_FILE, status)
        return 1


def _start_child(folder: Path, argv: list[str], cwd: str, out: Any, err: Any,
                 status: dict[str, Any]) -> subprocess.Popen | None:
    """The command in a new process group (stdout -> events, stderr -> log); None (and a failed
    status) when it cannot start."""
    try:
        if proc.IS_WINDOWS:
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd,
                                     creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)  # type: ignore[attr-defined]
        else:
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd,
                                     start_new_session=True)
    except OSError as exc:
        status.update(status="failed", message=f"cannot start {argv[0]}: {exc.strerror or exc}", ended=files._now())
        files._write_json(folder / files.STATUS_FILE, status)
        return None
    status.update(child_pid=child.pid, child_start=proc.process_start_token(child.pid),
                  child_pgid=None if proc.IS_WINDOWS else child.pid, updated_ts=time.time())
    files._write_json(folder / files.STATUS_FILE, status)
    return child


def _wait_child(folder: Path, child: subprocess.Popen) -> tuple[bool, bool]:
    """Wait for the command, passing a cancel on (SIGTERM, SIGKILL after the grace); (cancelled, killed)."""
    cancel_deadline: float | None = None
    killed = False
    while child.poll() is None:
        if cancel_deadline is None and (_stop_requested or (folder / files.CANCEL_FILE).exists()):
            grace = _cancel_grace(folder)
            files._append_log(folder, f"cancel requested: stopping the command (SIGKILL after {grace:g} s)")
            if proc.IS_WINDOWS:
                with contextlib.suppress(OSError):
                    child.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
            else:
                proc._signal_group(child.pid, signal.SIGTERM)
            cancel_deadline = time.monotonic() + grace
        elif cancel_deadline is not None and not killed and time.monotonic() > cancel_deadline:
            files._append_log(folder, "the command did not stop in time: killing it")
            if proc.IS_WINDOWS:
                proc._taskkill(child.pid, force=True)
            else:
                proc._signal_group(child.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.1)
    return cancel_deadline is not None, killed


def _outcome(folder: Path, returncode: int, cancelled: bool) -> tuple[str, str | None]:
    """(final status, message) from the exit code, the cancel and the job's own events."""
    progress = JobProgress()
    progress.update_all(read_events(folder / files.EVENTS_FILE)[-10000:])
    if returncode == 0 and progress.error is None:
        return "done", None
    if cancelled or returncode in files.SIGNAL_EXIT_CODES:
        return "cancelled", "cancelled" if cancelled else f"stopped by a signal (exit code {returncode})"
    return "failed", progress.error or files._last_log_message(folder) or f"exit code {returncode}"


def _run_command(folder: Path, spec: dict[str, Any], status: dict[str, Any]) -> int:
    argv = [sys.executable if a == files.PYTHON else str(a) for a in spec.get("argv") or []]
    if not argv:
        raise RuntimeError("job.json has no argv")
    cwd = spec.get("cwd") or str(folder)
    with open(folder / files.EVENTS_FILE, "ab") as out, open(folder / files.LOG_FILE, "ab") as err:
        child = _start_child(folder, argv, cwd, out, err, status)
        if child is None:
            return 1
        cancelled, killed = _wait_child(folder, child)
    returncode = child.returncode
    if not proc.IS_WINDOWS and (cancelled or returncode != 0):
        # Descendants the command left behind (e.g. data-loader workers) belong to its group.
        proc._signal_group(child.pid, signal.SIGKILL if killed else signal.SIGTERM)
    final, message = _outcome(folder, returncode, cancelled)
    status.update(status=final, returncode=returncode, message=message, ended=files._now(), updated_ts=time.time())
    files._write_json(folder / files.STATUS_FILE, status)
    return 0


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--supervise":
        return supervise(argv[1])
    print(f"usage: {Path(sys.argv[0]).name} --supervise JOB_FOLDER", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

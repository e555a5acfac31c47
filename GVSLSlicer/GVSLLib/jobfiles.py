"""Job folders and their state files: the layout, atomic JSON, the log, and where jobs live.

A job is a folder (under a jobs root, by default ``$GVSL_HOME/jobs``, i.e. ``~/.gvsl/jobs``)::

    job.json        what to run: kind, title, argv, cwd, environment overrides, meta (written by the launcher)
    status.json     {"status": "starting|running|done|failed|cancelled", "pid": N, ...} (written by the supervisor)
    events.jsonl    the job's stdout: the ``--progress json`` events of DESIGN.md
    log.txt         the job's stderr, plus a few lines from the supervisor
    cancel.request  present once someone asked the job to stop

Standard library only: the supervisor (:mod:`jobsupervisor`, run as a script) imports it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

JOB_FILE = "job.json"
STATUS_FILE = "status.json"
EVENTS_FILE = "events.jsonl"
LOG_FILE = "log.txt"
CANCEL_FILE = "cancel.request"

PYTHON = "{python}"
ACTIVE_STATES = ("starting", "running")
FINAL_STATES = ("done", "failed", "cancelled")
DEFAULT_GRACE_S = 10.0
# A job still 'starting' after this long without a supervisor pid never started.
START_TIMEOUT_S = 60.0
SIGNAL_EXIT_CODES = (130, 143, -2, -15)


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomic: readers see the old or the new file, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _append_log(folder: Path, message: str) -> None:
    with contextlib.suppress(OSError), open(folder / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(f"[gvsl-job {_now()}] {message}\n")


def log_tail(folder: str | os.PathLike, lines: int = 20) -> str:
    """The last ``lines`` lines of a job's log."""
    try:
        with open(Path(folder) / LOG_FILE, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _last_log_message(folder: Path) -> str | None:
    """The last line the command wrote to stderr (skipping the supervisor's own notes)."""
    for line in reversed(log_tail(folder, 50).splitlines()):
        line = line.strip()
        if line and not line.startswith("[gvsl-job"):
            return line
    return None


def gvsl_home() -> Path:
    """Where the CLI and Slicer keep models, runs and jobs: $GVSL_HOME or ~/.gvsl."""
    return Path(os.environ.get("GVSL_HOME") or Path.home() / ".gvsl").expanduser()


def default_jobs_root() -> Path:
    """``$GVSL_HOME/jobs``."""
    return gvsl_home() / "jobs"


def gvsl_argv(*args: str) -> list[str]:
    """argv running ``gvsl ARGS`` with the supervisor's Python."""
    return [PYTHON, "-m", "gvslcore", *[str(a) for a in args]]

"""Job folders from creation to removal: create one, start its command detached (through the
supervisor, :mod:`jobsupervisor`), run it again (``--resume``), find jobs again after a restart
(:func:`attach`, :func:`list_jobs`), and remove a finished one."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .jobfiles import (
    ACTIVE_STATES,
    CANCEL_FILE,
    JOB_FILE,
    STATUS_FILE,
    _append_log,
    _now,
    _write_json,
    default_jobs_root,
)
from .jobprocess import IS_WINDOWS, process_start_token
from .jobwatch import Job

SUPERVISOR = Path(__file__).resolve().with_name("jobsupervisor.py")
"""The script :func:`start_job` runs detached: it starts the command and records its outcome."""


def create_job(root: str | os.PathLike | None, kind: str, title: str = "", meta: dict[str, Any] | None = None) -> Job:
    """A new, empty job folder under ``root`` (default :func:`default_jobs_root`)."""
    root = Path(root) if root is not None else default_jobs_root()
    root.mkdir(parents=True, exist_ok=True)
    safe_kind = "".join(c if c.isalnum() else "-" for c in kind) or "job"
    job_id = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{safe_kind}-{uuid.uuid4().hex[:6]}"
    folder = root / job_id
    folder.mkdir()
    _write_json(folder / JOB_FILE, {
        "id": job_id,
        "kind": kind,
        "title": title or kind,
        "created": _now(),
        "created_ts": time.time(),
        "argv": None,
        "meta": dict(meta or {}),
    })
    return Job(folder)


def _launch_supervisor(folder: Path, python: str | None, env: dict[str, str] | None) -> subprocess.Popen:
    """The supervisor of the job in ``folder``, detached: a new session on POSIX, a new process
    group (outside Slicer's job object where allowed) on Windows."""
    full_env = os.environ.copy()
    full_env.update({k: str(v) for k, v in (env or {}).items()})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    full_env.setdefault("PYTHONIOENCODING", "utf-8")
    cmd = [python or sys.executable, str(SUPERVISOR), "--supervise", str(folder)]
    popen_kwargs: dict[str, Any] = {
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.DEVNULL,
        "stderr": open(folder / "supervisor.err", "ab"),  # noqa: SIM115 - handed to the child, closed below
        "cwd": str(folder),
        "env": full_env,
        "close_fds": True,
    }
    try:
        if IS_WINDOWS:
            flags = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW  # type: ignore[attr-defined]
            try:  # leave Slicer's job object so that closing Slicer does not end the job
                proc = subprocess.Popen(cmd, creationflags=flags | 0x01000000, **popen_kwargs)
            except OSError:
                proc = subprocess.Popen(cmd, creationflags=flags, **popen_kwargs)
        else:
            proc = subprocess.Popen(cmd, start_new_session=True, **popen_kwargs)
    finally:
        popen_kwargs["stderr"].close()
    return proc


def start_job(
    job: Job,
    argv: Sequence[str],
    *,
    python: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
) -> Job:
    """Run ``argv`` as the job, detached; returns at once.

    Args:
        job: a job from :func:`create_job` (or a finished one, to run again: resume).
        argv: the command; ``argv[0]`` may be :data:`PYTHON` (see :func:`gvsl_argv`).
        python: the interpreter that runs the supervisor (PythonSlicer in Slicer; default this one).
        env: environment variables to set on top of the current environment (PYTHONPATH, ...).
        cwd: working folder of the command (default the job folder).
    """
    if job.status in ACTIVE_STATES and job.is_alive():
        raise RuntimeError(f"job {job.id} is already running")
    spec = job.spec
    attempt = int(spec.get("attempts", 0)) + 1
    spec.update(argv=[str(a) for a in argv], cwd=str(cwd or job.folder), env=dict(env or {}), attempts=attempt,
                supervisor_pid=None, supervisor_start=None)
    _write_json(job.folder / JOB_FILE, spec)
    with contextlib.suppress(FileNotFoundError):
        (job.folder / CANCEL_FILE).unlink()
    _write_json(job.folder / STATUS_FILE, {"status": "starting", "attempt": attempt, "updated_ts": time.time()})
    if attempt > 1:
        _append_log(job.folder, f"attempt {attempt}: {' '.join(spec['argv'])}")

    job._proc = _launch_supervisor(job.folder, python, env)
    spec = job.spec
    spec.update(supervisor_pid=job._proc.pid, supervisor_start=process_start_token(job._proc.pid))
    _write_json(job.folder / JOB_FILE, spec)
    job._kill_at = None
    return job


def restart_job(job: Job, extra_args: Sequence[str] = ("--resume",), **kwargs: Any) -> Job:
    """Run a finished job's command again in the same folder (events continue in the same file).

    With the default ``--resume`` a cancelled or failed training run continues from its last
    checkpoint (``gvsl pretrain/finetune --resume``).
    """
    spec = job.spec
    argv = list(spec.get("argv") or [])
    if not argv:
        raise RuntimeError(f"job {job.id} was never started; nothing to resume")
    for arg in extra_args:
        if arg not in argv:
            argv.append(arg)
    kwargs.setdefault("env", spec.get("env") or None)
    kwargs.setdefault("cwd", spec.get("cwd") or None)
    return start_job(job, argv, **kwargs)


def attach(folder: str | os.PathLike) -> Job:
    """A job from its folder (e.g. after Slicer restarted), with all its events read."""
    folder = Path(folder)
    if not (folder / JOB_FILE).is_file():
        raise FileNotFoundError(f"{folder} is not a job folder (no {JOB_FILE})")
    job = Job(folder)
    job.poll()
    return job


def list_jobs(root: str | os.PathLike | None = None) -> list[Job]:
    """All jobs under ``root``, newest first, each polled once."""
    root = Path(root) if root is not None else default_jobs_root()
    if not root.is_dir():
        return []
    jobs = [attach(p) for p in root.iterdir() if (p / JOB_FILE).is_file()]
    jobs.sort(key=lambda j: (float(j.spec.get("created_ts") or 0.0), j.id), reverse=True)
    return jobs


def remove_job(job: Job) -> None:
    """Delete a finished job's folder."""
    if job.is_alive():
        raise RuntimeError(f"job {job.id} is still running; cancel it first")
    shutil.rmtree(job.folder)

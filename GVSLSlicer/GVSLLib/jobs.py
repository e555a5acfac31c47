"""Background jobs that keep running when Slicer closes.

A job is a folder (under a jobs root, by default ``$GVSL_HOME/jobs``, i.e. ``~/.gvsl/jobs``)::

    job.json        what to run: kind, title, argv, cwd, environment overrides, meta (written by the launcher)
    status.json     {"status": "starting|running|done|failed|cancelled", "pid": N, ...} (written by the supervisor)
    events.jsonl    the job's stdout: the ``--progress json`` events of DESIGN.md
    log.txt         the job's stderr, plus a few lines from the supervisor
    cancel.request  present once someone asked the job to stop

:func:`start_job` launches a small *supervisor* (this file run as a script, standard library only)
detached from the caller: a new session on POSIX, a new process group on Windows. The supervisor
starts the real command in a process group of its own, waits for it and writes the final status
with the exit code, so the outcome is recorded even when nobody is watching. Slicer only reads the
folder: :meth:`Job.poll` from a timer, :func:`attach` / :func:`list_jobs` after a restart.

Cancel: the supervisor sends SIGTERM to the command's whole process group (training commands save a
checkpoint and exit with 143), then SIGKILL after a grace period. If the supervisor itself is gone,
:meth:`Job.cancel` and :meth:`Job.poll` signal the group directly.

The first argv element may be :data:`PYTHON`: the supervisor replaces it with its own interpreter.
In Slicer the supervisor runs under PythonSlicer, a launcher that sets up the environment and
starts the real interpreter; running the command with that interpreter directly keeps the launcher
out of the process tree, so signals reach Python itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

try:
    from .events import EventReader, JobProgress, read_events
except ImportError:  # run as a script (the supervisor): this folder is sys.path[0]
    from events import EventReader, JobProgress, read_events  # type: ignore[no-redef]

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
IS_WINDOWS = os.name == "nt"
SIGNAL_EXIT_CODES = (130, 143, -2, -15)


# -- small file helpers ------------------------------------------------------------------------
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


# -- processes ---------------------------------------------------------------------------------
def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (Linux only), else None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def process_start_token(pid: int) -> str | None:
    """An identifier of the process start time (Linux), to tell a live job from a reused pid."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def pid_alive(pid: int | None, start_token: str | None = None) -> bool:
    """Whether process ``pid`` runs (zombies count as ended; a reused pid does not count)."""
    if not pid or pid <= 0:
        return False
    if IS_WINDOWS:
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    if fields is None:
        return True
    if fields[0] in ("Z", "X"):
        return False
    return not (start_token and len(fields) > 19 and fields[19] != start_token)


def _windows_pid_alive(pid: int) -> bool:
    # os.kill(pid, 0) would terminate the process on Windows: ask the kernel instead.
    import ctypes

    process_query_limited_information = 0x1000
    still_active = 259
    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


def group_alive(pgid: int | None) -> bool:
    """Whether any live (non-zombie) process is left in process group ``pgid`` (POSIX)."""
    if IS_WINDOWS or not pgid or pgid <= 0:
        return False
    if os.path.isdir("/proc/self"):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            fields = _proc_stat(int(entry.name))
            if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal_group(pgid: int | None, sig: int) -> bool:
    if IS_WINDOWS or not pgid or pgid <= 0:
        return False
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _taskkill(pid: int | None, force: bool) -> None:
    if pid:
        args = ["taskkill", "/T", "/PID", str(pid)] + (["/F"] if force else [])
        subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


# -- jobs --------------------------------------------------------------------------------------
def gvsl_home() -> Path:
    """Where the CLI and Slicer keep models, runs and jobs: $GVSL_HOME or ~/.gvsl."""
    return Path(os.environ.get("GVSL_HOME") or Path.home() / ".gvsl").expanduser()


def default_jobs_root() -> Path:
    """``$GVSL_HOME/jobs``."""
    return gvsl_home() / "jobs"


def gvsl_argv(*args: str) -> list[str]:
    """argv running ``gvsl ARGS`` with the supervisor's Python."""
    return [PYTHON, "-m", "gvslcore", *[str(a) for a in args]]


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
        self._reader = EventReader(self.folder / EVENTS_FILE)
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
        return _read_json(self.folder / JOB_FILE)

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
        _write_json(self.folder / JOB_FILE, spec)

    def status_info(self) -> dict[str, Any]:
        info = _read_json(self.folder / STATUS_FILE)
        info.setdefault("status", "created")
        return info

    @property
    def status(self) -> str:
        return str(self.status_info()["status"])

    @property
    def events_path(self) -> Path:
        return self.folder / EVENTS_FILE

    @property
    def log_path(self) -> Path:
        return self.folder / LOG_FILE

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.folder, lines)

    # -- liveness ----------------------------------------------------------------------------
    def _supervisor_alive(self, info: dict[str, Any]) -> bool:
        if self._proc is not None and self._proc.poll() is None:
            return True
        if pid_alive(info.get("pid"), info.get("pid_start")):
            return True
        # Between the launch and the supervisor's first status write only the launcher knows the pid.
        spec = self.spec
        return info.get("status") == "starting" and pid_alive(spec.get("supervisor_pid"), spec.get("supervisor_start"))

    def _command_alive(self, info: dict[str, Any]) -> bool:
        if IS_WINDOWS:
            return pid_alive(info.get("child_pid"))
        return group_alive(info.get("child_pgid")) or pid_alive(info.get("child_pid"), info.get("child_start"))

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
        if status in ACTIVE_STATES and not self.is_alive():
            if status == "starting" and not self.spec.get("supervisor_pid"):
                age = time.time() - float(info.get("updated_ts", 0) or 0)
                if age < START_TIMEOUT_S:  # the launcher is between writing the status and the pid
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
        elif (self.folder / CANCEL_FILE).exists():
            status, message = "cancelled", "cancelled"
        elif info.get("status") == "starting":
            status = "failed"
            message = "the job supervisor did not start (see supervisor.err in the job folder)"
        else:
            status = "failed"
            message = self.progress.error or "the job's process ended without reporting (see log.txt)"
        info.update(status=status, message=message, ended=_now(), updated_ts=time.time())
        _write_json(self.folder / STATUS_FILE, info)
        return status

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> str:
        """Block until the job ends (tests, scripts); return its final status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.poll()
            if status in FINAL_STATES and not self.is_alive():
                if self._proc is not None:
                    self._proc.wait()
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {status} after {timeout} s")
            time.sleep(interval)

    # -- cancel ------------------------------------------------------------------------------
    def cancel(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Ask the job to stop; does not block. Keep calling :meth:`poll` (or :meth:`wait`).

        The command gets SIGTERM (training saves a checkpoint), then SIGKILL after ``grace_s``.
        """
        info = self.status_info()
        if info["status"] in FINAL_STATES and not self.is_alive():
            return
        _write_json(self.folder / CANCEL_FILE, {"requested": _now(), "grace_s": grace_s})
        if self._supervisor_alive(info):
            if not IS_WINDOWS and info.get("pid"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(info["pid"]), signal.SIGTERM)
            # on Windows the supervisor watches for the cancel file
        elif IS_WINDOWS:
            _taskkill(info.get("child_pid"), force=False)
        else:
            _signal_group(info.get("child_pgid"), signal.SIGTERM)
        self._kill_at = time.monotonic() + grace_s + 5.0

    def _kill_hard(self, info: dict[str, Any]) -> None:
        """Last resort: kill every process of the job; record it as cancelled."""
        if IS_WINDOWS:
            _taskkill(info.get("child_pid"), force=True)
            _taskkill(info.get("pid"), force=True)
        else:
            _signal_group(info.get("child_pgid"), signal.SIGKILL)
            _signal_group(info.get("pgid"), signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        info = self.status_info()
        if info["status"] not in FINAL_STATES:
            info.update(status="cancelled", message="killed after the grace period", ended=_now(), updated_ts=time.time())
            _write_json(self.folder / STATUS_FILE, info)
        _append_log(self.folder, "killed after the grace period")

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

    full_env = os.environ.copy()
    full_env.update({k: str(v) for k, v in (env or {}).items()})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    full_env.setdefault("PYTHONIOENCODING", "utf-8")
    cmd = [python or sys.executable, str(Path(__file__).resolve()), "--supervise", str(job.folder)]
    popen_kwargs: dict[str, Any] = {
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.DEVNULL,
        "stderr": open(job.folder / "supervisor.err", "ab"),  # noqa: SIM115 - handed to the child, closed below
        "cwd": str(job.folder),
        "env": full_env,
        "close_fds": True,
    }
    try:
        if IS_WINDOWS:
            flags = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW  # type: ignore[attr-defined]
            try:  # leave Slicer's job object so that closing Slicer does not end the job
                job._proc = subprocess.Popen(cmd, creationflags=flags | 0x01000000, **popen_kwargs)
            except OSError:
                job._proc = subprocess.Popen(cmd, creationflags=flags, **popen_kwargs)
        else:
            job._proc = subprocess.Popen(cmd, start_new_session=True, **popen_kwargs)
    finally:
        popen_kwargs["stderr"].close()
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


class QuickCommand:
    """A short command whose output the caller wants (``gvsl models list --json``, a device probe).

    Not detached and not a job: it dies with Slicer. Output goes to temporary files rather than
    pipes, so a chatty command can never block on a full pipe while nobody reads it.
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None, python: str | None = None) -> None:
        full_env = os.environ.copy()
        full_env.update({k: str(v) for k, v in (env or {}).items()})
        self.argv = [(python or sys.executable) if a == PYTHON else str(a) for a in argv]
        # Closed in _read once the command ended.
        self._out = tempfile.TemporaryFile()  # noqa: SIM115
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err, env=full_env)
        self.returncode: int | None = None
        self.stdout = ""
        self.stderr = ""

    def poll(self) -> bool:
        """True once the command has ended (then returncode, stdout and stderr are set)."""
        if self.returncode is None and self._proc.poll() is not None:
            self.returncode = self._proc.returncode
            self.stdout = self._read(self._out)
            self.stderr = self._read(self._err)
        return self.returncode is not None

    def wait(self, timeout: float | None = None) -> int:
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self._proc.wait()
        self.poll()
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()

    @staticmethod
    def _read(f: Any) -> str:
        f.seek(0)
        text = f.read().decode("utf-8", errors="replace")
        f.close()
        return text


def remove_job(job: Job) -> None:
    """Delete a finished job's folder."""
    if job.is_alive():
        raise RuntimeError(f"job {job.id} is still running; cancel it first")
    shutil.rmtree(job.folder)


# -- the supervisor (runs in its own process) --------------------------------------------------
_stop_requested = False


def _on_stop_signal(signum: int, frame: Any) -> None:
    global _stop_requested
    _stop_requested = True


def _cancel_grace(folder: Path) -> float:
    value = _read_json(folder / CANCEL_FILE).get("grace_s", DEFAULT_GRACE_S)
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return DEFAULT_GRACE_S


def supervise(folder: str | os.PathLike) -> int:
    """Run the job in ``folder`` to its end and record the outcome in status.json."""
    folder = Path(folder)
    spec = _read_json(folder / JOB_FILE)
    status: dict[str, Any] = {
        "status": "running",
        "pid": os.getpid(),
        "pid_start": process_start_token(os.getpid()),
        "pgid": None if IS_WINDOWS else os.getpgid(0),
        "attempt": spec.get("attempts", 1),
        "started": _now(),
        "updated_ts": time.time(),
        "child_pid": None,
        "child_pgid": None,
        "returncode": None,
        "message": None,
    }
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)
    if not IS_WINDOWS:
        # Like nohup: a closing terminal must not end the job. Inherited by the command.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _write_json(folder / STATUS_FILE, status)
    try:
        return _run_command(folder, spec, status)
    except BaseException:  # noqa: BLE001 - record whatever went wrong in the supervisor itself
        _append_log(folder, "supervisor error:\n" + traceback.format_exc())
        status.update(status="failed", message="internal error in the job supervisor (see log.txt)", ended=_now())
        _write_json(folder / STATUS_FILE, status)
        return 1


def _run_command(folder: Path, spec: dict[str, Any], status: dict[str, Any]) -> int:
    argv = [sys.executable if a == PYTHON else str(a) for a in spec.get("argv") or []]
    if not argv:
        raise RuntimeError("job.json has no argv")
    cwd = spec.get("cwd") or str(folder)
    with open(folder / EVENTS_FILE, "ab") as out, open(folder / LOG_FILE, "ab") as err:
        try:
            if IS_WINDOWS:
                child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd,
                                         creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)  # type: ignore[attr-defined]
            else:
                child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd,
                                         start_new_session=True)
        except OSError as exc:
            status.update(status="failed", message=f"cannot start {argv[0]}: {exc.strerror or exc}", ended=_now())
            _write_json(folder / STATUS_FILE, status)
            return 1
        status.update(child_pid=child.pid, child_start=process_start_token(child.pid),
                      child_pgid=None if IS_WINDOWS else child.pid, updated_ts=time.time())
        _write_json(folder / STATUS_FILE, status)

        cancel_deadline: float | None = None
        killed = False
        while child.poll() is None:
            if cancel_deadline is None and (_stop_requested or (folder / CANCEL_FILE).exists()):
                grace = _cancel_grace(folder)
                _append_log(folder, f"cancel requested: stopping the command (SIGKILL after {grace:g} s)")
                if IS_WINDOWS:
                    with contextlib.suppress(OSError):
                        child.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
                else:
                    _signal_group(child.pid, signal.SIGTERM)
                cancel_deadline = time.monotonic() + grace
            elif cancel_deadline is not None and not killed and time.monotonic() > cancel_deadline:
                _append_log(folder, "the command did not stop in time: killing it")
                if IS_WINDOWS:
                    _taskkill(child.pid, force=True)
                else:
                    _signal_group(child.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.1)
    returncode = child.returncode
    cancelled = cancel_deadline is not None
    if not IS_WINDOWS and (cancelled or returncode != 0):
        # Descendants the command left behind (e.g. data-loader workers) belong to its group.
        _signal_group(child.pid, signal.SIGKILL if killed else signal.SIGTERM)

    progress = JobProgress()
    progress.update_all(read_events(folder / EVENTS_FILE)[-10000:])
    if returncode == 0 and progress.error is None:
        final, message = "done", None
    elif cancelled or returncode in SIGNAL_EXIT_CODES:
        final = "cancelled"
        message = "cancelled" if cancelled else f"stopped by a signal (exit code {returncode})"
    else:
        final = "failed"
        message = progress.error or _last_log_message(folder) or f"exit code {returncode}"
    status.update(status=final, returncode=returncode, message=message, ended=_now(), updated_ts=time.time())
    _write_json(folder / STATUS_FILE, status)
    return 0


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--supervise":
        return supervise(argv[1])
    print("usage: jobs.py --supervise JOB_FOLDER", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

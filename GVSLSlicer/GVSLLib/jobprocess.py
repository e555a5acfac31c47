"""Processes of a job: whether a pid or a process group still runs (a reused pid does not count),
signals to a whole group, and :class:`QuickCommand` for short commands whose output is wanted.

Standard library only: the supervisor (:mod:`jobsupervisor`, run as a script) imports it too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

try:
    from .jobfiles import PYTHON
except ImportError:  # run as a script (the supervisor): this folder is sys.path[0]
    from jobfiles import PYTHON  # type: ignore[no-redef]

IS_WINDOWS = os.name == "nt"


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

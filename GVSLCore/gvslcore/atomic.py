"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A reader (or a crash) never sees a half-written file: either the old content or the new. A write
that fails (a full disk, a folder that refuses files) is an :class:`OutputError` naming the file;
the temporary file is removed and the old content, if any, stays. Writers that do not raise on
every failure (ITK's NIfTI writer reports a full disk only on stderr) get the temporary file
checked before the rename: ``verify(tmp)`` raises when it is short or damaged.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import InputError, OutputError


def ensure_writable_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and check that files can be written there."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output folder {folder} is a file; choose a folder name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {folder}: {exc.strerror}; choose a writable location") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder} is not writable; choose a writable location")
    return folder


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def check_output_file(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), option: str = "") -> Path:
    """Before any work: ``path`` can be created as a file (its folder exists or is created and
    accepts a file), it is not a folder and it is none of ``inputs`` (an output never overwrites
    what the command reads)."""
    path = Path(path)
    what = f"{option} {path}" if option else str(path)
    if path.is_dir():
        raise OutputError(f"{what} is a folder; give a file name for the output")
    for source in inputs:
        source = Path(source)
        same = path.resolve() == source.resolve()
        with contextlib.suppress(OSError):
            same = same or (path.exists() and os.path.samefile(path, source))
        if same:
            raise OutputError(f"{what} is also an input of this command; give the output another name")
    folder = ensure_writable_dir(path.parent if str(path.parent) else ".")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gvsl-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write {what}: {_why(exc)}; choose a writable location") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to ``path``.

    The temporary name keeps the target's suffixes (``.nii.gz``, ``.seg.nrrd``) so that writers
    choosing a format by extension (SimpleITK) write the right format. Before the rename the
    temporary file must exist and be non-empty, ``verify(tmp)`` (when given) must pass, and its
    data is flushed to the disk (fsync). Any failure raises :class:`OutputError` (one line naming
    ``path``; an :class:`InputError` from the writer passes through) and removes the temporary file.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; give a file name")
    folder = ensure_writable_dir(path.parent if str(path.parent) else ".")
    suffix = "".join(path.suffixes) or ".tmp"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=folder)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_why(exc)}; choose a writable location") from None
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except (InputError, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except (OSError, RuntimeError, MemoryError) as exc:  # the writer's own error: a full disk, I/O
            raise OutputError(f"writing {path} failed: {_why(exc)}; free disk space or choose another location") from None
        try:
            size = tmp_path.stat().st_size
        except OSError:
            size = -1
        if size <= 0:
            raise OutputError(f"writing {path} failed: the writer left {'no' if size < 0 else 'an empty'} file; "
                              "free disk space or choose another location")
        if verify is not None:
            verify(tmp_path)
        try:
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            # mkstemp creates 0600; give the file the permissions a plain open() would (0666 - umask).
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
            os.replace(tmp_path, path)
        except OSError as exc:
            raise OutputError(f"writing {path} failed: {_why(exc)}; free disk space or choose another location") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    data = text.encode("utf-8")

    def verify(tmp: Path) -> None:
        if tmp.stat().st_size != len(data):
            raise OutputError(f"writing {path} failed: {tmp.stat().st_size} of {len(data)} bytes written; "
                              "free disk space or choose another location")

    if not data:  # an empty file is a legitimate result; nothing to verify
        path = Path(path)
        ensure_writable_dir(path.parent if str(path.parent) else ".")
        try:
            path.write_bytes(b"")
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {_why(exc)}; choose a writable location") from None
        return
    with atomic_path(path, verify=verify) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")

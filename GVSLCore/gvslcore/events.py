"""Progress protocol: JSON lines on stdout (``--progress json``), a tqdm bar, or nothing.

Events (one JSON object per line, flushed):
    {"event": "start", "command": "pretrain", "total": 2000}
    {"event": "progress", "step": 120, "total": 2000, "loss": {...}, "eta_s": 310, "stage": "..."}
    {"event": "artifact", "kind": "checkpoint", "path": "..."}
    {"event": "done", "outputs": {...}}
    {"event": "error", "message": "..."}
Logs go to stderr. The Slicer modules read only this protocol.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Any, TextIO

PROGRESS_MODES = ("bar", "json", "none")


def _clean(value: Any) -> Any:
    """Make floats JSON-safe (NaN/inf become null) and round them for readability."""
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


class Reporter:
    """Emits progress events in one of three modes.

    Args:
        mode: 'json' (JSON lines on ``stream``), 'bar' (tqdm on stderr) or 'none'.
        stream: where JSON lines go (stdout by default).
        enabled: False on non-zero distributed ranks, so that only rank 0 reports.
    """

    def __init__(
        self,
        mode: str = "bar",
        stream: TextIO | None = None,
        enabled: bool = True,
        events_file: str | os.PathLike | None = None,
    ) -> None:
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress mode must be one of {PROGRESS_MODES}, not {mode!r}")
        self.mode = mode if enabled else "none"
        self.stream = stream or sys.stdout
        # A run folder's events.jsonl receives every event whatever the display mode, so that a
        # job can be followed (or re-attached to) from its folder alone.
        self._file = open(events_file, "a", encoding="utf-8") if (events_file and enabled) else None
        self._bar = None
        self._total = 0
        self._t0 = time.monotonic()
        self._step0 = 0

    # -- protocol ---------------------------------------------------------------------------
    def emit(self, event: str, **fields: Any) -> None:
        if self.mode != "json" and self._file is None:
            return
        line = json.dumps(_clean({"event": event, "time": round(time.time(), 3), **fields})) + "\n"
        if self.mode == "json":
            self.stream.write(line)
            self.stream.flush()
        if self._file is not None:
            try:
                self._file.write(line)
                self._file.flush()
            except OSError as exc:  # a full disk: say so once, keep the run (its checkpoint write will tell)
                log(f"warning: cannot append to {self._file.name} ({exc.strerror or exc}); events go to the display only")
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None

    def start(self, command: str, total: int, *, step: int = 0, **fields: Any) -> None:
        self._total = int(total)
        self._t0 = time.monotonic()
        self._step0 = step
        self.emit("start", command=command, total=self._total, step=step, **fields)
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, initial=step, desc=command, file=sys.stderr, dynamic_ncols=True)

    def progress(self, step: int, *, stage: str | None = None, **fields: Any) -> None:
        done = step - self._step0
        elapsed = time.monotonic() - self._t0
        eta = elapsed / done * (self._total - step) if done > 0 and self._total else None
        extra = {"stage": stage} if stage else {}
        self.emit("progress", step=step, total=self._total, eta_s=eta, **extra, **fields)
        if self._bar is not None:
            self._bar.n = step
            post = {}
            for key, value in fields.items():
                if isinstance(value, dict):
                    post.update({k: f"{v:.4f}" for k, v in value.items() if isinstance(v, float)})
                elif isinstance(value, float):
                    post[key] = f"{value:.4f}"
            if stage:
                self._bar.set_description(stage)
            self._bar.set_postfix(post, refresh=False)
            self._bar.refresh()

    def stage(self, text: str, step: int | None = None) -> None:
        """A coarse stage change ("loading", "inference", "writing") for commands without steps."""
        self.emit("progress", step=step if step is not None else 0, total=self._total, stage=text)
        if self.mode == "bar" and self._bar is None:
            log(text)

    def artifact(self, kind: str, path: Any) -> None:
        self.emit("artifact", kind=kind, path=str(path))

    def done(self, outputs: dict[str, Any] | None = None) -> None:
        self.close()
        self.emit("done", outputs=outputs or {})

    def error(self, message: str) -> None:
        self.close()
        self.emit("error", message=message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def log(message: str) -> None:
    """A log line for people: always stderr, never mixed into the JSON protocol on stdout."""
    print(message, file=sys.stderr, flush=True)

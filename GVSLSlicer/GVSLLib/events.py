"""Reading the ``gvsl --progress json`` protocol (DESIGN.md section 4).

One JSON object per line::

    {"event": "start", "command": "pretrain", "total": 2000}
    {"event": "progress", "step": 120, "total": 2000, "loss": {"ncc": 0.41}, "eta_s": 310, "stage": "..."}
    {"event": "artifact", "kind": "checkpoint", "path": "..."}
    {"event": "done", "outputs": {...}}
    {"event": "error", "message": "..."}

:class:`EventReader` tails a growing events file (a job's stdout) without re-reading it, and
:class:`JobProgress` folds the events into what a panel shows: stage text, fraction, ETA, the
latest loss and the loss history for a chart. Standard library only: the job supervisor runs this
file as a plain script's sibling, outside any package.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KNOWN_EVENTS = ("start", "progress", "artifact", "done", "error")


def parse_event_line(line: str | bytes) -> dict[str, Any] | None:
    """One protocol line as a dict, or None for blank lines and lines that are not events.

    Stray prints from libraries can end up on stdout; they are skipped rather than treated as errors.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("event") not in KNOWN_EVENTS:
        return None
    return obj


def read_events(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All events in a file (a missing file has none)."""
    reader = EventReader(path)
    return reader.read_new()


class EventReader:
    """Incremental reader of a JSON-lines file that another process appends to.

    Keeps a byte offset and holds back a trailing partial line until its newline arrives, so a
    line being written while we read is never parsed half-way.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._offset = 0
        self._pending = b""
        self.skipped_lines = 0

    def reset(self) -> None:
        self._offset = 0
        self._pending = b""
        self.skipped_lines = 0

    def read_new(self) -> list[dict[str, Any]]:
        """Events appended since the last call."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self._offset:  # truncated or replaced: start over
                    self.reset()
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()  # b"" when data ended with a newline
        events = []
        for raw in lines:
            event = parse_event_line(raw)
            if event is None:
                if raw.strip():
                    self.skipped_lines += 1
                continue
            events.append(event)
        return events


@dataclass
class LossPoint:
    """The loss components reported at one step (e.g. ``{"ncc": 0.41, "smooth": 0.02}``)."""

    step: int
    values: dict[str, float]

    @property
    def total(self) -> float | None:
        if "total" in self.values:
            return self.values["total"]
        finite = [v for v in self.values.values() if v is not None and math.isfinite(v)]
        return sum(finite) if finite else None


def _loss_values(loss: Any) -> dict[str, float]:
    """Normalize a ``loss`` field (a dict of components or a single number) to a dict."""
    if isinstance(loss, (int, float)) and not isinstance(loss, bool):
        return {"loss": float(loss)}
    if isinstance(loss, dict):
        out = {}
        for key, value in loss.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[str(key)] = float(value)
        return out
    return {}


@dataclass
class JobProgress:
    """What the events of one job say so far.

    Attributes:
        command: the ``gvsl`` sub-command named by the start event.
        step, total: the latest progress step and the total (0 when unknown).
        stage: the latest stage text ("loading", "inference", ...).
        eta_s: estimated seconds left, when the process gave one.
        history: loss per reported step, in arrival order (a resumed run appends after its restart).
        artifacts: artifact events (checkpoints, previews, ...).
        outputs: the ``done`` event's outputs, None until the job finished.
        error: the ``error`` event's message, None unless it failed that way.
    """

    command: str | None = None
    step: int = 0
    total: int = 0
    stage: str | None = None
    eta_s: float | None = None
    history: list[LossPoint] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, Any] | None = None
    error: str | None = None
    starts: int = 0
    events: int = 0

    def update(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        self.events += 1
        if kind == "start":
            self.starts += 1
            self.command = event.get("command", self.command)
            self.total = int(event.get("total") or 0)
            self.step = int(event.get("step") or 0)
            self.stage = event.get("stage")
            self.eta_s = None
            self.outputs = None
            self.error = None
        elif kind == "progress":
            if event.get("total"):
                self.total = int(event["total"])
            if event.get("step") is not None:
                self.step = int(event["step"])
            if event.get("stage"):
                self.stage = str(event["stage"])
            self.eta_s = event.get("eta_s")
            values = _loss_values(event.get("loss"))
            if values:
                self.history.append(LossPoint(self.step, values))
        elif kind == "artifact":
            self.artifacts.append({k: v for k, v in event.items() if k != "event"})
        elif kind == "done":
            self.outputs = dict(event.get("outputs") or {})
            if self.total:
                self.step = self.total
            self.eta_s = 0.0
        elif kind == "error":
            self.error = str(event.get("message") or "unknown error")

    def update_all(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.update(event)

    @property
    def fraction(self) -> float | None:
        """Progress in [0, 1], or None when the total is unknown (show a busy bar)."""
        if self.outputs is not None:
            return 1.0
        if self.total <= 0:
            return None
        return min(max(self.step / self.total, 0.0), 1.0)

    @property
    def loss(self) -> dict[str, float]:
        return self.history[-1].values if self.history else {}

    @property
    def last_checkpoint(self) -> str | None:
        for artifact in reversed(self.artifacts):
            if artifact.get("kind") == "checkpoint":
                return artifact.get("path")
        return None

    def describe(self) -> str:
        """One line for a status label, e.g. ``'inference - 3/8 - about 12 s left'``."""
        if self.error:
            return f"Failed: {self.error}"
        if self.outputs is not None:
            return "Done"
        parts = []
        if self.stage:
            parts.append(self.stage)
        elif self.command:
            parts.append(self.command)
        if self.total:
            parts.append(f"{self.step}/{self.total}")
        if self.loss:
            parts.append("loss " + format_loss(self.loss))
        if self.eta_s:
            parts.append(f"about {format_duration(self.eta_s)} left")
        return " - ".join(parts) if parts else "Starting..."


def format_loss(values: dict[str, float]) -> str:
    """``{'ncc': 0.41234, 'mse': 0.01}`` -> ``'ncc 0.412, mse 0.01'``."""
    return ", ".join(f"{key} {value:.3g}" for key, value in values.items())


def format_duration(seconds: float | None) -> str:
    """Human-readable duration: ``'45 s'``, ``'3 min 5 s'``, ``'2 h 4 min'``."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {sec} s" if sec else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"

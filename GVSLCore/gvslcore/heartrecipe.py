"""The recipe of the default heart model (a plain dataclass, importable without torch: the CLI reads
its defaults to build ``gvsl models build --help``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODEL_ID = "gvsl-heart-ct"


@dataclass
class HeartRecipe:
    """Everything the default heart model depends on (written to RUN/config.json and the model header)."""

    cases: int = 160          # synthetic chests in the bank
    val_cases: int = 8        # of which held out for validation
    bank_spacing: float = 2.0  # mm
    seed: int = 0
    width: int = 16
    spacing: float = 4.0      # working grid, mm
    patch: tuple[int, int, int] = (48, 48, 48)  # 192 mm: the heart and its surroundings
    batch: int = 1
    steps: int = 8000
    lr: float = 2e-3
    foreground: float = 0.7
    val_views: int = 16
    val_every: int = 500
    checkpoint_every: int = 100
    keep: int = 3
    log_every: int = 10
    workers: int = 1
    bank_workers: int = 2
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

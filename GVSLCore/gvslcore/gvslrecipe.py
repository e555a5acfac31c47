"""The recipe of the shipped GVSL pre-trained model (a plain dataclass, importable without torch: the
CLI reads its defaults to build ``gvsl models build gvsl-pretrained-ct --help``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODEL_ID = "gvsl-pretrained-ct"


@dataclass
class GVSLRecipe:
    """Everything the shipped GVSL model depends on (written to RUN/recipe.json and the model header).

    The width is the heart model's (its fine stage starts from this backbone); 2 mm with a field-of-view
    zoom of 1-2x makes the features hold from 2 mm (the heart's fine stage) to 4 mm (registration's
    feed-forward grid).
    """

    steps: int = 4000
    width: int = 16
    spacing: float = 2.0  # mm, the cache's grid
    patch: tuple[int, int, int] = (48, 48, 48)
    zoom: tuple[float, float] = (1.0, 2.0)  # crops cover 96-192 mm
    batch: int = 1
    lr: float = 3e-4
    seed: int = 0
    synthetic_cases: int = 16  # painted synthetic chests beside the real scans (0: real scans only)
    synthetic_spacing: float = 2.0
    checkpoint_every: int = 100
    keep: int = 3
    workers: int = 0
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

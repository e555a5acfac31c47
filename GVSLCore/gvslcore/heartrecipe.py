"""The recipe of the default heart model (plain dataclasses, importable without torch: the CLI reads
their defaults to build ``gvsl models build gvsl-heart-ct --help``).

Version 2 has two stages: a small *locator* on a 4 mm grid that finds the heart in the whole scan,
and the *fine* network on a 2 mm grid over the heart region it found, whose backbone starts from the
shipped GVSL pre-trained model (``pretrained``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODEL_ID = "gvsl-heart-ct"
VERSION = "2"


@dataclass
class StageRecipe:
    """One network of the cascade and how it is trained on views of the synthetic bank."""

    width: int
    spacing: float  # working grid, mm
    patch: tuple[int, int, int]
    steps: int
    lr: float
    foreground: float  # fraction of views centred near the heart
    centre_jitter_mm: float  # sd of a foreground view's centre around a heart voxel
    paint_step: float | None  # grid the tissue map is painted on (None: the bank's)
    pretrained: str | None = None  # a GVSL model (id or file) whose U-Net starts the backbone; None: random
    val_every: int = 500


def locator_recipe() -> StageRecipe:
    # 192 mm windows at 4 mm: the whole heart and its surroundings in one view.
    return StageRecipe(width=8, spacing=4.0, patch=(48, 48, 48), steps=2500, lr=2e-3, foreground=0.7,
                       centre_jitter_mm=25.0, paint_step=3.0)


def fine_recipe() -> StageRecipe:
    # 128 mm windows at 2 mm, centred on the heart as the locator's region is at inference.
    return StageRecipe(width=16, spacing=2.0, patch=(64, 64, 64), steps=4500, lr=1e-3, foreground=0.95,
                       centre_jitter_mm=18.0, paint_step=None, pretrained="gvsl-pretrained-ct")


@dataclass
class HeartRecipe:
    """Everything the default heart model depends on (written to RUN/recipe.json and the model header)."""

    cases: int = 160          # synthetic chests in the bank
    val_cases: int = 8        # of which held out for validation
    bank_spacing: float = 1.5  # mm
    seed: int = 0
    locator: StageRecipe = field(default_factory=locator_recipe)
    fine: StageRecipe = field(default_factory=fine_recipe)
    margin_mm: float = 20.0   # the fine stage's region: the locator's heart plus this margin
    batch: int = 1
    val_views: int = 16
    checkpoint_every: int = 100
    keep: int = 3
    log_every: int = 10
    workers: int = 1
    bank_workers: int = 2
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

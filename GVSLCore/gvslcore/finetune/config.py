"""The settings of a fine-tuning run (``FinetuneConfig``, written to RUN/config.json) and the
``--label-table`` JSON file that names its labels."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..errors import InputError
from ..labels import LabelTable

MODES = ("finetune", "linear-probe")


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (written to RUN/config.json)."""

    images: str
    labels: str
    out: str
    run: str | None = None
    pretrained: str | None = None
    init: str | None = None
    linear_probe: bool = False
    from_scratch: bool = False
    readout: str | None = None  # 'last' (default) or 'hypercolumn' (see gvslcore.nets.SegNet)
    steps: int = 2000
    patch: tuple[int, int, int] = (96, 96, 96)
    batch: int = 2
    width: int = 32
    lr: float | None = None
    seed: int = 0
    spacing: tuple[float, float, float] | None = None
    modality: str | None = None
    label_table: list[dict] | None = None
    val_fraction: float = 0.2
    val_cases: int | None = None
    val_every: int = 100
    patience: int = 10
    foreground: float = 0.67
    augment: bool = True
    checkpoint_every: int = 100
    keep: int = 3
    log_every: int = 10
    workers: int = 0
    device: str = "auto"
    bf16: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        if self.run:
            return Path(self.run)
        out = Path(self.out)
        return out.with_name(out.name.removesuffix(".safetensors") + "_run")

    @property
    def mode(self) -> str:
        base = "scratch" if self.from_scratch else "pretrained"
        return f"{base}-linear-probe" if self.linear_probe else f"{base}-finetune"

    @property
    def head_readout(self) -> str:
        """What the new head reads (see :class:`gvslcore.nets.SegNet`)."""
        return self.readout or "last"

    def learning_rate(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return 5e-2 if self.linear_probe else 1e-3


def check_config(cfg: FinetuneConfig) -> None:
    """Refuse settings no run can use, before anything is read or written."""
    if not str(cfg.out).endswith(".safetensors"):
        raise InputError(f"--out {cfg.out} must be a model file name ending in .safetensors")
    if cfg.steps < 1:
        raise InputError("--steps must be at least 1")
    if not 0.0 <= cfg.foreground <= 1.0:
        raise InputError(f"--foreground {cfg.foreground} must lie in [0, 1]")


def write_label_table(path: str | Path, table: LabelTable) -> None:
    """Write a label table as JSON (for ``--label-table``)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(table.to_list(), indent=2) + "\n", encoding="utf-8")


def read_label_table_json(path: str | Path) -> list[dict]:
    """``--label-table FILE``: a JSON list of {value, name, color, [category], [type]}."""
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(items, dict):
            items = items.get("labels") or items.get("label_table")
        table = LabelTable.from_list(items)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InputError(f"cannot read label table {path} ({exc}); give a JSON list of {{value, name, color}}") from None
    if not table.labels or len(set(table.values)) != len(table.values) or min(table.values) < 1 or max(table.values) > 255:
        raise InputError(f"label table {path} needs unique label values 1..255")
    return table.to_list()

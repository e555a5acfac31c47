"""The model list the GVSL modules show: installed model files and catalog entries.

A gvsl model is one ``.safetensors`` file whose header carries JSON metadata under the key
``gvsl`` (``format: gvsl-model``, ``task``, ``labels``, ``architecture``, ``preprocessing``,
``provenance``; see gvslcore.bundle). The header is read here without torch, so the list
appears instantly; the catalog comes from ``gvsl models list --json`` (run as a quick job by the
module) and is merged in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .jobs import gvsl_home

METADATA_KEY = "gvsl"
FORMAT = "gvsl-model"
DEFAULT_HEART_MODEL_ID = "gvsl-heart-ct"
"""The heart model that ships with the extension (Resources/Models), gvslcore.zoo's default."""
HEART_TEMPLATE_NAMES = (
    "left ventricle",
    "right ventricle",
    "left atrium",
    "right atrium",
    "left ventricular myocardium",
    "ascending aorta",
    "pulmonary artery",
)


@dataclass
class ModelEntry:
    """One model in the list.

    Attributes:
        id: a stable key (file stem for local files, the catalog id otherwise).
        name: what the list shows.
        task: 'segmentation', 'pretrain' (GVSL backbone, also used for registration) or ''.
        path: the local file; None for a catalog entry not downloaded yet.
        labels: the label table (dicts with value, name, color, category, type).
        source: 'installed', 'catalog', 'trained' or 'imported'.
        description: one line for a tooltip.
        meta: the full metadata (or catalog record).
    """

    id: str
    name: str
    task: str = ""
    path: str | None = None
    labels: list[dict[str, Any]] = field(default_factory=list)
    source: str = "installed"
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def installed(self) -> bool:
        return self.path is not None and Path(self.path).is_file()

    @property
    def label_names(self) -> list[str]:
        return [str(lab.get("name", "")) for lab in self.labels]

    @property
    def downloadable(self) -> bool:
        """A catalog entry ``gvsl models download`` can fetch (not a by-hand download)."""
        return (self.meta.get("download", "direct") == "direct" and bool(self.meta.get("url"))
                and bool(self.meta.get("sha256")))

    def display_name(self) -> str:
        if self.installed:
            return self.name
        return f"{self.name} ({'download' if self.downloadable else 'manual download'})"

    def manual_instructions(self) -> str:
        """What to tell a user about a catalog model that must be fetched by hand."""
        url = self.meta.get("url") or "its publisher"
        return (f"{self.name} cannot be downloaded automatically.\n\n{self.description}\n\n"
                f"Get it from {url}, then add it with 'Import model file...' (or `gvsl models install FILE`).")


def models_dir() -> Path:
    """Installed, imported and fine-tuned models: ``$GVSL_HOME/models``, gvsl's own model cache
    (gvslcore.zoo), so the CLI and Slicer see the same models."""
    return gvsl_home() / "models"


def runs_dir() -> Path:
    """Training runs started from Slicer: ``$GVSL_HOME/runs``."""
    return gvsl_home() / "runs"


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The gvsl metadata of a model file, or None if the file is not a gvsl model."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (length,) = struct.unpack("<Q", head)
            if length > 100_000_000:
                return None
            header = json.loads(f.read(length))
        meta = json.loads((header.get("__metadata__") or {}).get(METADATA_KEY, "null"))
    except (OSError, ValueError, struct.error, AttributeError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    return meta


def _pretty_name(stem: str) -> str:
    return re.sub(r"[_\-]+", " ", stem).strip() or stem


def entry_from_file(path: str | os.PathLike, source: str = "installed") -> ModelEntry | None:
    """A list entry for a model file (None if it is not a gvsl model)."""
    path = Path(path)
    meta = read_safetensors_metadata(path)
    if meta is None:
        return None
    provenance = meta.get("provenance") or {}
    # A training run exports RUN/model.safetensors: the run's folder name tells runs apart.
    stem = path.parent.name if path.stem == "model" else path.stem
    name = str(meta.get("name") or provenance.get("name") or _pretty_name(stem))
    labels = [lab for lab in meta.get("labels") or [] if isinstance(lab, dict)]
    description = str(meta.get("description") or provenance.get("description") or "")
    if not description:
        task = meta.get("task", "model")
        description = f"{task} model, {len(labels)} labels" if labels else f"{task} model"
    return ModelEntry(id=stem, name=name, task=str(meta.get("task", "")), path=str(path), labels=labels,
                      source=str(provenance.get("source") or source), description=description, meta=meta)


def scan_models(folders: list[str | os.PathLike] | None = None) -> list[ModelEntry]:
    """gvsl model files in ``folders`` (default :func:`models_dir`), sorted by name."""
    entries = []
    for folder in folders if folders is not None else [models_dir()]:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.safetensors")):
            entry = entry_from_file(path)
            if entry is not None:
                entries.append(entry)
    entries.sort(key=lambda e: e.name.lower())
    return entries


def parse_models_list(text: str) -> list[ModelEntry]:
    """Entries from ``gvsl models list --json`` (gvslcore.zoo.list_models rows).

    A row has the catalog fields (id, title, description, task, labels, url, sha256, download, ...)
    and ``installed``: the local file, or null. Labels are label dicts in the catalog and names for
    locally installed files; both become label dicts here. A ``{"models": [...]}`` wrapper is accepted.
    """
    text = text.strip()
    if not text:
        return []
    data = json.loads(text)
    if isinstance(data, dict):
        data = data.get("models", [])
    entries = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict):
            continue
        model_id = str(item.get("id") or "")
        if not model_id:
            continue
        installed = item.get("installed")
        path = installed if isinstance(installed, str) and installed else (item.get("path") if installed else None)
        labels = [lab if isinstance(lab, dict) else {"value": i + 1, "name": str(lab)}
                  for i, lab in enumerate(item.get("labels") or [])]
        title = str(item.get("title") or item.get("name") or model_id)
        if title.startswith("("):  # zoo's "(installed locally)": the id says more
            title = _pretty_name(model_id)
        entries.append(ModelEntry(
            id=model_id,
            name=title,
            task=str(item.get("task") or ""),
            path=str(path) if path else None,
            labels=labels,
            source="installed" if path else "catalog",
            description=str(item.get("description", "")),
            meta=item,
        ))
    return entries


def merge_models(*lists: list[ModelEntry]) -> list[ModelEntry]:
    """One list without duplicates: the first occurrence of an id (or a file path) wins."""
    seen_ids: set[str] = set()
    seen_paths: set[str] = set()
    out = []
    for entries in lists:
        for entry in entries:
            key_path = str(Path(entry.path).resolve()) if entry.path else None
            if entry.id in seen_ids or (key_path and key_path in seen_paths):
                continue
            seen_ids.add(entry.id)
            if key_path:
                seen_paths.add(key_path)
            out.append(entry)
    return out


def _normalize(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", name.lower()).strip()


def is_heart_model(entry: ModelEntry) -> bool:
    """A segmentation model whose labels cover the heart template (by name or SNOMED CT type code)."""
    if entry.task not in ("segmentation", ""):
        return False
    if (entry.meta.get("template") or "").lower() == "heart":
        return True
    names = {_normalize(n) for n in entry.label_names}
    wanted = {_normalize(n) for n in HEART_TEMPLATE_NAMES}
    return len(wanted & names) >= 4


def segmentation_models(entries: list[ModelEntry]) -> list[ModelEntry]:
    return [e for e in entries if e.task == "segmentation"]


def backbone_models(entries: list[ModelEntry]) -> list[ModelEntry]:
    """Pre-trained GVSL networks: used for registration and as the start of fine-tuning."""
    return [e for e in entries if e.task == "pretrain"]


def is_default_heart_model(entry: ModelEntry) -> bool:
    return DEFAULT_HEART_MODEL_ID in (entry.id, str(entry.meta.get("id") or ""))


def default_heart_model(entries: list[ModelEntry]) -> ModelEntry | None:
    """The model the 'Segment heart chambers' button runs: the shipped default heart model when it is
    at hand (validated on real CTAs), else an installed heart model, newest first. A model of one's
    own (GVSL Train) runs from the model list with Apply."""
    hearts = [e for e in entries if is_heart_model(e) and e.installed]
    if not hearts:
        return None
    hearts.sort(key=lambda e: (is_default_heart_model(e), Path(e.path).stat().st_mtime if e.path else 0), reverse=True)
    return hearts[0]


def bundled_models_dir(resources: str | os.PathLike) -> Path:
    """Models that ship with the extension: ``<Resources>/Models``."""
    return Path(resources) / "Models"


def import_model_file(path: str | os.PathLike, folder: str | os.PathLike | None = None) -> ModelEntry:
    """Copy a gvsl model file into the models folder; returns its entry.

    Raises:
        ValueError: the file is not a gvsl model (with what to do about it).
    """
    path = Path(path)
    entry = entry_from_file(path, source="imported")
    if entry is None:
        raise ValueError(f"{path} is not a gvsl model file (.safetensors with gvsl metadata); "
                         "convert the authors' checkpoint with `gvsl models import-gvsl` first")
    folder = Path(folder) if folder is not None else models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.resolve() != path.resolve():
        tmp = target.with_name(f".{target.name}.part")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
    result = entry_from_file(target, source="imported")
    assert result is not None
    return result


def safe_name(name: str, default: str = "model") -> str:
    """A file-name-safe version of a user-typed name."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("._") or default


def unique_path(folder: str | os.PathLike, name: str, suffix: str = "") -> Path:
    """``folder/<name><suffix>``, with ``_2``, ``_3``, ... added while that path exists."""
    stem = safe_name(name)
    folder = Path(folder)
    candidate = folder / f"{stem}{suffix}"
    n = 2
    while candidate.exists():
        candidate = folder / f"{stem}_{n}{suffix}"
        n += 1
    return candidate


def unique_model_path(folder: str | os.PathLike, name: str) -> Path:
    """A new model file name in ``folder``."""
    return unique_path(folder, name, ".safetensors")

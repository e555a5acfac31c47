"""Plausibility of a heart segmentation on a real CT where no chamber labels exist.

What a cardiologist checks at a glance, measured in physical space (LPS mm: +x patient left,
+y posterior, +z superior), so that a flipped or rotated file cannot fool it:

- every one of the seven labels is present, in one main connected piece;
- volumes are physiological (LV/RV blood pool 40-300 ml, atria 20-250 ml, LV myocardium 50-300 ml);
- the layout: LV left of RV, LA the most posterior chamber, RA the rightmost, the aorta right of
  the pulmonary trunk, the myocardium wrapping the LV blood pool;
- the vessels hold contrast (mean HU of the AO and PA labels above that of the myocardium) when the
  scan is contrast-enhanced;
- nothing outside the mediastinum: no label voxel in aerated lung or in the chest wall, and the labels
  between the lungs (air on both sides in their axial slice), not below the diaphragm;
- against a whole-heart mask when one exists: Dice of the union of the five chamber labels, and of
  the chambers with the pulmonary artery (TotalSegmentator's 'heart' includes the pulmonary trunk);
- on contrast CTs, the myocardium is not contrast blood (<= 12 % of its voxels above 250 HU, 70-200 ml);
- against named reference structures (:func:`check_structures`, e.g. a TotalSegmentator map): no
  vena cava labelled aorta, the RA touching both cavae, the appendage inside the LA, the pulmonary
  veins reaching the LA, the ascending aorta covered by the aorta label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .labels import HEART_LABELS
from .metrics import dice

LV, RV, LA, RA, MYO, AO, PA = 1, 2, 3, 4, 5, 6, 7
CHAMBERS = (LV, RV, LA, RA, MYO)
CONTRAST_HU = 150.0
"""Median HU of the LV and LA labels above which a scan counts as contrast-enhanced."""
VOLUME_RANGES_ML = {LV: (40.0, 300.0), RV: (40.0, 300.0), LA: (20.0, 250.0), RA: (20.0, 250.0), MYO: (50.0, 300.0)}


@dataclass
class HeartReport:
    """The measurements and the pass/fail of each check (see the module docstring)."""

    volumes_ml: dict[str, float] = field(default_factory=dict)
    main_piece: dict[str, float] = field(default_factory=dict)  # fraction of each label in its largest piece
    centroids_mm: dict[str, list[float]] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> int:
        return sum(self.checks.values())

    def failed(self) -> list[str]:
        return [k for k, ok in self.checks.items() if not ok]

    def to_dict(self) -> dict[str, Any]:
        return {"volumes_ml": self.volumes_ml, "main_piece": self.main_piece, "centroids_mm": self.centroids_mm,
                "checks": self.checks, "values": self.values, "passed": self.passed, "total": len(self.checks)}


def _physical(image: sitk.Image, index_zyx: np.ndarray) -> np.ndarray:
    """Physical points (N, 3) x y z (mm, LPS) of (N, 3) z y x voxel indices."""
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    ijk = index_zyx[:, ::-1] * np.asarray(image.GetSpacing())
    return np.asarray(image.GetOrigin()) + ijk @ d.T


def blood_pool_hu(lab: np.ndarray, hu: np.ndarray) -> float:
    """Median HU of the LV and LA labels (-inf when both are empty)."""
    pool = hu[np.isin(lab, (LV, LA))]
    return float(np.median(pool)) if pool.size else -math.inf


def is_contrast_pool(blood_hu: float) -> bool:
    """Whether a blood pool of this median HU is contrast-enhanced."""
    return bool(blood_hu > CONTRAST_HU)


def _name(value: int) -> str:
    return HEART_LABELS.name_of(value)


def check_heart(labels: sitk.Image, ct: sitk.Image, reference: sitk.Image | None = None,
                contrast: bool | None = None) -> HeartReport:
    """Measure a heart label map (values 1..7 of :data:`HEART_LABELS`) on the grid of ``ct``.

    Args:
        labels: the segmentation, on ``ct``'s grid.
        ct: the CT in HU.
        reference: a whole-heart mask on the same grid (non-zero = heart), if there is one.
        contrast: whether the scan is contrast-enhanced; None: decided from the blood pool's HU.
    """
    lab = sitk.GetArrayViewFromImage(labels)
    hu = sitk.GetArrayViewFromImage(ct).astype(np.float32)
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
    rep = HeartReport()
    structure = ndimage.generate_binary_structure(3, 3)
    present = {}
    for v in range(1, 8):
        mask = lab == v
        n = int(mask.sum())
        present[v] = n > 0
        rep.volumes_ml[_name(v)] = round(n * voxel_ml, 1)
        if n == 0:
            rep.main_piece[_name(v)] = 0.0
            continue
        pieces, count = ndimage.label(mask, structure)
        sizes = np.bincount(pieces.ravel())[1:]
        rep.main_piece[_name(v)] = round(float(sizes.max() / n), 3)
        rep.centroids_mm[_name(v)] = [round(float(c), 1) for c in _physical(ct, np.argwhere(mask)).mean(0)]
        rep.values[f"mean_hu_{_name(v)}"] = round(float(hu[mask].mean()), 1)
    rep.checks["all seven labels present"] = all(present.values())
    rep.checks["each label in one main piece (>= 90 %)"] = all(f >= 0.9 for f in rep.main_piece.values())
    for v, (lo, hi) in VOLUME_RANGES_ML.items():
        rep.checks[f"{_name(v)} volume in {lo:.0f}-{hi:.0f} ml"] = lo <= rep.volumes_ml[_name(v)] <= hi
    c = {v: np.asarray(rep.centroids_mm[_name(v)]) for v in range(1, 8) if present[v]}
    x, y = 0, 1

    def relation(name: str, ok) -> None:
        rep.checks[name] = bool(ok()) if all(present[v] for v in (LV, RV, LA, RA, AO, PA)) else False

    relation("LV left of RV", lambda: c[LV][x] > c[RV][x])
    relation("LA the most posterior chamber", lambda: all(c[LA][y] > c[v][y] for v in (LV, RV, RA)))
    relation("RA the rightmost chamber", lambda: all(c[RA][x] < c[v][x] for v in (LV, RV, LA)))
    relation("aorta right of the pulmonary trunk", lambda: c[AO][x] < c[PA][x])
    rep.values["myocardium around LV"] = round(_wrapping(lab == LV, lab == MYO), 3)
    rep.checks["myocardium wraps the LV (>= 50 % of its surface)"] = rep.values["myocardium around LV"] >= 0.5
    if contrast is None:
        contrast = is_contrast_pool(blood_pool_hu(lab, hu))
    rep.values["contrast"] = float(contrast)
    if contrast:
        myo_hu = rep.values.get(f"mean_hu_{_name(MYO)}", math.inf)
        for v in (AO, PA):
            rep.checks[f"{_name(v)} label holds contrast"] = rep.values.get(f"mean_hu_{_name(v)}", -math.inf) > myo_hu + 50.0
        bright = myocardium_hu(labels, ct)
        rep.values["myocardium voxels above 250 HU (%)"] = round(100.0 * bright, 1)
        rep.checks["myocardium not contrast blood (<= 12 % above 250 HU)"] = bright <= 0.12
        rep.checks["myocardium 70-200 ml (contrast CT)"] = 70.0 <= rep.volumes_ml[_name(MYO)] <= 200.0
    smooth = ndimage.median_filter(hu, size=3)
    bodies = _body_outlines(lab > 0, smooth)
    outside = _outside_mediastinum(lab > 0, smooth, ct.GetSpacing(), bodies)
    rep.values["labelled voxels in lung or chest wall (%)"] = round(100.0 * outside, 2)
    rep.checks["no labels in lung or chest wall (< 1 %)"] = outside < 0.01
    between = _between_lungs(lab > 0, smooth, bodies)
    rep.values["labelled voxels between the lungs (%)"] = round(100.0 * between, 1)
    rep.checks["labels between the lungs (>= 80 %)"] = between >= 0.8
    if reference is not None:
        ref = sitk.GetArrayViewFromImage(reference) > 0
        union = np.isin(lab, CHAMBERS)
        rep.values["whole-heart Dice"] = round(dice(union, ref), 4)
        rep.values["whole-heart Dice (all 7 labels)"] = round(dice(lab > 0, ref), 4)
        # TotalSegmentator's 'heart' takes in the pulmonary trunk and its proximal branches (not the aorta).
        rep.values["whole-heart Dice (chambers + PA)"] = round(dice(np.isin(lab, (*CHAMBERS, PA)), ref), 4)
        rep.values["reference ml"] = round(float(ref.sum()) * voxel_ml, 1)
        rep.values["union of chambers ml"] = round(float(union.sum()) * voxel_ml, 1)
    return rep


def _wrapping(blood: np.ndarray, myo: np.ndarray) -> float:
    """Fraction of the blood pool's outer surface (one voxel outside it) that is myocardium."""
    if not blood.any():
        return 0.0
    shell = ndimage.binary_dilation(blood) & ~blood
    return float(myo[shell].sum() / max(1, shell.sum()))


def _body_outlines(labelled: np.ndarray, smooth: np.ndarray) -> dict[int, np.ndarray]:
    """Per axial slice holding a label (index z): the body outline there, (y, x) bool, above -300 HU
    in ``smooth`` with its holes (the airway and the lungs) filled."""
    return {int(z): ndimage.binary_fill_holes(smooth[z] > -300.0) for z in np.flatnonzero(labelled.any(axis=(1, 2)))}


def _outside_mediastinum(labelled: np.ndarray, smooth: np.ndarray, spacing,
                         bodies: dict[int, np.ndarray] | None = None) -> float:
    """Fraction of labelled voxels in aerated lung (HU < -500 in ``smooth``, the CT after a 3-voxel
    median) or within 15 mm of the skin (the chest wall); ``bodies`` from :func:`_body_outlines`."""
    if not labelled.any():
        return 0.0
    lung = smooth < -500.0
    sy, sx = float(spacing[1]), float(spacing[0])
    bad = labelled & lung
    bodies = _body_outlines(labelled, smooth) if bodies is None else bodies
    for z, body in bodies.items():
        depth = ndimage.distance_transform_edt(body, sampling=(sy, sx))
        bad[z] |= labelled[z] & (depth < 15.0)
    return float(bad.sum() / labelled.sum())


def _between_lungs(labelled: np.ndarray, smooth: np.ndarray, bodies: dict[int, np.ndarray] | None = None,
                   min_voxels: int = 20) -> float:
    """Fraction of labelled voxels whose axial slice holds air inside the body on both sides of them
    (to their left and to their right along the array's x axis, at least ``min_voxels`` each);
    ``bodies`` from :func:`_body_outlines`.

    The heart lies between the lungs: a label map that found the heart in the liver or the abdomen
    (a non-contrast scan, where both are soft tissue) passes every other check, but below the
    diaphragm one side at least has no air."""
    if not labelled.any():
        return 0.0
    good = 0
    bodies = _body_outlines(labelled, smooth) if bodies is None else bodies
    for z, body in bodies.items():
        air_by_column = (body & (smooth[z] < -500.0)).sum(axis=0)  # (x,)
        left_of = np.cumsum(air_by_column)  # air at columns <= x
        right_of = left_of[-1] - left_of  # air at columns > x
        ok = (left_of >= min_voxels) & (right_of >= min_voxels)
        good += int(labelled[z][:, ok].sum())
    return good / float(labelled.sum())


# -- against named reference structures (e.g. a TotalSegmentator map) ---------------------------------

def myocardium_hu(labels: sitk.Image, ct: sitk.Image, threshold_hu: float = 250.0) -> float:
    """Fraction of the myocardium label's voxels above ``threshold_hu``: on a contrast CT, contrast
    blood inside the myocardium label (the wall itself stays below about 200 HU)."""
    lab = sitk.GetArrayViewFromImage(labels)
    myo = lab == MYO
    if not myo.any():
        return math.nan
    return float((sitk.GetArrayViewFromImage(ct)[myo] > threshold_hu).mean())


def ascending_aorta_reference(aorta: np.ndarray) -> np.ndarray:
    """The ascending part of a whole-aorta mask (z, y, x on an LPS-aligned axial grid, z up): in every
    axial slice below the arch where the aorta cuts two pieces, the anterior one (smaller y)."""
    out = np.zeros_like(aorta, dtype=bool)
    for z in range(aorta.shape[0]):
        pieces, n = ndimage.label(aorta[z])
        if n < 2:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        two = np.argsort(sizes)[::-1][:2] + 1
        ys = [np.argwhere(pieces == k)[:, 0].mean() for k in two]
        out[z] = pieces == two[int(np.argmin(ys))]
    return out


def check_structures(labels: sitk.Image, structures: dict[str, sitk.Image], report: HeartReport | None = None,
                     touch_mm: float = 3.0) -> HeartReport:
    """Relations of the labels to reference structures on the same grid (masks, non-zero inside):
    ``superior vena cava``, ``inferior vena cava``, ``left atrial appendage``, ``pulmonary veins``,
    ``aorta`` (whole aorta; its ascending part is found by :func:`ascending_aorta_reference` when the
    grid is axial). Adds values and checks to ``report`` (a new one when None)."""
    rep = report or HeartReport()
    if not np.allclose(labels.GetDirection(), np.eye(3).ravel()):  # "anterior" and "up" are read off the array axes
        from .io import resample_to_lps_grid

        labels = resample_to_lps_grid(labels, labels.GetSpacing(), label=True)
        structures = {k: resample_to_lps_grid(v, labels.GetSpacing(), label=True) for k, v in structures.items()}
    lab = sitk.GetArrayViewFromImage(labels)
    spacing = labels.GetSpacing()[::-1]
    masks = {k: sitk.GetArrayViewFromImage(v) > 0 for k, v in structures.items()}

    def near(value: int) -> np.ndarray:
        mask = lab == value
        if not mask.any():
            return np.zeros_like(mask)
        return ndimage.distance_transform_edt(~mask, sampling=spacing) <= touch_mm

    ra_near = near(RA)
    for cava in ("superior vena cava", "inferior vena cava"):
        if cava in masks and masks[cava].any():
            rep.values[f"{cava} labelled aorta (%)"] = round(100.0 * float((lab[masks[cava]] == AO).mean()), 2)
            rep.checks[f"no {cava} labelled aorta (< 5 %)"] = rep.values[f"{cava} labelled aorta (%)"] < 5.0
            touching = bool((ra_near & masks[cava]).any())
            rep.checks[f"RA label touches the {cava}"] = touching
    if "left atrial appendage" in masks and masks["left atrial appendage"].any():
        inside = float((lab[masks["left atrial appendage"]] == LA).mean())
        rep.values["appendage labelled LA (%)"] = round(100.0 * inside, 1)
        rep.checks["appendage inside the LA label (>= 50 %)"] = inside >= 0.5
    if "pulmonary veins" in masks and masks["pulmonary veins"].any():
        la_near = near(LA)
        pv = masks["pulmonary veins"]
        pieces, n = ndimage.label(pv, ndimage.generate_binary_structure(3, 3))
        sizes = np.bincount(pieces.ravel())[1:]
        big = [k + 1 for k in range(n) if sizes[k] * float(np.prod(spacing)) >= 200.0]  # >= 0.2 ml: a vein, not a speck
        reached = sum(bool((la_near & (pieces == k)).any()) for k in big)
        rep.values["pulmonary veins reaching the LA label"] = f"{reached}/{len(big)}"  # type: ignore[assignment]
        rep.checks["pulmonary veins' ostia adjacent to the LA"] = bool(big) and reached == len(big)
    if "aorta" in masks and masks["aorta"].any():
        asc = ascending_aorta_reference(masks["aorta"])
        ao = lab == AO
        if asc.any():
            rep.values["ascending aorta covered by the AO label (%)"] = round(100.0 * float(ao[asc].mean()), 1)
            rep.checks["ascending aorta covered (>= 85 %)"] = float(ao[asc].mean()) >= 0.85
        if ao.any():
            rep.values["AO label inside the aorta (precision %)"] = round(100.0 * float(masks["aorta"][ao].mean()), 1)
            rep.checks["AO label precision (>= 85 %)"] = float(masks["aorta"][ao].mean()) >= 0.85
    return rep


# -- in every result ---------------------------------------------------------------------------------

PLAUSIBILITY_SPACING_MM = 2.0
"""Grid the checks of :func:`plausibility` run on: fine enough for volumes and layout, and it bounds
time and memory on 0.5 mm scans."""


def is_heart_table(table) -> bool:
    """Whether a model's label table is the seven heart structures (values and SNOMED codes)."""
    def code(lab):
        return (lab.type.scheme, lab.type.value) if lab.type is not None else None

    ours = {lab.value: code(lab) for lab in HEART_LABELS}
    theirs = {lab.value: code(lab) for lab in table}
    return theirs == ours


def _structures_named(check: str) -> list[str]:
    names = [lab.name for lab in HEART_LABELS if lab.name in check]
    short = {"LV": "left ventricle", "RV": "right ventricle", "LA": "left atrium", "RA": "right atrium",
             "myocardium": "left ventricular myocardium", "aorta": "ascending aorta",
             "pulmonary trunk": "pulmonary artery"}
    for word, name in short.items():
        if word in check.replace("-", " ").split() or (" " in word and word in check):
            names.append(name)
    return sorted(set(names), key=[lab.name for lab in HEART_LABELS].index)


def plausibility(labels: sitk.Image, ct: sitk.Image) -> dict[str, Any]:
    """The checks of :func:`check_heart` on a result (no reference), as the warnings a user reads.

    Both images are resampled to :data:`PLAUSIBILITY_SPACING_MM` when finer (the labels by nearest
    neighbour on the CT's own orientation), so this costs about a second whatever the scan.

    Returns:
        ``{"passed", "total", "warnings": [{"check", "structures", "detail"}], "volumes_ml",
        "main_piece", "values", "spacing_mm"}``; volumes measured on the checking grid.
    """
    spacing = [max(float(s), PLAUSIBILITY_SPACING_MM) for s in ct.GetSpacing()]
    if not np.allclose(spacing, ct.GetSpacing()):
        from .io import resample_to_spacing

        ct = resample_to_spacing(ct, spacing, default_value=-1024.0)
        labels = resample_to_spacing(labels, spacing, label=True)
    rep = check_heart(labels, ct)
    # The measurement behind a failed check, by the check's first words.
    value_of = {"no labels in lung or chest wall": "labelled voxels in lung or chest wall (%)",
                "myocardium not contrast blood": "myocardium voxels above 250 HU (%)",
                "myocardium wraps": "myocardium around LV",
                "labels between the lungs": "labelled voxels between the lungs (%)"}
    warnings = []
    for check in rep.failed():
        detail = next((f"{rep.volumes_ml[lab.name]:g} ml" for lab in HEART_LABELS
                       if check.startswith((f"{lab.name} volume", f"{lab.name} 70"))), "")
        key = next((k for prefix, k in value_of.items() if check.startswith(prefix)), None)
        if key is not None:
            detail = f"{key}: {rep.values.get(key)}"
        if check.startswith("each label in one main piece"):
            broken = [k for k, f in rep.main_piece.items() if 0 < f < 0.9]
            missing = [k for k, f in rep.main_piece.items() if f == 0]
            detail = ", ".join([f"{k} in pieces ({100 * rep.main_piece[k]:.0f} % in the largest)" for k in broken]
                               + [f"{k} missing" for k in missing])
            structures = broken + missing
        elif check.startswith("all seven labels present"):
            structures = [k for k, f in rep.main_piece.items() if f == 0]
            detail = "missing: " + ", ".join(structures)
        else:
            structures = _structures_named(check)
        warnings.append({"check": check, "structures": structures, "detail": detail})
    return {"passed": rep.passed, "total": len(rep.checks), "warnings": warnings, "volumes_ml": rep.volumes_ml,
            "main_piece": rep.main_piece, "values": rep.values, "spacing_mm": spacing}


def warning_lines(result: dict[str, Any]) -> list[str]:
    """One line per failed check, naming the structure and the reason."""
    lines = []
    for w in result.get("warnings", []):
        who = ", ".join(w["structures"]) if w["structures"] else "layout"
        lines.append(f"{who}: failed '{w['check']}'" + (f" ({w['detail']})" if w["detail"] else ""))
    return lines

"""Plausibility in every heart result (gvslcore.heartcheck.plausibility): the warnings name the
structure and the reason, the checks read physical space on any grid, and `gvsl segment` reports
them in its done event and in a sidecar JSON beside the output, with each structure's confidence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from test_synth import _as_ct, _labels

from gvslcore.cli import main
from gvslcore.heartcheck import plausibility, warning_lines
from gvslcore.segment import plausibility_path
from gvslcore.synth.chest import render_case


@pytest.fixture(scope="module")
def chest() -> tuple[sitk.Image, sitk.Image]:
    tissue = render_case(5, 4.0)
    return _labels(tissue), _as_ct(tissue)


def _oblique_fine_grid(reference: sitk.Image) -> sitk.Image:
    """A 1.2 x 1.4 x 2.5 mm grid over the same chest, rotated 20 degrees about the body axis."""
    rotation = sitk.VersorTransform((0.0, 0.0, 1.0), np.deg2rad(20.0))
    direction = np.asarray(rotation.GetMatrix()).reshape(3, 3)
    spacing = np.array([1.2, 1.4, 2.5])
    extent = np.asarray(reference.GetSize()) * np.asarray(reference.GetSpacing())
    size = np.ceil(extent / spacing).astype(int)
    centre = np.asarray(reference.TransformContinuousIndexToPhysicalPoint((np.asarray(reference.GetSize()) - 1) / 2.0))
    origin = centre - direction @ ((size - 1) / 2.0 * spacing)
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def test_a_plausible_heart_passes_on_any_grid(chest):
    labels, ct = chest
    coarse = plausibility(labels, ct)
    assert coarse["warnings"] == [], warning_lines(coarse)
    grid = _oblique_fine_grid(labels)
    fine_labels = sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    fine_ct = sitk.Resample(ct, grid, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    fine = plausibility(fine_labels, fine_ct)
    # Checked on 2 mm copies of the 1.2-1.4 mm axes (the 2.5 mm axis kept), volumes as on the source grid.
    assert fine["spacing_mm"] == pytest.approx([2.0, 2.0, 2.5])
    assert fine["warnings"] == [], warning_lines(fine)
    for name, ml in coarse["volumes_ml"].items():
        assert fine["volumes_ml"][name] == pytest.approx(ml, rel=0.12), name


def test_a_missing_right_atrium_is_named(chest):
    labels, ct = chest
    array = sitk.GetArrayFromImage(labels)
    array[array == 4] = 0
    no_ra = sitk.GetImageFromArray(array)
    no_ra.CopyInformation(labels)
    result = plausibility(no_ra, ct)
    named = {s for w in result["warnings"] for s in w["structures"]}
    assert "right atrium" in named
    assert any(w["check"] == "right atrium volume in 20-250 ml" and w["detail"] == "0 ml" for w in result["warnings"])
    assert any(line.startswith("right atrium: failed 'right atrium volume") for line in warning_lines(result))


def test_a_mirrored_heart_fails_the_layout_naming_both_ventricles(chest):
    labels, ct = chest
    mirrored = sitk.GetImageFromArray(sitk.GetArrayFromImage(labels)[:, :, ::-1].copy())
    mirrored.CopyInformation(labels)
    result = plausibility(mirrored, ct)
    layout = {w["check"]: w["structures"] for w in result["warnings"]}
    assert layout["LV left of RV"] == ["left ventricle", "right ventricle"]
    assert "right atrium" in layout["RA the rightmost chamber"]


def test_a_heart_found_below_the_diaphragm_is_named(chest):
    """A label map moved down into the upper abdomen (what v2 drew on a non-contrast CT: the heart in
    the liver) keeps its shape, volumes and layout; only the between-the-lungs check can see it."""
    labels, ct = chest
    array = sitk.GetArrayFromImage(labels)
    heart_z = np.flatnonzero(np.isin(array, (1, 2, 3, 4, 5)).any(axis=(1, 2)))
    shift = int(heart_z.max() - heart_z.min() + 1)  # the whole heart below where it was
    assert heart_z.min() - shift >= 0, "the synthetic chest is too short for this test"
    moved = np.zeros_like(array)
    moved[:-shift] = array[shift:]  # array z runs foot -> head (LPS, identity direction)
    low = sitk.GetImageFromArray(moved)
    low.CopyInformation(labels)
    assert plausibility(labels, ct)["values"]["labelled voxels between the lungs (%)"] >= 80.0
    result = plausibility(low, ct)
    failed = {w["check"]: w["detail"] for w in result["warnings"]}
    assert "labels between the lungs (>= 80 %)" in failed, warning_lines(result)
    assert failed["labels between the lungs (>= 80 %)"].startswith("labelled voxels between the lungs (%): ")


def test_gvsl_segment_reports_its_checks_in_the_done_event_and_a_sidecar(tmp_path, chest, capsys):
    _, ct = chest
    scan = tmp_path / "chest.nii.gz"
    sitk.WriteImage(ct, str(scan))
    out = tmp_path / "heart.seg.nrrd"
    capsys.readouterr()
    assert main(["segment", str(scan), str(out), "--fast", "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    done = [e for e in events if e.get("event") == "done"][-1]
    outputs = done.get("outputs", done)
    sidecar = plausibility_path(out)
    assert sidecar.name == "heart.plausibility.json" and outputs["plausibility_file"] == str(sidecar)
    report = json.loads(sidecar.read_text())
    assert report["segmentation"] == "heart.seg.nrrd"
    assert outputs["plausibility"] == {k: report[k] for k in ("passed", "total", "warnings")}
    assert report["total"] >= 15 and set(report["volumes_ml"]) == {
        "left ventricle", "right ventricle", "left atrium", "right atrium", "left ventricular myocardium",
        "ascending aorta", "pulmonary artery"}
    # Each structure's confidence (mean winning probability), the same in the event and the sidecar.
    assert set(outputs["confidence"]) == set(report["volumes_ml"])
    assert report["confidence"] == outputs["confidence"] and report["uncertain_fraction"] == outputs["uncertain_fraction"]
    for name, value in outputs["confidence"].items():
        assert 0.0 <= value <= 1.0 and 0.0 <= outputs["uncertain_fraction"][name] <= 1.0, name

"""Synthetic cardiac CT phantoms: determinism, anatomy, intensities, geometry, pairs and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from gvslcore.cli import main
from gvslcore.errors import InputError
from gvslcore.io import read_image, write_image
from gvslcore.labels import HEART_LABELS
from gvslcore.phantom import make_grid, make_pair, make_phantom, write_dataset

LV, MYO = 1, 5


def _arrays(seed: int, size=40, **kw) -> tuple[np.ndarray, np.ndarray]:
    image, labels = make_phantom(seed, size, **kw)
    return sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    def rx(a):
        c, s = np.cos(a), np.sin(a)
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])

    def rz(a):
        c, s = np.cos(a), np.sin(a)
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])

    return rz(np.deg2rad(az)) @ rx(np.deg2rad(ax)) @ rz(np.deg2rad(ay))


def _centroid_mm(labels: sitk.Image, value: int) -> np.ndarray:
    z, y, x = np.nonzero(sitk.GetArrayViewFromImage(labels) == value)
    index = (float(x.mean()), float(y.mean()), float(z.mean()))
    return np.array(labels.TransformContinuousIndexToPhysicalPoint(index))


# -- determinism ----------------------------------------------------------------------------------

def test_same_seed_gives_identical_arrays_and_other_seeds_differ():
    a1, l1 = _arrays(3, 32)
    a2, l2 = _arrays(3, 32)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(l1, l2)
    b, m = _arrays(4, 32)
    assert not np.array_equal(a1, b)
    assert not np.array_equal(l1, m)


def test_types_and_shared_geometry():
    image, labels = make_phantom(0, 32)
    assert image.GetPixelID() == sitk.sitkFloat32
    assert labels.GetPixelID() == sitk.sitkUInt8
    assert image.GetSize() == labels.GetSize() == (32, 32, 32)
    assert image.GetSpacing() == labels.GetSpacing() == pytest.approx((6.0, 6.0, 6.0))
    assert image.GetOrigin() == labels.GetOrigin()
    assert image.GetDirection() == labels.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    # The default grid is centred on the physical origin.
    np.testing.assert_allclose(image.TransformContinuousIndexToPhysicalPoint((15.5, 15.5, 15.5)), 0.0, atol=1e-9)


# -- anatomy and intensities ---------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 7, 12])
def test_all_heart_labels_present_with_plausible_volumes(seed):
    _, lab = _arrays(seed, 48)
    voxel_ml = 4.0**3 / 1000.0
    assert set(np.unique(lab)) == {0, *HEART_LABELS.values}
    volumes = {v: float((lab == v).sum()) * voxel_ml for v in HEART_LABELS.values}
    for value, ml in volumes.items():
        assert 3.0 < ml < 80.0, (HEART_LABELS.name_of(value), ml)
    # The heart lies inside the field of view: no label on the border.
    border = np.concatenate([lab[[0, -1]].ravel(), lab[:, [0, -1]].ravel(), lab[:, :, [0, -1]].ravel()])
    assert not border.any()


@pytest.mark.parametrize("seed", [1, 5])
def test_myocardium_surrounds_the_left_ventricle(seed):
    _, lab = _arrays(seed, 48)
    lv = lab == LV
    shell = ndimage.binary_dilation(lv) & ~lv
    neighbours = np.bincount(lab[shell], minlength=8)
    # Myocardium all round, except the outflow tract (aorta) and the mitral opening.
    assert neighbours[MYO] / shell.sum() > 0.7
    # And the myocardium wraps the cavity: the LV centroid lies within the myocardium's hull.
    myo_idx = np.argwhere(lab == MYO)
    lv_c = np.argwhere(lv).mean(0)
    assert np.all(myo_idx.min(0) < lv_c) and np.all(lv_c < myo_idx.max(0))


def test_anatomy_layout_in_lps():
    _, labels = make_phantom(2, 40)
    lv, rv = _centroid_mm(labels, 1), _centroid_mm(labels, 2)
    la, ra = _centroid_mm(labels, 3), _centroid_mm(labels, 4)
    ao = _centroid_mm(labels, 6)
    assert lv[0] > rv[0] and lv[1] > rv[1]  # LV left of and posterior to the RV
    assert la[1] > rv[1] and la[2] > lv[2]  # LA posterior, above the LV
    assert la[0] > ra[0]  # RA on the patient's right
    assert ao[2] > lv[2]  # the aorta rises from the LV
    assert lv[0] > 0  # the heart sits left of the midline


@pytest.mark.parametrize("seed", [0, 9])
def test_hounsfield_ranges(seed):
    hu, lab = _arrays(seed, 40)
    # Air outside the body (the volume's corners).
    corners = np.concatenate([hu[:3, :3, :3].ravel(), hu[-3:, :3, -3:].ravel()])
    assert abs(float(corners.mean()) + 1000.0) < 40.0
    # Contrast-enhanced blood, myocardium darker.
    lv_core = ndimage.binary_erosion(lab == LV)
    assert np.median(hu[lv_core]) > 200.0
    assert np.median(hu[lab == MYO]) < np.median(hu[lv_core]) - 100.0
    # Lungs: a good part of the body's cross-section at the heart's top is below -500 HU.
    z = int(np.nonzero(lab == 3)[0].mean())
    body = ndimage.binary_fill_holes(hu[z] > -300.0)
    lungs = body & (hu[z] < -500.0)
    assert lungs.sum() > 0.15 * body.sum()
    # Bone (spine, ribs) above 300 HU; nothing absurd.
    assert hu.max() > 300.0
    assert -1200.0 < hu.min() and hu.max() < 1500.0


# -- geometry -------------------------------------------------------------------------------------

def test_geometry_written_and_read_back(tmp_path):
    direction = _rotation(20.0, -15.0, 30.0).ravel()
    image, labels = make_phantom(1, (24, 20, 18), spacing=(7.0, 8.5, 10.0), direction=direction)
    assert image.GetSize() == (24, 20, 18)
    np.testing.assert_allclose(image.GetDirection(), direction, atol=1e-12)
    write_image(image, tmp_path / "img.nii.gz")
    write_image(labels, tmp_path / "lab.nii.gz")
    for original, path, label in ((image, "img.nii.gz", False), (labels, "lab.nii.gz", True)):
        back = read_image(tmp_path / path, label=label)
        assert back.GetSize() == original.GetSize()
        np.testing.assert_allclose(back.GetSpacing(), original.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(back.GetOrigin(), original.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(back.GetDirection(), original.GetDirection(), atol=1e-5)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(original))


def test_grid_points_match_simpleitk():
    grid = make_grid((19, 17, 16), (1.5, 2.0, 3.0), _rotation(10.0, 50.0, -20.0).ravel(), origin=(4.0, -3.0, 2.0))
    ref = grid.image()
    pts = grid.points()
    assert pts.shape == (3, 19 * 17 * 16)
    for index in [(0, 0, 0), (18, 16, 15), (3, 5, 11)]:
        linear = index[2] * 17 * 19 + index[1] * 19 + index[0]
        np.testing.assert_allclose(pts[:, linear], ref.TransformIndexToPhysicalPoint(index), atol=1e-4)


def test_same_anatomy_in_physical_space_on_another_grid():
    direction = _rotation(25.0, -10.0, 40.0).ravel()
    _, lab_a = make_phantom(6, 40)  # 4.8 mm voxels, identity
    _, lab_b = make_phantom(6, (36, 44, 30), spacing=(5.0, 4.2, 6.0), direction=direction)
    for label in HEART_LABELS.values:
        ca, cb = _centroid_mm(lab_a, label), _centroid_mm(lab_b, label)
        assert np.linalg.norm(ca - cb) < 4.8, (label, ca, cb)  # within a voxel
        va = float((sitk.GetArrayViewFromImage(lab_a) == label).sum()) * 4.8**3
        vb = float((sitk.GetArrayViewFromImage(lab_b) == label).sum()) * 5.0 * 4.2 * 6.0
        assert abs(va - vb) < 0.25 * va, (label, va, vb)


@pytest.mark.parametrize("kwargs", [
    {"size": 8},
    {"size": (32, 32)},
    {"size": 32, "spacing": (1.0, 0.0, 1.0)},
    {"size": 32, "direction": (1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0)},
])
def test_bad_grid_arguments_are_input_errors(kwargs):
    with pytest.raises(InputError):
        make_phantom(0, **kwargs)


# -- registration pairs ---------------------------------------------------------------------------

def test_pair_displacement_reproduces_fixed():
    pair = make_pair(11, 40, max_displacement_mm=8.0)
    fixed, moving, disp = pair["fixed"], pair["moving"], pair["displacement"]
    assert disp.GetPixelID() == sitk.sitkVectorFloat64 and disp.GetNumberOfComponentsPerPixel() == 3
    for image in (moving, pair["fixed_labels"], pair["moving_labels"], disp):
        assert image.GetSize() == fixed.GetSize()
        np.testing.assert_allclose(image.GetOrigin(), fixed.GetOrigin())
        np.testing.assert_allclose(image.GetSpacing(), fixed.GetSpacing())
        np.testing.assert_allclose(image.GetDirection(), fixed.GetDirection())
    d = sitk.GetArrayFromImage(disp)
    assert 2.0 < np.linalg.norm(d, axis=-1).max() < 30.0

    transform = sitk.DisplacementFieldTransform(sitk.Image(disp))  # the transform takes its input over
    warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, -1000.0))
    warped_labels = sitk.GetArrayFromImage(
        sitk.Resample(pair["moving_labels"], fixed, transform, sitk.sitkNearestNeighbor, 0))
    f = sitk.GetArrayFromImage(fixed)
    fl = sitk.GetArrayFromImage(pair["fixed_labels"])
    ml = sitk.GetArrayFromImage(pair["moving_labels"])
    assert np.corrcoef(warped.ravel(), f.ravel())[0, 1] > 0.98
    # Noise is independent: the images differ voxel by voxel but not in structure.
    assert 3.0 < np.std(warped - f) < 60.0
    for label in HEART_LABELS.values:
        a, b = warped_labels == label, fl == label
        assert b.sum() > 0
        assert 2.0 * (a & b).sum() / (a.sum() + b.sum()) > 0.95
    # ...whereas without the field the labels do not line up as well.
    dice_identity = [2.0 * ((ml == v) & (fl == v)).sum() / ((ml == v).sum() + (fl == v).sum()) for v in HEART_LABELS.values]
    assert min(dice_identity) < 0.95


def test_pair_without_deformation_is_identity():
    pair = make_pair(2, 32, max_displacement_mm=0.0, affine=False)
    assert not sitk.GetArrayFromImage(pair["displacement"]).any()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(pair["fixed_labels"]), sitk.GetArrayFromImage(pair["moving_labels"]))


# -- data set and CLI -----------------------------------------------------------------------------

def test_cli_writes_dataset(tmp_path, capsys):
    out = tmp_path / "phantoms"
    rc = main(["phantom", str(out), "--cases", "3", "--size", "24", "--seed", "5", "--pairs", "--progress", "json"])
    assert rc == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert events[0]["event"] == "start" and events[0]["command"] == "phantom" and events[0]["total"] == 4
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4] and all(e.get("stage") for e in progress)
    assert events[-1]["event"] == "done" and events[-1]["outputs"]["dataset_json"] == str(out / "dataset.json")

    names = [f"case_{i:03d}.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    assert sorted(p.name for p in (out / "labels").iterdir()) == names
    pair = out / "pairs" / "pair_000"
    assert sorted(p.name for p in pair.iterdir()) == sorted(
        f"{k}.nii.gz" for k in ("fixed", "moving", "fixed_labels", "moving_labels", "displacement"))
    assert not (out / "pairs" / "pair_001").exists()  # 3 // 2 = 1 pair

    meta = json.loads((out / "dataset.json").read_text())
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, **{lab.name: lab.value for lab in HEART_LABELS}}
    assert meta["label_table"] == json.loads(json.dumps(HEART_LABELS.to_list()))
    assert meta["numTraining"] == 3 and len(meta["training"]) == 3
    assert meta["seed"] == 5 and meta["size"] == [24, 24, 24] and meta["spacing"] == [8.0, 8.0, 8.0]
    assert meta["provenance"].startswith("gvsl phantom ")
    for entry in meta["training"]:
        image = read_image(out / entry["image"])
        labels = read_image(out / entry["label"], label=True)
        assert image.GetSize() == labels.GetSize() == (24, 24, 24)
        np.testing.assert_allclose(image.GetSpacing(), (8.0, 8.0, 8.0))
        hu = sitk.GetArrayViewFromImage(image)
        assert hu.min() < -900.0 and hu.max() > 200.0
        assert set(np.unique(sitk.GetArrayViewFromImage(labels))) <= {0, *HEART_LABELS.values}
    disp = sitk.ReadImage(str(out / meta["pairs"][0]["displacement"]))
    assert disp.GetNumberOfComponentsPerPixel() == 3


def test_dataset_is_reproducible_and_rewrites_cleanly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_dataset(a, 2, 20, seed=3)
    write_dataset(b, 2, 20, seed=3)
    for name in ("images/case_001.nii.gz", "labels/case_001.nii.gz"):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a / name))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(b / name))))
    # A smaller data set in the same folder leaves no stale cases behind.
    write_dataset(a, 1, 20, seed=4)
    assert [p.name for p in (a / "images").iterdir()] == ["case_000.nii.gz"]
    assert json.loads((a / "dataset.json").read_text())["numTraining"] == 1


@pytest.mark.parametrize("args", [
    ["--cases", "0"],
    ["--size", "8"],
    ["--spacing", "1", "-1", "1"],
])
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args):
    rc = main(["phantom", str(tmp_path / "out"), *args])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gvsl phantom: error:")
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_cli_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    rc = main(["phantom", str(blocker / "out"), "--cases", "1", "--size", "16"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "file.txt" in err

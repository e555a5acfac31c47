"""Volumes with geometry: formats, DICOM series, resampling, normalization, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from gvslcore.errors import InputError, OutputError
from gvslcore.io import (
    normalize_ct,
    normalize_mr,
    read_image,
    resample_like,
    resample_to_spacing,
    same_geometry,
    write_image,
)

from realdata import shared_file


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".nii"])
def test_round_trip_keeps_geometry_exactly(tmp_path, oblique_image, suffix):
    path = write_image(oblique_image, tmp_path / f"v{suffix}")
    back = read_image(path)
    assert same_geometry(back, oblique_image, tol=1e-6)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(oblique_image), rtol=1e-6)


def test_dicom_series_folder(tmp_path, oblique_image):
    image = sitk.Cast(oblique_image, sitk.sitkInt16)
    folder = tmp_path / "dicom"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    series_tags = [
        ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.4242"),  # series instance UID
        ("0020|0037", "\\".join(map(str, direction[0:3] + direction[3:6]))),  # row and column cosines
        ("0008|0060", "CT"),
    ]
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        for tag, value in series_tags:
            sl.SetMetaData(tag, value)
        sl.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        sl.SetMetaData("0020|0013", str(k))
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(sl)
    back = read_image(folder)
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image).astype(np.float32))


def test_resample_to_spacing_and_back_is_in_physical_space(oblique_image):
    iso = resample_to_spacing(oblique_image, (1.0, 1.0, 1.0))
    assert iso.GetSpacing() == (1.0, 1.0, 1.0)
    assert iso.GetDirection() == oblique_image.GetDirection() and iso.GetOrigin() == oblique_image.GetOrigin()
    # The same physical point has the same value in both grids (smooth image, linear interpolation).
    point = oblique_image.TransformContinuousIndexToPhysicalPoint((12.0, 9.0, 7.0))
    a = oblique_image.EvaluateAtPhysicalPoint(point, sitk.sitkLinear)
    b = iso.EvaluateAtPhysicalPoint(point, sitk.sitkLinear)
    assert abs(a - b) < 0.05 * float(np.ptp(sitk.GetArrayViewFromImage(oblique_image)))
    back = resample_like(iso, oblique_image)
    assert same_geometry(back, oblique_image)


def test_normalization():
    hu = np.array([-3000.0, -1024.0, 0.0, 1024.0, 3000.0])
    np.testing.assert_allclose(normalize_ct(hu), [0.0, 0.0, 0.5, 1.0, 1.0])
    mr = np.random.default_rng(0).gamma(2.0, 100.0, size=10000)
    out = normalize_mr(mr)
    assert out.min() == 0.0 and out.max() == 1.0 and 0.1 < np.median(out) < 0.5


def test_bad_inputs_are_one_line_input_errors(tmp_path):
    two_d = sitk.GetImageFromArray(np.zeros((10, 12), np.float32))
    sitk.WriteImage(two_d, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match="2-D"):
        read_image(tmp_path / "flat.nii.gz")
    four_d = sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.float32), isVector=False)
    sitk.WriteImage(four_d, str(tmp_path / "t.nii.gz"))
    with pytest.raises(InputError, match="4-D"):
        read_image(tmp_path / "t.nii.gz")
    (tmp_path / "notes.nii.gz").write_text("not an image")
    with pytest.raises(InputError, match="not a readable image"):
        read_image(tmp_path / "notes.nii.gz")
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no volume file"):
        read_image(tmp_path / "empty")
    arr = np.zeros((4, 5, 6), np.float32)
    arr[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "nan.mha"))
    with pytest.raises(InputError, match="NaN"):
        read_image(tmp_path / "nan.mha")


def test_atomic_write_leaves_nothing_on_failure(tmp_path, oblique_image, monkeypatch):
    target = tmp_path / "out.nii.gz"
    write_image(oblique_image, target)
    before = target.read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(OutputError, match="out.nii.gz failed"):  # one line for the CLI, not a traceback
        write_image(oblique_image, target)
    assert target.read_bytes() == before  # old content intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]  # no temporary left


def test_unwritable_output_folder(tmp_path, oblique_image):
    # A folder that cannot be created (its parent is a file): also fails for root, unlike chmod.
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match="cannot create output folder"):
        write_image(oblique_image, tmp_path / "a_file" / "sub" / "x.nii.gz")


def test_real_ct_reads_with_its_geometry():
    ct = read_image(shared_file("abdomen_ct_small", "ct.nii.gz"))
    assert ct.GetSize() == (122, 101, 30)
    np.testing.assert_allclose(np.array(ct.GetDirection()).reshape(3, 3), np.diag([-1, -1, 1]), atol=1e-6)
    assert sitk.GetArrayViewFromImage(ct).min() < -900  # HU

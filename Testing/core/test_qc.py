"""The registration QC picture resamples only its three planes: they must be the planes of the full
display volume (the slow path), on an oblique, anisotropic, non-cubic image."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from gvslcore import qc


def _oblique_image(values: np.ndarray, components: int = 1) -> sitk.Image:
    image = sitk.GetImageFromArray(values, isVector=components > 1)
    image.SetSpacing((0.9, 1.3, 2.5))
    image.SetOrigin((-40.0, 12.0, 7.5))
    rotation = sitk.VersorTransform((0.2, -0.4, 0.9), 0.5)
    image.SetDirection(rotation.GetMatrix())
    return image


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in (23, 41, 57)], indexing="ij")
    body = 1000.0 * np.exp(-((xx - 0.2) ** 2 + (yy + 0.1) ** 2 * 2 + zz ** 2) * 3) + rng.normal(0, 5, xx.shape)
    fixed = _oblique_image(body.astype(np.float32))
    field = _oblique_image(np.stack([3 * np.sin(2 * yy), -2 * np.cos(xx), 4 * zz * xx], -1), components=3)
    return fixed, field


def test_planes_match_the_full_display_volume(images):
    fixed, _ = images
    grid = qc.display_grid(fixed, max_size=64)
    full = sitk.GetArrayFromImage(sitk.Resample(fixed, grid, sitk.Transform(), sitk.sitkLinear, -7.0))
    centre = (5, 17, 29)
    for plane in qc.PLANES:
        np.testing.assert_allclose(qc._on_plane(fixed, grid, plane, centre, -7.0), qc._plane(full, plane, centre),
                                   rtol=0, atol=1e-3)


def test_mapped_grid_matches_the_full_display_volume(images):
    fixed, field = images
    grid = qc.display_grid(fixed, max_size=64)
    d = sitk.GetArrayFromImage(sitk.Resample(field, grid, sitk.Transform(), sitk.sitkLinear, 0.0))
    m_inv = np.linalg.inv(np.array(grid.GetDirection()).reshape(3, 3) * grid.GetSpacing()[0])
    index = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in grid.GetSize()[::-1]], indexing="ij")[::-1], -1)
    mapped = index + d @ m_inv.T
    centre = (9, 3, 40)
    for plane in qc.PLANES:
        fast = qc._mapped_on_plane(field, grid, plane, centre)
        for c in range(3):
            np.testing.assert_allclose(fast[c], qc._plane(mapped[..., c], plane, centre), rtol=0, atol=1e-9)


def test_centre_is_on_the_bright_blob(images):
    fixed, _ = images
    grid = qc.display_grid(fixed, max_size=64)
    lo, hi = qc._window(fixed)
    full = np.clip((sitk.GetArrayFromImage(sitk.Resample(fixed, grid, sitk.Transform(), sitk.sitkLinear, 0.0)) - lo)
                   / (hi - lo), 0, 1)
    weights = np.clip(full - 0.05, 0, None)
    exact = [(np.indices(full.shape)[a] * weights).sum() / weights.sum() for a in range(3)]
    centre = qc._bright_centre(fixed, grid, lo, hi)
    assert all(abs(c - e) <= 1.5 for c, e in zip(centre, exact)), (centre, exact)


def test_grid_lines_fall_on_multiples_of_the_step():
    """An identity mapping upsampled 2x: the mapped column coordinate of fine pixel c is
    (c + 0.5) / 2 - 0.5, so it crosses 4, 8, ... at pixels 9, 17, ... and rows carry no line."""
    columns = np.tile(np.arange(20, dtype=np.float64), (6, 1))
    lines = qc._grid_lines(columns, scale=2, step=4.0)
    assert lines.shape == (12, 40)
    assert np.flatnonzero(lines[5]).tolist() == [9, 17, 25, 33]
    assert (lines == lines[0]).all()  # the same vertical lines on every row


def test_picture_is_written(images, tmp_path):
    fixed, field = images
    jacobian = sitk.DisplacementFieldJacobianDeterminant(sitk.Cast(field, sitk.sitkVectorFloat64))
    path = qc.registration_qc_png(fixed, fixed, fixed, field, jacobian, tmp_path / "qc.png", title="t",
                                  ncc={"before": 0.5, "after": 0.9}, folding_percent=0.0, max_size=64)
    from PIL import Image

    picture = np.asarray(Image.open(path))
    assert picture.ndim == 3 and picture.shape[1] > 5 * 64 * 2  # five panels, each voxel drawn 2+ px wide
    assert len(np.unique(picture.reshape(-1, picture.shape[-1]), axis=0)) > 100  # panels, not a blank page
    assert not list(tmp_path.glob(".*")), "temporary file left behind"

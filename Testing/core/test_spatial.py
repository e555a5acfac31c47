"""The spatial conventions of DESIGN.md section 3 against SimpleITK, on a grid that is non-cubic,
anisotropic, oblique (non-identity direction) and off-origin, so that any axis-order, spacing,
direction or align_corners slip shows up.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from gvslcore.geometry import (
    displacement_from_image,
    displacement_image,
    displacement_transform,
    index_to_physical_matrix,
)
from gvslcore.spatial import affine_to_displacement, compose, fuse_affine_and_displacement, jacobian_determinant, warp

SHAPE = (14, 19, 25)  # (z, y, x)
SPACING_XYZ = (1.3, 0.7, 2.4)


def _rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


@pytest.fixture(scope="module")
def image() -> sitk.Image:
    rng = np.random.default_rng(0)
    arr = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.5) * 10 + 5
    img = sitk.GetImageFromArray(arr.astype(np.float64))
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin((12.0, -30.5, 7.25))
    # An oblique frame with a flipped axis: neither a permutation nor right-handed-only.
    direction = _rotation((1, 2, 3), 35) @ np.diag([1.0, -1.0, 1.0])
    img.SetDirection(tuple(direction.ravel()))
    return img


def _smooth_field(seed: int, amplitude: float) -> np.ndarray:
    """(3, D, H, W) smooth voxel displacement, float64."""
    rng = np.random.default_rng(seed)
    u = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), 3.0) for _ in range(3)])
    return u * (amplitude / np.abs(u).max())


def _inside(u: np.ndarray, margin: float = 1e-3) -> np.ndarray:
    """Voxels whose pulled location p + u(p) lies inside the grid (where zero padding plays no part)."""
    p = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")) + u
    ok = np.ones(SHAPE, dtype=bool)
    for k, s in enumerate(SHAPE):
        ok &= (p[k] >= margin) & (p[k] <= s - 1 - margin)
    return ok


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(0)


def test_index_to_physical_matrix_matches_itk(image):
    m = index_to_physical_matrix(image)
    for idx in [(0, 0, 0), (3.5, 7.25, 1.0), (24, 18, 13)]:
        expected = image.TransformContinuousIndexToPhysicalPoint(idx)
        np.testing.assert_allclose(m @ (*idx, 1.0), (*expected, 1.0), atol=1e-9)


def test_displacement_image_round_trip_and_physical_vectors(image):
    u = _smooth_field(1, 3.0)
    field = displacement_image(u, image)
    assert field.GetPixelID() == sitk.sitkVectorFloat64
    np.testing.assert_allclose(displacement_from_image(field), u, atol=1e-10)
    # The physical vector at a voxel moves that voxel's centre to the centre of p + u(p).
    k, j, i = 5, 9, 17
    d = np.array(field[i, j, k])
    moved = np.array(image.TransformContinuousIndexToPhysicalPoint((i + u[2, k, j, i], j + u[1, k, j, i], k + u[0, k, j, i])))
    np.testing.assert_allclose(np.array(image.TransformIndexToPhysicalPoint((i, j, k))) + d, moved, atol=1e-9)


def test_warp_equals_itk_resample_with_displacement_field(image):
    u = _smooth_field(2, 2.5)
    ours = warp(_t(sitk.GetArrayFromImage(image)[None]), _t(u))[0, 0].numpy()
    itk = sitk.GetArrayFromImage(
        sitk.Resample(image, image, displacement_transform(u, image), sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    )
    inside = _inside(u)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours[inside], itk[inside], atol=1e-8)
    # A field that is not right (the x and z channels swapped) must not pass.
    swapped = u[::-1].copy()
    wrong = warp(_t(sitk.GetArrayFromImage(image)[None]), _t(swapped))[0, 0].numpy()
    assert np.abs(wrong[inside] - itk[inside]).max() > 0.1


def _affine_zyx(seed: int) -> np.ndarray:
    """(3, 4) [A | t], (z, y, x) order, t in mm: rotation, anisotropic scale, shear, translation."""
    rng = np.random.default_rng(seed)
    a_xyz = _rotation(rng.normal(size=3), 12) @ np.diag([1.08, 0.93, 1.03])
    a_xyz[0, 1] += 0.05
    t_xyz = np.array([2.5, -1.5, 3.0])
    m = np.zeros((3, 4))
    m[:, :3] = a_xyz[::-1, ::-1]
    m[:, 3] = t_xyz[::-1]
    return m


def _itk_affine_of(matrix_zyx: np.ndarray, image: sitk.Image) -> sitk.AffineTransform:
    """The physical transform of ``affine_to_displacement(matrix, shape, spacing)`` on ``image``.

    The matrix acts in millimetres along the grid's index axes about the grid centre x_c, so in
    LPS: y = x_c + D (A D^T (x - x_c) + t).
    """
    d = np.array(image.GetDirection()).reshape(3, 3)
    a_xyz = matrix_zyx[:, :3][::-1, ::-1]
    t_xyz = matrix_zyx[:, 3][::-1]
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    tx = sitk.AffineTransform(3)
    tx.SetCenter(centre)
    tx.SetMatrix(tuple((d @ a_xyz @ d.T).ravel()))
    tx.SetTranslation(tuple(d @ t_xyz))
    return tx


def test_affine_to_displacement_equals_itk_affine_transform(image):
    m = _affine_zyx(3)
    spacing_zyx = SPACING_XYZ[::-1]
    u = affine_to_displacement(torch.from_numpy(m)[None], SHAPE, spacing_zyx)[0].numpy()
    tx = _itk_affine_of(m, image)
    itk_field = sitk.TransformToDisplacementField(
        tx, sitk.sitkVectorFloat64, image.GetSize(), image.GetOrigin(), image.GetSpacing(), image.GetDirection()
    )
    np.testing.assert_allclose(displacement_from_image(itk_field), u, atol=1e-9)
    ours = warp(_t(sitk.GetArrayFromImage(image)[None]), _t(u))[0, 0].numpy()
    itk = sitk.GetArrayFromImage(sitk.Resample(image, image, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat64))
    inside = _inside(u)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(ours[inside], itk[inside], atol=1e-8)


def test_jacobian_determinant_of_an_affine_is_its_determinant():
    m = _affine_zyx(4)
    u = affine_to_displacement(torch.from_numpy(m)[None], SHAPE, SPACING_XYZ[::-1])
    det = jacobian_determinant(u)
    assert det.shape == (1, 1, *SHAPE)
    np.testing.assert_allclose(det.numpy(), np.linalg.det(m[:, :3]), rtol=1e-10)
    # A fold: a field that mirrors the x axis about the centre has determinant -1.
    mirror = np.zeros((3, 4))
    mirror[:, :3] = np.diag([1.0, 1.0, -1.0])
    assert torch.allclose(jacobian_determinant(affine_to_displacement(torch.from_numpy(mirror)[None], SHAPE)),
                          torch.tensor(-1.0, dtype=torch.float64))


def test_compose_equals_itk_composite_transform(image):
    first, second = _smooth_field(5, 2.0), _smooth_field(6, 2.0)
    ours = compose(_t(first), _t(second))[0].numpy()
    composite = sitk.CompositeTransform(3)
    # ITK applies the transform added last first: T(x) = second(first(x)).
    composite.AddTransform(displacement_transform(second, image))
    composite.AddTransform(displacement_transform(first, image))
    itk_field = sitk.TransformToDisplacementField(
        composite, sitk.sitkVectorFloat64, image.GetSize(), image.GetOrigin(), image.GetSpacing(), image.GetDirection()
    )
    # Where first(p) leaves the grid ITK uses a zero displacement and compose() the border value;
    # inside they must agree.
    inside_first = _inside(first)
    assert inside_first.mean() > 0.5
    np.testing.assert_allclose(ours[:, inside_first], displacement_from_image(itk_field)[:, inside_first], atol=1e-8)
    # Warping by the composition equals warping twice (up to interpolating twice).
    img = _t(sitk.GetArrayFromImage(image)[None])
    once = warp(img, _t(ours))[0, 0].numpy()
    twice = warp(warp(img, _t(second)), _t(first))[0, 0].numpy()
    inside = _inside(ours, margin=1.5) & _inside(first, margin=1.5)
    assert np.abs(once - twice)[inside].mean() < 0.05 * np.abs(once[inside]).mean()


def test_fused_affine_and_residual_is_affine_after_deformation(image):
    """fuse(A, v) pulls through p -> Aff(p + v(p)), i.e. compose(v, affine field)."""
    m = torch.from_numpy(_affine_zyx(7))[None]
    v = _t(_smooth_field(8, 1.5))
    spacing = SPACING_XYZ[::-1]
    fused = fuse_affine_and_displacement(m, v, spacing)
    expected = compose(v, affine_to_displacement(m, SHAPE, spacing))
    # compose interpolates the affine field, which is exact for a linear field away from the border.
    inside = torch.from_numpy(_inside(v.numpy()[0], margin=0.0))
    assert torch.allclose(fused[0][:, inside], expected[0][:, inside], atol=1e-9)

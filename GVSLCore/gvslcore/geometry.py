"""Between voxel-space tensors and physical (LPS, millimetre) ITK objects.

A voxel displacement ``u`` (3, D, H, W), channels (z, y, x), on an image grid becomes ITK's physical
displacement ``d = direction @ (spacing * u_xyz)`` (DESIGN.md section 3): for a fixed physical point
x, the moving point is x + d(x), which is what ``sitk.DisplacementFieldTransform`` computes.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def direction_matrix(image: sitk.Image) -> np.ndarray:
    return np.array(image.GetDirection(), dtype=float).reshape(3, 3)


def index_to_physical_matrix(image: sitk.Image) -> np.ndarray:
    """4x4 matrix mapping a continuous index (x, y, z, 1) to an LPS point (x, y, z, 1) in mm."""
    m = np.eye(4)
    m[:3, :3] = direction_matrix(image) @ np.diag(image.GetSpacing())
    m[:3, 3] = image.GetOrigin()
    return m


def voxel_to_physical_displacement(u_zyx: np.ndarray, reference: sitk.Image) -> np.ndarray:
    """(3, D, H, W) voxel displacement (z, y, x) -> (D, H, W, 3) physical mm vectors (x, y, z)."""
    u_xyz = np.moveaxis(np.asarray(u_zyx, dtype=np.float64)[::-1], 0, -1)  # (D, H, W, 3) xyz
    m = direction_matrix(reference) @ np.diag(reference.GetSpacing())
    return u_xyz @ m.T


def physical_to_voxel_displacement(d_xyz: np.ndarray, reference: sitk.Image) -> np.ndarray:
    """(D, H, W, 3) physical mm vectors -> (3, D, H, W) voxel displacement, channels (z, y, x)."""
    m = direction_matrix(reference) @ np.diag(reference.GetSpacing())
    u_xyz = np.asarray(d_xyz, dtype=np.float64) @ np.linalg.inv(m).T
    return np.moveaxis(u_xyz, -1, 0)[::-1].copy()


def displacement_image(u_zyx: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """An ITK displacement field image (sitkVectorFloat64, physical mm) on ``reference``'s grid."""
    field = sitk.GetImageFromArray(voxel_to_physical_displacement(u_zyx, reference), isVector=True)
    field.CopyInformation(reference)
    return sitk.Cast(field, sitk.sitkVectorFloat64)


def displacement_from_image(field: sitk.Image) -> np.ndarray:
    """Inverse of :func:`displacement_image`: (3, D, H, W) voxel displacement on the field's grid."""
    return physical_to_voxel_displacement(sitk.GetArrayFromImage(field), field)


def displacement_transform(u_zyx: np.ndarray, reference: sitk.Image) -> sitk.DisplacementFieldTransform:
    """A SimpleITK transform (fixed physical point -> moving physical point) for ``u`` on ``reference``."""
    return sitk.DisplacementFieldTransform(displacement_image(u_zyx, reference))

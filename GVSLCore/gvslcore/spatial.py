"""Spatial transformer: warping by displacement fields, affine matrices as fields, composition,
Jacobian determinant.

One convention everywhere (DESIGN.md section 3):
- tensors are (B, C, D, H, W) = (batch, channel, z, y, x);
- a displacement ``u`` is (B, 3, D, H, W) in *voxels* of the grid it lives on, channel k along
  array axis k (0 = z, 1 = y, 2 = x), and pulls: ``warped(p) = moving(p + u(p))``;
- ``grid_sample`` with ``align_corners=True`` and normalization by ``size - 1`` per axis, so voxel
  centres map exactly to voxel centres whatever the shape (non-cubic inputs are exact).
- affine matrices are (B, 3, 4) acting on voxel coordinates in (z, y, x) order about the grid
  centre: ``q = A (p - c) + c + t``; in millimetres when ``spacing`` is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def identity_grid(shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates of a grid: (1, 3, D, H, W), channel k = index along axis k."""
    axes = [torch.arange(s, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).unsqueeze(0)


def _normalize(locations: torch.Tensor) -> torch.Tensor:
    """Voxel locations (B, 3, D, H, W) -> grid_sample grid (B, D, H, W, 3) in (x, y, z) order."""
    # Python-float scales: no host-to-device copy (and no GPU sync) per call.
    scaled = [locations[:, k] * (2.0 / max(s - 1, 1)) - 1.0 for k, s in enumerate(locations.shape[2:])]
    return torch.stack(scaled[::-1], dim=-1)


def warp(
    image: torch.Tensor,
    displacement: torch.Tensor,
    *,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Pull ``image`` through ``displacement``: ``out(p) = image(p + u(p))``.

    Args:
        image: (B, C, D, H, W), sampled on the same grid as ``displacement``.
        displacement: (B, 3, D, H, W) in voxels, channels (z, y, x).
        mode: 'bilinear' (trilinear in 3-D) or 'nearest' (labels).
        padding_mode: value outside the image: 'zeros', 'border' or 'reflection'.

    Returns:
        (B, C, D, H, W) warped image.
    """
    locations = identity_grid(displacement.shape[2:], displacement.device, displacement.dtype) + displacement
    grid = _normalize(locations)
    if image.dtype != grid.dtype:
        grid = grid.to(image.dtype)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def affine_to_displacement(
    matrix: torch.Tensor, shape: Sequence[int], spacing: Sequence[float] | None = None
) -> torch.Tensor:
    """Displacement (B, 3, D, H, W) in voxels of the affine ``q = A (p - c) + c + t``.

    Args:
        matrix: (B, 3, 4), [A | t] in (z, y, x) order; A dimensionless, t in mm (voxels when
            ``spacing`` is None). Coordinates are taken about the grid centre c.
        shape: (D, H, W) of the grid.
        spacing: (z, y, x) voxel size in mm, so that rotations stay rotations on anisotropic grids.
    """
    spacing = [1.0, 1.0, 1.0] if spacing is None else [float(v) for v in spacing]
    # Centred millimetre coordinates built on the device from Python floats (no host copies).
    axes = [(torch.arange(n, device=matrix.device, dtype=matrix.dtype) - (n - 1) / 2.0) * sp for n, sp in zip(shape, spacing)]
    p_mm = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (3, D, H, W)
    linear, translation = matrix[:, :, :3], matrix[:, :, 3]
    q_mm = torch.einsum("bij,jdhw->bidhw", linear, p_mm) + translation.view(-1, 3, 1, 1, 1)
    diff = q_mm - p_mm.unsqueeze(0)
    return torch.stack([diff[:, k] / spacing[k] for k in range(3)], dim=1)


def fuse_affine_and_displacement(
    matrix: torch.Tensor, displacement: torch.Tensor, spacing: Sequence[float] | None = None
) -> torch.Tensor:
    """One field for "deform, then affine" (paper Eq. 12): ``phi(p) = Aff(p + v(p))``.

    The deformable head predicts ``v`` on the fixed grid against the affinely resampled moving
    features, so the full pull mapping is the affine applied after the residual. Because the
    affine is linear this is exact without resampling: ``u(p) = u_aff(p) + L v(p)``, with L the
    affine's linear part expressed in voxel units.
    """
    u_aff = affine_to_displacement(matrix, displacement.shape[2:], spacing)
    linear_vox = matrix[:, :, :3]
    if spacing is not None:  # S^-1 A S, element by element with Python floats
        sp = [float(v) for v in spacing]
        linear_vox = torch.stack(
            [torch.stack([linear_vox[:, i, j] * (sp[j] / sp[i]) for j in range(3)], dim=-1) for i in range(3)], dim=-2
        )
    return u_aff + torch.einsum("bij,bjdhw->bidhw", linear_vox, displacement)


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Pull field of "apply ``first``, then ``second``": ``u(p) = first(p) + second(p + first(p))``.

    With pull fields, warping by the result equals ``warp(warp(img, second), first)``.
    """
    return first + warp(second, first, padding_mode="border")


def jacobian_determinant(displacement: torch.Tensor) -> torch.Tensor:
    """det(I + grad u) per voxel: (B, 1, D, H, W); <= 0 marks folding.

    Central differences inside, one-sided at the borders. The determinant of the voxel-space
    Jacobian equals that of the physical one (a similarity by the spacing matrix).
    """
    grads = []
    for axis in range(3):
        g = torch.gradient(displacement, dim=axis + 2)[0]  # d u_c / d p_axis, (B, 3, D, H, W)
        grads.append(g)
    j = torch.stack(grads, dim=2)  # (B, 3 [component], 3 [axis], D, H, W)
    eye = torch.eye(3, device=displacement.device, dtype=displacement.dtype).view(1, 3, 3, 1, 1, 1)
    j = (j + eye).permute(0, 3, 4, 5, 1, 2)
    return torch.linalg.det(j).unsqueeze(1)

"""Trilinear sampling of one fixed image at moving points, with the gradient for the points only:
what instance optimization does at every step.

``F.grid_sample(image, q, "bilinear", padding_mode="zeros", align_corners=True)`` gives the same values,
but on a CPU its 3-D kernel is scalar code: forward and backward were 45 % of an instance-optimization
step (two cores, the 4 mm abdominal grid). Here the eight corners of every cell are stored side by side
once per image, so one row gather fetches a point's eight neighbours and the interpolation and its
gradient are a few whole-tensor lerps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class TrilinearSampler:
    """Sample a (1, 1, D, H, W) image at points given in its voxel indices (z, y, x); outside the
    image the value falls to zero as with ``padding_mode="zeros"``.

    Memory: eight floats per voxel of the image (the corner table), plus eight per sampled point
    kept for the backward pass.
    """

    def __init__(self, image: torch.Tensor) -> None:
        if image.dim() != 5 or image.shape[:2] != (1, 1):
            raise ValueError(f"expected a (1, 1, D, H, W) image, got {tuple(image.shape)}")
        # A zero border of one voxel below and two above: a point on [-1, n] (clamped) then has all
        # eight corners inside the table, the ones off the image reading zero.
        padded = F.pad(image.detach().float(), (1, 2, 1, 2, 1, 2))[0, 0]
        d, h, w = padded.shape
        # Corner-major (z, y, x bits, then cells), so that every lerp below runs on whole rows.
        shifted = [padded[z:d - 1 + z, y:h - 1 + y, x:w - 1 + x] for z in (0, 1) for y in (0, 1) for x in (0, 1)]
        self.corners = torch.stack(shifted).reshape(8, -1)
        stride_z, stride_y = (h - 1) * (w - 1), w - 1
        self.strides = torch.tensor([stride_z, stride_y, 1], device=image.device).view(3, 1)
        self.offset = stride_z + stride_y + 1  # the table starts at voxel -1 on each axis
        self.upper = torch.tensor(image.shape[2:], dtype=torch.float32, device=image.device).view(3, 1)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """(1, 3, D', H', W') voxel indices (z, y, x) of this image -> (1, 1, D', H', W') values."""
        values = _Trilinear.apply(points.reshape(3, -1), self)
        return values.view(1, 1, *points.shape[2:])


class _Trilinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points: torch.Tensor, sampler: TrilinearSampler) -> torch.Tensor:  # noqa: D102
        p = points.detach().float()
        within = (p > -1.0) & (p < sampler.upper)  # on the edge itself the value is 0 and so is its slope
        inside = within[0] & within[1] & within[2]
        p = torch.minimum(p.clamp(min=-1.0), sampler.upper)
        cell = p.floor()
        frac = p.sub_(cell)
        row = (cell.long() * sampler.strides).sum(0).add_(sampler.offset)
        c = torch.gather(sampler.corners, 1, row.expand(8, -1)).view(2, 2, 2, -1)  # a third of index_select's time along dim 1
        fz, fy, fx = frac
        along_x = torch.lerp(c[:, :, 0], c[:, :, 1], fx)  # (2, 2, N)
        along_y = torch.lerp(along_x[:, 0], along_x[:, 1], fy)  # (2, N)
        value = torch.lerp(along_y[0], along_y[1], fz)
        ctx.save_for_backward(c, along_x, along_y, frac, inside)
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        c, along_x, along_y, frac, inside = ctx.saved_tensors
        fz, fy, _ = frac
        d_z = along_y[1] - along_y[0]
        d_y = torch.lerp(along_x[0, 1] - along_x[0, 0], along_x[1, 1] - along_x[1, 0], fz)
        step_x = c[:, :, 1] - c[:, :, 0]  # (2, 2, N)
        d_x = torch.lerp(step_x[:, 0], step_x[:, 1], fy)
        d_x = torch.lerp(d_x[0], d_x[1], fz)
        scale = grad * inside  # zero padding: no gradient where the point left the image
        return torch.stack([d_z, d_y, d_x]).mul_(scale), None

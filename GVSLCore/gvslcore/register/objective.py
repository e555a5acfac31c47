"""What instance optimization minimizes: local NCC against the fixed image plus the field's
smoothness, each with its gradient written out.

Tensors are (1, C, D, H, W) with axes (z, y, x). Both terms run hundreds of times a registration on
whole volumes, where autograd's generic backward (a temporary and a pass over memory per operation,
zero-filled copies for every slice) cost more than the arithmetic: on the 4 mm abdominal grid (two
cores) forward and backward took 4.5 ms (NCC) and 3.3 ms (smoothness) a step through autograd.
Testing/core/test_register.py checks values and gradients against the plain autograd formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """(N, C, D, H, W) -> the same shape: the mean over ``window``^3 neighbourhoods with zero padding,
    by differences of cumulative sums (a few operations a voxel whatever the window). A centred window
    mean with zero padding is its own adjoint: the backward passes below apply it to gradients."""
    pad = window // 2
    for dim in (2, 3, 4):
        widths = [0] * 6
        widths[2 * (4 - dim)], widths[2 * (4 - dim) + 1] = pad + 1, pad
        c = F.pad(x, widths).cumsum(dim)
        n = c.shape[dim] - window
        x = c.narrow(dim, window, n) - c.narrow(dim, 0, n)
    return x / window**3  # one division for the three sums


@dataclass(frozen=True)
class FixedStatistics:
    """The fixed image's window means (its part of local NCC), computed once per pyramid level
    instead of at every step: (1, 1, D, H, W) each."""

    image: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor
    window: int

    @classmethod
    def of(cls, fixed: torch.Tensor, window: int) -> FixedStatistics:
        i = fixed.float()
        mi, mii = torch.split(box_mean(torch.cat([i, i * i], dim=1), window), 1, dim=1)
        return cls(i, mi, mii - mi * mi, window)


class _LocalNCC(torch.autograd.Function):
    """1 - mean(cc), cc = cross^2 / (var_i var_j + eps) from the window means of j, j^2 and i j."""

    @staticmethod
    def forward(ctx, warped: torch.Tensor, stats: FixedStatistics, eps: float) -> torch.Tensor:  # noqa: D102
        i, j = stats.image, warped.detach().to(stats.image.dtype)
        mj, mjj, mij = torch.split(box_mean(torch.cat([j, j * j, i * j], dim=1), stats.window), 1, dim=1)
        cross = mij - stats.mean * mj
        denom = stats.variance * (mjj - mj * mj) + eps / stats.window**6
        ratio = cross / denom
        cc = ratio * cross
        ctx.stats = stats
        ctx.save_for_backward(j, mj, ratio, denom, cc)
        return 1.0 - cc.mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        j, mj, ratio, denom, cc = ctx.saved_tensors
        stats = ctx.stats
        scale = grad / -cc.numel()
        # d(1 - mean cc) by the window means of (j, j^2, i j), then through the (self-adjoint) box
        # mean to the voxels: d/dj = G_j + 2 j G_jj + i G_ij.
        g_ij = ratio * (2.0 * scale)
        g_jj = cc.div(denom).mul_(stats.variance).mul_(-scale)
        g_j = -(stats.mean * g_ij) - 2.0 * mj * g_jj
        gj, gjj, gij = torch.split(box_mean(torch.cat([g_j, g_jj, g_ij], dim=1), stats.window), 1, dim=1)
        return gj + 2.0 * j * gjj + stats.image * gij, None, None


def local_ncc_to(stats: FixedStatistics, warped: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean local squared NCC of ``warped`` (1, 1, D, H, W) against the fixed image of ``stats``."""
    return _LocalNCC.apply(warped, stats, eps)


def local_ncc(fixed: torch.Tensor, warped: torch.Tensor, window: int = 7, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean local squared NCC over ``window``^3 neighbourhoods (zero padding).

    The quantity of :func:`gvslcore.losses.local_ncc_loss`, with window sums from cumulative sums
    (about 3x faster on a CPU than three 1-D average pools, forward and backward).
    """
    return local_ncc_to(FixedStatistics.of(fixed, window), warped, eps)


class _Smoothness(torch.autograd.Function):
    """sum over axes a and channels c of w[a, c] * sum (difference of v_c along a)^2."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:  # noqa: D102
        steps = [v.detach().diff(dim=2 + a) for a in range(3)]
        total = sum((d.square().sum(dim=(0, 2, 3, 4)) * weights[a]).sum() for a, d in enumerate(steps))
        ctx.weights, ctx.shape = weights, v.shape
        ctx.save_for_backward(*steps)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        steps = ctx.saved_tensors
        out = steps[0].new_zeros(ctx.shape)
        for a, d in enumerate(steps):
            t = d * (2.0 * grad * ctx.weights[a]).view(1, 3, 1, 1, 1)
            n = d.shape[2 + a]
            out.narrow(2 + a, 1, n).add_(t)
            out.narrow(2 + a, 0, n).sub_(t)
        return out, None


def smoothness_mm(v_vox: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
    """Mean squared gradient (mm per mm) of a field (1, 3, D, H, W) given in voxels of a grid of
    ``spacing`` (mm, z, y, x): the mean over axes of mean((d v_mm / d axis_mm)^2)."""
    shape = v_vox.shape[2:]
    count = torch.tensor([3.0 * (shape[0] - 1) * shape[1] * shape[2], 3.0 * shape[0] * (shape[1] - 1) * shape[2],
                          3.0 * shape[0] * shape[1] * (shape[2] - 1)], device=v_vox.device)
    # w[a, c] = (s_c / s_a)^2 / (3 count_a): channel c in mm, differenced along axis a in mm.
    weights = (spacing.view(1, 3) / spacing.view(3, 1)) ** 2 / (3.0 * count.view(3, 1))
    return _Smoothness.apply(v_vox, weights.to(v_vox.dtype))

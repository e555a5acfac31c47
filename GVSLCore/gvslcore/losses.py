"""Losses of GVSL pre-training (NCC, smoothness, restoration MSE) and of segmentation (Dice + CE).

All take (B, C, D, H, W) tensors and return a scalar. They compute in float32 even under bf16
autocast: local variances are differences of large sums and lose everything in bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def local_ncc_loss(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean local squared normalized cross-correlation over ``window``^3 neighbourhoods.

    0 for locally linearly related images, 1 for unrelated ones. Zero padding at the borders (as
    in VoxelMorph and the paper).
    """
    i, j = fixed.float(), warped.float()
    pad = window // 2
    n = float(window**3)

    def box(x: torch.Tensor) -> torch.Tensor:
        # The window sum as three 1-D box filters (separable): ~5x faster than one window^3 pool
        # on the CPU, same result to float rounding; zero padding as count_include_pad.
        for dim in (2, 3, 4):
            k = [1, 1, 1]
            k[dim - 2] = window
            p = [0, 0, 0]
            p[dim - 2] = pad
            x = F.avg_pool3d(x, tuple(k), stride=1, padding=tuple(p), count_include_pad=True)
        return x * n

    stacked = torch.cat([i, j, i * i, j * j, i * j], dim=1)
    sums = box(stacked)
    c = i.shape[1]
    i_sum, j_sum, i2_sum, j2_sum, ij_sum = torch.split(sums, c, dim=1)
    cross = ij_sum - i_sum * j_sum / n
    i_var = i2_sum - i_sum * i_sum / n
    j_var = j2_sum - j_sum * j_sum / n
    cc = cross * cross / (i_var * j_var + eps)
    return 1.0 - cc.mean()


def smoothness_loss(displacement: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of a displacement field along the three axes, averaged."""
    u = displacement.float()
    dz = u[:, :, 1:] - u[:, :, :-1]
    dy = u[:, :, :, 1:] - u[:, :, :, :-1]
    dx = u[:, :, :, :, 1:] - u[:, :, :, :, :-1]
    return (dz.pow(2).mean() + dy.pow(2).mean() + dx.pow(2).mean()) / 3.0


def restoration_loss(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the restoration head's output and the untransformed image."""
    return F.mse_loss(restored.float(), target.float())


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, include_background: bool = False, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over classes (batch pooled per class, as nnU-Net's batch Dice).

    Args:
        logits: (B, K, D, H, W).
        target: (B, D, H, W) integer labels in [0, K).
    """
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(target.long(), probs.shape[1]).permute(0, 4, 1, 2, 3).to(probs.dtype)
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    return 1.0 - dice.mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice (foreground classes) + cross-entropy, the nnU-Net default."""
    return soft_dice_loss(logits, target) + F.cross_entropy(logits.float(), target.long())

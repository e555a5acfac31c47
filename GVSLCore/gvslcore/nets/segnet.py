"""Segmentation model: the (pre-trained) U-Net backbone plus a one-layer segmentation head.

The head is one 3x3x3 convolution, as in the authors' downstream models (their ``out_conv``), so
that the paper's linear evaluation (frozen backbone, this layer alone) sees each voxel's
neighbourhood. Replicate padding, so that a per-channel affine map of the features (the linear
probe's standardization) folds into the head exactly, borders included. Older files with a 1x1x1
head load too (the kernel size is read from the weights).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from .unet import UNet3D


class SegNet(nn.Module):
    """Backbone + head. Input (B, 1, D, H, W) in [0, 1]; output logits (B, num_classes, D, H, W).

    The backbone's parameter names match :class:`GVSLNet`'s ``unet.*`` so that a pre-trained
    GVSL model initializes it by name.
    """

    def __init__(self, num_classes: int, width: int = 32, in_channels: int = 1, head_kernel: int = 3) -> None:
        super().__init__()
        self.unet = UNet3D(in_channels, width)
        self.head = nn.Conv3d(width, num_classes, kernel_size=head_kernel, padding=head_kernel // 2, padding_mode="replicate")

    @staticmethod
    def head_kernel_of(state: Mapping[str, torch.Tensor] | None) -> int:
        """The head's kernel size in a saved state dict (3, or 1 in older files); 3 when there is none."""
        weight = (state or {}).get("head.weight")
        return int(weight.shape[-1]) if weight is not None and weight.ndim == 5 else 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.unet(x)[1])

"""Segmentation model: the (pre-trained) U-Net backbone plus a 1x1x1 segmentation head."""

from __future__ import annotations

import torch
import torch.nn as nn

from .unet import UNet3D


class SegNet(nn.Module):
    """Backbone + head. Input (B, 1, D, H, W) in [0, 1]; output logits (B, num_classes, D, H, W).

    The backbone's parameter names match :class:`GVSLNet`'s ``unet.*`` so that a pre-trained
    GVSL model initializes it by name.
    """

    def __init__(self, num_classes: int, width: int = 32, in_channels: int = 1) -> None:
        super().__init__()
        self.unet = UNet3D(in_channels, width)
        self.head = nn.Conv3d(width, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.unet(x)[1])

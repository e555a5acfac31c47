"""3-D U-Net backbone of the paper: 5 levels, widths w-2w-4w-8w-16w, decoder 8w-4w-2w-w.

Module and parameter names follow the authors' release (``inc``, ``down1..4.maxpool_conv.1``,
``up1..4.conv``, ``double_conv.{0,1,3,4}``) so their checkpoint loads by name with strict shape checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def unet_channels(width: int = 32) -> tuple[int, ...]:
    """Channels of the 9 blocks (encoder 5, decoder 4) for first-level ``width`` (paper: 32)."""
    return (width, 2 * width, 4 * width, 8 * width, 16 * width, 8 * width, 4 * width, 2 * width, width)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with C/8 groups (the paper); at least one group so tiny test widths work."""
    return nn.GroupNorm(max(1, channels // 8), channels)


class DoubleConv(nn.Module):
    """[Conv3d k3, GroupNorm(C/8), LeakyReLU 0.2] x 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
            group_norm(out_channels),
            nn.LeakyReLU(0.2),
            nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1),
            group_norm(out_channels),
            nn.LeakyReLU(0.2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool3d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        low = F.interpolate(low, size=skip.shape[2:], mode="trilinear", align_corners=True)
        return self.conv(torch.cat([skip, low], dim=1))


class Features(NamedTuple):
    """What the backbone gives the GVSL heads, for input (B, C, D, H, W) padded to D', H', W'.

    Attributes:
        bottleneck: (B, 16w, D'/16, H'/16, W'/16) global features (the affine head's f_conv).
        pose: (B, 2w, D'/2, H'/2, W'/2) second encoder level (the affine head's spatial moments).
        local: (B, w, D, H, W) last decoder map on the input grid (deformable and restoration heads).
    """

    bottleneck: torch.Tensor
    pose: torch.Tensor
    local: torch.Tensor


class UNet3D(nn.Module):
    """The shared backbone.

    Input (B, C_in, D, H, W) of any size: padded (zeros, centred) to a multiple of 16 and cropped
    back. Returns ``(global_features, local_features)``: the bottleneck (B, 16w, D'/16, H'/16, W'/16)
    of the padded input and the last decoder map (B, w, D, H, W) on the input grid.
    """

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        chs = unet_channels(width)
        self.width = width
        self.inc = DoubleConv(in_channels, chs[0])
        self.down1 = Down(chs[0], chs[1])
        self.down2 = Down(chs[1], chs[2])
        self.down3 = Down(chs[2], chs[3])
        self.down4 = Down(chs[3], chs[4])
        self.up1 = Up(chs[4] + chs[3], chs[5])
        self.up2 = Up(chs[5] + chs[2], chs[6])
        self.up3 = Up(chs[6] + chs[1], chs[7])
        self.up4 = Up(chs[7] + chs[0], chs[8])
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, a=0.2)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _padding(shape: torch.Size) -> list[int]:
        pads: list[int] = []
        for size in reversed(shape):  # F.pad wants the last axis first
            extra = (-size) % 16
            pads += [extra // 2, extra - extra // 2]
        return pads

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The encoder alone on the padded input: the five levels (B, w, ...) ... (B, 16w, D'/16, ...)."""
        pads = self._padding(x.shape[2:])
        if any(pads):
            x = F.pad(x, pads)
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        return x1, x2, x3, x4, self.down4(x4)

    def blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs of all nine blocks on the padded grid: encoder (B, w, D', H', W') ...
        (B, 16w, D'/16, ...), then decoder (B, 8w, D'/8, ...) ... (B, w, D', H', W')."""
        x1, x2, x3, x4, x5 = self.encode(x)
        y1 = self.up1(x5, x4)
        y2 = self.up2(y1, x3)
        y3 = self.up3(y2, x2)
        return x1, x2, x3, x4, x5, y1, y2, y3, self.up4(y3, x1)

    def crop(self, padded: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Undo the centred padding of an input of spatial ``shape`` (D, H, W) on a full-grid map."""
        pads = self._padding(torch.Size(shape))
        if not any(pads):
            return padded
        z0, y0, x0 = pads[4], pads[2], pads[0]
        return padded[:, :, z0 : z0 + shape[0], y0 : y0 + shape[1], x0 : x0 + shape[2]]

    def features(self, x: torch.Tensor) -> Features:
        """Bottleneck, level-2 encoder map and local features of ``x`` (see :class:`Features`)."""
        _, x2, _, _, x5, _, _, _, y = self.blocks(x)
        return Features(x5, x2, self.crop(y, x.shape[2:]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f.bottleneck, f.local

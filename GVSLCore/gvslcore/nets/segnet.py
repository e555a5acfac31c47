"""Segmentation model: the (pre-trained) U-Net backbone plus a one-layer segmentation head.

Two read-outs, both linear in the backbone's features:

- ``"last"`` (default): one 3x3x3 convolution on the last decoder map, as in the authors'
  downstream models (their ``out_conv``). Replicate padding, so that a per-channel affine map of
  the features (the linear probe's standardization) folds into the head exactly, borders included.
  Older files with a 1x1x1 head load too (the kernel size is read from the weights).
- ``"hypercolumn"``: a 1x1x1 projection of every one of the nine blocks' outputs, upsampled
  (trilinear, as the decoder does) to the input grid and summed: a linear map of the hypercolumn of
  all blocks. At small widths the last map has only ``width`` channels (8 in CI); a frozen backbone
  read this way segments far better (held-out phantom Dice about 0.68 against 0.45; see
  benchmarks/linear_probe.py), though random features read this way are strong too, so it is not
  the paper's measure. Projecting before upsampling gives the same logits as upsampling then
  projecting (both maps are linear; the interpolation weights sum to one) at a fraction of the memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .unet import UNet3D, unet_channels

READOUTS = ("last", "hypercolumn")


class LastMapHead(nn.Conv3d):
    """A convolution of the last of the maps it is given (B, C, D, H, W) -> (B, K, D, H, W)."""

    def forward(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(blocks[-1])


class HypercolumnHead(nn.Module):
    """Logits (B, K, D', H', W') = bias + sum_i upsample(W_i * block_i) over the nine blocks."""

    def __init__(self, channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Conv3d(c, num_classes, kernel_size=1, bias=False) for c in channels)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        full = blocks[0].shape[2:]
        logits = self.bias.view(1, -1, 1, 1, 1)
        for projection, block in zip(self.projections, blocks):
            y = projection(block)
            if y.shape[2:] != full:
                y = F.interpolate(y, size=full, mode="trilinear", align_corners=True)
            logits = logits + y
        return logits


class SegNet(nn.Module):
    """Backbone + head. Input (B, 1, D, H, W) in [0, 1]; output logits (B, num_classes, D, H, W).

    The backbone's parameter names match :class:`GVSLNet`'s ``unet.*`` so that a pre-trained
    GVSL model initializes it by name.
    """

    def __init__(self, num_classes: int, width: int = 32, in_channels: int = 1, head_kernel: int = 3,
                 readout: str = "last") -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, not {readout!r}")
        self.unet = UNet3D(in_channels, width)
        self.readout = readout
        self.num_classes = num_classes
        if readout == "last":
            self.head: nn.Module = LastMapHead(width, num_classes, kernel_size=head_kernel, padding=head_kernel // 2,
                                               padding_mode="replicate")
        else:
            self.head = HypercolumnHead(unet_channels(width), num_classes)

    @staticmethod
    def head_options(state: Mapping[str, torch.Tensor] | None) -> dict[str, object]:
        """The head of a saved state dict as constructor keywords (``head_kernel``, ``readout``);
        the default 3x3x3 ``last`` head when there is none."""
        state = state or {}
        if "head.bias" in state and "head.projections.0.weight" in state:
            return {"readout": "hypercolumn"}
        weight = state.get("head.weight")
        return {"readout": "last", "head_kernel": int(weight.shape[-1]) if weight is not None and weight.ndim == 5 else 3}

    def head_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What the head reads: [last decoder map on the input grid] or the nine blocks (padded grid)."""
        if self.readout == "last":
            return [self.unet(x)[1]]
        return list(self.unet.blocks(x))

    def read_out(self, logits: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """The head's output cropped to the input's spatial ``shape``."""
        return self.unet.crop(logits, shape) if self.readout == "hypercolumn" else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.read_out(self.head(self.head_inputs(x)), x.shape[2:])

"""The linear probe's readout (the paper's linear evaluation): per-channel statistics of the frozen
features the head reads, their standardization, its folding into the saved head, and the class
weights of the probe's cross-entropy.

Feature maps are (B, C, D, H, W); statistics are one (mean, std) pair of (C,) tensors per map.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import Case, SegPatchDataset

Statistics = list[tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def feature_statistics(net: torch.nn.Module, dataset: SegPatchDataset, device: torch.device, patches: int = 8,
                       batch: int = 2) -> Statistics:
    """Per-channel mean and std (C_i,) of each frozen map the head reads (``net.head_inputs``) over
    ``patches`` training patches (sample indices of their own, so the training samples are unchanged)."""
    batches = []
    for i in range(0, patches, batch):
        x = torch.stack([dataset[2**40 + i + k][0] for k in range(min(batch, patches - i))]).to(device)
        batches.append([f.float().transpose(0, 1).flatten(1) for f in net.head_inputs(x)])
    stats = []
    for maps in zip(*batches):  # one map the head reads, over every batch: (C_i, N)
        f = torch.cat(maps, dim=1)
        stats.append((f.mean(1), f.std(1).clamp_min(1e-6)))
    return stats


def standardize(inputs: list[torch.Tensor], stats: Statistics) -> list[torch.Tensor]:
    """``(f - mean) / std`` per channel of each map."""
    return [(f.float() - m.view(1, -1, 1, 1, 1)) / s.view(1, -1, 1, 1, 1) for f, (m, s) in zip(inputs, stats)]


def fold_standardization(state: dict[str, torch.Tensor], stats: Statistics) -> dict[str, torch.Tensor]:
    """A state dict whose head acts on raw features like the trained head on standardized ones:
    ``W * ((f - m) / s) + b = (W / s) * f + (b - sum_k (W / s) m)``. Exact for the 3x3x3 head
    (replicate padding commutes with a per-channel affine map) and for the hypercolumn head (trilinear
    upsampling keeps constants: its weights sum to one)."""
    # One weight per map the head reads: the 3x3x3 conv's, or one 1x1x1 projection per block.
    keys = [f"head.projections.{i}.weight" for i in range(len(stats))] if "head.projections.0.weight" in state \
        else ["head.weight"]
    out = dict(state)
    bias = state["head.bias"]
    for key, (mean, std) in zip(keys, stats, strict=True):
        w = state[key] / std.to(state[key]).view(1, -1, 1, 1, 1)
        out[key] = w
        bias = bias - (w * mean.to(w).view(1, -1, 1, 1, 1)).sum(dim=(1, 2, 3, 4))
    out["head.bias"] = bias
    return out


def class_weights(cases: list[Case], num_classes: int) -> torch.Tensor:
    """Inverse square-root class frequencies of the training labels, mean 1 (for the probe's CE)."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for case in cases:
        counts += np.bincount(case.labels.ravel(), minlength=num_classes)[:num_classes]
    w = np.sqrt(counts.sum() / (counts + 1.0))
    return torch.tensor(w / w.mean(), dtype=torch.float32)

"""Validation of a segmentation network during fine-tuning: sliding-window Dice on whole cases."""

from __future__ import annotations

import math

import numpy as np
import torch

from .data import Case


@torch.no_grad()
def validate(net: torch.nn.Module, cases: list[Case], values: list[int], window: tuple[int, int, int],
             device: torch.device, overlap: float = 0.5) -> tuple[float, dict[int, float]]:
    """Mean Dice over cases (each case: mean over labels present in its reference) and per label."""
    from ..metrics import dice
    from ..segment import WindowPredictor, sliding_window_labels

    was_training = net.training
    net.eval()
    predictor = WindowPredictor(net, device, batch=4 if device.type == "cuda" else 2)
    per_case, per_label = [], {v: [] for v in values}
    for case in cases:
        pred = sliding_window_labels(case.image, predictor, net.num_classes, window, overlap)
        scores = []
        for v in values:
            if (case.labels == v).any():
                d = dice(pred == v, case.labels == v)
                per_label[v].append(d)
                scores.append(d)
        if scores:
            per_case.append(float(np.mean(scores)))
    net.train(was_training)
    mean = float(np.mean(per_case)) if per_case else math.nan
    return mean, {v: float(np.mean(s)) for v, s in per_label.items() if s}

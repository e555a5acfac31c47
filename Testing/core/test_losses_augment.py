"""Losses and appearance transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gvslcore.augment import (
    AppearanceConfig,
    appearance_transform,
    bezier_intensity,
    inpaint,
    local_pixel_shuffle,
    outpaint,
)
from gvslcore.losses import dice_ce_loss, local_ncc_loss, restoration_loss, smoothness_loss


def smooth_volume(seed=0, shape=(24, 24, 24)):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    v = gaussian_filter(rng.normal(size=shape), 2.0)
    return ((v - v.min()) / np.ptp(v)).astype(np.float32)


def test_ncc_is_zero_for_linearly_related_images_and_high_for_unrelated():
    a = torch.from_numpy(smooth_volume(0))[None, None]
    b = torch.from_numpy(smooth_volume(1))[None, None]
    assert local_ncc_loss(a, 3 * a).item() < 1e-3
    # zero padding at the border (the paper's NCC) makes an offset cost a little there only
    assert local_ncc_loss(a, 3 * a + 1).item() < 0.05
    assert local_ncc_loss(a, b).item() > 0.3
    # a shifted copy lies in between
    assert local_ncc_loss(a, a.roll(2, dims=-1)).item() < local_ncc_loss(a, b).item()


def test_ncc_is_float32_under_bf16_inputs():
    a = torch.from_numpy(smooth_volume(0))[None, None]
    loss = local_ncc_loss(a.bfloat16(), a.bfloat16())
    assert loss.dtype == torch.float32 and loss.item() < 0.02


def test_smoothness_of_constant_and_linear_fields():
    u = torch.ones(1, 3, 8, 8, 8)
    assert smoothness_loss(u).item() == 0.0
    z = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(1, 3, 8, 8, 8)
    # forward difference 1 along z only: mean over the three axes = 1/3
    assert smoothness_loss(z).item() == pytest.approx(1 / 3)


def test_restoration_and_dice_ce():
    x = torch.rand(1, 1, 4, 4, 4)
    assert restoration_loss(x, x).item() == 0
    target = torch.zeros(1, 6, 6, 6, dtype=torch.long)
    target[0, 2:4, 2:4, 2:4] = 2
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 4, 1, 2, 3).float() * 50
    assert dice_ce_loss(perfect, target).item() < 1e-3
    assert dice_ce_loss(torch.zeros(1, 3, 6, 6, 6), target).item() > 0.5


def test_appearance_transforms_are_deterministic_per_seed_and_change_the_image():
    x = smooth_volume(3, (40, 40, 40))
    a = appearance_transform(x, np.random.default_rng(5))
    b = appearance_transform(x, np.random.default_rng(5))
    c = appearance_transform(x, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, x)
    assert a.dtype == np.float32 and a.shape == x.shape and 0 <= a.min() and a.max() <= 1


def test_local_shuffle_keeps_the_histogram_inside_blocks():
    x = smooth_volume(4, (40, 40, 40))
    y = local_pixel_shuffle(x, np.random.default_rng(0), blocks=500)
    assert not np.array_equal(x, y)
    # shuffling moves values only locally: the global mean is nearly unchanged
    assert abs(x.mean() - y.mean()) < 0.01
    np.testing.assert_allclose(np.sort(x.ravel())[::97], np.sort(y.ravel())[::97], atol=0.05)


def test_bezier_is_monotone_or_inverted():
    x = np.linspace(0, 1, 200, dtype=np.float32)
    for seed in range(6):
        y = bezier_intensity(x, np.random.default_rng(seed))
        d = np.diff(y)
        assert np.all(d >= -1e-6) or np.all(d <= 1e-6)


def test_inpaint_outpaint():
    x = np.full((30, 30, 30), 0.5, np.float32)
    rng = np.random.default_rng(1)
    assert (inpaint(x, rng) != 0.5).mean() > 0.0
    out = outpaint(x, rng)
    inner = (out == 0.5).mean()
    assert 0.05 < inner < 0.7


def test_probabilities_zero_is_identity():
    x = smooth_volume(2)
    cfg = AppearanceConfig(local_shuffle=0, nonlinear=0, paint=0)
    np.testing.assert_array_equal(appearance_transform(x, np.random.default_rng(0), cfg), x)

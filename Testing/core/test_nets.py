"""The networks, and proofs that the authors' defects (DESIGN.md section 1) are absent."""

from __future__ import annotations

import math

import pytest
import torch

from gvslcore.nets import GVSLNet, SegNet, UNet3D, affine_matrix_from_parameters
from gvslcore.spatial import affine_to_displacement, warp


def test_backbone_parameter_count_matches_the_paper():
    assert sum(p.numel() for p in UNet3D(1, 32).parameters()) == 23_538_144


@pytest.mark.parametrize("shape", [(16, 16, 16), (20, 28, 36), (17, 33, 9)])
def test_unet_any_input_size(shape):
    net = UNet3D(1, 4)
    g, local = net(torch.rand(2, 1, *shape))
    assert local.shape == (2, 4, *shape)
    assert g.shape[1] == 64


def test_every_head_parameter_gets_a_nonzero_gradient_at_batch_two():
    torch.manual_seed(0)
    model = GVSLNet(width=4)
    fixed, moving = torch.rand(2, 1, 16, 24, 32), torch.rand(2, 1, 16, 24, 32)
    out = model(fixed, moving)
    assert out.warped.shape == (2, 1, 16, 24, 32) and out.affine.shape == (2, 3, 4)
    loss = (out.warped - fixed).pow(2).mean() + out.restored.mean() + out.residual.pow(2).mean()
    loss.backward()
    heads = [n for n, _ in model.named_parameters() if not n.startswith("unet.")]
    assert any(n.startswith("fc_rot") for n in heads) and any(n.startswith("out_flow") for n in heads)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, f"{name} receives no gradient"


def test_batch_samples_are_independent():
    torch.manual_seed(0)
    model = GVSLNet(width=4).eval()
    a, b = torch.rand(3, 1, 16, 16, 16), torch.rand(3, 1, 16, 16, 16)
    with torch.no_grad():
        batched = model(a, b).displacement
        single = model(a[1:2], b[1:2]).displacement
    torch.testing.assert_close(batched[1:2], single, atol=1e-5, rtol=1e-4)


def test_affine_parameters_compose_into_the_expected_matrix():
    # A pure 90 degree rotation about z (axial plane): x -> y, y -> -x.
    rot = torch.tensor([[0.0, 0.0, math.pi / 2]])
    m = affine_matrix_from_parameters(rot, torch.ones(1, 3), torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 6))
    # (z, y, x) order: new_x = -y, new_y = x; translation reversed to (z, y, x).
    expected = torch.tensor([[[1.0, 0, 0, 3.0], [0, 0, 1, 2.0], [0, -1, 0, 1.0]]])
    torch.testing.assert_close(m, expected, atol=1e-6, rtol=0)


def test_affine_warp_is_correct_on_non_cubic_grids():
    """A translation by 3 voxels along x moves content by exactly 3 voxels, whatever the shape."""
    shape = (8, 12, 20)
    image = torch.zeros(1, 1, *shape)
    image[0, 0, 4, 6, 10] = 1.0
    m = torch.zeros(1, 3, 4)
    m[0, :, :3] = torch.eye(3)
    m[0, 2, 3] = 3.0  # x translation (voxels): pull from x + 3
    out = warp(image, affine_to_displacement(m, shape))
    assert out[0, 0, 4, 6, 7] == pytest.approx(1.0, abs=1e-5)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)


def test_segnet_shares_backbone_names_with_gvslnet():
    seg, gvsl = SegNet(num_classes=8, width=4), GVSLNet(width=4)
    seg_backbone = {k for k in seg.state_dict() if k.startswith("unet.")}
    assert seg_backbone == {k for k in gvsl.state_dict() if k.startswith("unet.")}
    assert seg(torch.rand(1, 1, 20, 20, 12)).shape == (1, 8, 20, 20, 12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_runs_on_cuda():
    model = GVSLNet(width=4).cuda()
    out = model(torch.rand(2, 1, 16, 16, 16, device="cuda"), torch.rand(2, 1, 16, 16, 16, device="cuda"))
    out.warped.mean().backward()
    assert out.displacement.device.type == "cuda"


def test_cpu_device_has_no_hardcoded_cuda():
    model = GVSLNet(width=4)
    out = model(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))
    assert out.displacement.device.type == "cpu"


def test_affine_parameters_recover_a_known_affine_by_gradient_descent():
    """Gradients flow from the NCC of the warped image through the composed matrix into all 15
    parameters, with units and conventions that let them recover a known affine."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "affine_recovery.py"
    spec = importlib.util.spec_from_file_location("affine_recovery", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.direct_fit(size=24, spacing=8.0, iterations=120)
    assert r["fitted_corner_error_mm"] < 0.1 * r["initial_corner_error_mm"], r


def test_feature_moments_locate_and_shape_a_blob():
    """The affine head's pose descriptor: centroid in [-1, 1] coordinates per axis (z, y, x) and the
    central second moments, on a non-cubic grid."""
    from gvslcore.nets.gvsl import feature_moments

    shape = (17, 25, 41)
    axes = [torch.linspace(-1, 1, n) for n in shape]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    centre = (0.25, -0.5, 0.1)
    blob = ((z - centre[0]) / 0.3) ** 2 + ((y - centre[1]) / 0.2) ** 2 + ((x - centre[2]) / 0.5) ** 2 <= 1
    features = torch.where(blob, 30.0, -30.0)[None, None]  # softplus: ~30 inside, ~0 outside
    m = feature_moments(features)
    assert m.shape == (1, 10)
    torch.testing.assert_close(m[0, :3], torch.tensor(centre), atol=0.02, rtol=0)
    zz, yy, xx = m[0, 3:6]
    assert xx > zz > yy > 0  # the ellipsoid is longest along x, shortest along y
    assert abs(float(m[0, 6])) < 1e-3  # no z-y correlation in an axis-aligned ellipsoid
    shifted = torch.roll(features, shifts=4, dims=4)  # 4 voxels along x = 4 * 2 / 40 in [-1, 1]
    torch.testing.assert_close(feature_moments(shifted)[0, 2] - m[0, 2], torch.tensor(0.2), atol=1e-3, rtol=0)


def test_training_after_inference_in_the_same_process():
    """The affine head caches its moment coordinates per grid; a cache first filled under
    inference_mode (gvsl register, segment) must not break a later training step (Slicer keeps
    one Python process)."""
    torch.manual_seed(0)
    model = GVSLNet(width=4)
    fixed, moving = torch.rand(2, 1, 16, 24, 32), torch.rand(2, 1, 16, 24, 32)
    with torch.inference_mode():
        model(fixed, moving)
    model(fixed, moving).warped.mean().backward()
    assert model.f_moments[0].weight.grad.abs().sum() > 0

"""`gvsl register`: physical correctness of the exported transforms, recovery of known deformations
(phantom pairs, a known rigid motion, the real chest CTA deformed by a known field), label
propagation, the feed-forward path with a pretrained model, and bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from gvslcore.cli import main
from gvslcore.geometry import displacement_image
from gvslcore.metrics import dice
from gvslcore.phantom import make_pair
from gvslcore.register import (
    RegisterConfig,
    displacement_error_mm,
    full_displacement,
    jacobian_image,
    matrix_to_affine,
    propagate_labels,
    register_images,
    working_affine_matrix,
    working_grid,
)
from gvslcore.spatial import affine_to_displacement

import phantom_models as pm
from realdata import shared_file


def _rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


OBLIQUE = tuple((_rotation((1, -2, 0.5), 20) @ np.diag([1.0, -1.0, 1.0])).ravel())


def _grid(size, spacing, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), centre=(0.0, 0.0, 0.0)) -> sitk.Image:
    """An empty grid centred on ``centre`` (LPS mm)."""
    img = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(d) for d in direction])
    half = np.array(direction, dtype=float).reshape(3, 3) @ ((np.array(size) - 1) * np.array(spacing) / 2)
    img.SetOrigin([float(v) for v in np.array(centre) - half])
    return img


def _zero_field(like: sitk.Image) -> sitk.Image:
    z = sitk.Image(like.GetSize(), sitk.sitkVectorFloat64, 3)
    z.CopyInformation(like)
    return z


def _mean_dice(a: np.ndarray, b: np.ndarray, values=range(1, 8)) -> float:
    return float(np.nanmean([dice(a == v, b == v) for v in values]))


def _ncc(a: sitk.Image, b: sitk.Image) -> float:
    x = sitk.GetArrayFromImage(a).astype(np.float64).ravel()
    y = sitk.GetArrayFromImage(b).astype(np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    return float(x @ y / np.sqrt((x @ x) * (y @ y)))


@pytest.fixture(scope="module")
def phantom_pair(tmp_path_factory) -> dict:
    """A phantom pair with a known field; FIXED on an oblique anisotropic grid, MOVING on another
    grid (identity direction, other spacing and size) 60 mm away, as from another scanner."""
    pair = make_pair(11, size=(44, 40, 36), spacing=(4.0, 4.2, 4.6), direction=OBLIQUE)
    moving_grid = _grid((46, 42, 34), (3.6, 3.9, 5.2), centre=(40.0, -25.0, 35.0))
    # Shifting the moving image's physical frame by 60 mm: the same content, far away.
    offset = np.array([40.0, -25.0, 35.0])
    moved = {}
    for key, interp in (("moving", sitk.sitkLinear), ("moving_labels", sitk.sitkNearestNeighbor)):
        img = sitk.Image(pair[key])
        img.SetOrigin(tuple(np.array(img.GetOrigin()) + offset))
        moved[key] = sitk.Resample(img, moving_grid, sitk.Transform(), interp, -1000.0 if key == "moving" else 0,
                                   img.GetPixelID())
    truth = sitk.Image(pair["displacement"])
    truth_arr = sitk.GetArrayFromImage(truth) + offset  # fixed x -> moving point x + d(x) + offset
    truth = sitk.GetImageFromArray(truth_arr, isVector=True)
    truth.CopyInformation(pair["displacement"])
    folder = tmp_path_factory.mktemp("pair")
    paths = {}
    for key, img in (("fixed", pair["fixed"]), ("moving", moved["moving"]), ("fixed_labels", pair["fixed_labels"]),
                     ("moving_labels", moved["moving_labels"])):
        paths[key] = folder / f"{key}.nii.gz"
        sitk.WriteImage(img, str(paths[key]))
    return {"paths": paths, "truth": truth, "fixed": pair["fixed"], "fixed_labels": pair["fixed_labels"],
            "moving": moved["moving"], "moving_labels": moved["moving_labels"]}


# -- the export: conventions of the working grid against ITK ------------------------------------------

def test_working_affine_and_full_field_agree_with_itk_affine():
    """With no residual, the exported displacement is exactly the exported AffineTransform: the
    voxel-space affine of the network (affine_to_displacement) and our physical matrix agree."""
    fixed = _grid((30, 26, 22), (1.1, 1.7, 2.3), OBLIQUE, centre=(5.0, -8.0, 12.0))
    working = working_grid(fixed, 2.0, 160)
    assert working.GetDirection() == fixed.GetDirection()
    assert working.GetSpacing() == (2.0, 2.0, 2.0)
    rng = np.random.default_rng(0)
    a = _rotation(rng.normal(size=3), 9) @ np.diag([1.05, 0.95, 1.02])
    affine = np.concatenate([a, rng.uniform(-2, 2, (3, 1))], axis=1)  # (z, y, x) working voxels
    u = affine_to_displacement(torch.from_numpy(affine)[None], working.GetSize()[::-1])[0].numpy()
    t_init = sitk.Euler3DTransform((1.0, 2.0, -1.0), 0.1, -0.05, 0.2, (7.0, -3.0, 4.0))
    t_init_aff = sitk.AffineTransform(3)
    t_init_aff.SetCenter(t_init.GetCenter())
    t_init_aff.SetMatrix(t_init.GetMatrix())
    t_init_aff.SetTranslation(t_init.GetTranslation())
    from gvslcore.register import affine_to_matrix

    full = full_displacement(displacement_image(u, working), t_init_aff, fixed)
    tx = matrix_to_affine(affine_to_matrix(t_init_aff) @ working_affine_matrix(affine, working), (3.0, 1.0, 2.0))
    expected = sitk.TransformToDisplacementField(tx, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(),
                                                 fixed.GetSpacing(), fixed.GetDirection())
    np.testing.assert_allclose(sitk.GetArrayFromImage(full), sitk.GetArrayFromImage(expected), atol=1e-6)
    det = sitk.GetArrayFromImage(jacobian_image(full))
    np.testing.assert_allclose(det, np.linalg.det(a), rtol=1e-5)  # computed in float32 (fields.jacobian_image)


@pytest.mark.parametrize("window", [3, 7, 9])
def test_fast_local_ncc_is_the_training_loss(window):
    from gvslcore.losses import local_ncc_loss
    from gvslcore.register import local_ncc

    g = torch.Generator().manual_seed(window)
    a = torch.rand(1, 1, 18, 23, 29, generator=g)
    b = 0.6 * a + 0.4 * torch.rand(1, 1, 18, 23, 29, generator=g)
    assert torch.allclose(local_ncc(a, b, window), local_ncc_loss(a, b, window), atol=2e-5)
    assert float(local_ncc(a, a, window)) < 1e-3 < float(local_ncc(a, b, window))


def _grid_sample_sampler(image: torch.Tensor):
    """The slow path of register.trilinear: torch's grid_sample at voxel indices (z, y, x)."""
    size = torch.tensor(image.shape[2:], dtype=torch.float32).view(1, 3, 1, 1, 1)

    def sample(points: torch.Tensor) -> torch.Tensor:
        grid = (2.0 * points / (size - 1) - 1.0).flip(1).permute(0, 2, 3, 4, 1)
        return torch.nn.functional.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    return sample


def _autograd_ncc(stats, warped, eps=1e-5):
    """The slow path of objective.local_ncc_to: the same formula through autograd."""
    from gvslcore.register.objective import box_mean

    i, j = stats.image, warped
    mj, mjj, mij = torch.split(box_mean(torch.cat([j, j * j, i * j], dim=1), stats.window), 1, dim=1)
    cross = mij - stats.mean * mj
    return 1.0 - (cross * cross / (stats.variance * (mjj - mj * mj) + eps / stats.window**6)).mean()


def _autograd_smoothness(v_vox, spacing):
    """The slow path of objective.smoothness_mm: mean squared mm-per-mm differences through autograd."""
    v = v_vox * spacing.view(1, 3, 1, 1, 1)
    dz = (v[:, :, 1:] - v[:, :, :-1]) / spacing[0]
    dy = (v[:, :, :, 1:] - v[:, :, :, :-1]) / spacing[1]
    dx = (v[:, :, :, :, 1:] - v[:, :, :, :, :-1]) / spacing[2]
    return (dz.pow(2).mean() + dy.pow(2).mean() + dx.pow(2).mean()) / 3.0


def test_trilinear_sampler_is_grid_sample_with_zero_padding():
    """Values and the gradient for the points, inside, on the border, between the border and the zero
    padding, and far outside, on a non-cubic grid."""
    from gvslcore.register.trilinear import TrilinearSampler

    g = torch.Generator().manual_seed(2)
    image = torch.rand(1, 1, 9, 14, 11, generator=g)
    size = torch.tensor([9.0, 14.0, 11.0]).view(1, 3, 1, 1, 1)
    points = (torch.rand(1, 3, 7, 8, 10, generator=g) * 1.6 - 0.3) * size  # a third of them off the image
    # Border voxels and the half voxel beyond them (the exact edge -1 / n is left out: there
    # grid_sample's slope depends on the rounding of its normalized coordinates).
    points[0, :, 0, 0, :4] = torch.tensor([[-0.75, 0.0, 8.0, 8.5], [0.0, 13.0, -0.5, 13.0], [10.0, 10.5, 0.0, -0.25]])
    ours, theirs = points.clone().requires_grad_(), points.clone().requires_grad_()
    a, b = TrilinearSampler(image)(ours), _grid_sample_sampler(image)(theirs)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    weights = torch.randn(a.shape, generator=g)
    (a * weights).sum().backward()
    (b * weights).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-5)
    assert float((a == 0).float().mean()) > 0.2  # the zero padding was exercised


def test_ncc_and_smoothness_gradients_are_autograds():
    """The hand-written backward passes of register.objective against autograd of the same formulas
    (float64, anisotropic spacing), and torch's numerical gradient check."""
    from gvslcore.register.objective import FixedStatistics, local_ncc_to, smoothness_mm

    g = torch.Generator().manual_seed(4)
    fixed = torch.rand(1, 1, 8, 13, 10, generator=g, dtype=torch.float64)
    stats = FixedStatistics.of(fixed, 5)
    stats = FixedStatistics(fixed, stats.mean.double(), stats.variance.double(), 5)
    warped = (0.5 * fixed + 0.5 * torch.rand(fixed.shape, generator=g, dtype=torch.float64)).requires_grad_()
    spacing = torch.tensor([2.5, 1.1, 0.7], dtype=torch.float64)
    field = torch.randn(1, 3, 8, 13, 10, generator=g, dtype=torch.float64).requires_grad_()
    for fast, slow, x in ((lambda t: local_ncc_to(stats, t), lambda t: _autograd_ncc(stats, t), warped),
                          (lambda t: smoothness_mm(t, spacing), lambda t: _autograd_smoothness(t, spacing), field)):
        ours, = torch.autograd.grad(fast(x), x)
        theirs, = torch.autograd.grad(slow(x), x)
        torch.testing.assert_close(fast(x), slow(x), rtol=1e-12, atol=0)
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-15)
        assert torch.autograd.gradcheck(fast, (x,))


def test_instance_optimization_agrees_with_the_slow_path(monkeypatch):
    """The fast sampler and objective against grid_sample and autograd on a small anisotropic pair:
    the same affine and field after two levels of 25 steps, within a stated tolerance."""
    from gvslcore.register import instance

    g = torch.Generator().manual_seed(6)
    base = instance._gaussian_blur(torch.rand(1, 1, 20, 26, 31, generator=g), [1.5, 1.5, 1.5])
    fixed = (base - base.min()) / (base.max() - base.min())
    shift = torch.nn.functional.interpolate(torch.randn(1, 3, 3, 4, 4, generator=g) * 1.5, size=(20, 26, 31),
                                            mode="trilinear", align_corners=True)  # voxels
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in (20, 26, 31)], indexing="ij"))[None]
    moving = _grid_sample_sampler(fixed)(idx + shift)
    affine = torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1)
    cfg = RegisterConfig(iterations=25, levels=2, device="cpu")
    spacing = (2.0, 1.2, 1.0)
    fast = instance.instance_optimize(fixed, moving, affine, torch.zeros_like(shift), spacing, cfg)
    monkeypatch.setattr(instance, "TrilinearSampler", _grid_sample_sampler)
    monkeypatch.setattr(instance, "local_ncc_to", _autograd_ncc)
    monkeypatch.setattr(instance, "smoothness_mm", _autograd_smoothness)
    slow = instance.instance_optimize(fixed, moving, affine, torch.zeros_like(shift), spacing, cfg)
    # Adam's normalized steps turn rounding differences into differences of the order of one step
    # (lr 0.1 voxel) where a gradient is near zero: the tolerance is stated in those terms.
    difference = (fast[1] - slow[1]).abs()
    assert float(difference.mean()) < 0.03 and float(difference.quantile(0.99)) < 0.15, difference.max()
    assert float((fast[0] - slow[0]).abs().max()) < 0.01  # 2 steps of the affine (lr 0.005)
    assert abs(fast[2]["ncc"] - slow[2]["ncc"]) < 1e-3
    assert float(fast[1].abs().max()) > 0.5  # it moved
    assert fast[2]["ncc"] < instance.local_ncc(fixed, moving, cfg.ncc_window).item()


def test_label_propagation_has_no_values_between_labels():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[4:12, 4:12, 4:12] = 1
    labels[8:16, 8:16, 8:16] = 7  # 7 next to 1: linear interpolation of values would give 2..6
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((2.0, 2.0, 2.0))
    same = propagate_labels(image, image, sitk.TranslationTransform(3))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(same), labels)
    shifted = propagate_labels(image, image, sitk.TranslationTransform(3, (1.0, 1.0, 1.0)))  # half a voxel
    assert set(np.unique(sitk.GetArrayFromImage(shifted)).tolist()) == {0, 1, 7}



def _indicator_vote(labels: sitk.Image, fixed: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """The slow path: each label's indicator resampled linearly, the largest weight wins (background
    outside the moving image)."""
    values = np.unique(sitk.GetArrayViewFromImage(labels))
    best = np.full(sitk.GetArrayViewFromImage(fixed).shape, -1.0)
    out = np.zeros(best.shape, np.uint16)
    for value in values:
        w = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(labels == int(value), sitk.sitkFloat32), fixed, transform,
                                                 sitk.sitkLinear, 1.0 if value == 0 else 0.0, sitk.sitkFloat32))
        better = w > best + 1e-6  # ties: the first (lower) label, as in a sequential vote
        best[better], out[better] = w[better], value
    return out


def test_label_propagation_is_the_indicator_vote_on_an_oblique_pair():
    """One label-linear pass gives what resampling every label's indicator gives, through an oblique
    anisotropic grid and a smooth field (ties apart: a voxel exactly between two labels)."""
    moving = _grid((21, 17, 13), (1.2, 0.9, 2.1), OBLIQUE, centre=(3.0, -2.0, 5.0))
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in (13, 17, 21)], indexing="ij")
    values = (np.where(xx ** 2 + yy ** 2 + zz ** 2 < 0.5, 3, 0) + np.where(xx > 0.3, 9, 0) + np.where(zz < -0.4, 1, 0))
    labels = sitk.GetImageFromArray(values.astype(np.uint8))
    labels.CopyInformation(moving)
    fixed = _grid((19, 23, 11), (1.0, 1.1, 1.9), (1, 0, 0, 0, 1, 0, 0, 0, 1), centre=(4.0, -1.0, 6.0))
    field = sitk.GetImageFromArray(np.random.default_rng(1).normal(0, 0.7, (11, 23, 19, 3)), isVector=True)
    field.CopyInformation(fixed)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(sitk.SmoothingRecursiveGaussian(field, 2.0), sitk.sitkVectorFloat64))
    fast = sitk.GetArrayFromImage(propagate_labels(labels, fixed, transform))
    slow = _indicator_vote(labels, fixed, transform)
    assert set(np.unique(fast).tolist()) <= set(np.unique(values).tolist())
    assert np.mean(fast != slow) < 0.002, np.mean(fast != slow)
    assert np.count_nonzero(fast) > 0.1 * fast.size

# -- instance optimization without a model: phantom pair through the CLI ---------------------------------

@pytest.fixture(scope="module")
def io_run(phantom_pair, tmp_path_factory) -> Path:
    p = phantom_pair["paths"]
    out = tmp_path_factory.mktemp("io") / "out"
    code = main(["register", str(p["fixed"]), str(p["moving"]), "--model", "none", "--out", str(out),
                 "--iterations", "40", "--moving-labels", str(p["moving_labels"]), "--progress", "none",
                 "--device", "cpu"])
    assert code == 0
    return out


def test_cli_writes_every_output(io_run):
    names = {"warped.nii.gz", "affine.tfm", "displacement.nii.gz", "jacobian.nii.gz", "metrics.json",
             "propagated.seg.nrrd", "qc.png"}
    assert names <= {p.name for p in io_run.iterdir()}
    assert not [p for p in io_run.iterdir() if p.name.startswith(".")], "temporary files left behind"
    metrics = json.loads((io_run / "metrics.json").read_text())
    assert metrics["ncc"]["after"] > metrics["ncc"]["initial_alignment"]
    assert metrics["warnings"] == []  # a good registration: no folding or similarity warning
    assert set(metrics["seconds"]) >= {"initial_alignment", "instance_optimization", "compose", "jacobian", "total"}
    png = (io_run / "qc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    import slicerio

    seg = slicerio.read_segmentation(str(io_run / "propagated.seg.nrrd"))
    assert {s["labelValue"] for s in seg["segments"]} <= set(range(1, 8))


def test_displacement_file_reproduces_warped_with_simpleitk(io_run, phantom_pair):
    """The issue's check: SimpleITK.Resample(moving, fixed, DisplacementFieldTransform) == warped."""
    field = sitk.ReadImage(str(io_run / "displacement.nii.gz"))
    assert field.GetPixelID() == sitk.sitkVectorFloat64
    fixed = sitk.ReadImage(str(phantom_pair["paths"]["fixed"]))
    moving = sitk.ReadImage(str(phantom_pair["paths"]["moving"]), sitk.sitkFloat32)
    warped = sitk.ReadImage(str(io_run / "warped.nii.gz"))
    assert warped.GetSize() == fixed.GetSize() and np.allclose(warped.GetDirection(), fixed.GetDirection())
    resampled = sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(field), sitk.sitkLinear, -1024.0)
    assert _ncc(resampled, warped) >= 0.99
    # The affine part alone brings the moving image close (the global alignment is in affine.tfm).
    tx = sitk.ReadTransform(str(io_run / "affine.tfm"))
    by_affine = sitk.Resample(moving, fixed, tx, sitk.sitkLinear, -1024.0)
    assert _ncc(by_affine, fixed) > _ncc(sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkLinear, -1024.0), fixed)
    jac = sitk.ReadImage(str(io_run / "jacobian.nii.gz"))
    assert jac.GetSize() == fixed.GetSize()


def test_phantom_deformation_is_recovered(io_run, phantom_pair):
    """Dice of propagated labels >= 0.80 (and better than before), folding < 0.5 %, and the field
    close to the ground truth in mm, across a 60 mm offset between the two images' frames."""
    fixed_labels = sitk.GetArrayFromImage(phantom_pair["fixed_labels"])
    moving_on_fixed = sitk.Resample(phantom_pair["moving_labels"], phantom_pair["fixed"], sitk.Transform(),
                                    sitk.sitkNearestNeighbor, 0)
    dice_before = _mean_dice(sitk.GetArrayFromImage(moving_on_fixed), fixed_labels)
    propagated = sitk.ReadImage(str(io_run / "propagated.seg.nrrd"))
    dice_after = _mean_dice(sitk.GetArrayFromImage(propagated), fixed_labels)
    assert dice_after >= 0.80 and dice_after > dice_before + 0.3, (dice_before, dice_after)
    metrics = json.loads((io_run / "metrics.json").read_text())
    assert metrics["folding_percent"] < 0.5
    # Inside the heart the images are rich in edges; the whole body includes flat tissue and a rim
    # that the moving image does not cover, where only smoothness speaks (~4 mm voxels here).
    field = sitk.ReadImage(str(io_run / "displacement.nii.gz"))
    body = sitk.GetArrayFromImage(phantom_pair["fixed"]) > -500
    err_before = displacement_error_mm(_zero_field(phantom_pair["truth"]), phantom_pair["truth"], body)["mean"]
    err_body = displacement_error_mm(field, phantom_pair["truth"], body)
    err_heart = displacement_error_mm(field, phantom_pair["truth"], fixed_labels > 0)
    assert err_before > 40 and err_body["mean"] < 3.0 and err_heart["mean"] < 1.5, (err_before, err_body, err_heart)


def test_known_rigid_motion_is_recovered_in_millimetres(tmp_path):
    """FIXED = MOVING seen through a known rotation (8 deg) and translation (mm) on another, oblique grid."""
    from gvslcore.phantom import make_phantom

    moving, _ = make_phantom(5, size=40, spacing=(4.5, 4.5, 4.5))
    truth_tx = sitk.Euler3DTransform((0.0, 0.0, 0.0), np.deg2rad(8.0), np.deg2rad(-4.0), np.deg2rad(5.0), (9.0, -12.0, 7.0))
    fixed_grid = _grid((44, 38, 34), (4.0, 4.4, 4.8), OBLIQUE)
    fixed = sitk.Resample(moving, fixed_grid, truth_tx, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    cfg = RegisterConfig(iterations=30, levels=2, device="cpu", smooth_weight=10.0)
    result = register_images(fixed, moving, cfg=cfg)
    truth = sitk.TransformToDisplacementField(truth_tx, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(),
                                              fixed.GetSpacing(), fixed.GetDirection())
    body = sitk.GetArrayFromImage(fixed) > -500
    err = displacement_error_mm(result.displacement, truth, body)
    assert err["mean"] < 1.0, err
    affine_field = sitk.TransformToDisplacementField(result.affine, sitk.sitkVectorFloat64, fixed.GetSize(),
                                                     fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection())
    assert displacement_error_mm(affine_field, truth, body)["mean"] < 1.5


# -- the feed-forward path with a pretrained model -------------------------------------------------------

def test_feed_forward_export_matches_the_network_on_its_working_grid(tmp_path_factory):
    """When the fixed grid is the working grid, warped.nii.gz is what the network itself warps,
    so the export (affine + residual -> one ITK field, through the initial transform) is exact."""
    root = tmp_path_factory.getbasetemp() / "phantom_models"
    root.mkdir(exist_ok=True)
    model_path = pm.pretrained_backbone(root)
    from gvslcore.register import load_registration_model, normalized, predict
    from gvslcore.spatial import fuse_affine_and_displacement, warp

    pair = make_pair(21, size=48, spacing=(pm.SPACING,) * 3, direction=OBLIQUE)
    model, meta = load_registration_model(str(model_path), torch.device("cpu"))
    result = register_images(pair["fixed"], pair["moving"], model=model, metadata=meta,
                             cfg=RegisterConfig(iterations=0, init="none", spacing=pm.SPACING, predict_spacing=None,
                                                device="cpu"))
    working = result.working
    assert working.GetSize() == pair["fixed"].GetSize()
    f = torch.from_numpy(sitk.GetArrayFromImage(normalized(pair["fixed"], "CT")))[None, None]
    m = torch.from_numpy(sitk.GetArrayFromImage(normalized(pair["moving"], "CT")))[None, None]
    affine, residual = predict(model, f, m)
    u = fuse_affine_and_displacement(affine[None], residual)
    assert u.abs().max() > 0.05, "the model predicts a non-trivial field"
    ours = warp(m, u)[0, 0].numpy()
    exported = sitk.GetArrayFromImage(normalized(result.warped, "CT"))
    x, y = ours.ravel() - ours.mean(), exported.ravel() - exported.mean()
    assert float(x @ y / np.sqrt((x @ x) * (y @ y))) > 0.995
    assert result.metrics["model"] and "prediction" in result.metrics["seconds"]


class _LinearMatcher(torch.nn.Module):
    """A stand-in Z-Matching network: a fixed affine and a residual linear in the voxel coordinates,
    both given in voxels of whatever grid it is run on (as GVSLNet's are)."""

    def __init__(self, affine_n: torch.Tensor, gradient_n: torch.Tensor):
        super().__init__()
        self.affine_n, self.gradient_n = affine_n, gradient_n  # normalized units, so any grid gets the same mapping
        from gvslcore.nets.unet import Features

        self.unet = torch.nn.Identity()
        self.unet.features = lambda x: Features(x, x, x)  # the heads below ignore them
        self.seen: list[tuple[int, ...]] = []

    def _affine(self, shape, inverse: bool = False) -> torch.Tensor:
        half = torch.tensor([(n - 1) / 2.0 for n in shape])
        affine = torch.cat([self.affine_n[:, :3] * half.view(3, 1) / half.view(1, 3), (self.affine_n[:, 3] * half).view(3, 1)], 1)
        if inverse:
            affine = torch.linalg.inv(torch.cat([affine, torch.tensor([[0.0, 0, 0, 1]])]))[:3]
        return affine

    def affine_of(self, f, m, shape):
        # The head run both ways: the first call of a pair is fixed -> moving, the second its inverse.
        self.calls = getattr(self, "calls", 0) + 1
        return self._affine(shape, inverse=self.calls % 2 == 0)[None], None

    def match(self, f, m, shape, affine=None):
        self.seen.append(tuple(shape))
        affine = self._affine(shape) if affine is None else affine[0]
        half = torch.tensor([(n - 1) / 2.0 for n in shape])
        axes = [torch.linspace(-1.0, 1.0, n) for n in shape]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (3, D, H, W) normalized
        residual = torch.einsum("ij,jdhw->idhw", self.gradient_n, grid) * half.view(3, 1, 1, 1)
        return affine[None], residual[None], None, None


def test_a_prediction_on_a_coarser_grid_is_carried_back_exactly():
    """--predict-spacing: the network runs on a 4 mm copy of a 2 mm working grid; the affine and the
    residual carried back give the mapping the network would give on the working grid itself (exact
    for this linear stand-in; trilinear resizing is exact on linear fields)."""
    from gvslcore.register.feedforward import predict, predict_coarse
    from gvslcore.spatial import fuse_affine_and_displacement

    rng = np.random.default_rng(3)
    affine_n = torch.cat([torch.eye(3) + torch.tensor(rng.normal(0, 0.05, (3, 3)), dtype=torch.float32),
                          torch.tensor(rng.normal(0, 0.1, (3, 1)), dtype=torch.float32)], 1)
    net = _LinearMatcher(affine_n, torch.tensor(rng.normal(0, 0.03, (3, 3)), dtype=torch.float32))
    fixed = torch.rand(1, 1, 45, 38, 33)
    a_full, r_full = predict(net, fixed, fixed, half=False)
    a_coarse, r_coarse = predict_coarse(net, fixed, fixed, 2.0, 4.0, half=False)
    assert net.seen == [(45, 38, 33), (23, 19, 17)]
    u_full = fuse_affine_and_displacement(a_full[None], r_full)
    u_coarse = fuse_affine_and_displacement(a_coarse[None], r_coarse)
    assert u_full.abs().max() > 1.0
    assert torch.allclose(u_coarse, u_full, atol=1e-4), float((u_coarse - u_full).abs().max())
    # Finer than the working grid or unset: the working grid itself.
    a_same, r_same = predict_coarse(net, fixed, fixed, 4.0, 4.0, half=False)
    assert net.seen[-1] == (45, 38, 33) and torch.equal(a_same, a_full) and torch.equal(r_same, r_full)


def test_cli_feed_forward_and_instance_optimization_from_the_model(tmp_path_factory, phantom_pair):
    root = tmp_path_factory.getbasetemp() / "phantom_models"
    root.mkdir(exist_ok=True)
    model_path = pm.pretrained_backbone(root)
    p = phantom_pair["paths"]
    out = tmp_path_factory.mktemp("ff") / "out"
    assert main(["register", str(p["fixed"]), str(p["moving"]), "--model", str(model_path), "--out", str(out),
                 "--iterations", "10", "--levels", "2", "--progress", "none", "--no-qc"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] and metrics["instance_optimization"]["iterations_per_level"] == 10
    assert metrics["ncc"]["after"] > metrics["ncc"]["before"]
    assert not (out / "qc.png").exists()


# -- real anatomy -------------------------------------------------------------------------------------

def _known_deformation(ref: sitk.Image) -> sitk.Image:
    """An affine (5 deg, scale 0.97-1.04, ~11 mm shift) plus smooth bumps (6 mm, sigma 35-55 mm)."""
    rng = np.random.default_rng(0)
    size = ref.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in size[::-1]], indexing="ij"), -1)[..., ::-1]
    x = idx @ (np.array(ref.GetDirection()).reshape(3, 3) @ np.diag(ref.GetSpacing())).T + np.array(ref.GetOrigin())
    centre = x.reshape(-1, 3).mean(0)
    a = _rotation((0.3, 0.2, 1.0), 5.0) @ np.diag([1.04, 0.97, 1.02])
    d = (x - centre) @ (a - np.eye(3)).T + np.array([6.0, -5.0, 8.0])
    for _ in range(5):
        c = centre + rng.uniform(-80, 80, 3)
        sigma = rng.uniform(35, 55)
        amp = rng.normal(size=3)
        d += np.exp(-((x - c) ** 2).sum(-1) / (2 * sigma * sigma))[..., None] * (amp * 6 / np.linalg.norm(amp))
    field = sitk.GetImageFromArray(d, isVector=True)
    field.CopyInformation(ref)
    return field


def test_real_chest_cta_known_deformation_is_recovered():
    """The real CTA registered to a copy of itself deformed by a known field: < 2 mm inside the body."""
    ct = sitk.ReadImage(str(shared_file("chest_cta", "ct.nii.gz")), sitk.sitkFloat32)
    truth = _known_deformation(ct)
    fixed = sitk.Resample(ct, ct, sitk.DisplacementFieldTransform(sitk.Image(truth)), sitk.sitkLinear, -1024.0,
                          sitk.sitkFloat32)
    body = sitk.GetArrayFromImage(fixed) > -500
    body = np.stack([ndimage.binary_fill_holes(s) for s in body])
    lab, n = ndimage.label(body)
    body = lab == 1 + int(np.argmax(ndimage.sum(body, lab, range(1, n + 1))))
    before = displacement_error_mm(_zero_field(truth), truth, body)
    cfg = RegisterConfig(iterations=40, levels=3, spacing=4.0, device="cpu")
    result = register_images(fixed, ct, cfg=cfg)
    err = displacement_error_mm(result.displacement, truth, body)
    print(f"chest CTA: displacement error inside the body {before['mean']:.2f} -> {err['mean']:.2f} mm "
          f"(p95 {err['p95']:.2f}), folding {result.metrics['folding_percent']:.3f} %, "
          f"{result.metrics['seconds']}")
    assert before["mean"] > 10 and err["mean"] < 2.0, err
    assert result.metrics["folding_percent"] < 0.5


# -- bad input --------------------------------------------------------------------------------------

def _run_bad(args, capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_inputs_fail_with_one_line_and_write_nothing(tmp_path, phantom_pair, capsys):
    p = phantom_pair["paths"]
    out = tmp_path / "out"
    flat = sitk.Image(40, 30, sitk.sitkFloat32)
    sitk.WriteImage(flat, str(tmp_path / "slice.nii.gz"))
    msg = _run_bad(["register", str(tmp_path / "slice.nii.gz"), str(p["moving"]), "--model", "none", "--iterations", "5",
                    "--out", str(out)], capsys)
    assert "slice.nii.gz" in msg and "3-D" in msg

    # Labels drawn on the fixed image, not the moving one.
    msg = _run_bad(["register", str(p["fixed"]), str(p["moving"]), "--model", "none", "--iterations", "5",
                    "--moving-labels", str(p["fixed_labels"]), "--out", str(out)], capsys)
    assert "fixed_labels.nii.gz" in msg and "moving" in msg

    # No overlap: a moving image 2 m away with --init none.
    far = sitk.ReadImage(str(p["moving"]))
    far.SetOrigin(tuple(np.array(far.GetOrigin()) + 2000.0))
    sitk.WriteImage(far, str(tmp_path / "far.nii.gz"))
    msg = _run_bad(["register", str(p["fixed"]), str(tmp_path / "far.nii.gz"), "--model", "none", "--iterations", "5",
                    "--init", "none", "--out", str(out)], capsys)
    assert "overlap" in msg

    # --model none with no steps at all: nothing would move.
    msg = _run_bad(["register", str(p["fixed"]), str(p["moving"]), "--model", "none", "--iterations", "0",
                    "--out", str(out)], capsys)
    assert "--iterations" in msg

    # A segmentation model is not a registration model.
    from gvslcore.bundle import default_metadata, save_model
    from gvslcore.nets import SegNet

    seg = tmp_path / "seg.safetensors"
    save_model(seg, SegNet(2, 4).state_dict(), default_metadata("segmentation", 4))
    msg = _run_bad(["register", str(p["fixed"]), str(p["moving"]), "--model", str(seg), "--out", str(out)], capsys)
    assert "seg.safetensors" in msg and "pretrain" in msg
    assert not out.exists(), "a failed run must not leave an output folder"


def test_different_modalities_warn_but_run(tmp_path, capsys):
    pair = make_pair(3, size=24, spacing=(8.0, 8.0, 8.0))
    fixed = pair["fixed"]
    mr_like = sitk.Cast(sitk.RescaleIntensity(pair["moving"], 0.0, 800.0), sitk.sitkFloat32)  # no air at -1000
    sitk.WriteImage(fixed, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(mr_like, str(tmp_path / "mr.nii.gz"))
    out = tmp_path / "out"
    assert main(["register", str(tmp_path / "ct.nii.gz"), str(tmp_path / "mr.nii.gz"), "--model", "none",
                 "--iterations", "3", "--levels", "1", "--out", str(out), "--no-qc", "--progress", "none"]) == 0
    warnings = json.loads((out / "metrics.json").read_text())["warnings"]
    assert any("CT" in w and "MR" in w for w in warnings)


def test_a_folding_field_and_a_lowered_similarity_warn(tmp_path, capsys):
    """No smoothness and a huge step (3 voxels) tear the field apart: the folding warning names the
    option to raise, the similarity warning the drop, both in metrics.json and on stderr."""
    pair = make_pair(3, size=24, spacing=(8.0, 8.0, 8.0))
    sitk.WriteImage(pair["fixed"], str(tmp_path / "fixed.nii.gz"))
    sitk.WriteImage(pair["moving"], str(tmp_path / "moving.nii.gz"))
    out = tmp_path / "out"
    assert main(["register", str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"), "--model", "none",
                 "--iterations", "3", "--levels", "1", "--smooth-weight", "0", "--lr", "3", "--out", str(out),
                 "--no-qc", "--progress", "none", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["folding_percent"] > 0.5
    folds = [w for w in metrics["warnings"] if w.startswith("the field folds")]
    assert len(folds) == 1 and "--smooth-weight (now 0)" in folds[0] and "--iterations" in folds[0]
    ncc = metrics["ncc"]
    assert ncc["after"] < max(ncc["before"], ncc["initial_alignment"]) - 0.02
    assert any("similarity" in w or "correlate poorly" in w for w in metrics["warnings"]), metrics["warnings"]
    err = capsys.readouterr().err
    assert "warning: the field folds" in err


def test_quality_warnings_thresholds():
    """Folding above 0.5 %, NCC after below 0.5, or NCC lowered by more than 0.02 from its start warn;
    the advice fits the run (a feed-forward run is told to add steps)."""
    from gvslcore.register.pipeline import _quality_warnings

    good = {"folding_percent": 0.06, "ncc": {"before": 0.7, "initial_alignment": 0.8, "after": 0.79}, "warnings": []}
    assert _quality_warnings(good, RegisterConfig(iterations=40)) == [] and good["warnings"] == []
    feed_forward = {"folding_percent": 0.8, "ncc": {"before": 0.9, "initial_alignment": None, "after": 0.85},
                    "warnings": ["modality"]}
    found = _quality_warnings(feed_forward, RegisterConfig(iterations=0))
    assert len(found) == 2 and feed_forward["warnings"] == ["modality", *found]
    assert "folds in 0.8 %" in found[0] and "add --iterations" in found[0]
    assert "0.90 at the start, 0.85 after" in found[1]
    poor = _quality_warnings({"folding_percent": 0.0, "ncc": {"before": 0.1, "after": 0.3}}, RegisterConfig(iterations=5))
    assert len(poor) == 1 and "correlate poorly" in poor[0] and "NCC 0.30" in poor[0]
    assert _quality_warnings({"folding_percent": 0.0, "ncc": {"before": None, "after": None}}, RegisterConfig()) == []


def test_registration_adam_takes_torch_optim_adams_steps():
    """instance.Adam (which spares the 1 s import of torch._dynamo) moves parameters exactly as
    torch.optim.Adam does, with two groups of different step sizes and a parameter without gradient."""
    from gvslcore.register.instance import Adam

    g = torch.Generator().manual_seed(3)
    target = torch.randn(4, 5, generator=g)
    start = [torch.randn(4, 5, generator=g), torch.randn(3, generator=g), torch.randn(2, generator=g)]
    runs = []
    for make in (lambda groups: torch.optim.Adam(groups), Adam):
        a, b, c = (torch.nn.Parameter(t.clone()) for t in start)
        opt = make([{"params": [a, c], "lr": 0.05}, {"params": [b], "lr": 0.3}])
        for _ in range(25):
            loss = ((a - target) ** 2).sum() + (b.sin() * 2).sum()  # c gets no gradient
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        runs.append((a.detach(), b.detach(), c.detach()))
    for ours, theirs in zip(runs[1], runs[0]):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert not torch.equal(runs[1][0], start[0])


def test_the_inverse_consistent_affine_cancels_a_bias_of_the_head():
    """A head that gives T o E one way and T^-1 o E the other (E its own error, here a 10 % shrink
    along z and a shift, as the shipped model showed on identical images) yields T; identical images
    yield the identity."""
    from gvslcore.register.feedforward import inverse_consistent_affine

    def hom(a):
        return torch.cat([a, torch.tensor([[0.0, 0, 0, 1]], dtype=a.dtype)])

    rng = np.random.default_rng(5)
    true = torch.cat([torch.eye(3, dtype=torch.float64) + torch.tensor(rng.normal(0, 0.04, (3, 3))),
                      torch.tensor(rng.normal(0, 2.0, (3, 1)))], 1)
    error = torch.tensor([[0.9, 0.0, 0.0, -2.8], [0.0, 0.96, 0.0, -1.2], [0.0, 0.0, 0.97, -0.6]], dtype=torch.float64)
    forward = (hom(true) @ hom(error))[:3]
    backward = (torch.linalg.inv(hom(true)) @ hom(error))[:3]
    assert (forward - true).abs().max() > 0.09
    assert torch.allclose(inverse_consistent_affine(forward, backward), true, atol=1e-9)
    assert torch.allclose(inverse_consistent_affine(error, error), torch.eye(4, dtype=torch.float64)[:3], atol=1e-12)

"""Synthetic adult chests (gvslcore.synth): anatomy, determinism, grid independence, sample geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from gvslcore.heartcheck import check_heart
from gvslcore.metrics import dice
from gvslcore.synth.chest import render_case, sample_chest
from gvslcore.synth.patches import BankCase, SampleConfig, SyntheticHeartPatches
from gvslcore.synth.tissues import HEART_TISSUES, Tissue, tissues_to_labels

COARSE = 4.0  # mm: a whole chest renders in about a second


@pytest.fixture(scope="module")
def chest() -> sitk.Image:
    return render_case(3, COARSE)


def _as_ct(tissue: sitk.Image) -> sitk.Image:
    """A crude contrast CT of a tissue map (for the checks that read HU)."""
    hu = np.full(40, 40.0, dtype=np.float32)
    hu[[Tissue.AIR, Tissue.AIRWAY, Tissue.GAS]] = -1000.0
    hu[Tissue.LUNG] = -850.0
    hu[[Tissue.FAT, Tissue.MEDIASTINAL_FAT]] = -100.0
    hu[[Tissue.LV, Tissue.LA, Tissue.AO, Tissue.ARTERY, Tissue.PULMONARY_VEIN]] = 400.0
    hu[[Tissue.RV, Tissue.RA, Tissue.PA, Tissue.PULMONARY_BRANCH, Tissue.SVC]] = 350.0
    hu[[Tissue.MYO, Tissue.PAPILLARY, Tissue.HEART_WALL]] = 110.0
    image = sitk.GetImageFromArray(hu[sitk.GetArrayFromImage(tissue)])
    image.CopyInformation(tissue)
    return image


def _labels(tissue: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(tissues_to_labels(sitk.GetArrayFromImage(tissue)))
    out.CopyInformation(tissue)
    return out


def test_chest_has_an_adult_heart_in_the_right_place(chest):
    report = check_heart(_labels(chest), _as_ct(chest), contrast=True)
    assert report.checks["all seven labels present"]
    for name in ("LV left of RV", "LA the most posterior chamber", "RA the rightmost chamber",
                 "aorta right of the pulmonary trunk"):
        assert report.checks[name], (name, report.centroids_mm)
    volumes = [report.volumes_ml[k] for k in ("left ventricle", "right ventricle", "left atrium", "right atrium",
                                              "left ventricular myocardium")]
    # A small adult near end-systole has about 280 ml of chambers and myocardium (seed 3: 294 ml).
    assert all(v > 0 for v in volumes) and 250.0 < sum(volumes) < 1300.0, report.volumes_ml
    assert report.values["myocardium around LV"] > 0.5
    assert report.checks["no labels in lung or chest wall (< 1 %)"], report.values


def test_every_seed_has_the_heart_chambers_and_lungs_on_both_sides():
    for seed in (0, 11, 27):
        tissue = sitk.GetArrayFromImage(render_case(seed, 6.0))
        present = set(np.unique(tissue).tolist())
        assert {int(t) for t in HEART_TISSUES} <= present, seed
        lung_x = np.argwhere(tissue == Tissue.LUNG)[:, 2]
        heart_x = np.argwhere(tissues_to_labels(tissue) > 0)[:, 2].mean()
        assert (lung_x < heart_x - 10).sum() > 100 and (lung_x > heart_x + 5).sum() > 100, seed


def test_render_is_deterministic_and_seeds_differ():
    a = sitk.GetArrayFromImage(render_case(5, 6.0))
    b = sitk.GetArrayFromImage(render_case(5, 6.0))
    c = sitk.GetArrayFromImage(render_case(6, 6.0))
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    assert sample_chest(5).heart == sample_chest(5).heart and sample_chest(5).heart != sample_chest(6).heart


def test_anatomy_is_defined_in_physical_space(chest):
    """The same case on a 4 mm and a 6 mm grid: the heart labels agree once both are in physical space."""
    coarse = _labels(render_case(3, 6.0))
    fine = _labels(chest)
    on_fine = sitk.Resample(coarse, fine, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    a, b = sitk.GetArrayFromImage(on_fine) > 0, sitk.GetArrayFromImage(fine) > 0
    assert dice(a, b) > 0.85


def _plain_config(**overrides) -> SampleConfig:
    from gvslcore.synth.appearance import AppearanceConfig

    appearance = AppearanceConfig(p_noncontrast=0.0, p_venous=0.0, p_shuffle=0.0, p_mixing=0.0, p_thick_slices=0.0,
                                  noise_hu=(0.0, 0.0), p_fov_cut=0.0)
    base = dict(patch=(24, 20, 28), spacing=6.0, foreground=1.0, max_rotation_deg=0.0, scale=(1.0, 1.0),
                elastic_mm=0.0, appearance=appearance)
    base.update(overrides)
    return SampleConfig(**base)


def test_a_view_without_pose_is_the_bank_resampled_at_the_working_grid(chest):
    """Geometry of the sampler: with no rotation, scale or warp, the labels of a view are the case's
    labels read by nearest neighbour at the working voxels' physical centres."""
    case = BankCase.from_image(chest)
    data = SyntheticHeartPatches([case], _plain_config(), seed=4)
    _, labels, _ = data.view(0)
    rng = np.random.default_rng([4, 23, 0])
    rng.integers(1)  # the case choice
    centre = data._centre(case, rng)  # the view centre, drawn from the same stream
    half = (np.asarray(labels.shape) - 1) / 2.0
    zyx = [(np.arange(n) - h) * 6.0 / COARSE + c for n, h, c in zip(labels.shape, half, centre)]
    grid = np.stack(np.meshgrid(*zyx, indexing="ij"), -1)
    idx = np.clip(np.round(grid).astype(int), 0, np.asarray(case.tissue.shape) - 1)
    expected = tissues_to_labels(case.tissue.numpy()[idx[..., 0], idx[..., 1], idx[..., 2]])
    agree = (expected == labels.numpy()).mean()
    assert agree > 0.999, agree
    assert (labels > 0).sum() > 50


def test_painted_images_follow_their_labels(chest):
    data = SyntheticHeartPatches([BankCase.from_image(chest)], _plain_config(), seed=1)
    image, labels = data[3]
    assert image.shape == (1, 24, 20, 28) and labels.shape == (24, 20, 28)
    assert image.dtype == torch.float32 and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    x = image[0]
    lv = x[labels == 1].mean()
    myo = x[labels == 5].mean()
    background = x[labels == 0]
    assert lv > myo + 0.05  # contrast-filled blood pool brighter than the muscle around it (arterial phase)
    assert background.min() < 0.2  # air and lung are in the field of view
    again, same_labels = data[3]
    assert torch.equal(image, again) and torch.equal(labels, same_labels)


def test_check_heart_fails_a_mirrored_heart(chest):
    """The layout checks can fail: the same labels mirrored left-right in physical space."""
    labels = _labels(chest)
    mirrored = sitk.GetImageFromArray(sitk.GetArrayFromImage(labels)[:, :, ::-1].copy())
    mirrored.CopyInformation(labels)
    ct = _as_ct(chest)
    assert check_heart(labels, ct, contrast=True).checks["LV left of RV"]
    flipped = check_heart(mirrored, ct, contrast=True)
    assert not flipped.checks["LV left of RV"] and not flipped.checks["RA the rightmost chamber"]

"""Synthetic adult chests (gvslcore.synth): anatomy, connections, volumes, determinism, grid and
region independence, sample geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from gvslcore.heartcheck import check_heart
from gvslcore.metrics import dice
from gvslcore.synth.chest import heart_region, render_case, sample_chest
from gvslcore.synth.heart import VOLUME_RANGES_ML
from gvslcore.synth.patches import BankCase, SampleConfig, SyntheticHeartPatches
from gvslcore.synth.tissues import HEART_TISSUES, Tissue, tissues_to_labels

COARSE = 4.0  # mm: a whole chest renders in about a second
HEART = 2.0  # mm: the heart region, where walls and valve planes must be resolved


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
    hu[[Tissue.RV, Tissue.RA, Tissue.PA, Tissue.PULMONARY_BRANCH, Tissue.SVC, Tissue.CORONARY_SINUS]] = 350.0
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
    # An adult in diastole has about 450-1000 ml of chambers and myocardium.
    assert all(v > 0 for v in volumes) and 400.0 < sum(volumes) < 1100.0, report.volumes_ml
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


# -- the heart's anatomy at 2 mm -------------------------------------------------------------------


@pytest.fixture(scope="module")
def heart() -> np.ndarray:
    """The heart region of case 3 at 2 mm (tissue values, (z, y, x))."""
    return sitk.GetArrayFromImage(render_case(3, HEART, region="heart"))


def _contact(tissue: np.ndarray, a: Tissue, b: Tissue) -> int:
    """Voxel faces where tissue ``a`` meets tissue ``b`` (6-neighbourhood)."""
    in_a, in_b = tissue == int(a), tissue == int(b)
    faces = 0
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        faces += int((in_a[tuple(lo)] & in_b[tuple(hi)]).sum() + (in_b[tuple(lo)] & in_a[tuple(hi)]).sum())
    return faces


def test_veins_valves_and_vessels_connect_where_they_should(heart):
    """Open connections (faces of 4 mm^2): both venae cavae and the coronary sinus drain into the
    RA; the pulmonary veins reach the LA; the mitral, tricuspid, aortic and pulmonary valve planes
    join their chambers and vessels; the labelled aorta and pulmonary artery continue as the arch
    and the branches."""
    T = Tissue
    open_at_least = {(T.RA, T.SVC): 40, (T.RA, T.IVC): 40, (T.RA, T.CORONARY_SINUS): 5, (T.LA, T.PULMONARY_VEIN): 100,
                     (T.LA, T.LV): 60, (T.RA, T.RV): 50, (T.RV, T.PA): 40, (T.LV, T.AO): 40, (T.AO, T.ARTERY): 40,
                     (T.PA, T.PULMONARY_BRANCH): 40}
    faces = {(a.name, b.name): _contact(heart, a, b) for a, b in open_at_least}
    assert all(faces[a.name, b.name] >= n for (a, b), n in open_at_least.items()), faces
    # No blood pool touches another without a wall or valve: not the SVC the aorta (a fat plane
    # lies between them), nor the RA the LV, the RV the aorta, the LA the RV or PA.
    closed = [(T.SVC, T.AO), (T.SVC, T.ARTERY), (T.RA, T.LV), (T.RV, T.AO), (T.LA, T.RV), (T.LA, T.PA), (T.RA, T.PA)]
    touching = {(a.name, b.name): _contact(heart, a, b) for a, b in closed}
    assert all(v <= 2 for v in touching.values()), touching


def test_chambers_are_whole_and_the_appendage_is_left_atrium(heart):
    from scipy import ndimage

    for t in (Tissue.LA, Tissue.RA, Tissue.RV, Tissue.LV, Tissue.AO, Tissue.PA):
        parts, n = ndimage.label(heart == int(t))
        sizes = np.bincount(parts.ravel())[1:]
        assert n >= 1 and sizes.max() > 0.98 * sizes.sum(), (t.name, sorted(sizes.tolist())[-4:])
    # The appendage's centre line lies in the LA label, which is one piece with the LA body.
    from gvslcore.synth.chest import _Canvas, _Chest
    from gvslcore.synth.heart import landmarks

    params = sample_chest(3)
    path = landmarks(params.heart)["laa"]
    chest = _Chest(params, _Canvas(np.zeros((3, 1), np.float32), np.zeros(1, np.uint8), (1, 1, 1), (1.0, 1.0, 1.0)))
    values, *_ = chest.heart_fields(chest.to_world(path[1:]).T.astype(np.float32))
    assert (values == int(Tissue.LA)).mean() > 0.85, values


def test_walls_have_adult_thickness(heart):
    """Along the LV's short axis the myocardium is 8-13 mm thick (the case draws 8-12 mm; voxels
    of 2 mm), the RV free wall thinner than the LV wall."""
    params = sample_chest(3)
    assert 8.0 <= params.heart.myo_mm <= 13.0 and 3.0 <= params.heart.rv_wall_mm <= 5.0
    myo = (heart == int(Tissue.MYO)).sum() * HEART**3 / 1000.0
    lv_ml = np.isin(heart, (int(Tissue.LV), int(Tissue.PAPILLARY))).sum() * HEART**3 / 1000.0
    assert 80.0 <= myo <= 200.0 and 90.0 <= lv_ml <= 220.0, (myo, lv_ml)


def test_chamber_volumes_are_adult_in_every_case():
    """The heart region of 10 cases at 5 mm: blood volumes in the adult diastolic CTA ranges (the
    RV never below 60 ml, the RA never below 40), the myocardium 80-200 ml, and a spread."""
    step = 5.0
    volumes = []
    for seed in range(10):
        labels = tissues_to_labels(sitk.GetArrayFromImage(render_case(100 + seed, step, region="heart")))
        volumes.append([(labels == v).sum() * step**3 / 1000.0 for v in range(1, 6)])
    v = np.array(volumes)
    bounds = [(90.0, 220.0), (90.0, 230.0), (50.0, 130.0), (50.0, 140.0), (80.0, 200.0)]
    for k, (lo, hi) in enumerate(bounds):
        assert lo * 0.93 <= v[:, k].min() and v[:, k].max() <= hi * 1.07, (k, v[:, k].round())
    assert v[:, 1].min() >= 60.0 and v[:, 3].min() >= 40.0
    assert (v.max(0) / v.min(0))[:4].min() > 1.2, v.round()  # the cases differ in size
    assert set(VOLUME_RANGES_ML) == {"lv", "rv", "la", "ra"}


def test_heart_region_render_equals_the_whole_render():
    """render_case(region="heart") is a sub-grid of the whole case: same voxels, same values."""
    whole = render_case(7, 6.0)
    region = render_case(7, 6.0, region="heart", margin_mm=10.0)
    assert region.GetSpacing() == whole.GetSpacing()
    offset = [round((a - b) / 6.0) for a, b in zip(region.GetOrigin(), whole.GetOrigin())]
    assert np.allclose(np.asarray(region.GetOrigin()), np.asarray(whole.GetOrigin()) + 6.0 * np.asarray(offset))
    a = sitk.GetArrayFromImage(region)
    b = sitk.GetArrayFromImage(whole)[offset[2]: offset[2] + a.shape[0], offset[1]: offset[1] + a.shape[1],
                                      offset[0]: offset[0] + a.shape[2]]
    assert np.array_equal(a, b)
    assert a.size < 0.5 * b.size * (sitk.GetArrayFromImage(whole).size / b.size) and (tissues_to_labels(a) > 0).sum() == \
        (tissues_to_labels(sitk.GetArrayFromImage(whole)) > 0).sum()
    lo, hi = heart_region(sample_chest(7), 10.0)
    assert np.all(hi - lo > 120.0)

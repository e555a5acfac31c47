"""Blood-pool refinement (gvslcore.heartrefine): on a contrast CT the myocardium label gives up the
voxels as bright as blood to the chamber they are joined to, measured in physical space on an
oblique, anisotropic, non-cubic grid; a bright vessel inside the wall and a non-contrast scan stay."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from gvslcore.heartcheck import LV, MYO, RV
from gvslcore.heartrefine import GROW_MM, refine_blood_pool
from gvslcore.labels import HEART_LABELS
from gvslcore.metrics import dice
from gvslcore.segment import InferenceSettings, Segmenter, _is_heart_ct

BLOOD_R, WALL_R, LABEL_R = 14.0, 22.0, 9.0  # mm: true cavity, outer wall, the too-small LV label


def _grid() -> sitk.Image:
    """0.9 x 1.3 x 2.2 mm voxels, 91 x 71 x 41, rotated 25 degrees about an oblique axis."""
    grid = sitk.Image([91, 71, 41], sitk.sitkFloat32)
    grid.SetSpacing([0.9, 1.3, 2.2])
    rotation = sitk.VersorTransform((0.3, 0.2, 0.93), np.deg2rad(25.0))
    grid.SetDirection(rotation.GetMatrix())
    grid.SetOrigin([-41.0, -46.0, -45.0])
    return grid


def _points(grid: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) physical points (LPS mm) of every voxel."""
    size = grid.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    ijk = np.stack([i, j, k], -1) * np.asarray(grid.GetSpacing())
    return np.asarray(grid.GetOrigin()) + ijk @ np.asarray(grid.GetDirection()).reshape(3, 3).T


def _phantom(blood_hu: float) -> tuple[sitk.Image, sitk.Image, dict[str, np.ndarray]]:
    """(ct, labels, true masks): an LV of blood in an 8 mm wall, a bright coronary ring inside the
    wall, an RV beside it with a vein running 20 mm out of it; the LV label too small (its label's
    wall swallows blood), the RV label 2 mm short of the RV's blood."""
    grid = _grid()
    p = _points(grid)
    centre = np.array(grid.TransformContinuousIndexToPhysicalPoint([45.0, 35.0, 20.0]))
    r = np.linalg.norm(p - centre, axis=-1)
    rv_centre = centre + np.array([0.0, -34.0, 0.0])
    rv_r = np.linalg.norm(p - rv_centre, axis=-1)
    rv = rv_r < 10.0  # 2 mm of fat from the wall
    d = p - rv_centre
    vein = (np.abs(d[..., 1]) < 3.0) & (np.abs(d[..., 2]) < 3.0) & (d[..., 0] < 0) & (d[..., 0] > -30.0) & ~rv
    coronary = (np.abs(r - 19.0) < 1.6) & (np.abs(p[..., 2] - centre[2]) < 1.6)  # a ring in the wall
    hu = np.full(r.shape, -80.0, np.float32)  # fat
    hu[r < WALL_R] = 110.0
    hu[r < BLOOD_R] = blood_hu
    hu[rv | vein | coronary] = blood_hu
    lab = np.zeros(r.shape, np.uint8)
    lab[r < WALL_R] = MYO
    lab[r < LABEL_R] = LV
    lab[rv_r < 8.0] = RV
    ct = sitk.GetImageFromArray(hu)
    ct.CopyInformation(grid)
    labels = sitk.GetImageFromArray(lab)
    labels.CopyInformation(grid)
    beyond = vein & (-d[..., 0] > 10.0 + GROW_MM + 2.2)  # past the band (plus one voxel of the coarsest axis)
    return ct, labels, {"lv": r < BLOOD_R, "rv": rv, "coronary": coronary, "vein": vein, "vein beyond": beyond}


def test_contrast_blood_moves_from_the_wall_into_the_lv():
    ct, labels, truth = _phantom(blood_hu=420.0)
    refined, info = refine_blood_pool(labels, ct)
    assert info["contrast"] is True and 110.0 <= info["wall_hu"] <= 420.0
    assert refined.GetSpacing() == ct.GetSpacing() and refined.GetDirection() == ct.GetDirection()
    assert refined.GetOrigin() == ct.GetOrigin() and refined.GetPixelID() == labels.GetPixelID()
    before, after = sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(refined)
    hu = sitk.GetArrayViewFromImage(ct)
    assert dice(before == LV, truth["lv"]) < 0.6  # the start: far too small
    assert dice(after == LV, truth["lv"]) > 0.97
    assert (hu[after == MYO] > 250).mean() < 0.1  # only the coronary ring stays bright in the wall
    assert (after[truth["coronary"]] == MYO).all()  # bright, but not joined to a chamber through the wall
    moved_ml = info["moved_ml"][LV]
    expected_ml = float((truth["lv"] & (before == MYO)).sum()) * np.prod(ct.GetSpacing()) / 1000.0
    assert abs(moved_ml - expected_ml) < 0.05 * expected_ml


def test_chambers_take_bright_blood_only_within_the_band():
    ct, labels, truth = _phantom(blood_hu=420.0)
    refined, info = refine_blood_pool(labels, ct)
    before, after = sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(refined)
    assert dice(before == RV, truth["rv"]) < 0.7
    assert dice(after == RV, truth["rv"]) > 0.97 and info["grown_ml"][RV] > 0
    assert (after[truth["vein"]] == RV).any()  # the vein's root, inside the band
    assert not after[truth["vein beyond"]].any()  # not up the vein
    grown = int(((before == 0) & (after > 0)).sum())
    fat = int((after[sitk.GetArrayViewFromImage(ct) < 0] > 0).sum())
    assert fat <= 0.002 * grown  # a corner voxel or two that the 3-voxel median brightens, no more


def test_non_contrast_scan_is_left_alone():
    ct, labels, _ = _phantom(blood_hu=45.0)
    refined, info = refine_blood_pool(labels, ct)
    assert info == {"contrast": False}
    assert np.array_equal(sitk.GetArrayViewFromImage(refined), sitk.GetArrayViewFromImage(labels))


def test_refinement_applies_to_heart_ct_models_only():
    def seg(table, modality):
        return Segmenter(network=None, metadata={}, table=table, spacing=(4.0, 4.0, 4.0), modality=modality,
                         window=(48, 48, 48), num_classes=len(table) + 1)

    assert _is_heart_ct(seg(HEART_LABELS, "CT"))
    assert not _is_heart_ct(seg(HEART_LABELS, "MR"))
    assert InferenceSettings().refine_blood_pool and not InferenceSettings(refine_blood_pool=False).refine_blood_pool


def test_bright_mask_is_the_median_filters():
    from scipy import ndimage

    from gvslcore.heartrefine import _median_above

    hu = np.random.default_rng(0).normal(200.0, 100.0, (20, 23, 17)).astype(np.float32)
    for threshold in (150.0, 230.0, 300.0):
        assert np.array_equal(_median_above(hu, threshold), ndimage.median_filter(hu, size=3) > threshold)


def test_dense_venous_contrast_leaves_the_aorta_label():
    """A vein of undiluted contrast (1300 HU) beside an aorta of blood-pool HU, both under the aorta
    label (as the 4 mm network draws it on the LIDC CT): the vein's voxels leave the label, the aorta's
    stay, the LV is untouched."""
    from gvslcore.heartcheck import AO
    from gvslcore.heartrefine import DENSE_FACTOR

    ct, labels, truth = _phantom(blood_hu=420.0)
    grid = _grid()
    p = _points(grid)
    centre = np.array(grid.TransformContinuousIndexToPhysicalPoint([45.0, 35.0, 20.0]))
    axis = centre + np.array([0.0, 30.0, 0.0])  # an aorta running along z, 30 mm from the LV
    aorta = np.linalg.norm((p - axis)[..., :2], axis=-1) < 7.0
    vein = np.linalg.norm((p - axis - np.array([9.5, 0.0, 0.0]))[..., :2], axis=-1) < 3.0  # 2.5 mm wall apart
    hu = sitk.GetArrayFromImage(ct)
    lab = sitk.GetArrayFromImage(labels)
    hu[aorta] = 420.0
    hu[vein] = 1300.0
    lab[np.linalg.norm((p - axis - np.array([3.0, 0.0, 0.0]))[..., :2], axis=-1) < 10.5] = AO  # takes in the vein
    assert 1300.0 > DENSE_FACTOR * 420.0 > 420.0
    ct2, labels2 = sitk.GetImageFromArray(hu), sitk.GetImageFromArray(lab)
    ct2.CopyInformation(ct)
    labels2.CopyInformation(labels)
    refined, info = refine_blood_pool(labels2, ct2)
    after = sitk.GetArrayViewFromImage(refined)
    inner_vein = vein & (np.linalg.norm((p - axis - np.array([9.5, 0.0, 0.0]))[..., :2], axis=-1) < 2.0)
    assert (after[inner_vein] == AO).mean() == 0.0
    assert (after[aorta] == AO).mean() > 0.98
    expected_ml = float((vein & (lab == AO)).sum()) * np.prod(ct.GetSpacing()) / 1000.0
    assert 0.6 * expected_ml < info["dense_out_of_aorta_ml"] <= 1.05 * expected_ml
    assert dice(after == LV, truth["lv"]) > 0.97

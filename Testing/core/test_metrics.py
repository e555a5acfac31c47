"""Dice and HD95: hand-checked cases, MONAI agreement, anisotropic spacing, `gvsl evaluate`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from gvslcore.cli import main
from gvslcore.labels import HEART_LABELS
from gvslcore.metrics import dice, evaluate_arrays, hd95
from gvslcore.segfile import write_seg_nrrd


def ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(s) * sp for s, sp in zip(shape, spacing)], indexing="ij")
    c = [ci * sp for ci, sp in zip(centre, spacing)]
    return sum((g - ci) ** 2 for g, ci in zip(grids, c)) <= radius**2


def test_dice_by_hand():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[0, 0, :4] = True
    b[0, 0, 2:4] = True
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert math.isnan(dice(np.zeros_like(a), np.zeros_like(b)))
    assert dice(a, np.zeros_like(b)) == 0.0


def test_hd95_of_a_shifted_cube_is_the_shift_in_mm():
    a = np.zeros((20, 20, 20), bool)
    a[5:12, 5:12, 5:12] = True
    b = np.roll(a, 3, axis=0)  # 3 voxels along z
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)  # z spacing 2 mm
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert hd95(a, a, (1.0, 1.0, 1.0)) == 0.0
    assert hd95(a, np.zeros_like(a), (1.0, 1.0, 1.0)) == math.inf


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_agrees_with_monai():
    monai_metrics = pytest.importorskip("monai.metrics")
    import torch

    spacing = (2.5, 0.8, 1.2)
    a = ball((30, 40, 36), (15, 20, 17), 9.0, spacing)
    b = ball((30, 40, 36), (14, 22, 19), 8.0, spacing) | ball((30, 40, 36), (5, 5, 5), 2.5, spacing)
    ours_d = dice(a, b)
    ours_h = hd95(a, b, spacing)
    ta = torch.from_numpy(a)[None, None].float()
    tb = torch.from_numpy(b)[None, None].float()
    ref_d = float(monai_metrics.compute_dice(ta, tb, include_background=True))
    ref_h = float(monai_metrics.compute_hausdorff_distance(ta, tb, include_background=True, percentile=95, spacing=spacing))
    assert ours_d == pytest.approx(ref_d, abs=1e-6)
    assert ours_h == pytest.approx(ref_h, rel=0.05, abs=0.3)


def test_means_run_over_reference_labels_and_json_has_no_nan():
    ref = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros_like(ref)
    ref[1:4, 1:4, 1:4] = 1
    pred[1:4, 1:4, 1:4] = 1
    ref[6:9, 6:9, 6:9] = 2  # missed entirely
    pred[0, 9, 9] = 3  # a false positive label
    out = evaluate_arrays(pred, ref, (1, 1, 1))
    by_value = {row["value"]: row for row in out["labels"]}
    assert by_value[1]["dice"] == 1.0 and by_value[2]["dice"] == 0.0 and by_value[2]["hd95_mm"] is None
    assert out["mean"]["dice"] == pytest.approx(0.5)
    assert out["mean"]["hd95_missing"] == 1
    json.dumps(out, allow_nan=False)


def _label_image(arr, spacing=(0.9, 1.3, 2.1)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    img.SetOrigin((4.0, -3.0, 1.5))
    return img


def test_evaluate_command_json_and_csv(tmp_path, capsys):
    ref = np.zeros((12, 14, 16), np.uint8)
    ref[2:8, 3:9, 4:10] = 1
    ref[8:11, 9:12, 10:14] = 7
    pred = ref.copy()
    pred[2, 3:9, 4:10] = 0
    write_seg_nrrd(_label_image(pred), tmp_path / "pred.seg.nrrd", HEART_LABELS)
    sitk.WriteImage(_label_image(ref), str(tmp_path / "ref.nii.gz"))
    code = main(["evaluate", str(tmp_path / "pred.seg.nrrd"), str(tmp_path / "ref.nii.gz"), "--csv", str(tmp_path / "m.csv")])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["value"]: r for r in result["labels"]}
    assert rows[1]["name"] == "left ventricle" and rows[7]["name"] == "pulmonary artery"
    assert rows[7]["dice"] == 1.0 and rows[1]["dice"] == pytest.approx(2 * 180 / (180 + 216), abs=1e-4)
    assert rows[1]["hd95_mm"] == pytest.approx(2.1)  # one z slice missing, z spacing 2.1 mm
    csv = (tmp_path / "m.csv").read_text().splitlines()
    assert csv[0].startswith("value,name,dice,hd95_mm") and csv[-1].startswith("mean")


def test_evaluate_refuses_different_grids(tmp_path, capsys):
    a = np.zeros((8, 8, 8), np.uint8)
    a[2:5, 2:5, 2:5] = 1
    sitk.WriteImage(_label_image(a), str(tmp_path / "a.nii.gz"))
    sitk.WriteImage(_label_image(a, spacing=(1, 1, 1)), str(tmp_path / "b.nii.gz"))
    code = main(["evaluate", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2 and "different grids" in err and len(err.strip().splitlines()) == 1

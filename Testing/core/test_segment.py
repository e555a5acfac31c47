"""`gvsl segment`: sliding windows, exact output geometry, .seg.nrrd read back, fallbacks, bad input."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from gvslcore.bundle import default_metadata, save_model
from gvslcore.cli import main
from gvslcore.errors import InputError, OutputError
from gvslcore.labels import HEART_LABELS, LabelInfo, LabelTable
from gvslcore.nets import SegNet
from gvslcore.segment import (
    ConfidenceTally,
    InferenceSettings,
    Segmenter,
    WindowPredictor,
    gaussian_importance,
    keep_largest_components,
    segment_image,
    sliding_window_labels,
    window_starts,
)


class Threshold(torch.nn.Module):
    """Class 1 where the normalized intensity exceeds 0.5 (HU > 0), class 0 elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([(0.5 - x) * 20.0, (x - 0.5) * 20.0], dim=1)


def threshold_segmenter(spacing=(2.0, 2.0, 2.0), window=(16, 16, 16)) -> Segmenter:
    table = LabelTable([HEART_LABELS.labels[0]])
    meta = default_metadata("segmentation", 4)
    return Segmenter(Threshold(), meta, table, spacing, "CT", window, num_classes=2, source="threshold")


def oblique_ball_image() -> sitk.Image:
    """Non-cubic, anisotropic, rotated + flipped grid holding a bright ellipsoid (CT-like HU)."""
    shape = (23, 37, 30)  # z, y, x
    spacing = (0.9, 1.3, 2.1)  # x, y, z
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    mm = [(x - 11) * spacing[0], (y - 14) * spacing[1], (z - 9) * spacing[2]]  # off-centre: flips would show
    inside = (mm[0] / 16) ** 2 + (mm[1] / 14) ** 2 + (mm[2] / 12) ** 2 <= 1
    arr = np.where(inside, 400.0, -900.0).astype(np.float32)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.5, 30.0, 7.25))
    a = np.deg2rad(25)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.diag([1, -1, -1])
    image.SetDirection(tuple(rot.ravel()))
    return image


def test_window_starts_cover_and_overlap():
    for size, w, ov in [(100, 32, 0.5), (33, 32, 0.5), (32, 32, 0.5), (20, 32, 0.5), (97, 16, 0.25)]:
        starts = window_starts(size, min(w, size), ov)
        assert starts[0] == 0 and starts[-1] + min(w, size) == size
        assert all(b - a <= int(min(w, size) * (1 - ov)) for a, b in itertools.pairwise(starts))


def _full_volume_reference(volume, predictor, k, window, overlap):
    """Plain full-volume accumulation (what MONAI does): the slab version must match it exactly."""
    shape = volume.shape
    win = tuple(min(w, s) for w, s in zip(window, shape))
    starts = [window_starts(s, w, overlap) for s, w in zip(shape, win)]
    g = gaussian_importance(win)
    acc = torch.zeros((k, *shape))
    src = torch.from_numpy(volume)
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                p = predictor(src[z:z + win[0], y:y + win[1], x:x + win[2]][None, None])[0]
                acc[:, z:z + win[0], y:y + win[1], x:x + win[2]] += p * g
    return acc.argmax(0).numpy().astype(np.uint8)


def test_slab_sliding_window_equals_full_volume_accumulation():
    torch.manual_seed(0)
    net = SegNet(4, 4).eval()
    volume = np.random.default_rng(0).random((37, 29, 26), dtype=np.float32)
    predictor = WindowPredictor(net, torch.device("cpu"), batch=3)
    ours = sliding_window_labels(volume, predictor, 4, (16, 16, 16), 0.5)
    ref = _full_volume_reference(volume, predictor, 4, (16, 16, 16), 0.5)
    assert ours.shape == volume.shape
    np.testing.assert_array_equal(ours, ref)


def test_confidence_sums_equal_the_normalized_full_volume_probabilities():
    """The slab-wise tally equals the per-label mean of the winning probability computed from the whole
    blended probability volume (scores divided by the summed window weights)."""
    torch.manual_seed(1)
    net = SegNet(4, 4).eval()
    volume = np.random.default_rng(2).random((37, 29, 26), dtype=np.float32)
    predictor = WindowPredictor(net, torch.device("cpu"), batch=3)
    tally = ConfidenceTally(4)
    labels = sliding_window_labels(volume, predictor, 4, (16, 16, 16), 0.5, confidence=tally)
    win, g = (16, 16, 16), gaussian_importance((16, 16, 16))
    acc, weights = torch.zeros((4, *volume.shape)), torch.zeros(volume.shape)
    starts = [window_starts(s, w, 0.5) for s, w in zip(volume.shape, win)]
    for z, y, x in itertools.product(*starts):
        box = (slice(z, z + 16), slice(y, y + 16), slice(x, x + 16))
        acc[(slice(None), *box)] += predictor(torch.from_numpy(volume)[box][None, None])[0] * g
        weights[box] += g
    winning = (acc / weights).amax(0).numpy()
    assert tally.voxels.sum() == volume.size
    for k in range(4):
        chosen = labels == k
        assert tally.voxels[k] == chosen.sum()
        if chosen.any():
            assert tally.probability[k] / tally.voxels[k] == pytest.approx(winning[chosen].mean(), abs=1e-5)
            assert tally.uncertain[k] == (winning[chosen] < 0.5).sum()


class Fixed(torch.nn.Module):
    """The same class probabilities everywhere: log(0.3, 0.45, 0.25), so label 1 wins with 0.45."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.log(torch.tensor([0.3, 0.45, 0.25])).view(1, 3, 1, 1, 1)
        return logits.expand(x.shape[0], 3, *x.shape[2:])


def test_segment_reports_each_structures_confidence_for_any_label_table():
    """Two made-up structures (not the heart): a sure one (the threshold network: near 1) and one that
    wins with probability 0.45 everywhere (confidence 0.45, all its voxels below 0.5)."""
    image = oblique_ball_image()
    _, info = segment_image(image, threshold_segmenter(), InferenceSettings(device="cpu"))
    assert set(info["confidence"]) == {HEART_LABELS.labels[0].name}
    assert 0.9 < info["confidence"][HEART_LABELS.labels[0].name] <= 1.0
    table = LabelTable([LabelInfo(1, "tumour", (1.0, 0.0, 0.0)), LabelInfo(2, "cyst", (0.0, 1.0, 0.0))])
    seg = Segmenter(Fixed(), default_metadata("segmentation", 4), table, (2.0, 2.0, 2.0), "CT", (16, 16, 16),
                    num_classes=3, source="fixed")
    _, info = segment_image(image, seg, InferenceSettings(device="cpu"))
    assert info["confidence"] == {"tumour": pytest.approx(0.45, abs=1e-3)}  # "cyst" never won: no entry
    assert info["uncertain_fraction"] == {"tumour": 1.0}
    assert info["confidence_threshold"] == 0.7


def test_output_has_the_exact_input_geometry_and_right_place():
    image = oblique_ball_image()
    labels, info = segment_image(image, threshold_segmenter(), InferenceSettings(device="cpu"))
    assert labels.GetSize() == image.GetSize()
    assert labels.GetSpacing() == image.GetSpacing()
    assert labels.GetOrigin() == image.GetOrigin()
    assert labels.GetDirection() == image.GetDirection()
    assert info["working_shape"] != list(sitk.GetArrayViewFromImage(image).shape)  # it really resampled
    truth = sitk.GetArrayFromImage(image) > 0
    got = sitk.GetArrayFromImage(labels) == 1
    dice = 2 * (truth & got).sum() / (truth.sum() + got.sum())
    assert dice > 0.93  # resampled to 2 mm and back
    flipped = got[::-1, ::-1, ::-1]  # what a lost direction or origin would look like
    assert 2 * (truth & flipped).sum() / (truth.sum() + flipped.sum()) < 0.8


def test_fast_and_tta_settings_run_and_agree():
    image = oblique_ball_image()
    seg = threshold_segmenter(window=(8, 8, 8))
    fast, info_fast = segment_image(image, seg, InferenceSettings.fast(device="cpu"))
    tta, info_tta = segment_image(image, seg, InferenceSettings(tta=True, device="cpu"))
    assert info_fast["windows"] < info_tta["windows"]
    a, b = sitk.GetArrayFromImage(fast), sitk.GetArrayFromImage(tta)
    assert (a == b).mean() > 0.97


class FlakyGPU(torch.nn.Module):
    """Raises CUDA-style out-of-memory errors for batches larger than ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.inner = Threshold()

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_out_of_memory_halves_the_batch_with_a_warning():
    volume = np.random.default_rng(1).random((20, 40, 40), dtype=np.float32)
    predictor = WindowPredictor(FlakyGPU(limit=2), torch.device("cpu"), batch=8)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        out = sliding_window_labels(volume, predictor, 2, (16, 16, 16), 0.5)
    assert predictor.batch == 2
    plain = WindowPredictor(Threshold(), torch.device("cpu"), 4)
    np.testing.assert_array_equal(out, sliding_window_labels(volume, plain, 2, (16, 16, 16), 0.5))


def test_out_of_memory_at_batch_one_on_the_gpu_falls_back_to_the_cpu():
    net = FlakyGPU(limit=0)

    class Moves(WindowPredictor):
        def _forward(self, x):
            if self.device.type == "cuda":  # pretend the GPU always runs out of memory
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return super()._forward(x)

    net.limit = 99
    predictor = Moves(net, torch.device("cuda"), batch=2)
    predictor.network.to = lambda device: predictor.network  # no real CUDA here
    with pytest.warns(RuntimeWarning):
        probs = predictor(torch.rand(3, 1, 8, 8, 8))
    assert predictor.device.type == "cpu" and probs.shape == (3, 2, 8, 8, 8)
    assert any("CPU" in m for m in predictor.fallbacks)


def test_largest_component_keeps_the_biggest_piece_per_label():
    arr = np.zeros((20, 20, 20), np.uint8)
    arr[2:8, 2:8, 2:8] = 1
    arr[15:17, 15:17, 15:17] = 1
    arr[10:12, 2:4, 2:4] = 2
    out = keep_largest_components(arr)
    assert (out == 1).sum() == 216 and (out == 2).sum() == 8


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained width-4 segmentation model (geometry and file tests do not need a good one)."""
    torch.manual_seed(0)
    net = SegNet(HEART_LABELS.num_classes, 4)
    meta = default_metadata("segmentation", 4)
    meta["architecture"]["num_classes"] = HEART_LABELS.num_classes
    meta["preprocessing"]["spacing"] = [2.0, 2.0, 2.0]
    meta["labels"] = HEART_LABELS.to_list()
    meta["inference"] = {"window": [16, 16, 16]}
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(path, net.state_dict(), meta)
    return path


def test_segment_command_writes_a_seg_nrrd_slicerio_reads(tmp_path, tiny_model, capsys):
    slicerio = pytest.importorskip("slicerio")
    image = oblique_ball_image()
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    out = tmp_path / "result.seg.nrrd"
    code = main(["segment", str(tmp_path / "ct.nrrd"), str(out), "--model", str(tiny_model), "--progress", "json", "--device", "cpu"])
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    outputs = events[-1]["outputs"]
    # An untrained model: whatever it labels has a confidence in [0, 1], named as the table names it.
    assert outputs["confidence"] and set(outputs["confidence"]) <= {lab.name for lab in HEART_LABELS}
    assert set(outputs["uncertain_fraction"]) == set(outputs["confidence"])
    for name, value in outputs["confidence"].items():
        assert 0.0 <= value <= 1.0 and 0.0 <= outputs["uncertain_fraction"][name] <= 1.0, name
    seg = slicerio.read_segmentation(str(out))
    names = [s["name"] for s in seg["segments"]]
    assert names == [lab.name for lab in HEART_LABELS]
    for s, lab in zip(seg["segments"], HEART_LABELS):
        assert s["labelValue"] == lab.value
        assert np.allclose(s["color"], lab.color, atol=1e-4)
        assert s["terminology"]["type"][1] == lab.type.value
    back = sitk.ReadImage(str(out))
    assert back.GetSize() == image.GetSize()
    assert np.allclose(back.GetSpacing(), image.GetSpacing()) and np.allclose(back.GetOrigin(), image.GetOrigin())
    assert np.allclose(back.GetDirection(), image.GetDirection())
    assert seg["voxels"].shape == image.GetSize()  # slicerio keeps NRRD's (x, y, z) order


def test_segment_nifti_output_and_dicom_input(tmp_path, tiny_model):
    image = oblique_ball_image()
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    arr = sitk.GetArrayFromImage(image)
    straight = sitk.GetImageFromArray(arr.astype(np.int16))
    straight.SetSpacing(image.GetSpacing())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(straight.GetDepth()):
        sl = straight[:, :, k]
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
        sl.SetMetaData("0020|0032", f"0\\0\\{k * image.GetSpacing()[2]}")
        sl.SetMetaData("0020|0013", str(k))
        sl.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(dicom / f"{k:03d}.dcm"))
        writer.Execute(sl)
    assert main(["segment", str(dicom), str(tmp_path / "out.nii.gz"), "--model", str(tiny_model), "--fast", "--progress", "none"]) == 0
    out = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert out.GetSize() == straight.GetSize() and out.GetPixelID() == sitk.sitkUInt8


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_models_and_outputs(tmp_path, tiny_model, capsys):
    image = oblique_ball_image()
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    ct = str(tmp_path / "ct.nii.gz")

    pretrain = tmp_path / "pretrain.safetensors"
    save_model(pretrain, {"w": torch.zeros(1)}, default_metadata("pretrain", 4))
    assert main(["segment", ct, str(tmp_path / "a.seg.nrrd"), "--model", str(pretrain)]) == 2
    assert "segmentation head" in _one_line_error(capsys)

    meta = default_metadata("segmentation", 4)
    meta["architecture"].update(num_classes=8, in_channels=2)
    two = tmp_path / "two.safetensors"
    save_model(two, {"w": torch.zeros(1)}, meta)
    assert main(["segment", ct, str(tmp_path / "a.seg.nrrd"), "--model", str(two)]) == 2
    assert "input channels" in _one_line_error(capsys)

    mr = sitk.GetImageFromArray((np.random.default_rng(0).random((20, 20, 20)) * 300).astype(np.float32))
    sitk.WriteImage(mr, str(tmp_path / "mr.nii.gz"))
    assert main(["segment", str(tmp_path / "mr.nii.gz"), str(tmp_path / "a.seg.nrrd"), "--model", str(tiny_model)]) == 2
    assert "looks like MR" in _one_line_error(capsys)

    assert main(["segment", ct, str(tmp_path / "a.png"), "--model", str(tiny_model)]) == 2
    assert ".seg.nrrd" in _one_line_error(capsys)
    assert main(["segment", ct, str(tmp_path / "a.seg.nrrd"), "--model", str(tmp_path / "missing.safetensors")]) == 2
    assert "does not exist" in _one_line_error(capsys)
    assert not list(tmp_path.glob("a.*")) and not list(tmp_path.glob(".a.*"))


def test_too_large_for_memory_is_a_clear_error(monkeypatch):
    from gvslcore import segment

    monkeypatch.setattr(segment, "available_memory", lambda: 1 << 16)  # 64 KiB free
    with pytest.raises(InputError, match="GiB of memory"):
        segment_image(oblique_ball_image(), threshold_segmenter(), InferenceSettings(device="cpu"))


def test_interrupted_write_leaves_nothing(tmp_path, tiny_model, monkeypatch):
    import slicerio

    def broken(*args, **kwargs):
        with open(args[0], "wb") as f:
            f.write(b"NRRD0005\npartial")
        raise OSError("disk full")

    monkeypatch.setattr(slicerio, "write_segmentation", broken)
    image = oblique_ball_image()
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    from gvslcore.segment import segment_file

    with pytest.raises(OutputError, match="disk full"):
        segment_file(tmp_path / "ct.nii.gz", tmp_path / "out.seg.nrrd", tiny_model, InferenceSettings(device="cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_overlay_png_draws_three_planes_with_label_colours(tmp_path):
    from matplotlib.image import imread

    from gvslcore.report import overlay_png

    image = oblique_ball_image()
    labels = sitk.Cast(sitk.GetImageFromArray((sitk.GetArrayFromImage(image) > 0).astype(np.uint8)), sitk.sitkUInt8)
    labels.CopyInformation(image)
    path = overlay_png(image, labels, tmp_path / "qc.png", HEART_LABELS, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rgb = imread(str(path))[..., :3]
    lv = np.array(HEART_LABELS.labels[0].color)
    # Blended overlay pixels: reddish-brown of the LV over grey, far from any grey level.
    tinted = (rgb[..., 0] - rgb[..., 2]) > 0.2
    assert tinted.sum() > 500 and lv[0] > lv[2]
    assert overlay_png(image, None, tmp_path / "plain.png").is_file()


def test_demo_smoke(tmp_path, capsys):
    """`gvsl demo` end to end with token step counts (the real run is `make demo`)."""
    out = tmp_path / "demo"
    code = main(["demo", str(out), "--cases", "3", "--size", "32", "--pretrain-steps", "2", "--finetune-steps", "2",
                 "--width", "4", "--no-cta", "--device", "cpu"])
    assert code == 0
    text = capsys.readouterr().out
    assert "NCC" in text and "MSE restore" in text and "held-out phantom Dice" in text
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["held_out_dice"]) <= {lab.name for lab in HEART_LABELS}
    for picture in summary["pictures"]:
        assert (tmp_path / "demo" / picture.split("/")[-1]).is_file()


def test_demo_refuses_a_foreign_folder_and_clears_its_own(tmp_path, capsys):
    from gvslcore.commands.demo import MARKER, clear_previous_demo

    (tmp_path / "mine.txt").write_text("user data")
    assert main(["demo", str(tmp_path), "--no-cta"]) == 2
    assert "not empty" in capsys.readouterr().err
    (tmp_path / MARKER).write_text("")
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "summary.json").write_text("{}")
    clear_previous_demo(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER, "mine.txt"]


class LeftHalf(torch.nn.Module):
    """Class 1 in the half of the window with the larger array x index: a network that knows left
    from right only through the array's axis order, as a trained heart model does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        side = (torch.arange(w, dtype=x.dtype) >= w / 2).to(x.dtype).expand_as(x)
        return torch.cat([1.0 - side, side], dim=1) * 10.0


def _reoriented(image: sitk.Image, direction) -> sitk.Image:
    """The same physical volume stored on a grid with another direction matrix (nearest neighbour)."""
    size = np.asarray(image.GetSize())
    corners = [image.TransformIndexToPhysicalPoint([int(i), int(j), int(k)]) for i in (0, size[0] - 1)
               for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    local = np.asarray(corners) @ d  # coordinates along the new axes
    origin = d @ local.min(0)
    new_size = np.round((local.max(0) - local.min(0)) / np.asarray(image.GetSpacing())).astype(int) + 1
    return sitk.Resample(image, [int(s) for s in new_size], sitk.Transform(), sitk.sitkNearestNeighbor, origin.tolist(),
                         image.GetSpacing(), tuple(d.ravel()), -1000.0, image.GetPixelID())


def test_lps_models_see_every_file_the_same_way_round():
    """A model marked orientation LPS gets an axis-aligned grid whatever the file's direction: the
    same physical voxels get the same label for an identity and a flipped/rotated copy."""
    shape = (20, 26, 30)
    image = sitk.GetImageFromArray(np.full(shape, -1000.0, dtype=np.float32))
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin((-30.0, -26.0, -20.0))
    flipped = _reoriented(image, (-1, 0, 0, 0, -1, 0, 0, 0, 1))  # the LIDC/abdomen kind of file
    a = np.deg2rad(30)
    oblique = _reoriented(image, (np.cos(a), -np.sin(a), 0, np.sin(a), np.cos(a), 0, 0, 0, 1))
    meta = default_metadata("segmentation", 4)
    table = LabelTable([HEART_LABELS.labels[0]])

    def segment(img, orientation):
        seg = Segmenter(LeftHalf(), meta, table, (2.0, 2.0, 2.0), "CT", (64, 64, 64), num_classes=2, source="left",
                        orientation=orientation)
        labels, _ = segment_image(img, seg, InferenceSettings(device="cpu", smooth_resample=False), check_modality=False)
        return sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)  # onto one grid

    reference = sitk.GetArrayFromImage(segment(image, "LPS"))
    assert reference[:, :, 20:].all() and not reference[:, :, :10].any()  # patient-left half: larger x
    # The flipped file lands on the very same axis-aligned working grid: identical labels.
    assert np.array_equal(sitk.GetArrayFromImage(segment(flipped, "LPS")), reference)
    # The oblique file's working grid is its rotated bounding box: still the patient's left labelled.
    got = sitk.GetArrayFromImage(segment(oblique, "LPS"))
    x = np.broadcast_to(np.arange(shape[2]), shape)
    inner = (slice(2, -2), slice(6, -6), slice(6, -6))  # the rotated copy's corners are outside its grid
    assert x[inner][got[inner] == 1].mean() > x[inner][got[inner] == 0].mean() + 8
    # Without the orientation the flipped file is labelled the wrong way round: the test can fail.
    naive = sitk.GetArrayFromImage(segment(flipped, None))
    assert (naive == reference).mean() < 0.1


def test_mapping_back_only_the_labelled_region_equals_mapping_the_whole_grid():
    """labels_to_grid resamples just the part of the input grid the labels can reach: the result
    must equal a resampling of the whole grid, smooth and nearest, on an oblique grid."""
    from gvslcore.segment import labels_to_grid

    reference = oblique_ball_image()
    working = sitk.Resample(reference, [20, 18, 16], sitk.Transform(), sitk.sitkLinear, (-30.0, 5.0, -10.0),
                            (3.0, 3.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), -1000.0, sitk.sitkFloat32)
    arr = np.zeros((16, 18, 20), dtype=np.uint8)
    arr[5:11, 6:12, 7:14] = 1
    arr[7:10, 8:11, 9:12] = 2
    labels = sitk.GetImageFromArray(arr)
    labels.CopyInformation(working)
    for smooth in (True, False):
        got = sitk.GetArrayFromImage(labels_to_grid(labels, reference, [1, 2], smooth=smooth))
        if smooth:
            stack = [sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(sitk.Equal(labels, v), sitk.sitkFloat32), reference,
                                                          sitk.Transform(), sitk.sitkLinear, 1.0 if v == 0 else 0.0))
                     for v in (0, 1, 2)]
            expected = np.argmax(np.stack(stack), axis=0)
        else:
            expected = sitk.GetArrayFromImage(sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
        assert got.any() and np.array_equal(got, expected), smooth
    empty = sitk.GetImageFromArray(np.zeros_like(arr))
    empty.CopyInformation(working)
    assert not sitk.GetArrayFromImage(labels_to_grid(empty, reference, [1, 2])).any()

"""Damaged inputs, outputs over inputs and absurd options (issue 13, items 2, 4 and 5): each is one
line with exit code 2 (or one InputError), never a result computed from a damaged file, never an
overwritten input, never a run folder that blocks the rerun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from gvslcore import io as gio
from gvslcore.cli import main
from gvslcore.errors import InputError
from gvslcore.io import read_image, write_image


def _volume(shape=(10, 12, 14), seed=0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    return sitk.GetImageFromArray((rng.normal(size=shape) * 300.0).astype(np.float32))


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


# -- 2. damaged inputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_a_truncated_file_is_refused_not_zero_filled(tmp_path, suffix):
    path = write_image(_volume(), tmp_path / f"v{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=f"{path.name} is damaged: .*copy or export it again"):
        read_image(path)


def test_evaluate_on_half_a_label_file_is_exit_2(tmp_path, capsys):
    labels = sitk.GetImageFromArray((np.random.default_rng(1).random((20, 24, 28)) > 0.5).astype(np.uint8))
    ref = write_image(labels, tmp_path / "ref.nii.gz")
    pred = write_image(labels, tmp_path / "pred.nii.gz")
    pred.write_bytes(pred.read_bytes()[: pred.stat().st_size // 2])
    assert main(["evaluate", str(pred), str(ref), "--no-hd95"]) == 2
    assert "pred.nii.gz is damaged" in _one_line(capsys)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_nan_and_inf_are_found_in_every_format(tmp_path, suffix):
    arr = sitk.GetArrayFromImage(_volume())
    arr[3, 4, 5], arr[1, 1, 1] = np.nan, np.inf
    path = tmp_path / f"v{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    with pytest.raises(InputError, match="has 2 NaN/infinite voxels"):
        read_image(path)
    with pytest.raises(InputError, match="NaN|non-integer"):
        read_image(path, label=True)


def test_a_float_nifti_without_nan_reads(tmp_path):
    image = _volume()
    back = read_image(write_image(image, tmp_path / "v.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_label_values_above_65535_are_refused_not_wrapped(tmp_path):
    arr = np.zeros((6, 7, 8), np.uint32)
    arr[2, 2, 2] = 65535
    ok = tmp_path / "ok.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(ok))
    assert int(sitk.GetArrayFromImage(read_image(ok, label=True)).max()) == 65535
    arr[2, 2, 2] = 70000  # 70000 mod 65536 = 4464: a wrong label, not an error, before
    wide = tmp_path / "wide.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(wide))
    with pytest.raises(InputError, match="label value 70000, above the largest supported \\(65535\\)"):
        read_image(wide, label=True)


def _dicom_series(folder: Path, slices: int = 8, gap: float = 6.0) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i in range(slices):
        sl = sitk.GetImageFromArray((rng.normal(size=(1, 16, 16)) * 100).astype(np.int16))
        tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1.1",
                "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2", "0020|0032": f"-5\\3\\{10 + i * gap}",
                "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "0.8\\0.8", "0018|0050": str(gap),
                "0020|0013": str(i + 1), "0008|0018": f"1.2.826.0.1.3680043.2.1125.1.3.{i}"}
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{i:03d}.dcm"))
        writer.Execute(sl)
    return folder


def test_a_whole_dicom_series_reads_with_its_spacing(tmp_path):
    image = read_image(_dicom_series(tmp_path / "dcm"))
    assert image.GetSize() == (16, 16, 8) and image.GetSpacing()[2] == pytest.approx(6.0)


def test_a_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    folder = _dicom_series(tmp_path / "dcm")
    (folder / "s003.dcm").unlink()  # ITK alone reads 7 slices at 7 mm (the mean gap): anatomy stretched
    with pytest.raises(InputError, match=f"DICOM series in {folder} is incomplete: the slices at 22.00 and 34.00 mm "
                                         "are 12.00 mm apart, the others 6.00 mm \\(about 1 slice"):
        read_image(folder)


def _damage(path: Path, how: str) -> None:
    """A slice file cut short ('truncate') or with its header overwritten ('overwrite')."""
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) - 100]
    else:
        data[132:400] = b"\xff" * 268
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_a_dicom_series_with_a_corrupt_slice_names_it(tmp_path, damage):
    folder = _dicom_series(tmp_path / "dcm")
    bad = folder / "s004.dcm"
    _damage(bad, damage)
    with pytest.raises(InputError, match="incomplete: .*missing.*not readable as part of it: s004.dcm"):
        read_image(folder)


@pytest.mark.parametrize("which", ["s000.dcm", "s007.dcm"])
@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_a_corrupt_first_or_last_slice_is_named_not_read_as_a_shorter_series(tmp_path, which, damage, capsys):
    """GDCM drops the damaged end slice and the other seven are evenly spaced: without a check the
    volume reads as 7 slices, 6 mm short, with nothing said."""
    folder = _dicom_series(tmp_path / "dcm")
    (folder / "notes.txt").write_text("not a slice")  # other files in the folder are not slices
    bad = folder / which
    _damage(bad, damage)
    with pytest.raises(InputError, match=f"incomplete: {which} cannot be read as a slice of it"):
        read_image(folder)
    assert main(["segment", str(folder), str(tmp_path / "out.seg.nrrd"), "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and which in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out.seg.nrrd").exists()


def test_other_files_beside_a_whole_series_are_ignored(tmp_path):
    folder = _dicom_series(tmp_path / "dcm")
    (folder / "notes.txt").write_text("not a slice")
    (folder / "DICOMDIR").write_bytes(b"\0" * 200)
    assert read_image(folder).GetSize() == (16, 16, 8)


def test_two_slices_at_one_position_are_refused():
    from gvslcore.dicomcheck import spacing_problem

    assert spacing_problem(np.array([0.0, 6.0, 12.0, 18.0])) is None
    assert spacing_problem(np.array([18.0, 0.0, 12.0, 6.0])) is None  # file order is not slice order
    assert "same position" in spacing_problem(np.array([0.0, 6.0, 6.0, 12.0]))
    assert "uneven" in spacing_problem(np.array([0.0, 6.0, 12.0, 20.0, 26.0, 32.0]))


def test_an_image_too_large_for_memory_says_so(tmp_path, monkeypatch):
    path = write_image(_volume(), tmp_path / "v.nii.gz")
    monkeypatch.setattr(gio, "available_memory", lambda: 1000)
    with pytest.raises(InputError, match="readable image but too large for this machine's memory: 14 x 12 x 10 voxels"):
        read_image(path)


def test_a_failed_allocation_while_reading_is_too_large_not_unreadable(tmp_path):
    """A real allocation failure (an address-space limit in a child process), not a mock."""
    path = tmp_path / "big.nii.gz"
    sitk.WriteImage(sitk.Image([512, 512, 512], sitk.sitkUInt8), str(path))  # 128 MiB of zeros, 130 kB on disk
    code = ("import resource, sys; from gvslcore.io import read_image; from gvslcore.errors import InputError\n"
            "vm = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024\n"
            "resource.setrlimit(resource.RLIMIT_AS, (vm + 100 * 2**20, resource.RLIM_INFINITY))\n"
            "try:\n    read_image(sys.argv[1])\nexcept InputError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert "too large for this machine's memory: 512 x 512 x 512 voxels" in out.stdout, out.stdout + out.stderr
    assert "allocating it failed" in out.stdout and "not a readable image" not in out.stdout


# -- 4. outputs never replace inputs -----------------------------------------------------------------

def test_segment_refuses_its_input_as_output_by_any_name(tmp_path, capsys):
    scan = write_image(_volume(), tmp_path / "scan.nii.gz")
    before = scan.read_bytes()
    (tmp_path / "link.nii.gz").symlink_to(scan)
    (tmp_path / "sub").mkdir()
    for output in (scan, tmp_path / "sub" / ".." / "scan.nii.gz", tmp_path / "link.nii.gz"):
        assert main(["segment", str(scan), str(output), "--progress", "none"]) == 2
        assert "is also an input of this command" in _one_line(capsys)
    assert scan.read_bytes() == before


@pytest.fixture
def labels(tmp_path) -> tuple[Path, Path]:
    arr = (np.random.default_rng(2).random((8, 9, 10)) > 0.5).astype(np.uint8)
    pred = write_image(sitk.GetImageFromArray(arr), tmp_path / "pred.nii.gz")
    ref = write_image(sitk.GetImageFromArray(1 - arr), tmp_path / "ref.nii.gz")
    return pred, ref


@pytest.mark.parametrize("which", ["pred", "ref"])
@pytest.mark.parametrize("option", ["--csv", "--json"])
def test_evaluate_never_writes_over_its_inputs(labels, capsys, which, option):
    pred, ref = labels
    target = pred if which == "pred" else ref
    before = target.read_bytes()
    assert main(["evaluate", str(pred), str(ref), option, str(target), "--no-hd95"]) == 2
    assert f"{option} {target} is also an input" in _one_line(capsys)
    assert target.read_bytes() == before


def test_evaluate_csv_into_a_folder_is_one_line(labels, tmp_path, capsys):
    pred, ref = labels
    assert main(["evaluate", str(pred), str(ref), "--csv", str(tmp_path), "--no-hd95"]) == 2
    assert "is a folder; give a file name" in _one_line(capsys)
    csv = tmp_path / "dice.csv"
    assert main(["evaluate", str(pred), str(ref), "--csv", str(csv), "--no-hd95"]) == 0
    assert csv.read_text().startswith("value,name,dice")


def test_register_refuses_an_input_among_its_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    fixed = write_image(_volume(seed=1), out / "warped.nii.gz")
    moving = write_image(_volume(seed=2), tmp_path / "moving.nii.gz")
    before = fixed.read_bytes()
    assert main(["register", str(fixed), str(moving), "--model", "none", "--iterations", "1", "--out", str(out),
                 "--progress", "none", "--device", "cpu"]) == 2
    assert "warped.nii.gz is also an input" in _one_line(capsys)
    assert fixed.read_bytes() == before


@pytest.mark.parametrize("output", ["/proc/x.nii.gz", "/proc/gvsl/x.nii.gz"])
def test_an_output_under_proc_is_one_line(tmp_path, capsys, output):
    scan = write_image(_volume(), tmp_path / "scan.nii.gz")
    assert main(["segment", str(scan), output, "--progress", "none"]) == 2
    assert output.split("/x.")[0] in _one_line(capsys)


# -- 5. absurd options: one line, before any run folder -----------------------------------------------


def _pretrain(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(data), "--out", str(out), "--steps", "2", "--patch", "16", "--width", "4",
            "--spacing", "2", "2", "2", "--log-every", "1", "--checkpoint-every", "2", "--progress", "none",
            "--device", "cpu", *extra]


BAD_OPTIONS = [
    (["--batch", "0"], "--batch 0 is not valid"),
    (["--lr", "-1"], "--lr -1 is not valid"),
    (["--lr", "nan"], "--lr nan is not valid"),
    (["--width", "0"], "--width 0 is not valid"),
    (["--spacing", "0", "0", "0"], "--spacing 0 0 0 is not valid"),
    (["--checkpoint-every", "0"], "--checkpoint-every 0 is not valid"),
    (["--keep", "0"], "--keep 0 is not valid"),
    (["--steps", "0"], "--steps 0 is not valid"),
    (["--device", "mps"], "--device mps was asked for but Apple's MPS is not available"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--patch", "4096"], "--patch 4096 4096 4096 with --batch 1 --width 4 is too large for memory"),
]


@pytest.mark.parametrize("extra,message", BAD_OPTIONS, ids=[" ".join(e) for e, _ in BAD_OPTIONS])
def test_pretrain_refuses_absurd_options_before_the_run_folder(tmp_path, volumes, capsys, extra, message):
    run = tmp_path / "run"
    assert main(_pretrain(volumes, run, *extra)) == 2
    assert message in _one_line(capsys)
    assert not run.exists()


@pytest.mark.parametrize("extra,message", BAD_OPTIONS[:7], ids=[" ".join(e) for e, _ in BAD_OPTIONS[:7]])
def test_finetune_refuses_absurd_options_before_the_run_folder(tmp_path, capsys, extra, message):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(2):
        write_image(_volume((16, 16, 16), seed=i), images / f"c{i}.nii.gz")
        write_image(sitk.GetImageFromArray(np.ones((16, 16, 16), np.uint8)), labels / f"c{i}.nii.gz")
    out = tmp_path / "m.safetensors"
    argv = ["finetune", "--from-scratch", "--images", str(images), "--labels", str(labels), "--out", str(out),
            "--steps", "2", "--patch", "16", "--width", "4", "--spacing", "2", "2", "2", "--progress", "none",
            "--device", "cpu", *extra]
    assert main(argv) == 2
    assert message in _one_line(capsys)
    assert not (tmp_path / "m_run").exists() and not out.exists()


def test_an_unavailable_gpu_is_one_line(tmp_path, volumes, capsys):
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = f"cuda:{count}"  # one past the last GPU, or any GPU on a machine without one
    assert main(_pretrain(volumes, tmp_path / "run", "--device", device)) == 2
    assert f"--device {device}" in _one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_out_of_memory_in_training_is_one_line_and_the_rerun_starts(tmp_path, volumes, capsys, monkeypatch):
    import torch

    from gvslcore import pretrain

    real = pretrain.GVSLNet

    def no_memory(*args, **kwargs):  # what torch raises when a CPU allocation fails
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 274877906944 bytes")

    monkeypatch.setattr(pretrain, "GVSLNet", no_memory)
    run = tmp_path / "run"
    assert main(_pretrain(volumes, run)) == 2
    assert "out of memory on cpu training with --patch 16 --batch 1 --width 4; give a smaller --patch" in _one_line(capsys)
    monkeypatch.setattr(pretrain, "GVSLNet", real)
    assert main(_pretrain(volumes, run)) == 0  # the failed start does not block the rerun
    assert json.loads((run / "status.json").read_text())["status"] == "done"
    assert torch.load(run / "checkpoints" / "step_000002.pt", weights_only=True)["step"] == 2


def test_segment_refuses_batch_0_and_a_bad_overlap(tmp_path, capsys):
    scan = write_image(_volume(), tmp_path / "scan.nii.gz")
    assert main(["segment", str(scan), str(tmp_path / "s.nii.gz"), "--batch", "0", "--progress", "none"]) == 2
    assert "--batch 0 is not valid" in _one_line(capsys)
    assert main(["segment", str(scan), str(tmp_path / "s.nii.gz"), "--overlap", "1", "--progress", "none"]) == 2
    assert "--overlap 1 is not valid" in _one_line(capsys)
    assert not (tmp_path / "s.nii.gz").exists()

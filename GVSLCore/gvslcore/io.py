"""Reading and writing volumes with their geometry, resampling and intensity normalization.

Images travel as ``SimpleITK.Image``: the array is (z, y, x) and spacing, origin and direction
(ITK's LPS physical space) stay attached to it. Everything generic is SimpleITK's own code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .dicomcheck import series_problem
from .errors import InputError, OutputError
from .filecheck import image_file_problem, nifti_nonfinite
from .memory import available_memory

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd")
WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".seg.nrrd")


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a file whose name ends in a volume format we read (NIfTI, NRRD, MetaImage)."""
    path = Path(path)
    return path.is_file() and _has_suffix(path, IMAGE_SUFFIXES) and not path.name.startswith(".")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Volume files (and DICOM series sub-folders) directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give a folder of NIfTI/NRRD/MHA volumes or DICOM series")
    found = [p for p in sorted(folder.iterdir()) if is_image_file(p)]
    found += [p for p in sorted(folder.iterdir()) if p.is_dir() and _dicom_series(p)]
    return found


def _dicom_series(folder: Path) -> list[str]:
    # GDCM prints a warning for every folder without a series; "none" is an answer here, not a problem.
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])
    except RuntimeError:
        return []
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _read_dicom_folder(folder: Path) -> sitk.Image:
    series = _dicom_series(folder)
    if not series:
        raise InputError(f"{folder} holds no volume file and no DICOM series; give a NIfTI/NRRD/MHA file or a DICOM folder")
    # Several series in one folder: take the one with the most slices (the main volume, not a scout).
    best = max(series, key=lambda s: len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s)))
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), best)
    problem = series_problem(files)
    # GDCM leaves unparsable slices out of the series: name them. Inside the series they show as a
    # gap; a damaged first or last slice leaves no gap, only a shorter series, so they are looked
    # for whether or not the spacing is even.
    listed = {Path(f).name for s in series for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s)}
    left_out = _damaged_slices(folder, listed, files)
    if left_out:
        more = f" and {len(left_out) - 3} more" if len(left_out) > 3 else ""
        names = f"{', '.join(left_out[:3])}{more}"
        problem = (f"{problem}; not readable as part of it: {names}" if problem else
                   f"{names} cannot be read as a slice of it (a damaged file at an end of the series leaves a "
                   "shorter volume)")
    if problem:
        raise InputError(f"the DICOM series in {folder} is incomplete: {problem}; export the whole series again")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    size = _series_size(files)
    _check_memory(folder, size, _DICOM_BYTES_PER_VOXEL)
    try:
        return reader.Execute()
    except MemoryError:
        raise InputError(_too_large(folder, size, _DICOM_BYTES_PER_VOXEL, failed=True)) from None
    except RuntimeError as exc:
        raise InputError(f"cannot read DICOM series in {folder}: {str(exc).strip().splitlines()[-1]}") from None


_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def _damaged_slices(folder: Path, listed: set[str], files: Sequence[str]) -> list[str]:
    """Files of ``folder`` in no series that look like slices of ``files``: the same suffix, and a
    DICOM suffix or the DICM preamble (so notes, DICOMDIR and other files are not counted)."""
    suffixes = {Path(f).suffix.lower() for f in files}
    out = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name in listed or p.name.startswith(".") or p.name.upper() == "DICOMDIR":
            continue
        if p.suffix.lower() not in suffixes:
            continue
        if p.suffix.lower() in _DICOM_SUFFIXES:
            out.append(p.name)
            continue
        with open(p, "rb") as fh:
            if fh.read(132)[128:132] == b"DICM":
                out.append(p.name)
    return out


def _series_size(files: Sequence[str]) -> tuple[int, ...]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return (0,)
    return (*reader.GetSize()[:2], len(files))


#: Bytes per voxel of a DICOM series as read (int16) plus the float32 copy made right after.
_DICOM_BYTES_PER_VOXEL = 6


def _file_bytes_per_voxel(reader: sitk.ImageFileReader) -> int:
    """The file's voxel size in memory plus the float32 (or uint16 label) copy made right after."""
    try:
        scalar = sitk.GetArrayViewFromImage(sitk.Image([1, 1], reader.GetPixelID())).dtype.itemsize
    except RuntimeError:
        scalar = 8
    return scalar * max(1, reader.GetNumberOfComponents()) + 4


def _too_large(path: Path, size: Sequence[int], per_voxel: int, *, failed: bool = False) -> str:
    need = math.prod(size) * per_voxel
    have = "allocating it failed" if failed else f"{available_memory() / 2**30:.1f} GiB are free"
    return (f"{path} is a readable image but too large for this machine's memory: {' x '.join(map(str, size))} voxels "
            f"need about {need / 2**30:.1f} GiB to read, {have}; crop or downsample it first (e.g. Slicer's Crop Volume)")


def _check_memory(path: Path, size: Sequence[int], per_voxel: int) -> None:
    if math.prod(size) * per_voxel > available_memory():
        raise InputError(_too_large(path, size, per_voxel))


def _read_file(path: Path, *, label: bool, allow_nan: bool) -> sitk.Image:
    problem = image_file_problem(path)
    if problem:
        raise InputError(f"{path} is damaged: {problem}; copy or export it again")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(
            f"{path} is not a readable image; give a NIfTI (.nii/.nii.gz), NRRD, MHA file or a DICOM folder"
        ) from None
    size, per_voxel = tuple(reader.GetSize()), _file_bytes_per_voxel(reader)
    _check_memory(path, size, per_voxel)
    if label or not allow_nan:
        bad = nifti_nonfinite(path)  # ITK reads NaN and infinity in NIfTI as 0: count them in the file
        if bad:
            raise InputError(f"{path} has {bad} NaN/infinite voxels; fix or mask them before use")
    try:
        return reader.Execute()
    except MemoryError:
        raise InputError(_too_large(path, size, per_voxel, failed=True)) from None
    except RuntimeError as exc:
        if "alloc" in str(exc).lower():  # ITK's "Failed to allocate memory for image"
            raise InputError(_too_large(path, size, per_voxel, failed=True)) from None
        raise InputError(f"{path} cannot be read ({str(exc).strip().splitlines()[-1]}); copy or export it again") from None


#: The widest label value kept: label maps are uint16 from here on.
MAX_LABEL = 65535


def read_image(path: str | os.PathLike, *, label: bool = False, allow_nan: bool = False) -> sitk.Image:
    """Read a 3-D scalar volume from a NIfTI/NRRD/MHA file or a DICOM series folder.

    Files are checked before ITK reads them (ITK reads a truncated file zero-filled and NaN in
    NIfTI as 0): the byte count and compressed stream (:func:`image_file_problem`), non-finite
    NIfTI voxels, the memory the volume needs; DICOM series for missing or unreadable slices.

    Args:
        path: a volume file or a folder with one DICOM series.
        label: keep an integer pixel type and check that values are integral, 0..65535.
        allow_nan: accept non-finite voxels (otherwise they are an input error).

    Returns:
        The image, float32 for intensities or uint16 for labels, geometry untouched.

    Raises:
        InputError: missing, damaged or unreadable file, too large for memory, incomplete DICOM
            series, not 3-D, not scalar, NaN voxels, label values out of range.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path")
    if path.is_dir():
        image = _read_dicom_folder(path)
    else:
        image = _read_file(path, label=label, allow_nan=allow_nan)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; give a scalar (grey-value) volume")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise InputError(f"{path} is a {image.GetDimension()}-D image of size {image.GetSize()}; give a 3-D volume")
    if min(image.GetSize()) < 2:
        raise InputError(f"{path} has size {image.GetSize()}; give a 3-D volume with at least 2 voxels along each axis")
    if label:
        arr = sitk.GetArrayViewFromImage(image)
        if np.issubdtype(arr.dtype, np.floating):
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise InputError(f"{path} has non-integer voxel values; give a label map with integer labels")
        if arr.min() < 0:
            raise InputError(f"{path} has negative label values; give a label map with values >= 0")
        if arr.max() > MAX_LABEL:
            raise InputError(f"{path} has label value {arr.max():.0f}, above the largest supported ({MAX_LABEL}); "
                             "renumber the labels to 0..65535")
        return sitk.Cast(image, sitk.sitkUInt16)
    image = sitk.Cast(image, sitk.sitkFloat32)
    if not allow_nan:
        arr = sitk.GetArrayViewFromImage(image)
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise InputError(f"{path} has {bad} NaN/infinite voxels; fix or mask them before use")
    return image


def write_image(image: sitk.Image, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write ``image`` atomically (temporary file, then rename) as NIfTI, NRRD or MHA by extension."""
    path = Path(path)
    if not _has_suffix(path, WRITE_SUFFIXES):
        raise InputError(f"cannot write {path}: use a .nii.gz, .nii, .nrrd or .mha file name")

    def verify(tmp: Path) -> None:
        # ITK's NIfTI writer does not raise on a full disk (it prints "wrote only N of M bytes"):
        # the file must hold what its header promises and read back with the image's size.
        problem = image_file_problem(tmp)
        if problem is None:
            try:
                reader = sitk.ImageFileReader()
                reader.SetFileName(str(tmp))
                reader.ReadImageInformation()
                if tuple(reader.GetSize()) != tuple(image.GetSize()):
                    problem = f"it reads back with size {reader.GetSize()}, not {image.GetSize()}"
            except RuntimeError:
                problem = "it does not read back"
        if problem:
            raise OutputError(f"writing {path} failed: {problem}; free disk space or choose another location")

    with atomic_path(path, verify=verify) as tmp:
        gzip_here = compress and tmp.name.lower().endswith(".nii.gz")
        target = tmp.with_name(tmp.name[:-3]) if gzip_here else tmp
        try:
            try:
                sitk.WriteImage(image, str(target), useCompression=compress and not gzip_here)
            except RuntimeError:
                raise OutputError(f"writing {path} failed: the image writer reported an error (a full disk?); "
                                  "free disk space or choose another location") from None
            if gzip_here:
                gzip_file(target, tmp)
        finally:
            if gzip_here:
                target.unlink(missing_ok=True)
    return path


# Deflate (level 1) only when a sample of the data shrinks below this fraction, else stored blocks:
# at about 40 MB/s on a laptop core deflate is worth its time only when it halves the file.
_WORTH_COMPRESSING = 0.5


def gzip_file(src: Path, dst: Path, chunk: int = 1 << 24) -> int:
    """gzip ``src`` into ``dst``; returns the deflate level used.

    ITK's NIfTI writer deflates at zlib's default level whatever level it is given: 4.5 s on two
    cores for the 1.5 mm displacement field of a chest CT (178 MB), which shrinks only to 65 %
    (float mantissas hardly compress; a CT in float32 to 84 %). Here a 1 MiB sample from the
    middle of the file decides: level 1 when it shrinks below half, else stored blocks, so label
    maps and masks stay small and float volumes cost a copy. Every .nii.gz reader reads both (stored
    blocks are valid deflate)."""
    import zlib

    size = src.stat().st_size
    with open(src, "rb") as f:
        f.seek(max(0, size // 2 - (1 << 19)))
        sample = f.read(1 << 20)  # a 4 MiB sample took as long as deflating a small file itself
    level = 1 if sample and len(zlib.compress(sample, 1)) < _WORTH_COMPRESSING * len(sample) else 0
    packer = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer
    with open(src, "rb") as f, open(dst, "wb") as out:
        while block := f.read(chunk):
            out.write(packer.compress(block))
        out.write(packer.flush())
    return level


def same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tol``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * max(1.0, max(a.GetSpacing())))
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )


def resample_to_spacing(
    image: sitk.Image,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    label: bool = False,
    default_value: float = 0.0,
) -> sitk.Image:
    """Resample onto a grid of ``spacing`` (mm, x-y-z order) covering the same physical extent.

    The new grid keeps origin and direction; its size is ``round(size * old / new)``, so the first
    voxel centre stays where it was. Labels use nearest neighbour, intensities linear.
    """
    old_spacing = np.array(image.GetSpacing())
    new_spacing = np.array(spacing, dtype=float)
    new_size = np.maximum(1, np.round(np.array(image.GetSize()) * old_spacing / new_spacing)).astype(int)
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return sitk.Resample(
        image,
        [int(s) for s in new_size],
        sitk.Transform(),
        interpolator,
        image.GetOrigin(),
        [float(s) for s in new_spacing],
        image.GetDirection(),
        default_value,
        image.GetPixelID(),
    )


def lps_grid(image: sitk.Image, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(origin (x, y, z) mm, size (x, y, z)) of the axis-aligned grid of ``spacing`` covering ``image``."""
    size = np.array(image.GetSize())
    corners = [[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    points = np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner]) for corner in corners])
    lo, hi = points.min(0), points.max(0)
    return lo, np.maximum(1, np.round((hi - lo) / np.asarray(spacing, dtype=float)).astype(int) + 1)


def resample_to_lps_grid(
    image: sitk.Image,
    spacing: Sequence[float],
    *,
    label: bool = False,
    default_value: float = 0.0,
) -> sitk.Image:
    """Resample onto an axis-aligned grid (identity direction: index axes along L, P, S) of
    ``spacing`` (mm, x-y-z) that covers the image's physical extent.

    A network that learned anatomy (left is not right) sees every input the same way round
    whatever the file's direction matrix: a flipped or oblique scan is turned, in physical space,
    onto the grid the network was trained on. For an identity-direction input this equals
    :func:`resample_to_spacing`.
    """
    lo, new_size = lps_grid(image, spacing)
    new_spacing = np.array(spacing, dtype=float)
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return sitk.Resample(image, [int(s) for s in new_size], sitk.Transform(), interpolator, [float(v) for v in lo],
                         [float(s) for s in new_spacing], [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                         default_value, image.GetPixelID())


def resample_like(image: sitk.Image, reference: sitk.Image, *, label: bool = False, default_value: float = 0.0) -> sitk.Image:
    """Resample ``image`` onto the grid of ``reference`` (identity transform, physical space)."""
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, default_value, image.GetPixelID())


def array_to_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap a (z, y, x) array in an image carrying ``reference``'s geometry."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


# -- intensities --------------------------------------------------------------------------------

CT_WINDOW_HU = (-1024.0, 1024.0)


def normalize_ct(array: np.ndarray, window: Sequence[float] = CT_WINDOW_HU) -> np.ndarray:
    """Clip HU to ``window`` and map linearly to [0, 1] (the paper's setting)."""
    lo, hi = float(window[0]), float(window[1])
    out = (np.clip(array, lo, hi) - lo) / (hi - lo)
    return out.astype(np.float32)


def normalize_mr(array: np.ndarray, percentiles: Sequence[float] = (0.5, 99.5)) -> np.ndarray:
    """Map the ``percentiles`` range of intensities to [0, 1], clipped."""
    lo, hi = np.percentile(array, percentiles)
    if hi <= lo:
        return np.zeros_like(array, dtype=np.float32)
    return ((np.clip(array, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def normalize(array: np.ndarray, modality: str) -> np.ndarray:
    """Normalize intensities for ``modality`` ('CT' or 'MR') to [0, 1]."""
    modality = modality.upper()
    if modality == "CT":
        return normalize_ct(array)
    if modality in ("MR", "MRI"):
        return normalize_mr(array)
    raise InputError(f"unknown modality {modality!r}; use CT or MR")


def guess_modality(image: sitk.Image) -> str:
    """'CT' when intensities look like Hounsfield units (air near -1000), else 'MR'."""
    arr = sitk.GetArrayViewFromImage(image)
    lo = float(np.percentile(arr[:: max(1, arr.shape[0] // 16)], 1))
    return "CT" if lo < -500 else "MR"

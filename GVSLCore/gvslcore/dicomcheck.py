"""Is a DICOM series whole? Every slice readable and the slices evenly spaced along their normal.

ITK's series reader spreads the slices evenly over their extent and only warns when they are
not evenly spaced: a series with a missing or unreadable slice comes back with a wrong z spacing
(7 mm instead of 6 for 8 slices with one gone) and the anatomy stretched. :func:`series_problem`
reads each file's header (not its pixels), projects ImagePositionPatient (0020|0032) on the
slice normal given by ImageOrientationPatient (0020|0037) and compares the gaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

POSITION = "0020|0032"
ORIENTATION = "0020|0037"

#: Gaps may differ by this fraction of the typical gap (rounding in the written positions).
RELATIVE_TOLERANCE = 0.05


def _numbers(text: str) -> list[float] | None:
    try:
        return [float(v) for v in text.replace(",", "\\").split("\\") if v.strip()]
    except ValueError:
        return None


def _header(path: str) -> tuple[list[float] | None, list[float] | None]:
    """(position, orientation) of one slice file, None where a tag is missing; raises RuntimeError
    when the file cannot be parsed."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.SetImageIO("GDCMImageIO")
    reader.ReadImageInformation()
    pos = _numbers(reader.GetMetaData(POSITION)) if reader.HasMetaDataKey(POSITION) else None
    ori = _numbers(reader.GetMetaData(ORIENTATION)) if reader.HasMetaDataKey(ORIENTATION) else None
    return (pos if pos and len(pos) == 3 else None), (ori if ori and len(ori) == 6 else None)


def slice_positions(files: Sequence[str]) -> tuple[np.ndarray | None, str | None]:
    """(positions along the slice normal in mm, in file order, problem). Positions are None (and
    the problem None) when the slices carry no position/orientation: nothing to check."""
    positions, orientations = [], []
    for name in files:
        shown = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        try:
            pos, ori = _header(name)
        except RuntimeError:
            return None, f"slice {Path(name).name} cannot be read (a damaged file)"
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(shown)
        if pos is None or ori is None:
            return None, None
        positions.append(pos)
        orientations.append(ori)
    ori = np.asarray(orientations[0])
    normal = np.cross(ori[:3], ori[3:])
    if np.linalg.norm(normal) < 1e-6:
        return None, None
    normal /= np.linalg.norm(normal)
    return np.asarray(positions) @ normal, None


def spacing_problem(positions: np.ndarray) -> str | None:
    """What is wrong with slices at ``positions`` (mm along the normal): two at one position, or
    uneven gaps (a slice missing). None when they are evenly spaced."""
    if len(positions) < 3:
        return None
    z = np.sort(positions)
    gaps = np.diff(z)
    typical = float(np.median(gaps))
    if gaps.min() <= 1e-3 * max(typical, 1e-3):
        i = int(np.argmin(gaps))
        return f"two slices lie at the same position ({z[i]:.2f} mm along the slice normal)"
    off = np.abs(gaps - typical) > RELATIVE_TOLERANCE * typical
    if not off.any():
        return None
    i = int(np.argmax(np.abs(gaps - typical)))
    missing = round(gaps[i] / typical) - 1
    what = f"about {missing} slice(s) missing" if missing >= 1 else "uneven slice spacing"
    return (f"the slices at {z[i]:.2f} and {z[i + 1]:.2f} mm are {gaps[i]:.2f} mm apart, the others {typical:.2f} mm "
            f"({what})")


def series_problem(files: Sequence[str]) -> str | None:
    """One phrase saying what is wrong with the series ``files`` (an unreadable slice, slices
    missing or doubled), or None when it looks whole or carries no positions to check."""
    positions, problem = slice_positions(files)
    if problem or positions is None:
        return problem
    return spacing_problem(positions)

"""From the working grid to files: the global part as an ITK affine, labels propagated onto the
fixed grid, and every output of a registration written atomically into one folder.

Every array is (z, y, x); every physical quantity is LPS millimetres.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path, ensure_writable_dir, write_json
from ..errors import InputError
from ..events import Reporter, log
from ..geometry import index_to_physical_matrix
from ..io import write_image
from ..labels import LabelInfo, LabelTable
from .config import RegistrationResult

OUTPUT_NAMES = {
    "warped": "warped.nii.gz",
    "affine": "affine.tfm",
    "displacement": "displacement.nii.gz",
    "jacobian": "jacobian.nii.gz",
    "metrics": "metrics.json",
    "propagated": "propagated.seg.nrrd",
    "qc": "qc.png",
}


def working_affine_matrix(affine: np.ndarray, working: sitk.Image) -> np.ndarray:
    """4x4 physical matrix (LPS mm) of the working-voxel affine ``q = A (p - c) + c + t`` ((z, y, x))."""
    c = np.array([(s - 1) / 2.0 for s in working.GetSize()])  # x, y, z
    a = np.asarray(affine, dtype=float)[:, :3][::-1, ::-1]
    t = np.asarray(affine, dtype=float)[:, 3][::-1]
    v = np.eye(4)
    v[:3, :3] = a
    v[:3, 3] = c + t - a @ c
    m = index_to_physical_matrix(working)
    return m @ v @ np.linalg.inv(m)


def propagate_labels(labels: sitk.Image, fixed: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """Map a label map onto the fixed grid (uint16): each label's indicator is interpolated linearly
    and every voxel takes the label of largest weight (background included), so no value between two
    labels ever appears; outside the moving image is background.

    ITK's label-linear interpolator does this in one pass over the fixed grid; resampling each
    label's indicator separately gave the same labels 1.7x (one label) to 4x (41 labels) slower."""
    propagated = sitk.Resample(labels, fixed, transform, sitk.sitkLabelLinear, 0)
    return propagated if propagated.GetPixelID() == sitk.sitkUInt16 else sitk.Cast(propagated, sitk.sitkUInt16)


def check_output_dir(out: str | os.PathLike) -> Path:
    """Fail early (before any work) when ``out`` cannot become a writable folder; creates nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the registration outputs")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: {probe} is not writable; choose a writable location")
    return out


def label_table_for(labels_path: str | os.PathLike | None, labels: sitk.Image) -> LabelTable:
    """Names and colours of propagated labels: the .seg.nrrd's own table, else generic entries."""
    import colorsys

    if labels_path is not None and str(labels_path).lower().endswith(".seg.nrrd"):
        from ..segfile import read_label_table

        table = read_label_table(labels_path)
        if len(table):
            return table
    values = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v != 0]
    # Hues a golden angle apart: neighbouring values get clearly different colours.
    colors = {v: colorsys.hsv_to_rgb((0.618034 * v) % 1.0, 0.65, 0.95) for v in values}
    return LabelTable([LabelInfo(v, f"label {v}", tuple(round(c, 4) for c in colors[v])) for v in values])


def _write_propagated(result: RegistrationResult, out: Path, table: LabelTable | None) -> Path:
    from ..segfile import write_labels

    path = out / OUTPUT_NAMES["propagated"]
    try:
        write_labels(result.propagated, path, table or label_table_for(None, result.propagated))
    except InputError:  # values above 255 or unnamed: a plain label map keeps every value
        path = write_image(sitk.Cast(result.propagated, sitk.sitkUInt16), out / "propagated.nii.gz")
    return path


def _qc_picture(result: RegistrationResult, out: Path, title: str | None) -> tuple[Path | None, float]:
    """Draw qc.png: (its path, or None with a note without Pillow; the seconds it took)."""
    t = time.monotonic()
    try:
        import PIL  # noqa: F401 - the picture's only drawing library
    except ModuleNotFoundError:
        log("note: Pillow is not installed; qc.png skipped (pip install pillow)")
        return None, 0.0
    from ..qc import registration_qc_png

    fixed = result.fixed_display if result.fixed_display is not None else result.warped
    path = registration_qc_png(fixed, result.moving, result.warped, result.displacement, result.jacobian,
                               out / OUTPUT_NAMES["qc"], ncc=result.metrics.get("ncc"),
                               folding_percent=result.metrics.get("folding_percent"), title=title)
    return path, round(time.monotonic() - t, 3)


def write_outputs(
    result: RegistrationResult,
    out: str | os.PathLike,
    *,
    table: LabelTable | None = None,
    qc: bool = True,
    reporter: Reporter | None = None,
    title: str | None = None,
) -> dict[str, str]:
    """Write every output of ``result`` into ``out`` (each file atomically); returns name -> path.
    The seconds each file took go into ``result.metrics["seconds"]`` as ``"write <name>"``, the QC
    picture's as ``"qc"``.

    qc.png is drawn in a second thread while the volumes are written: drawing is mostly numpy and
    Pillow, writing mostly waits on zlib and the disk, so the two overlap on two cores."""
    out = ensure_writable_dir(out)
    written: dict[str, str] = {}
    seconds = result.metrics.setdefault("seconds", {})
    last = [time.monotonic()]

    def done(key: str, path: Path) -> None:
        now = time.monotonic()
        seconds[f"write {key}"] = round(now - last[0], 3)
        last[0] = now
        written[key] = str(path)
        if reporter is not None:
            reporter.artifact(key, path)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gvsl-qc") as pool:
        picture = pool.submit(_qc_picture, result, out, title) if qc else None
        done("warped", write_image(result.warped, out / OUTPUT_NAMES["warped"]))
        with atomic_path(out / OUTPUT_NAMES["affine"]) as tmp:
            sitk.WriteTransform(result.affine, str(tmp))
        done("affine", out / OUTPUT_NAMES["affine"])
        done("displacement", write_image(result.displacement, out / OUTPUT_NAMES["displacement"]))
        done("jacobian", write_image(result.jacobian, out / OUTPUT_NAMES["jacobian"]))
        if result.propagated is not None:
            done("propagated", _write_propagated(result, out, table))
        if picture is not None:
            path, seconds["qc"] = picture.result()
            last[0] = time.monotonic()  # the wait for the picture is not the next file's writing
            if path is not None:
                written["qc"] = str(path)
                if reporter is not None:
                    reporter.artifact("qc", path)
    write_json(out / OUTPUT_NAMES["metrics"], result.metrics)
    done("metrics", out / OUTPUT_NAMES["metrics"])
    return written

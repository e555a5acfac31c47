"""Pictures of what a GVSL user sees in Slicer, drawn by Slicer's own MRML slice logic and displayable
managers (PyPI ``slicer-core``, offscreen, no Qt): the modules' Logic runs the real ``gvsl`` jobs and
loads their results into a real MRML scene, exactly as in Slicer; only the window around the views is
missing.

    python benchmarks/slicer_pictures.py [--out docs/slicer] [--cta ../shared/data/chest_cta/ct.nii.gz]

writes
  cta_heart.png          the real chest CTA segmented by the default heart model (GVSL Segment's Logic):
                         axial, coronal and sagittal slice views through the heart, the segment surfaces in 3D;
  register_grid.png      a phantom pair registered by GVSL Register's Logic (instance optimization): the
                         displacement drawn over the fixed image as a grid (axial) and as glyphs (coronal);
  register_jacobian.png  the Jacobian determinant overlay with its colour legend (axial, coronal).

Needs slicer-core (`make venv`, Python 3.11) and an OpenGL that renders offscreen (Mesa's EGL here).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing" / "slicer"))  # mrml_app, mrml_views; slicer_testpaths adds GVSLSlicer

import mrml_app  # noqa: E402 - from the test folder, shared with the MRML tests
import mrml_views  # noqa: E402
import slicer_testpaths  # noqa: E402, F401

CTA = REPO.parent / "shared" / "data" / "chest_cta" / "ct.nii.gz"
PANEL = 360  # pixels, each view
MAX_PNG_BYTES = 300_000


def fail(message: str) -> None:
    print(f"slicer_pictures: {message}", file=sys.stderr)
    raise SystemExit(2)


def save(panels: list, path: Path) -> Path:
    """Panels side by side (4 px apart) as one PNG; reduced to 256 colours if it would exceed ~300 KB."""
    import numpy as np
    from PIL import Image

    gap = np.full((panels[0].shape[0], 4, 3), 40, np.uint8)
    row = np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=1)
    image = Image.fromarray(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_PNG_BYTES:
        image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path} ({path.stat().st_size // 1024} KB)")
    return path


def centre_of(node) -> tuple[float, float, float]:
    import numpy as np

    bounds = np.zeros(6)
    node.GetRASBounds(bounds)
    return tuple(bounds.reshape(3, 2).mean(axis=1))


def cta_heart(app, views: dict, cta: Path, out: Path) -> Path:
    """GVSL Segment's Logic on the real CTA with the shipped default model, shown in 3 slice views + 3D."""
    import GVSLSegment
    import slicer

    from GVSLLib import models, slicerglue

    app.clear()
    volume = slicer.util.loadVolume(str(cta))
    bundled = models.scan_models([models.bundled_models_dir(slicerglue.resources_dir())])
    if not bundled:
        fail(f"no bundled heart model in {models.bundled_models_dir(slicerglue.resources_dir())}: check out "
             "Resources/Models (git lfs pull if it is a pointer)")
    logic = GVSLSegment.GVSLSegmentLogic()
    job = logic.startSegmentation(volume, bundled[0], device="cpu")
    status = job.wait(timeout=1800)
    job.poll()
    if status != "done":
        fail(f"gvsl segment {status} on {cta}: {job.status_info().get('message')} (log: {job.folder})")
    segmentation = logic.loadResult(job, volume, modelPath=bundled[0].path)
    slicer.util.setSliceViewerLayers(background=volume, fit=False)
    heart = centre_of(segmentation)
    panels = []
    for name in ("Red", "Green", "Yellow"):
        view = views[name]
        view.fit()
        view.centre_on(heart, field_of_view_mm=150.0)
        panels.append(view.render())
    views["3d"].look_from("Anterior")
    panels.append(views["3d"].render())
    return save(panels, out / "cta_heart.png")


def registration(app, views: dict, work: Path, out: Path) -> list[Path]:
    """GVSL Register's Logic on a phantom pair (a real gvsl register job), its deformation and Jacobian."""
    import GVSLRegister
    import SimpleITK as sitk
    import slicer

    from gvslcore.phantom import make_pair

    app.clear()
    images = make_pair(7, (64, 64, 48), (1.5, 1.5, 2.0), max_displacement_mm=6.0)
    for name in ("fixed", "moving"):
        sitk.WriteImage(sitk.Cast(images[name], sitk.sitkInt16), str(work / f"{name}.nrrd"))
    fixed = slicer.util.loadVolume(str(work / "fixed.nrrd"))
    moving = slicer.util.loadVolume(str(work / "moving.nrrd"))
    logic = GVSLRegister.GVSLRegisterLogic()
    job = logic.startRegistration(fixed, moving, "none", iterations=60, device="cpu")
    status = job.wait(timeout=1800)
    job.poll()
    if status != "done":
        fail(f"gvsl register {status}: {job.status_info().get('message')} (log: {job.folder})")
    transform = logic.loadResults(job, fixed, moving)
    centre = centre_of(fixed)
    written = []
    # The deformation over the fixed image alone, as after choosing Overlay: none and Deformation: grid / glyphs.
    slicer.util.setSliceViewerLayers(background=fixed, foreground=None, foregroundOpacity=0.0)
    panels = []
    for name, mode in (("Red", "grid"), ("Green", "glyph")):
        logic.setDeformationDisplay(transform, mode)
        views[name].fit()
        views[name].centre_on(centre)
        panels.append(views[name].render())
    written.append(save(panels, out / "register_grid.png"))
    logic.setDeformationDisplay(transform, "off")
    logic.showOverlay(transform, "jacobian", opacity=0.6)
    panels = []
    for name in ("Red", "Green"):
        views[name].centre_on(centre)
        panels.append(views[name].render())
    written.append(save(panels, out / "register_jacobian.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "slicer", help="folder for the PNGs")
    parser.add_argument("--cta", type=Path, default=CTA, help="the chest CTA (a volume file)")
    parser.add_argument("--skip-cta", action="store_true", help="only the registration pictures")
    args = parser.parse_args(argv)
    if not args.skip_cta and not args.cta.is_file():
        fail(f"the chest CTA {args.cta} does not exist: pass --cta FILE, or --skip-cta (see ../shared/data/README.md)")
    problem = mrml_views.offscreen_problem()
    if problem is not None:
        fail(f"{problem}: install Mesa's EGL (Debian: libegl-mesa0) or run with an X display")
    with tempfile.TemporaryDirectory(prefix="gvsl_pictures_") as tmp:
        work = Path(tmp)
        os.environ["GVSL_HOME"] = str(work / "gvsl_home")  # the jobs go there, not into ~/.gvsl
        try:
            app, _ = mrml_app.open_app(work / "slicer_home")
        except mrml_app.Unavailable as missing:
            fail(str(missing))
        app.add_slice_views()
        views = {name: mrml_views.SliceView(app, name, orientation, (PANEL, PANEL))
                 for name, orientation in (("Red", "Axial"), ("Green", "Coronal"), ("Yellow", "Sagittal"))}
        views["3d"] = mrml_views.ThreeDView(app, "1", (PANEL, PANEL))
        if not args.skip_cta:
            cta_heart(app, views, args.cta, args.out)
        registration(app, views, work, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Offscreen slice and 3D views drawn by Slicer's own displayable managers, without Qt (PyPI ``slicer-core``).

In Slicer a slice view is a qMRMLSliceWidget: a vtkMRMLSliceLogic makes the reformatted, coloured image
of the composite node's layers, a light box renderer manager (CTK) shows it as an image actor, and the
slice displayable managers (segmentations, transforms, models, colour legend, ...) add their actors to
the same renderer. A 3D view is a qMRMLThreeDView: a vtkMRMLViewLogic, a view node and the 3D
displayable managers. trame-slicer rebuilds both on slicer-core (trame_slicer/views/slice_view.py,
threed_view.py); these classes take the same steps, kept to what a still picture needs (no interactor
styles, no render scheduling), on the scene of a :class:`mrml_app.MRMLApp`.

Rendering is offscreen. VTK's Linux wheels pick the OpenGL window at run time: without a ``DISPLAY``
they would try X first (and warn), so :func:`prefer_egl` asks for EGL, which Mesa provides headless.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np

SLICE_MANAGERS = (
    "vtkMRMLCrosshairDisplayableManager",
    "vtkMRMLVolumeGlyphSliceDisplayableManager",
    "vtkMRMLModelSliceDisplayableManager",
    "vtkMRMLSegmentationsDisplayableManager2D",
    "vtkMRMLTransformsDisplayableManager2D",
    "vtkMRMLScalarBarDisplayableManager",
    "vtkMRMLColorLegendDisplayableManager",
)
THREED_MANAGERS = (
    "vtkMRMLVolumeRenderingDisplayableManager",
    "vtkMRMLCameraDisplayableManager",
    "vtkMRMLViewDisplayableManager",
    "vtkMRMLModelDisplayableManager",
    "vtkMRMLSegmentationsDisplayableManager3D",
    "vtkMRMLTransformsDisplayableManager3D",
    "vtkMRMLColorLegendDisplayableManager",
)

_PROBE = """
import vtk
window = vtk.vtkRenderWindow()
window.SetOffScreenRendering(1)
renderer = vtk.vtkRenderer()
renderer.SetBackground(1.0, 0.0, 0.0)
window.AddRenderer(renderer)
window.SetSize(8, 8)
window.Render()
grab = vtk.vtkWindowToImageFilter()
grab.SetInput(window)
grab.Update()
print(window.GetClassName(), grab.GetOutput().GetPointData().GetScalars().GetTuple(0))
"""


def prefer_egl() -> None:
    """Without a display, ask VTK for its EGL window (read when the first render window is made)."""
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def offscreen_problem(timeout_s: float = 60.0) -> str | None:
    """Why offscreen OpenGL rendering does not work here, or None when it does.

    The check renders a red 8x8 window in a child process: a missing OpenGL library can crash VTK
    (OSMesa segfaults when libOSMesa is absent), and a crash must not take the caller with it.
    """
    prefer_egl()
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], check=False, capture_output=True, text=True,
                              timeout=timeout_s, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return f"an offscreen VTK render did not finish within {timeout_s:.0f} s"
    words = done.stdout.split(None, 1)
    if done.returncode != 0 or len(words) < 2 or not words[1].startswith("(255.0, 0.0, 0.0"):
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        return (f"an offscreen VTK render failed (exit code {done.returncode}): "
                f"{lines[-1].strip() if lines else 'no output'}")
    return None


def _manager_group(factory_class: Any, app_logic: Any, renderer: Any, names: tuple[str, ...]) -> Any:
    import slicer

    factory = factory_class.GetInstance()
    factory.SetMRMLApplicationLogic(app_logic)
    for name in names:
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.Initialize(factory, renderer)
    return group


def _window(width: int, height: int, layers: int = 1) -> tuple[Any, Any]:
    import vtk

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.ShowWindowOff()
    window.SetSize(width, height)
    window.SetNumberOfLayers(layers)
    window.SetAlphaBitPlanes(1)
    renderer = vtk.vtkRenderer()
    window.AddRenderer(renderer)
    # Displayable managers reach the interactor through the renderer's window (crosshair and widget
    # managers observe it): without one, setting the view node crashes.
    interactor = vtk.vtkRenderWindowInteractor()
    interactor.SetRenderWindow(window)
    interactor.Initialize()
    return window, renderer


def capture(window: Any) -> np.ndarray:
    """The window's pixels as (height, width, 3) uint8, row 0 at the top (as a PNG stores them)."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return np.ascontiguousarray(pixels[::-1, :, :3])


class SliceView:
    """One slice view (``Red``, ``Yellow``, ``Green``...) of the scene, drawn offscreen.

    The slice logic renders the layers (background, foreground, label) into one RGBA image, which a
    vtkImageMapper actor shows (trame-slicer's stand-in for CTK's light box manager). Unlike trame-slicer,
    that actor has its own renderer on layer 0, under the displayable managers' renderer on layer 1 (a
    layered window, as CTK's slice view has): in one renderer, a segmentation shown before the view was
    made (its fill actor added before the image actor) had its semi-transparent fill composed onto black
    instead of onto the image (fill 50 % of colour c over grey g gave c/2, not (c+g)/2). The managers
    draw segmentations, transforms and the colour legend.
    """

    def __init__(self, mrml: Any, name: str, orientation: str, size: tuple[int, int] = (400, 400)) -> None:
        import slicer
        import vtk

        self.mrml = mrml
        self.window, self.renderer = _window(*size, layers=2)
        self.renderer.SetLayer(1)
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.image_renderer = vtk.vtkRenderer()
        self.image_renderer.SetLayer(0)
        self.window.AddRenderer(self.image_renderer)
        self.managers = _manager_group(slicer.vtkMRMLSliceViewDisplayableManagerFactory, mrml.app_logic,
                                       self.renderer, SLICE_MANAGERS)
        self.logic = next((logic for logic in mrml.slice_logics if logic.GetSliceNode().GetName() == name), None)
        if self.logic is None:
            self.logic = slicer.vtkMRMLSliceLogic()
            self.logic.SetMRMLApplicationLogic(mrml.app_logic)
            self.logic.SetMRMLScene(mrml.scene)
            self.logic.AddSliceNode(name)
            mrml.app_logic.GetSliceLogics().AddItem(self.logic)
            mrml.slice_logics.append(self.logic)
        self.node = self.logic.GetSliceNode()
        self.node.SetOrientation(orientation)
        self.node.SetMappedInLayout(True)
        self.managers.SetMRMLDisplayableNode(self.node)
        mapper = vtk.vtkImageMapper()
        mapper.SetColorWindow(255)  # the slice logic's output is already RGBA 0..255
        mapper.SetColorLevel(127.5)
        self.image_actor = vtk.vtkActor2D()
        self.image_actor.SetMapper(mapper)
        self.image_renderer.AddViewProp(self.image_actor)
        self.logic.ResizeSliceNode(*size)

    @property
    def size(self) -> tuple[int, int]:
        width, height = self.window.GetSize()
        return int(width), int(height)

    def fit(self) -> None:
        """Fit the background volume in the view and snap the slice to its voxels, as Slicer's "reset view"."""
        self.logic.ResizeSliceNode(*self.size)
        self.logic.FitSliceToBackground()
        self.logic.SnapSliceOffsetToIJK()

    def jump_to(self, ras: tuple[float, float, float]) -> None:
        """Move the slice (not the field of view) to a RAS point (mm), as Shift + mouse move does in Slicer."""
        self.node.JumpSliceByOffsetting(*ras)

    def centre_on(self, ras: tuple[float, float, float], field_of_view_mm: float | None = None) -> None:
        """Centre the view on a RAS point (mm), through it; optionally zoom to show ``field_of_view_mm``
        across the view's shorter side."""
        if field_of_view_mm is not None:
            width, height = self.size
            fov = self.node.GetFieldOfView()
            scale = field_of_view_mm / min(width, height)
            self.node.SetFieldOfView(width * scale, height * scale, fov[2])
        self.node.JumpSliceByCentering(*ras)

    def render(self) -> np.ndarray:
        """(height, width, 3) uint8 pixels, top row first."""
        connection = self.logic.GetImageDataConnection()
        self.image_actor.GetMapper().SetInputConnection(connection)
        self.image_actor.SetVisibility(connection is not None)
        self.managers.RequestRender()
        return capture(self.window)

    def pixel_of_ras(self, ras: tuple[float, float, float]) -> tuple[int, int]:
        """(row, column) of the pixel that shows a RAS point (mm) lying on the slice, rows from the top.

        XY is the view's pixel frame (origin at the bottom left); the slice node's XYToRAS maps it to RAS.
        """
        xy_to_ras = np.array([[self.node.GetXYToRAS().GetElement(i, j) for j in range(4)] for i in range(4)])
        x, y, _, _ = np.linalg.solve(xy_to_ras, np.append(np.asarray(ras, float), 1.0))
        return round(self.size[1] - 1 - y), round(x)


class ThreeDView:
    """One 3D view of the scene, drawn offscreen: models, segment surfaces, volume rendering."""

    def __init__(self, mrml: Any, name: str = "1", size: tuple[int, int] = (400, 400)) -> None:
        import slicer

        self.mrml = mrml
        self.window, self.renderer = _window(*size)
        self.managers = _manager_group(slicer.vtkMRMLThreeDViewDisplayableManagerFactory, mrml.app_logic,
                                       self.renderer, THREED_MANAGERS)
        self.logic = slicer.vtkMRMLViewLogic()
        self.logic.SetMRMLApplicationLogic(mrml.app_logic)
        self.logic.SetMRMLScene(mrml.scene)
        mrml.app_logic.GetViewLogics().AddItem(self.logic)
        self.node = self.logic.AddViewNode(name)
        self.node.SetMappedInLayout(True)
        self.managers.SetMRMLDisplayableNode(self.node)

    def camera_node(self) -> Any:
        return self.managers.GetDisplayableManagerByClassName("vtkMRMLCameraDisplayableManager").GetCameraNode()

    def look_from(self, direction: str = "Anterior", elevation_deg: float = 0.0, box: bool = False) -> None:
        """Point the camera at what the view shows, from a patient direction, as Slicer's view buttons do.

        The view's box and axis labels are hidden unless ``box``: they sit around the RAS origin, and a
        camera fitted to them too makes a heart far from the origin a speck (Slicer's "reset focal
        point" also leaves them out of the fit).
        """
        import slicer

        self.node.SetBoxVisible(box)
        self.node.SetAxisLabelsVisible(box)
        self.managers.RequestRender()
        self.renderer.ResetCamera()
        camera = self.camera_node()
        camera.RotateTo(getattr(slicer.vtkMRMLCameraNode, direction))
        if elevation_deg:
            camera.GetCamera().Elevation(elevation_deg)
            camera.GetCamera().OrthogonalizeViewUp()
        self.renderer.ResetCamera()
        self.renderer.ResetCameraClippingRange()

    def render(self) -> np.ndarray:
        """(height, width, 3) uint8 pixels, top row first."""
        self.managers.RequestRender()
        return capture(self.window)

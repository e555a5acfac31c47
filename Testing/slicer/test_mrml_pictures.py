"""What a user sees, drawn by Slicer's own slice logic and displayable managers (slicer-core, offscreen).

A phantom CT on an oblique grid and its heart labels, loaded as GVSL Segment's Logic loads a result,
are rendered in an axial slice view and a 3D view. Each segment's colour, blended as the display node
says (fill opacity over the grey image), must appear at the pixel where the view shows a voxel of that
label: the voxel's RAS position goes to the view's pixels through the slice node's XYToRAS. The
registration display (a grid transform drawn as a grid) is rendered over the fixed image as well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from GVSLLib import jobs

SIZE, SPACING = (44, 40, 32), (1.8, 2.0, 2.6)
VIEW = (240, 220)  # width, height in pixels: not square, so that rows and columns cannot be swapped unseen


def oblique_direction() -> tuple[float, ...]:
    a = np.deg2rad(17.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return tuple((rz @ np.diag([1.0, -1.0, -1.0])).ravel())


@pytest.fixture(scope="module")
def shown(mrml, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The phantom and its labels in the scene, as GVSL Segment's Logic leaves them after a run."""
    import GVSLSegment
    import slicer
    from gvslcore.labels import HEART_LABELS
    from gvslcore.phantom import make_phantom
    from gvslcore.segfile import write_labels

    import mrml_views

    problem = mrml_views.offscreen_problem()
    if problem is not None:
        pytest.skip(f"no offscreen OpenGL here ({problem}); Mesa's EGL (libegl-mesa0) or an X display is needed")
    mrml.clear()
    if not mrml.slice_logics:
        mrml.add_slice_views()
    folder = tmp_path_factory.mktemp("pictures")
    image, labels = make_phantom(5, SIZE, SPACING, oblique_direction())
    sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(folder / "phantom.nrrd"))
    job = jobs.create_job(folder / "jobs", "segment", "Segment phantom", meta={"output": "segmentation.seg.nrrd"})
    write_labels(labels, job.folder / "segmentation.seg.nrrd", HEART_LABELS)
    volume = slicer.util.loadVolume(str(folder / "phantom.nrrd"))
    segmentation = GVSLSegment.GVSLSegmentLogic().loadResult(job, volume)
    slicer.util.setSliceViewerLayers(background=volume)
    return {"volume": volume, "segmentation": segmentation, "labels": sitk.GetArrayFromImage(labels)}


@pytest.fixture(scope="module")
def views(mrml, shown: dict) -> dict:
    """Views made after the data is shown (a layout opened after loading): the order in which a slice
    image sharing the managers' renderer hid the image under the segment fill."""
    import mrml_views

    red = mrml_views.SliceView(mrml, "Red", "Axial", VIEW)
    red.fit()
    return {"red": red, "3d": mrml_views.ThreeDView(mrml, "1", VIEW)}


def ijk_to_ras(volume) -> np.ndarray:
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def with_and_without(view, display) -> tuple[np.ndarray, np.ndarray]:
    shown_ = view.render()
    display.SetVisibility(False)
    try:
        hidden = view.render()
    finally:
        display.SetVisibility(True)
    return shown_.astype(float), hidden.astype(float)


def test_slice_view_is_not_blank(views: dict, shown: dict) -> None:
    pixels = views["red"].render()
    assert pixels.shape == (VIEW[1], VIEW[0], 3)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100


def test_segment_colours_appear_where_their_labels_are(views: dict, shown: dict) -> None:
    """For each label: slice through its most interior voxel; that pixel shows the segment's colour over
    the image, with the display node's fill opacity; where no label is near, the image stays grey."""
    view, segmentation = views["red"], shown["segmentation"]
    display = segmentation.GetDisplayNode()
    to_ras = ijk_to_ras(shown["volume"])
    labels = shown["labels"]  # (k, j, i)
    checked = 0
    for index in range(segmentation.GetSegmentation().GetNumberOfSegments()):
        segment_id = segmentation.GetSegmentation().GetNthSegmentID(index)
        segment = segmentation.GetSegmentation().GetSegment(segment_id)
        value = int(segment.GetLabelValue())
        depth = ndimage.distance_transform_edt(labels == value, sampling=SPACING[::-1])
        if depth.max() < 3.0:  # mm: too thin to have a pixel away from every outline
            continue
        k, j, i = np.unravel_index(np.argmax(depth), depth.shape)
        ras = (to_ras @ np.array([i, j, k, 1.0]))[:3]
        view.jump_to(tuple(ras))
        on, off = with_and_without(view, display)
        row, column = view.pixel_of_ras(tuple(ras))
        assert 0 <= row < VIEW[1] and 0 <= column < VIEW[0], f"{segment.GetName()} is outside the view"
        alpha = display.GetOpacity2DFill() * display.GetSegmentOpacity2DFill(segment_id)
        expected = alpha * 255.0 * np.asarray(segment.GetColor()) + (1.0 - alpha) * off[row, column]
        assert np.abs(on[row, column] - expected).max() < 12, \
            f"{segment.GetName()}: pixel {on[row, column]} at ({row}, {column}), expected {expected.round()}"
        checked += 1
    assert checked >= 6
    # Far from every label the segmentation adds nothing and the slice stays a grey-scale image.
    view.fit()
    on, off = with_and_without(view, display)
    far = ndimage.distance_transform_edt(labels == 0, sampling=SPACING[::-1]) > 8.0
    from_ras = np.linalg.inv(to_ras)
    rows, columns = np.mgrid[0:VIEW[1]:7, 0:VIEW[0]:7]
    xy_to_ras = np.array([[view.node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    xy = np.stack([columns.ravel(), VIEW[1] - 1 - rows.ravel(), np.zeros(rows.size), np.ones(rows.size)])
    ijk = np.rint(from_ras @ xy_to_ras @ xy)[:3].astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(SIZE)[:, None]), axis=0)
    away = np.zeros(rows.size, bool)
    away[inside] = far[ijk[2, inside], ijk[1, inside], ijk[0, inside]]
    assert away.sum() > 50
    r, c = rows.ravel()[away], columns.ravel()[away]
    assert np.abs(on[r, c] - off[r, c]).max() < 2
    assert np.ptp(on[r, c], axis=-1).max() < 2, "the image alone is grey"
    # ... and the segmentation does colour part of the slice.
    tinted = np.ptp(on, axis=-1) > 20
    assert tinted.mean() > 0.02


def test_3d_view_shows_the_segment_surfaces(views: dict, shown: dict) -> None:
    """The segment surfaces are drawn where the segmentation's bounds project in the 3D view."""
    import vtk

    view, segmentation = views["3d"], shown["segmentation"]
    view.look_from("Anterior")
    on, off = with_and_without(view, segmentation.GetDisplayNode())
    changed = np.abs(on - off).max(-1) > 10
    assert changed.mean() > 0.02, "the segment surfaces cover too little of the 3D view"
    bounds = np.zeros(6)
    segmentation.GetRASBounds(bounds)
    corners = np.array(np.meshgrid(*bounds.reshape(3, 2))).reshape(3, -1).T
    coordinate = vtk.vtkCoordinate()
    coordinate.SetCoordinateSystemToWorld()
    pixels = []
    for corner in corners:
        coordinate.SetValue(*corner)
        pixels.append(coordinate.GetComputedDoubleDisplayValue(view.renderer))
    pixels = np.asarray(pixels)
    columns, rows = pixels[:, 0], VIEW[1] - 1 - pixels[:, 1]
    r, c = np.nonzero(changed)
    inside = (c >= columns.min() - 2) & (c <= columns.max() + 2) & (r >= rows.min() - 2) & (r <= rows.max() + 2)
    assert inside.mean() > 0.99, "the 3D view draws surfaces outside the segmentation's bounds"


def test_grid_transform_drawn_as_a_grid_over_the_fixed_image(views: dict, shown: dict, tmp_path: Path) -> None:
    """GVSL Register's deformation display (grid mode, region = the fixed volume) draws coloured lines in
    the slice view over the fixed image, inside the region's bounds."""
    import GVSLRegister
    import slicer

    volume = shown["volume"]
    # A displacement field as gvsl register writes it (LPS mm on the fixed grid), read as the Logic reads it.
    fixed = sitk.ReadImage(volume.GetStorageNode().GetFileName())
    k = np.arange(SIZE[1])[None, :, None]
    field = np.zeros((SIZE[2], SIZE[1], SIZE[0], 3))
    field[..., 0] = 4.0 * np.sin(np.pi * k / (SIZE[1] - 1))  # mm along the grid's x, varying along its y
    displacement = sitk.GetImageFromArray(field, isVector=True)
    displacement.CopyInformation(fixed)
    path = tmp_path / "displacement.nii.gz"
    sitk.WriteImage(displacement, str(path))
    transform = slicer.util.loadTransform(str(path))
    assert transform.GetClassName() == "vtkMRMLGridTransformNode"
    transform.SetAttribute(GVSLRegister.ATTR_FIXED, volume.GetID())
    logic = GVSLRegister.GVSLRegisterLogic()
    view = views["red"]
    shown["segmentation"].GetDisplayNode().SetVisibility(False)
    try:
        view.fit()
        before = view.render().astype(float)
        logic.setDeformationDisplay(transform, "grid")
        after = view.render().astype(float)
    finally:
        logic.setDeformationDisplay(transform, "off")
        shown["segmentation"].GetDisplayNode().SetVisibility(True)
    lines = np.abs(after - before).max(-1) > 30
    assert lines.mean() > 0.01, "no grid lines were drawn"
    assert np.ptp(after[lines], axis=-1).mean() > 30, "grid lines are drawn in colour (by displacement)"
    # The grid covers the display region (the fixed volume's RAS bounding box), deformed by at most 4 mm.
    bounds = np.zeros(6)
    volume.GetRASBounds(bounds)
    low, high = bounds[0::2], bounds[1::2]
    rows, columns = np.nonzero(lines)
    xy = np.stack([columns, VIEW[1] - 1 - rows, np.zeros(rows.size), np.ones(rows.size)])
    xy_to_ras = np.array([[view.node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    ras = (xy_to_ras @ xy)[:3]
    margin = 4.0 + 2.0 * np.abs(xy_to_ras[:3, :2]).sum(axis=1)  # mm: the largest displacement and two pixels
    outside = np.any((ras < low[:, None] - margin[:, None]) | (ras > high[:, None] + margin[:, None]), axis=0)
    assert outside.sum() == 0, f"{outside.sum()} grid pixels lie outside the fixed volume's bounds"
    assert before.max(-1)[lines].mean() > 0, "the grid is drawn over the fixed image"


def test_jacobian_overlay_and_its_colour_legend_are_drawn(views: dict, shown: dict, tmp_path: Path) -> None:
    """GVSL Register's Jacobian overlay: the Jacobian over the fixed image in the diverging colours, and
    the colour legend drawn in the view (Slicer's legend manager shows it only for a volume on a layer)."""
    import GVSLRegister
    import slicer
    import vtk

    volume = shown["volume"]
    fixed = sitk.ReadImage(volume.GetStorageNode().GetFileName())
    k = np.arange(SIZE[2])[:, None, None]
    jacobian = np.broadcast_to(0.7 + 0.6 * k / (SIZE[2] - 1), (SIZE[2], SIZE[1], SIZE[0])).astype(np.float32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(jacobian))
    image.CopyInformation(fixed)
    sitk.WriteImage(image, str(tmp_path / "jacobian.nii.gz"))
    jacobian_node = slicer.util.loadVolume(str(tmp_path / "jacobian.nii.gz"), {"show": False})
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "phantom result")
    for attribute, node in ((GVSLRegister.ATTR_FIXED, volume), (GVSLRegister.ATTR_MOVING, volume),
                            (GVSLRegister.ATTR_JACOBIAN, jacobian_node)):
        transform.SetAttribute(attribute, node.GetID())
    logic = GVSLRegister.GVSLRegisterLogic()
    view = views["red"]
    shown["segmentation"].GetDisplayNode().SetVisibility(False)
    try:
        logic.showOverlay(transform, "jacobian", opacity=1.0)
        view.fit()
        legend = slicer.modules.colors.logic().GetColorLegendDisplayNode(jacobian_node)
        with_legend = view.render().astype(int)
        legend.SetVisibility(False)
        without_legend = view.render().astype(int)
        legend.SetVisibility(True)
    finally:
        logic.showOverlay(transform, "fader")
        shown["segmentation"].GetDisplayNode().SetVisibility(True)
    drawn = np.abs(with_legend - without_legend).max(-1) > 40
    assert drawn.mean() > 0.005, "the colour legend is not drawn"
    assert np.nonzero(drawn)[1].mean() > 0.6 * VIEW[0], "the legend is drawn on the right side"
    bar = with_legend[drawn]
    assert ((bar[:, 2] > 200) & (bar[:, 0] < 60)).any() and ((bar[:, 0] > 200) & (bar[:, 2] < 60)).any(), \
        "the legend shows the blue and the red end of the Jacobian colours"
    # At the view's centre the Jacobian (linear in k, the axial axis of this grid) shows as its colour in
    # the display node's table over the display node's window (foreground opacity 1).
    xy_to_ras = np.array([[view.node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    row, column = VIEW[1] // 2, VIEW[0] // 2
    ras = xy_to_ras @ np.array([column, VIEW[1] - 1 - row, 0.0, 1.0])
    k = (np.linalg.inv(ijk_to_ras(volume)) @ ras)[2]
    assert 1 <= k <= SIZE[2] - 2
    value = 0.7 + 0.6 * k / (SIZE[2] - 1)
    display = jacobian_node.GetDisplayNode()
    table = vtk.vtkLookupTable()
    table.DeepCopy(display.GetColorNode().GetLookupTable())
    table.SetTableRange(display.GetWindowLevelMin(), display.GetWindowLevelMax())
    rgb = [0.0, 0.0, 0.0]
    table.GetColor(value, rgb)
    expected = 255.0 * np.asarray(rgb)
    assert np.abs(without_legend[row, column] - expected).max() < 10, \
        f"J = {value:.3f}: pixel {without_legend[row, column]}, expected {expected.round()}"

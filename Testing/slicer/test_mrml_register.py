"""GVSL Register's Logic against Slicer's real MRML (slicer-core), end to end: the volumes and the moving
segmentation are exported from the scene by the Logic, a real ``gvsl register`` job runs (instance
optimization, no model), and its results come back as MRML nodes: the displacement field as a grid
transform, which moves points as SimpleITK does; the moving volume hardened through it matches the
warped output; the Jacobian and checkerboard overlays; the propagated segmentation on the fixed grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from GVSLLib import jobs, terminology
from slicer_testpaths import RESOURCES

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
SIZE, SPACING = (40, 36, 28), (1.9, 2.1, 2.6)


def direction() -> tuple[float, ...]:
    a = np.deg2rad(15.0)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]) @ np.diag([1.0, -1.0, -1.0])
    return tuple(rot.ravel())


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from gvslcore.labels import HEART_LABELS
    from gvslcore.phantom import make_pair
    from gvslcore.segfile import write_labels

    folder = tmp_path_factory.mktemp("pair")
    images = make_pair(11, SIZE, SPACING, direction(), max_displacement_mm=5.0)
    for name in ("fixed", "moving"):
        sitk.WriteImage(sitk.Cast(images[name], sitk.sitkInt16), str(folder / f"{name}.nrrd"))
    write_labels(images["moving_labels"], folder / "moving.seg.nrrd", HEART_LABELS)
    return {"folder": folder, **images}


@pytest.fixture(scope="module")
def registered(mrml, pair: dict) -> dict:
    """Load the pair, start the registration through the Logic, wait for the job, load its results."""
    import GVSLRegister
    import slicer

    mrml.clear()
    if not mrml.slice_logics:
        mrml.add_slice_views()
    fixed = slicer.util.loadVolume(str(pair["folder"] / "fixed.nrrd"))
    moving = slicer.util.loadVolume(str(pair["folder"] / "moving.nrrd"))
    moving_seg = slicer.util.loadSegmentation(str(pair["folder"] / "moving.seg.nrrd"))
    logic = GVSLRegister.GVSLRegisterLogic()
    job = logic.startRegistration(fixed, moving, "none", iterations=6, device="cpu", movingSegmentation=moving_seg)
    status = job.wait(timeout=240)
    job.poll()
    assert status == "done", f"gvsl register {status}: {job.status_info().get('message')}\n{job.log_tail(30)}"
    transform = logic.loadResults(job, fixed, moving)
    return {"logic": logic, "job": job, "fixed": fixed, "moving": moving, "moving_seg": moving_seg,
            "transform": transform, "result": Path(job.folder) / "result"}


def test_job_inputs_are_the_scene_volumes(registered: dict, pair: dict) -> None:
    """The Logic exported the volumes and segmentation from MRML; gvsl read them as the original files."""
    folder = Path(registered["job"].folder)
    for name in ("fixed", "moving"):
        written, original = sitk.ReadImage(str(folder / f"{name}.nrrd")), sitk.ReadImage(str(pair["folder"] / f"{name}.nrrd"))
        np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-4)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(original))
    from gvslcore.segfile import read_label_table

    assert [lab.name for lab in read_label_table(folder / "moving.seg.nrrd")] == \
        [lab.name for lab in terminology.heart_template(RESOURCES)]


def test_displacement_is_a_grid_transform_that_moves_points_like_simpleitk(registered: dict) -> None:
    import slicer

    transform = registered["transform"]
    assert transform.GetClassName() == "vtkMRMLGridTransformNode"
    assert registered["moving"].GetTransformNodeID() == transform.GetID()
    field = sitk.ReadImage(str(registered["result"] / "displacement.nii.gz"), sitk.sitkVectorFloat64)
    itk = sitk.DisplacementFieldTransform(sitk.Image(field))
    rng = np.random.default_rng(0)
    fixed = registered["fixed"]
    size = np.asarray(fixed.GetImageData().GetDimensions())
    from_parent = transform.GetTransformFromParent()  # world (fixed) -> moving: ITK's resampling direction
    to_parent = transform.GetTransformToParent()
    worst_forward = worst_inverse = 0.0
    moved = []
    for index in rng.uniform(0.2, 0.8, size=(40, 3)) * (size - 1):
        p_lps = np.asarray(field.TransformContinuousIndexToPhysicalPoint(index.tolist()))
        q_lps = np.asarray(itk.TransformPoint(p_lps.tolist()))
        q_ras = np.asarray(from_parent.TransformPoint((p_lps * LPS_TO_RAS).tolist()))
        worst_forward = max(worst_forward, float(np.abs(q_ras * LPS_TO_RAS - q_lps).max()))
        p_back = np.asarray(to_parent.TransformPoint((q_lps * LPS_TO_RAS).tolist())) * LPS_TO_RAS
        worst_inverse = max(worst_inverse, float(np.abs(p_back - p_lps).max()))
        moved.append(np.linalg.norm(q_lps - p_lps))
    assert np.median(moved) > 0.5, "the registration should move points"
    assert worst_forward < 0.1, f"MRML and SimpleITK disagree by {worst_forward:.3f} mm"
    assert worst_inverse < 0.1, f"the inverse (moving -> fixed) is off by {worst_inverse:.3f} mm"
    # slicer.util reads the field back as the array of the grid transform (RAS components).
    displacement = slicer.util.arrayFromGridTransform(transform)
    np.testing.assert_allclose(displacement * LPS_TO_RAS, sitk.GetArrayViewFromImage(field), atol=1e-4)


def test_affine_is_a_linear_transform_like_simpleitk(registered: dict) -> None:
    import slicer
    import vtk

    path = registered["result"] / "affine.tfm"
    node = slicer.util.loadTransform(str(path))
    assert node.GetClassName() == "vtkMRMLLinearTransformNode"
    itk = sitk.ReadTransform(str(path))
    matrix = vtk.vtkMatrix4x4()
    node.GetMatrixTransformFromParent(matrix)
    from_parent = slicer.util.arrayFromVTKMatrix(matrix)
    for p in np.random.default_rng(1).uniform(-40, 40, size=(10, 3)):
        q_ras = from_parent @ np.append(p * LPS_TO_RAS, 1.0)
        np.testing.assert_allclose(q_ras[:3] * LPS_TO_RAS, itk.TransformPoint(p.tolist()), atol=1e-3)


def test_hardened_moving_volume_matches_the_warped_output(registered: dict) -> None:
    import slicer
    import vtk

    moving = registered["moving"]
    clone = slicer.modules.volumes.logic().CloneVolume(slicer.mrmlScene, moving, "moving hardened")
    clone.SetAndObserveTransformNodeID(registered["transform"].GetID())
    clone.HardenTransform()
    assert clone.GetTransformNodeID() is None
    warped_node = slicer.mrmlScene.GetNodeByID(registered["transform"].GetAttribute("GVSL.WarpedVolumeID"))
    warped = slicer.util.arrayFromVolume(warped_node).astype(np.float32)
    # Hardening resamples onto a new lattice that covers the warped volume. On that lattice, ITK warping the
    # moving file through gvsl's displacement field must give the same voxels (both interpolate linearly).
    ijk_to_ras = vtk.vtkMatrix4x4()
    clone.GetIJKToRASMatrix(ijk_to_ras)
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ slicer.util.arrayFromVTKMatrix(ijk_to_ras)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    hardened = slicer.util.arrayFromVolume(clone).astype(np.float32)
    reference = sitk.Image(hardened.shape[::-1], sitk.sitkFloat32)
    reference.SetSpacing(spacing.tolist())
    reference.SetDirection((ijk_to_lps[:3, :3] / spacing).ravel().tolist())
    reference.SetOrigin(ijk_to_lps[:3, 3].tolist())
    field = sitk.ReadImage(str(registered["result"] / "displacement.nii.gz"), sitk.sitkVectorFloat64)
    moving_file = sitk.ReadImage(str(Path(registered["job"].folder) / "moving.nrrd"), sitk.sitkFloat32)
    itk = sitk.GetArrayFromImage(sitk.Resample(moving_file, reference, sitk.DisplacementFieldTransform(sitk.Image(field)),
                                               sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    # Only where the field is defined (ITK is 0 outside the fixed grid, VTK extrapolates).
    ones = sitk.Image(field.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(field)
    inside = sitk.GetArrayFromImage(sitk.Resample(ones, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    inside = ndimage.binary_erosion(inside, iterations=2)
    difference = np.abs(hardened - itk)[inside]
    print(f"hardened (MRML) vs ITK on the hardened grid: median {np.median(difference):.3f} HU, "
          f"99th percentile {np.percentile(difference, 99):.2f} HU over {inside.sum()} voxels")
    assert inside.sum() > 0.3 * inside.size
    assert np.percentile(difference, 99) < 1.0  # HU: the int16 volume rounds the interpolated values
    # And on the fixed grid the hardened volume shows what gvsl wrote as warped.nii.gz.
    to_hardened = np.linalg.inv(slicer.util.arrayFromVTKMatrix(ijk_to_ras))
    warped_ijk_to_ras = vtk.vtkMatrix4x4()
    warped_node.GetIJKToRASMatrix(warped_ijk_to_ras)
    to_hardened = to_hardened @ slicer.util.arrayFromVTKMatrix(warped_ijk_to_ras)
    k, j, i = np.indices(warped.shape).reshape(3, -1)
    ijk = to_hardened[:3, :3] @ np.stack([i, j, k]) + to_hardened[:3, 3:4]
    sampled = ndimage.map_coordinates(hardened, ijk[::-1], order=1, mode="nearest").reshape(warped.shape)
    inner = (slice(3, -3),) * 3
    difference = np.abs(sampled - warped)[inner]
    assert np.corrcoef(sampled[inner].ravel(), warped[inner].ravel())[0, 1] > 0.995
    assert np.median(difference) < 10.0  # HU: one more linear resampling of a noisy CT-like phantom


def test_jacobian_overlay_uses_the_diverging_colour_table(registered: dict) -> None:
    import slicer

    logic, transform = registered["logic"], registered["transform"]
    logic.showOverlay(transform, "jacobian", opacity=0.4)
    jacobian = slicer.mrmlScene.GetNodeByID(transform.GetAttribute("GVSL.JacobianVolumeID"))
    display = jacobian.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
    assert display.GetColorNode() is not None and display.GetColorNode().GetName() == "DivergingBlueRed"
    low, high = display.GetWindowLevelMin(), display.GetWindowLevelMax()
    assert low < 1.0 < high and abs((low + high) / 2 - 1.0) < 1e-3  # centred on "no volume change"
    legend = slicer.modules.colors.logic().GetColorLegendDisplayNode(jacobian)
    assert legend is not None and legend.GetVisibility() and legend.GetTitleText() == "Jacobian determinant"
    composites = slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode")
    assert composites and all(c.GetForegroundVolumeID() == jacobian.GetID() for c in composites)
    assert all(c.GetBackgroundVolumeID() == registered["fixed"].GetID() for c in composites)
    assert all(abs(c.GetForegroundOpacity() - 0.4) < 1e-6 for c in composites)
    field = sitk.ReadImage(str(registered["result"] / "jacobian.nii.gz"))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(jacobian), sitk.GetArrayViewFromImage(field), rtol=1e-6)
    logic.showOverlay(transform, "fader")
    assert not legend.GetVisibility()


def test_checkerboard_overlay(registered: dict) -> None:
    import slicer

    from GVSLLib import imaging

    logic, transform = registered["logic"], registered["transform"]
    logic.showOverlay(transform, "checkerboard", squares=4)
    board = slicer.mrmlScene.GetFirstNodeByName(f"{transform.GetName()} checkerboard")
    assert board is not None and board.GetClassName() == "vtkMRMLScalarVolumeNode"
    fixed = registered["fixed"]
    warped = slicer.mrmlScene.GetNodeByID(transform.GetAttribute("GVSL.WarpedVolumeID"))
    expected = imaging.checkerboard(slicer.util.arrayFromVolume(fixed), slicer.util.arrayFromVolume(warped), 4)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(board), expected)
    np.testing.assert_allclose(board.GetSpacing(), fixed.GetSpacing())
    assert all(c.GetBackgroundVolumeID() == board.GetID() for c in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"))


def test_deformation_display_modes(registered: dict) -> None:
    import slicer

    logic, transform = registered["logic"], registered["transform"]
    for mode, constant in (("grid", "VIS_MODE_GRID"), ("glyph", "VIS_MODE_GLYPH"), ("contour", "VIS_MODE_CONTOUR")):
        logic.setDeformationDisplay(transform, mode)
        display = transform.GetDisplayNode()
        assert display.GetClassName() == "vtkMRMLTransformDisplayNode"
        assert display.GetVisualizationMode() == getattr(slicer.vtkMRMLTransformDisplayNode, constant)
        assert display.GetVisibility() and display.GetVisibility2D() and not display.GetVisibility3D()
        assert display.GetRegionNode() is registered["fixed"]
    assert display.GetContourLevelsMmAsString().split() == ["1", "2", "3", "5", "8", "13"]
    logic.setDeformationDisplay(transform, "off")
    assert not transform.GetDisplayNode().GetVisibility()


def test_metrics_travel_with_the_transform(registered: dict) -> None:
    metrics = registered["logic"].metrics(registered["transform"])
    assert metrics == json.loads((registered["result"] / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["ncc"]["after"] > metrics["ncc"]["before"]


def _labels_on(segmentation, volume) -> np.ndarray:
    from GVSLLib import slicerglue

    array, _, unmatched = slicerglue.segment_label_map(segmentation, volume, terminology.heart_template(RESOURCES))
    assert not unmatched
    return array


def test_propagated_segmentation_is_on_the_fixed_grid(registered: dict) -> None:
    import slicer

    fixed = registered["fixed"]
    nodes = [n for n in slicer.util.getNodesByClass("vtkMRMLSegmentationNode") if "segmentation on" in n.GetName()]
    assert len(nodes) == 1, [n.GetName() for n in slicer.util.getNodesByClass("vtkMRMLSegmentationNode")]
    propagated = nodes[0]
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert propagated.GetNodeReference(role) is fixed
    names = [propagated.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(propagated.GetSegmentation().GetNumberOfSegments())]
    assert set(names) <= {lab.name for lab in terminology.heart_template(RESOURCES)} and len(names) >= 6
    # The node holds exactly the label map gvsl wrote on the fixed grid.
    written = sitk.ReadImage(str(registered["result"] / "propagated.seg.nrrd"))
    np.testing.assert_array_equal(_labels_on(propagated, fixed), sitk.GetArrayViewFromImage(written))


def test_propagate_in_mrml_agrees_with_gvsl(registered: dict) -> None:
    """GVSLRegisterLogic.propagateSegmentation (MRML hardens the moving segmentation through the grid
    transform) lands where gvsl's own propagation (SimpleITK nearest neighbour) does."""
    logic, fixed = registered["logic"], registered["fixed"]
    result = logic.propagateSegmentation(registered["moving_seg"], registered["transform"])
    assert result is not registered["moving_seg"] and result.GetTransformNodeID() is None
    mrml_labels = _labels_on(result, fixed)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(registered["result"] / "propagated.seg.nrrd")))
    for value in range(1, 8):
        a, b = mrml_labels == value, written == value
        if b.sum() < 20:
            continue
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice > 0.85, f"label {value}: Dice {dice:.3f} between MRML and gvsl propagation"
    # The input segmentation is left as it was.
    assert registered["moving_seg"].GetTransformNodeID() is None


def test_job_is_a_real_finished_job(registered: dict) -> None:
    job = jobs.attach(registered["job"].folder)
    job.poll()
    assert job.status == "done" and job.progress.outputs and "displacement" in job.progress.outputs
    assert job.progress.history, "instance optimization reports its losses"

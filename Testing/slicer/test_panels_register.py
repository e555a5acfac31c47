"""GVSL Register's panel, clicked as a user would (offscreen, see slicer_panels): two phantom volumes and a
moving segmentation in slicer-core's real MRML scene, the selectors set, few iterations on the slider,
Register clicked, Qt events processed until the ``gvsl register`` job (a real subprocess with the bundled
gvsl-pretrained-ct model) ends; then the deformation display, the Jacobian / checkerboard / warped overlays,
the fader and the propagation, each toggled from the panel.

Skipped, with the reason, when slicer-core is not installed (the ``mrml`` fixture).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from GVSLLib import jobs

JOB_TIMEOUT = 240  # seconds; a safety net, not a timing assertion


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from gvslcore.labels import HEART_LABELS
    from gvslcore.phantom import make_pair
    from gvslcore.segfile import write_labels

    folder = tmp_path_factory.mktemp("register_panel")
    images = make_pair(5, (40, 36, 28), (2.0, 2.2, 2.6), max_displacement_mm=5.0)
    for name in ("fixed", "moving"):
        sitk.WriteImage(sitk.Cast(images[name], sitk.sitkInt16), str(folder / f"{name}.nrrd"))
    write_labels(images["moving_labels"], folder / "moving.seg.nrrd", HEART_LABELS)
    return {"fixed": folder / "fixed.nrrd", "moving": folder / "moving.nrrd", "labels": folder / "moving.seg.nrrd"}


def _composites() -> list:
    import slicer

    nodes = slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode")
    assert nodes, "no slice views"
    return nodes


def _segmentations() -> list:
    import slicer

    return [n for n in slicer.util.getNodesByClass("vtkMRMLSegmentationNode") if not n.GetHideFromEditors()]


def test_register_then_toggle_every_view_from_the_panel(panel_env, pair_files) -> None:
    import slicer

    env = panel_env
    if not env.mrml.slice_logics:
        env.mrml.add_slice_views()
    panel = env.open("GVSLRegister")
    ui = panel.ui
    fixed = slicer.util.loadVolume(str(pair_files["fixed"]))
    moving = slicer.util.loadVolume(str(pair_files["moving"]))
    moving_seg = slicer.util.loadSegmentation(str(pair_files["labels"]))

    # Both selectors show the first volume: the same volume twice cannot be registered.
    assert ui.fixedVolumeSelector.currentNode() is fixed and ui.movingVolumeSelector.currentNode() is fixed
    assert not ui.registerButton.enabled
    ui.movingVolumeSelector.setCurrentNode(moving)
    assert ui.registerButton.enabled
    assert ui.modelComboBox.currentData == "gvsl-pretrained-ct"  # bundled, nothing installed
    ui.iterationsSliderWidget.value = 4
    ui.movingSegmentationSelector.setCurrentNode(moving_seg)
    for button in (ui.deformationGridRadioButton, ui.overlayJacobianRadioButton, ui.faderSlider):
        assert not button.enabled  # no result yet
    assert ui.metricsLabel.text == "-"

    ui.registerButton.click()
    assert panel.widget.runner.busy and not ui.registerButton.enabled
    env.wait_until(lambda: not panel.widget.runner.busy, JOB_TIMEOUT, "the registration job")
    assert env.messages == [], env.messages
    assert ui.statusLabel.text == "Done", ui.statusLabel.text

    # The result: a grid transform applied to the moving volume, chosen in the Results selector.
    transform = ui.outputTransformSelector.currentNode()
    assert transform is not None and transform.GetAttribute("GVSL.JobFolder")
    assert transform.GetClassName() == "vtkMRMLGridTransformNode"
    assert moving.GetTransformNodeID() == transform.GetID()
    argv = jobs.Job(transform.GetAttribute("GVSL.JobFolder")).spec["argv"]
    assert argv[argv.index("--iterations") + 1] == "4"  # the slider's value
    from GVSLLib import slicerglue

    assert slicerglue.job_python() == sys.executable  # jobs run in this (the venv's) Python, PythonSlicer in Slicer
    assert ui.metricsLabel.text not in ("-", "no metrics"), ui.metricsLabel.text
    # gvsl register's warnings (folding, poor similarity, modality) show under the quality line.
    metrics = panel.widget.logic.metrics(transform)
    assert "warnings" in metrics and ui.metricsWarningLabel.visible == bool(metrics["warnings"])
    for warning in metrics["warnings"]:
        assert f"Warning: {warning}" in ui.metricsWarningLabel.text
    folded = {**metrics, "warnings": ["the field folds in 2 % of voxels; raise --smooth-weight (now 3)"]}
    transform.SetAttribute("GVSL.Metrics", json.dumps(folded))
    panel.widget.onResultChanged(transform)
    assert ui.metricsWarningLabel.visible
    assert ui.metricsWarningLabel.text == "Warning: the field folds in 2 % of voxels; raise --smooth-weight (now 3)"
    transform.SetAttribute("GVSL.Metrics", json.dumps(metrics))
    panel.widget.onResultChanged(transform)
    for widget in (ui.deformationOffRadioButton, ui.deformationGridRadioButton, ui.deformationGlyphRadioButton,
                   ui.deformationContourRadioButton, ui.overlayWarpedRadioButton, ui.overlayJacobianRadioButton,
                   ui.overlayCheckerboardRadioButton, ui.faderSlider):
        assert widget.enabled
    # gvsl register propagated the moving segmentation itself (chosen before the run).
    propagated_by_job = [n for n in _segmentations() if n is not moving_seg]
    assert len(propagated_by_job) == 1 and propagated_by_job[0].GetName().endswith(f"on {fixed.GetName()}")
    assert propagated_by_job[0].GetSegmentation().GetNumberOfSegments() == 7

    # Deformation: grid, glyphs, contours, off.
    display = transform.GetDisplayNode()
    modes = {ui.deformationGridRadioButton: slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID,
             ui.deformationGlyphRadioButton: slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GLYPH,
             ui.deformationContourRadioButton: slicer.vtkMRMLTransformDisplayNode.VIS_MODE_CONTOUR}
    for button, mode in modes.items():
        button.click()
        display = transform.GetDisplayNode()
        assert display.GetVisualizationMode() == mode
        assert display.GetVisibility() and display.GetVisibility2D()
        assert display.GetRegionNode() is fixed
    assert display.GetContourLevelsMmAsString().split()[:3] == ["1", "2", "3"]
    ui.deformationOffRadioButton.click()
    assert not transform.GetDisplayNode().GetVisibility()

    # Overlays over the fixed volume: warped moving (after the run), Jacobian with its legend, checkerboard.
    for composite in _composites():
        assert composite.GetBackgroundVolumeID() == fixed.GetID()
        assert composite.GetForegroundVolumeID() == moving.GetID()
    jacobian = slicer.mrmlScene.GetNodeByID(transform.GetAttribute("GVSL.JacobianVolumeID"))
    ui.overlayJacobianRadioButton.click()
    for composite in _composites():
        assert composite.GetBackgroundVolumeID() == fixed.GetID()
        assert composite.GetForegroundVolumeID() == jacobian.GetID()
    assert jacobian.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
    legend = slicer.modules.colors.logic().GetColorLegendDisplayNode(jacobian)
    assert legend is not None and legend.GetVisibility()
    assert ui.faderSlider.enabled and not ui.checkerboardSquaresSpinBox.enabled

    ui.overlayCheckerboardRadioButton.click()
    board = slicer.mrmlScene.GetFirstNodeByName(f"{transform.GetName()} checkerboard")
    assert board is not None
    for composite in _composites():
        assert composite.GetBackgroundVolumeID() == board.GetID()
        assert not composite.GetForegroundVolumeID()
    assert not legend.GetVisibility()
    assert not ui.faderSlider.enabled and ui.checkerboardSquaresSpinBox.enabled
    pattern = slicer.util.arrayFromVolume(board).copy()
    ui.checkerboardSquaresSpinBox.value = ui.checkerboardSquaresSpinBox.value + 4
    assert not np.array_equal(slicer.util.arrayFromVolume(board), pattern), "the squares did not change"

    ui.overlayWarpedRadioButton.click()
    for composite in _composites():
        assert composite.GetBackgroundVolumeID() == fixed.GetID()
        assert composite.GetForegroundVolumeID() == moving.GetID()
    # The fader blends fixed and overlay.
    ui.faderSlider.value = 30
    for composite in _composites():
        assert composite.GetForegroundOpacity() == pytest.approx(0.30)

    # Propagate segmentation: a segmentation of the moving volume onto the fixed one.
    assert not ui.propagateButton.enabled
    ui.propagateSegmentationSelector.setCurrentNode(moving_seg)
    assert ui.propagateButton.enabled
    count = len(_segmentations())
    ui.propagateButton.click()
    assert len(_segmentations()) == count + 1
    result = _segmentations()[-1]
    assert result is not moving_seg and result.GetTransformNodeID() is None  # hardened onto the fixed volume
    assert result.GetName() == f"{moving_seg.GetName()} on {fixed.GetName()}"
    assert ui.statusLabel.text == f"Propagated: {result.GetName()}"
    assert moving_seg.GetTransformNodeID() is None  # the input is kept as it was
    assert env.messages == []

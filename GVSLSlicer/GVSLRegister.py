"""GVSL Register: deformable registration of a moving volume onto a fixed volume with a GVSL network.

``gvsl register`` runs in a separate process and writes a displacement field (physical LPS mm,
backward mapping: ITK's convention, which Slicer reads as a resampling transform), the warped
moving volume, the Jacobian determinant and metrics. This panel applies the transform to the moving
volume and offers the usual ways to judge a registration: deformation glyphs, grid or contours,
the Jacobian as a colour overlay with a legend, a fader and a checkerboard, NCC and folding.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from GVSLLib import commands, imaging, jobs, models, slicerglue

logger = logging.getLogger(__name__)

# Node attributes that tie a transform to the job that produced it.
ATTR_JOB = "GVSL.JobFolder"
ATTR_FIXED = "GVSL.FixedVolumeID"
ATTR_MOVING = "GVSL.MovingVolumeID"
ATTR_JACOBIAN = "GVSL.JacobianVolumeID"
ATTR_WARPED = "GVSL.WarpedVolumeID"
ATTR_METRICS = "GVSL.Metrics"

DEFORMATION_MODES = ("off", "grid", "glyph", "contour")


class GVSLRegister(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "GVSL Register"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["GVSL for 3D Slicer contributors"]
        self.parent.helpText = (
            "Deformable registration with a pre-trained GVSL network (Z-Matching head: affine plus "
            "deformable), optionally refined by instance optimization. Shows the deformation, the Jacobian "
            "determinant, a fader and a checkerboard, and maps segmentations from the moving to the fixed volume."
        )
        self.parent.acknowledgementText = "Based on Geometric Visual Similarity Learning (Y. He et al., CVPR 2023)."
        slicerglue.set_module_icon(self.parent, "GVSLRegister")


class GVSLRegisterWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.runner = None
        self.pending = None
        self.modelEntries = []

    def onReload(self):
        slicerglue.reload_lib()
        ScriptedLoadableModuleWidget.onReload(self)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.uiWidget, self.ui = slicerglue.load_ui(self, "GVSLRegister")
        self.logic = GVSLRegisterLogic()

        slicerglue.fill_device_combo(self.ui.deviceComboBox)
        self.runner = slicerglue.JobRunner(self.ui.progressBar, self.ui.statusLabel, self.ui.cancelButton,
                                           self.ui.logTextEdit, self.onJobFinished)
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.fixedVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        self.ui.movingVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        self.ui.outputTransformSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onResultChanged)
        for button in (self.ui.deformationOffRadioButton, self.ui.deformationGridRadioButton,
                       self.ui.deformationGlyphRadioButton, self.ui.deformationContourRadioButton):
            button.connect("toggled(bool)", self.onDeformationMode)
        for button in (self.ui.overlayWarpedRadioButton, self.ui.overlayJacobianRadioButton,
                       self.ui.overlayCheckerboardRadioButton):
            button.connect("toggled(bool)", self.onOverlayMode)
        self.ui.faderSlider.connect("valueChanged(int)", self.onFader)
        self.ui.checkerboardSquaresSpinBox.connect("valueChanged(int)", self.onOverlayMode)
        self.ui.propagateButton.connect("clicked(bool)", self.onPropagate)
        self.ui.propagateSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)

        self.deviceTimer = qt.QTimer()
        self.deviceTimer.setInterval(1000)
        self.deviceTimer.connect("timeout()", self.onDeviceTimer)
        self.deviceTimer.start()
        self.refreshModels()
        self.onResultChanged(None)

    def cleanup(self):
        self.removeObservers()
        if self.runner:
            self.runner.stop()
        self.deviceTimer.stop()

    def enter(self):
        self.refreshModels()
        self.updateButtons()

    def onDeviceTimer(self):
        # The device combo's label is the tooltip here: the panel is already long.
        info = slicerglue.poll_device_info()
        if info is not None:
            self.ui.deviceComboBox.toolTip = info.summary()
            self.deviceTimer.setInterval(5000)
        if slicerglue.catalog_changed():
            self.refreshModels()

    def refreshModels(self):
        self.modelEntries = [e for e in slicerglue.all_models() if e.task == "pretrain"]
        slicerglue.fill_model_combo(self.ui.modelComboBox, self.modelEntries,
                                    "No pre-trained model: import one or pre-train in GVSL Train")
        self.updateButtons()

    def selectedModel(self):
        modelId = self.ui.modelComboBox.currentData
        return next((e for e in self.modelEntries if e.id == modelId), None)

    def onImportModel(self):
        entry = slicerglue.import_model_dialog(slicer.util.mainWindow())
        if entry is not None:
            self.refreshModels()
            self.ui.modelComboBox.setCurrentIndex(self.ui.modelComboBox.findData(entry.id))

    def updateButtons(self, *args):
        fixed = self.ui.fixedVolumeSelector.currentNode()
        moving = self.ui.movingVolumeSelector.currentNode()
        busy = self.runner is not None and self.runner.busy
        ready = fixed is not None and moving is not None and fixed is not moving and self.selectedModel() is not None
        self.ui.registerButton.enabled = ready and not busy
        transform = self.ui.outputTransformSelector.currentNode()
        self.ui.propagateButton.enabled = (transform is not None
                                           and self.ui.propagateSegmentationSelector.currentNode() is not None)

    # -- run ---------------------------------------------------------------------------------------
    def onRegister(self):
        fixed = self.ui.fixedVolumeSelector.currentNode()
        moving = self.ui.movingVolumeSelector.currentNode()
        entry = self.selectedModel()
        if fixed is None or moving is None or entry is None:
            slicer.util.errorDisplay("Select a fixed volume, a moving volume and a model.")
            return
        if not slicerglue.ensure_dependencies():
            return
        if not entry.installed:
            with slicer.util.tryWithErrorDisplay("Could not start the download.", waitCursor=True):
                job = slicerglue.download_or_explain(entry)
                if job is not None:
                    self.pending = {"kind": "download"}
                    self.runner.watch(job)
                    self.updateButtons()
            return
        device = slicerglue.device_argument(self.ui.deviceComboBox)
        if device is None:
            return
        movingSegmentation = self.ui.movingSegmentationSelector.currentNode()
        with slicer.util.tryWithErrorDisplay("Could not start the registration.", waitCursor=True):
            job = self.logic.startRegistration(fixed, moving, entry.path, int(self.ui.iterationsSliderWidget.value),
                                               device, movingSegmentation)
            self.pending = {"kind": "register", "fixed": fixed, "moving": moving}
            self.runner.watch(job)
            self.updateButtons()

    def onJobFinished(self, job, status):
        pending, self.pending = self.pending or {}, None
        kind = pending.get("kind", "register")
        self.updateButtons()
        if status == "failed":
            slicerglue.report_failure(job, "Model download" if kind == "download" else "Registration")
            return
        if status != "done" or not pending:
            return
        if kind == "download":
            self.refreshModels()
            self.ui.statusLabel.text = "Model downloaded: press Register"
            return
        with slicer.util.tryWithErrorDisplay("Could not load the registration result.", waitCursor=True):
            transform = self.logic.loadResults(job, pending["fixed"], pending["moving"])
            self.ui.outputTransformSelector.setCurrentNode(transform)
            self.ui.overlayWarpedRadioButton.checked = True
            self.onOverlayMode()

    # -- results -----------------------------------------------------------------------------------
    def onResultChanged(self, node):
        hasResult = node is not None and node.GetAttribute(ATTR_JOB) is not None
        for widget in (self.ui.deformationOffRadioButton, self.ui.deformationGridRadioButton,
                       self.ui.deformationGlyphRadioButton, self.ui.deformationContourRadioButton,
                       self.ui.overlayWarpedRadioButton, self.ui.overlayJacobianRadioButton,
                       self.ui.overlayCheckerboardRadioButton, self.ui.faderSlider,
                       self.ui.checkerboardSquaresSpinBox):
            widget.enabled = hasResult
        metrics = self.logic.metrics(node) if hasResult else {}
        self.ui.metricsLabel.text = imaging.metrics_text(metrics) if hasResult else "-"
        warnings = imaging.metrics_warnings(metrics)
        self.ui.metricsWarningLabel.text = "\n".join(f"Warning: {w}" for w in warnings)
        self.ui.metricsWarningLabel.visible = bool(warnings)
        if hasResult:
            self.onDeformationMode()
        self.updateButtons()

    def currentDeformationMode(self):
        buttons = (self.ui.deformationOffRadioButton, self.ui.deformationGridRadioButton,
                   self.ui.deformationGlyphRadioButton, self.ui.deformationContourRadioButton)
        return next(mode for mode, button in zip(DEFORMATION_MODES, buttons) if button.checked)

    def onDeformationMode(self, *args):
        transform = self.ui.outputTransformSelector.currentNode()
        if transform is not None:
            self.logic.setDeformationDisplay(transform, self.currentDeformationMode())

    def onOverlayMode(self, *args):
        transform = self.ui.outputTransformSelector.currentNode()
        if transform is None or transform.GetAttribute(ATTR_JOB) is None:
            return
        if self.ui.overlayJacobianRadioButton.checked:
            mode = "jacobian"
        elif self.ui.overlayCheckerboardRadioButton.checked:
            mode = "checkerboard"
        else:
            mode = "warped"
        self.ui.faderSlider.enabled = mode != "checkerboard"
        self.ui.checkerboardSquaresSpinBox.enabled = mode == "checkerboard"
        with slicer.util.tryWithErrorDisplay("Could not show the overlay."):
            self.logic.showOverlay(transform, mode, self.ui.faderSlider.value / 100.0,
                                   self.ui.checkerboardSquaresSpinBox.value)

    def onFader(self, value):
        self.logic.setFader(value / 100.0)

    def onPropagate(self):
        transform = self.ui.outputTransformSelector.currentNode()
        segmentation = self.ui.propagateSegmentationSelector.currentNode()
        if transform is None or segmentation is None:
            return
        with slicer.util.tryWithErrorDisplay("Could not propagate the segmentation.", waitCursor=True):
            result = self.logic.propagateSegmentation(segmentation, transform)
            self.ui.statusLabel.text = f"Propagated: {result.GetName()}"


class GVSLRegisterLogic(ScriptedLoadableModuleLogic):
    """Starts ``gvsl register`` jobs and shows their results."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def startRegistration(self, fixed, moving, modelPath, iterations=40, device="auto", movingSegmentation=None):
        movingLabels = "moving.seg.nrrd" if movingSegmentation is not None else None
        args = commands.register_args("fixed.nrrd", "moving.nrrd", modelPath, "result", iterations, device, movingLabels)

        def prepare(job):
            slicerglue.export_volume(fixed, job.folder / "fixed.nrrd")
            slicerglue.export_volume(moving, job.folder / "moving.nrrd")
            if movingSegmentation is not None:
                slicerglue.export_segmentation(movingSegmentation, moving, job.folder / movingLabels)
            return []

        return slicerglue.start_gvsl_job(
            "register", f"Register {moving.GetName()} to {fixed.GetName()}", args,
            meta={"fixed": fixed.GetName(), "moving": moving.GetName(), "model": modelPath, "output": "result"},
            prepare=prepare)

    @staticmethod
    def resultFile(job, key, name):
        """An output of the job: the path its done event gives, else ``result/<name>``."""
        path = Path((job.progress.outputs or {}).get(key) or Path(job.meta.get("output", "result")) / name)
        return path if path.is_absolute() else job.folder / path

    def loadResults(self, job, fixed, moving):
        """Load the transform (applied to the moving volume), the Jacobian, the warped volume, metrics."""
        displacement = self.resultFile(job, "displacement", "displacement.nii.gz")
        folder = displacement.parent
        if not displacement.is_file():
            raise RuntimeError(f"the registration finished without writing {displacement}")
        transform = slicer.util.loadTransform(str(displacement))
        # Slicer interpolates a grid transform with cubic splines by default; gvsl (ITK) warped the moving
        # volume and the labels and measured the metrics with the field interpolated linearly: use that.
        grid = transform.GetTransformFromParent()
        if hasattr(grid, "SetInterpolationModeToLinear"):
            grid.SetInterpolationModeToLinear()
        transform.SetName(slicer.mrmlScene.GenerateUniqueName(f"{moving.GetName()} to {fixed.GetName()} (GVSL)"))
        # The field maps fixed points to moving points (ITK's resampling transform): as the moving
        # volume's parent it brings the moving volume onto the fixed one.
        moving.SetAndObserveTransformNodeID(transform.GetID())
        transform.SetAttribute(ATTR_JOB, str(job.folder))
        transform.SetAttribute(ATTR_FIXED, fixed.GetID())
        transform.SetAttribute(ATTR_MOVING, moving.GetID())

        jacobianPath = self.resultFile(job, "jacobian", "jacobian.nii.gz")
        if jacobianPath.is_file():
            jacobian = slicer.util.loadVolume(str(jacobianPath), {"show": False, "name": f"{transform.GetName()} Jacobian"})
            transform.SetAttribute(ATTR_JACOBIAN, jacobian.GetID())
        warpedPath = self.resultFile(job, "warped", "warped.nii.gz")
        if warpedPath.is_file():
            warped = slicer.util.loadVolume(str(warpedPath), {"show": False, "name": f"{moving.GetName()} warped (GVSL)"})
            transform.SetAttribute(ATTR_WARPED, warped.GetID())
        metrics = imaging.read_metrics(folder)
        transform.SetAttribute(ATTR_METRICS, json.dumps(metrics))
        # A .seg.nrrd with names; a plain label map when the labels could not be named.
        propagatedPath = self.resultFile(job, "propagated", "propagated.seg.nrrd")
        if propagatedPath.is_file():
            propagated = slicer.util.loadSegmentation(str(propagatedPath))
            propagated.SetName(slicer.mrmlScene.GenerateUniqueName(f"{moving.GetName()} segmentation on {fixed.GetName()}"))
            slicerglue.apply_labels(propagated, slicerglue.heart_template())
            slicerglue.show_segmentation(propagated, fixed)
        slicer.util.setSliceViewerLayers(background=fixed, foreground=moving, foregroundOpacity=0.5, fit=True)
        return transform

    @staticmethod
    def metrics(transform):
        text = transform.GetAttribute(ATTR_METRICS) if transform is not None else None
        try:
            return json.loads(text) if text else {}
        except ValueError:
            return {}

    @staticmethod
    def _node(transform, attribute):
        nodeId = transform.GetAttribute(attribute)
        return slicer.mrmlScene.GetNodeByID(nodeId) if nodeId else None

    def setDeformationDisplay(self, transform, mode):
        """Show the deformation in the slice views as a grid, glyphs or contours (or hide it)."""
        transform.CreateDefaultDisplayNodes()
        display = transform.GetDisplayNode()
        if mode == "off":
            display.SetVisibility(False)
            return
        modes = {
            "grid": slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID,
            "glyph": slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GLYPH,
            "contour": slicer.vtkMRMLTransformDisplayNode.VIS_MODE_CONTOUR,
        }
        display.SetVisualizationMode(modes[mode])
        fixed = self._node(transform, ATTR_FIXED)
        if fixed is not None:
            display.SetAndObserveRegionNode(fixed)
        if mode == "contour":
            display.SetContourLevelsMmFromString("1 2 3 5 8 13")
        display.SetVisibility(True)
        display.SetVisibility2D(True)
        display.SetVisibility3D(False)

    def showOverlay(self, transform, mode, opacity=0.5, squares=8):
        """Slice views: fixed below, and above it the warped moving volume, the Jacobian or a checkerboard."""
        fixed = self._node(transform, ATTR_FIXED)
        moving = self._node(transform, ATTR_MOVING)
        if fixed is None or moving is None:
            raise RuntimeError("the fixed or moving volume of this result is no longer in the scene")
        jacobian = self._node(transform, ATTR_JACOBIAN)
        if mode == "jacobian":
            if jacobian is None:
                raise RuntimeError("this result has no Jacobian volume")
            self._styleJacobian(jacobian)
            slicer.util.setSliceViewerLayers(background=fixed, foreground=jacobian, foregroundOpacity=opacity)
        elif mode == "checkerboard":
            board = self.checkerboardVolume(transform, squares)
            slicer.util.setSliceViewerLayers(background=board, foreground=None, foregroundOpacity=0.0)
        else:
            slicer.util.setSliceViewerLayers(background=fixed, foreground=moving, foregroundOpacity=opacity)
        # After the layers: the colour legend displayable manager decides whether a volume's legend is
        # drawn in a slice view when the legend node changes, from the layers the view shows at that
        # moment; a legend shown before the Jacobian became the foreground stayed hidden.
        self._setLegendVisible(jacobian, mode == "jacobian")

    @staticmethod
    def setFader(opacity):
        for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            composite.SetForegroundOpacity(opacity)

    @staticmethod
    def _styleJacobian(jacobian):
        display = jacobian.GetDisplayNode()
        if display is None:
            jacobian.CreateDefaultDisplayNodes()
            display = jacobian.GetDisplayNode()
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileDivergingBlueRed.txt")
        low, high = imaging.jacobian_window(slicer.util.arrayFromVolume(jacobian))
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(low, high)

    @staticmethod
    def _setLegendVisible(jacobian, visible):
        if jacobian is None:
            return
        colorLogic = slicer.modules.colors.logic()
        legend = colorLogic.GetColorLegendDisplayNode(jacobian)
        if legend is None and visible:
            legend = colorLogic.AddDefaultColorLegendDisplayNode(jacobian)
            legend.SetTitleText("Jacobian determinant")
        if legend is not None:
            legend.SetVisibility(visible)

    def checkerboardVolume(self, transform, squares=8):
        """A volume alternating fixed and warped-moving blocks, on the fixed grid."""
        fixed = self._node(transform, ATTR_FIXED)
        warped = self._node(transform, ATTR_WARPED)
        if warped is None:
            raise RuntimeError("this result has no warped volume")
        fixedArray = slicer.util.arrayFromVolume(fixed)
        warpedArray = slicer.util.arrayFromVolume(warped)
        if fixedArray.shape != warpedArray.shape:
            raise RuntimeError(f"the warped volume {warpedArray.shape} is not on the fixed grid {fixedArray.shape}")
        name = f"{transform.GetName()} checkerboard"
        board = slicer.mrmlScene.GetFirstNodeByName(name)
        if board is None:
            board = slicer.modules.volumes.logic().CloneVolume(slicer.mrmlScene, fixed, name)
        slicer.util.updateVolumeFromArray(board, imaging.checkerboard(fixedArray, warpedArray, squares))
        board.GetDisplayNode().AutoWindowLevelOff()
        board.GetDisplayNode().SetWindowLevelMinMax(0.0, 1.0)
        return board

    def propagateSegmentation(self, segmentation, transform):
        """Map a segmentation of the moving volume onto the fixed volume (a new node; the input is kept)."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        itemId = shNode.GetItemByDataNode(segmentation)
        clonedItem = slicer.vtkSlicerSubjectHierarchyModuleLogic.CloneSubjectHierarchyItem(shNode, itemId)
        result = shNode.GetItemDataNode(clonedItem)
        fixed = self._node(transform, ATTR_FIXED)
        result.SetName(slicer.mrmlScene.GenerateUniqueName(
            f"{segmentation.GetName()} on {fixed.GetName() if fixed else 'fixed'}"))
        result.SetAndObserveTransformNodeID(transform.GetID())
        if hasattr(result, "HardenTransform"):
            result.HardenTransform()
        else:  # Slicer < 5.4
            slicer.vtkSlicerTransformLogic().hardenTransform(result)
        if fixed is not None:
            slicerglue.show_segmentation(result, fixed)
        return result

    def registerBlocking(self, fixed, moving, modelPath, iterations=0, device="auto", timeout=3600):
        """Run a registration and wait (scripts and tests); returns the transform node."""
        job = self.startRegistration(fixed, moving, modelPath, iterations, device)
        while job.poll() not in jobs.FINAL_STATES or job.is_alive():
            slicer.app.processEvents()
            timeout -= 0.2
            if timeout < 0:
                job.cancel()
                raise TimeoutError("registration did not finish in time")
            qt.QThread.msleep(200)
        if job.status != "done":
            raise RuntimeError(f"registration {job.status}: {job.status_info().get('message')}\n{job.log_tail(20)}")
        return self.loadResults(job, fixed, moving)


class GVSLRegisterTest(ScriptedLoadableModuleTest):
    """Runs in Slicer: registers CTACardio with a shifted, smoothed copy of itself.

    Needs a pre-trained model: GVSL_TEST_PRETRAINED_MODEL, or a tiny one is pre-trained on phantoms.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_GVSLRegisterCTACardio()

    def test_GVSLRegisterCTACardio(self):
        import SampleData

        from GVSLSegment import tiny_test_model

        fixed = SampleData.downloadSample("CTACardio")
        moving = slicer.modules.volumes.logic().CloneVolume(slicer.mrmlScene, fixed, "CTACardio moved")
        moving.SetOrigin([c + 4.0 for c in moving.GetOrigin()])
        modelPath = os.environ.get("GVSL_TEST_PRETRAINED_MODEL")
        if not modelPath:
            tiny_test_model()
            modelPath = str(Path(slicer.app.temporaryPath) / "GVSLTest" / "pretrain" / "model.safetensors")
        self.assertIsNotNone(models.entry_from_file(modelPath))
        logic = GVSLRegisterLogic()
        self.delayDisplay("Registering")
        transform = logic.registerBlocking(fixed, moving, modelPath, iterations=2)
        self.assertEqual(moving.GetTransformNodeID(), transform.GetID())
        metrics = logic.metrics(transform)
        self.assertIn("ncc", metrics)
        self.assertNotEqual(imaging.metrics_text(metrics), "no metrics")
        for mode in DEFORMATION_MODES:
            logic.setDeformationDisplay(transform, mode)
        for mode in ("warped", "jacobian", "checkerboard"):
            logic.showOverlay(transform, mode, 0.5, 6)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "moving segmentation")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(moving)
        segmentation.GetSegmentation().AddEmptySegment("left ventricle")
        propagated = logic.propagateSegmentation(segmentation, transform)
        self.assertIsNone(propagated.GetTransformNodeID())
        self.delayDisplay("Registration test passed")

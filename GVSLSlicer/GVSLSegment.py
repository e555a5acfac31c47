"""GVSL Segment: segment heart chambers (or any structures a GVSL model knows) in a volume.

The network runs in a separate ``gvsl segment`` process (PythonSlicer); this panel saves the input,
follows the job's progress events and loads the resulting ``.seg.nrrd`` with names, colours and
SNOMED CT terminology, referenced to the input geometry.
"""

from __future__ import annotations

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


class GVSLSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "GVSL Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["GVSL for 3D Slicer contributors"]
        self.parent.helpText = (
            "Segment the heart chambers, myocardium and great vessels in a CT with a GVSL model "
            "(Geometric Visual Similarity Learning, He et al., CVPR 2023). The network runs in a separate "
            "process, so Slicer stays responsive; models come from the catalog, a file, or GVSL Train."
        )
        self.parent.acknowledgementText = (
            "Based on Geometric Visual Similarity Learning (Y. He et al., CVPR 2023). "
            "Heart segment names, colours and SNOMED CT codes follow Slicer's terminology."
        )
        slicerglue.set_module_icon(self.parent, "GVSLSegment")
        slicer.app.connect("startupCompleted()", slicerglue.load_terminology)


class GVSLSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.runner = None
        self.pending = None  # what to do when the running job ends
        self.modelEntries = []

    def onReload(self):
        slicerglue.reload_lib()
        ScriptedLoadableModuleWidget.onReload(self)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.uiWidget, self.ui = slicerglue.load_ui(self, "GVSLSegment")
        self.logic = GVSLSegmentLogic()

        slicerglue.fill_device_combo(self.ui.deviceComboBox)
        self.runner = slicerglue.JobRunner(self.ui.progressBar, self.ui.statusLabel, self.ui.cancelButton,
                                           self.ui.logTextEdit, self.onJobFinished)
        self.ui.heartModelHelpLabel.connect("linkActivated(QString)", slicerglue.on_link)
        self.ui.segmentHeartButton.connect("clicked(bool)", self.onSegmentHeart)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshModels)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.updateModelInfo)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.deviceTimer = qt.QTimer()
        self.deviceTimer.setInterval(1000)
        self.deviceTimer.connect("timeout()", self.onDeviceTimer)
        self.deviceTimer.start()
        self.refreshModels()

    def cleanup(self):
        # The job keeps running in its own process; only stop watching it.
        self.removeObservers()
        if self.runner:
            self.runner.stop()
        self.deviceTimer.stop()

    def enter(self):
        self.refreshModels()
        if not self.ui.inputVolumeSelector.currentNode():
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume:
                self.ui.inputVolumeSelector.setCurrentNode(volume)
        self.updateButtons()

    def onSceneEndClose(self, caller, event):
        self.updateButtons()

    def onDeviceTimer(self):
        if slicerglue.update_device_label(self.ui.deviceInfoLabel, self.ui.deviceComboBox):
            self.deviceTimer.setInterval(5000)
        if slicerglue.catalog_changed():
            self.refreshModels()

    # -- models --------------------------------------------------------------------------------
    def refreshModels(self):
        self.modelEntries = [e for e in slicerglue.all_models() if e.task in ("segmentation", "")]
        slicerglue.fill_model_combo(self.ui.modelComboBox, self.modelEntries,
                                    "No segmentation model yet: import one or fine-tune in GVSL Train")
        self.updateModelInfo()
        self.updateButtons()

    def selectedModel(self):
        modelId = self.ui.modelComboBox.currentData
        return next((e for e in self.modelEntries if e.id == modelId), None)

    def updateModelInfo(self, index=None):
        entry = self.selectedModel()
        if entry is None:
            self.ui.modelInfoLabel.text = ""
            return
        names = ", ".join(entry.label_names) or "labels unknown"
        if entry.installed:
            where = entry.path
        else:
            where = "catalog: downloaded on first use" if entry.downloadable else "catalog: download by hand"
        self.ui.modelInfoLabel.text = f"{entry.description}. Labels: {names}. ({where})"

    def onImportModel(self):
        entry = slicerglue.import_model_dialog(slicer.util.mainWindow())
        if entry is not None:
            self.refreshModels()
            self.ui.modelComboBox.setCurrentIndex(self.ui.modelComboBox.findData(entry.id))

    def updateButtons(self, *args):
        heart = models.default_heart_model(self.modelEntries)
        hasInput = self.ui.inputVolumeSelector.currentNode() is not None
        busy = self.runner is not None and self.runner.busy
        self.ui.heartModelHelpLabel.visible = heart is None
        self.ui.segmentHeartButton.enabled = hasInput and not busy
        self.ui.segmentHeartButton.toolTip = (
            f"Run '{heart.name}' on the input volume" if heart else
            "No heart model is installed: see below for how to get one")
        self.ui.applyButton.enabled = hasInput and not busy and self.selectedModel() is not None

    # -- running -------------------------------------------------------------------------------
    def onSegmentHeart(self):
        heart = models.default_heart_model(self.modelEntries)
        if heart is None:
            available = [e for e in self.modelEntries if models.is_heart_model(e) and e.downloadable]
            if available and slicer.util.confirmYesNoDisplay(
                    f"No heart model is installed yet. Download '{available[0].name}' from the catalog and segment?",
                    "GVSL: no heart model"):
                self.run(available[0])
                return
            slicer.util.infoDisplay(
                "No heart segmentation model is installed yet.\n\n"
                "- Choose a catalog model marked '(download)' in the model list, or\n"
                "- Import model file... (a .safetensors from a colleague), or\n"
                "- Fine-tune your own in GVSL Train from a few annotated volumes.",
                "GVSL: no heart model")
            return
        self.run(heart)

    def onApply(self):
        entry = self.selectedModel()
        if entry is not None:
            self.run(entry)

    def run(self, entry):
        inputVolume = self.ui.inputVolumeSelector.currentNode()
        if inputVolume is None:
            slicer.util.errorDisplay("Select an input volume first.")
            return
        imageData = inputVolume.GetImageData()
        problem = imaging.not_a_3d_volume(inputVolume.GetName(), imageData.GetDimensions() if imageData else None)
        if problem:
            # gvsl segment would refuse it too, but naming the job's temporary input.nrrd, not the volume.
            slicer.util.errorDisplay(problem, "GVSL: not a 3-D volume")
            return
        if not slicerglue.ensure_dependencies():
            return
        if not entry.installed:
            # A catalog model: download it first, then segment (see onJobFinished).
            with slicer.util.tryWithErrorDisplay("Could not start the download.", waitCursor=True):
                job = slicerglue.download_or_explain(entry)
                if job is not None:
                    self.pending = {"kind": "download", "modelId": entry.id}
                    self.runner.watch(job)
                    self.updateButtons()
            return
        device = slicerglue.device_argument(self.ui.deviceComboBox)
        if device is None:
            return
        self.showChecks(None)
        with slicer.util.tryWithErrorDisplay("Could not start the segmentation.", waitCursor=True):
            job = self.logic.startSegmentation(inputVolume, entry, device=device, fast=self.ui.fastCheckBox.checked,
                                               refine=self.ui.refineCheckBox.checked)
            self.pending = {"kind": "segment", "input": inputVolume,
                            "output": self.ui.outputSegmentationSelector.currentNode(), "model": entry.path}
            self.runner.watch(job)
            self.updateButtons()

    def onJobFinished(self, job, status):
        pending, self.pending = self.pending or {}, None
        self.updateButtons()
        kind = pending.get("kind", "segment")
        if status == "failed":
            slicerglue.report_failure(job, "Model download" if kind == "download" else "Segmentation")
            return
        if status != "done":
            return
        if kind == "download":
            self.refreshModels()
            entry = next((e for e in self.modelEntries if e.id == pending["modelId"] and e.installed), None)
            if entry is None:
                slicer.util.errorDisplay("The model was downloaded but is not in the models folder; press Refresh.")
                return
            self.ui.modelComboBox.setCurrentIndex(self.ui.modelComboBox.findData(entry.id))
            self.run(entry)
            return
        with slicer.util.tryWithErrorDisplay("Could not load the segmentation.", waitCursor=True):
            node = self.logic.loadResult(job, pending["input"], pending["output"], pending["model"])
            self.ui.outputSegmentationSelector.setCurrentNode(node)
            outputs = job.progress.outputs or {}
            volumes = imaging.volumes_text(outputs.get("volumes_ml"))
            self.ui.statusLabel.text = f"Done: {node.GetName()}" + (f" ({volumes})" if volumes else "")
            self.showChecks(outputs)

    def showChecks(self, outputs):
        """The failed anatomy checks and the low-confidence structures of a result (a ``gvsl segment``
        done event's outputs, or None), one line per structure and reason (hidden when all pass)."""
        outputs = outputs or {}
        lines = imaging.plausibility_lines(outputs.get("plausibility")) + imaging.confidence_lines(outputs)
        self.ui.plausibilityLabel.text = "\n".join(["Check this result:"] + lines) if lines else ""
        self.ui.plausibilityLabel.visible = bool(lines)


class GVSLSegmentLogic(ScriptedLoadableModuleLogic):
    """Starts ``gvsl segment`` jobs and turns their output into segmentation nodes."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def startSegmentation(self, inputVolume, entry, device="auto", fast=False, refine=True):
        """Save the input into a new job folder and start the segmentation; returns the job.
        ``refine``: the blood-pool refinement of heart labels on a contrast CT (``gvsl segment`` without
        ``--no-refine``)."""
        if not entry.installed:
            raise ValueError(f"model {entry.name} is not installed")
        model = entry.path
        args = commands.segment_args("input.nrrd", "segmentation.seg.nrrd", model, device, fast, refine)

        def prepare(job):
            slicerglue.export_volume(inputVolume, job.folder / "input.nrrd")
            return []

        return slicerglue.start_gvsl_job(
            "segment", f"Segment {inputVolume.GetName()}", args,
            meta={"input": inputVolume.GetName(), "model": model, "output": "segmentation.seg.nrrd"},
            prepare=prepare)

    @staticmethod
    def resultPath(job):
        outputs = job.progress.outputs or {}
        path = outputs.get("segmentation") or outputs.get("output") or job.meta.get("output", "segmentation.seg.nrrd")
        path = Path(path)
        return path if path.is_absolute() else job.folder / path

    def loadResult(self, job, inputVolume, outputNode=None, modelPath=None):
        """Load the job's .seg.nrrd into ``outputNode`` (or a new node) with names, colours, terminology."""
        path = self.resultPath(job)
        if not path.is_file():
            raise RuntimeError(f"the segmentation job finished without writing {path}")
        loaded = slicer.util.loadSegmentation(str(path))
        if outputNode is not None and outputNode is not loaded:
            outputNode.GetSegmentation().DeepCopy(loaded.GetSegmentation())
            slicer.mrmlScene.RemoveNode(loaded)
            node = outputNode
        else:
            node = loaded
            node.SetName(slicer.mrmlScene.GenerateUniqueName(f"{inputVolume.GetName()} heart" if inputVolume else "GVSL segmentation"))
        slicerglue.apply_labels(node, slicerglue.model_labels(modelPath))
        slicerglue.show_segmentation(node, inputVolume)
        return node

    def segmentBlocking(self, inputVolume, entry, device="auto", fast=True, timeout=3600):
        """Run a segmentation and wait (for scripts and tests); returns the segmentation node."""
        job = self.startSegmentation(inputVolume, entry, device=device, fast=fast)
        while job.poll() not in jobs.FINAL_STATES or job.is_alive():
            slicer.app.processEvents()
            timeout -= 0.2
            if timeout < 0:
                job.cancel()
                raise TimeoutError("segmentation did not finish in time")
            qt.QThread.msleep(200)
        if job.status != "done":
            raise RuntimeError(f"segmentation {job.status}: {job.status_info().get('message')}\n{job.log_tail(20)}")
        return self.loadResult(job, inputVolume, None, entry.path)


class GVSLSegmentTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (ctest or the Reload & Test button); uses SampleData's CTACardio.

    The segmentation test needs a model: set GVSL_TEST_SEG_MODEL to a segmentation model file,
    or it fine-tunes a tiny one on phantoms first (minutes on a CPU).
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_GVSLSegmentPanel()
        self.setUp()
        self.test_GVSLSegmentCTACardio()

    def test_GVSLSegmentPanel(self):
        self.delayDisplay("Panel loads and finds its widgets")
        widget = slicer.util.getModuleWidget("GVSLSegment")
        for name in ("inputVolumeSelector", "modelComboBox", "segmentHeartButton", "progressBar", "cancelButton"):
            self.assertTrue(hasattr(widget.ui, name), name)
        self.assertEqual(widget.ui.deviceComboBox.count, 3)

    def test_GVSLSegmentCTACardio(self):
        import SampleData

        self.delayDisplay("Segmenting CTACardio")
        volume = SampleData.downloadSample("CTACardio")
        self.assertIsNotNone(volume)
        modelPath = os.environ.get("GVSL_TEST_SEG_MODEL") or tiny_test_model()
        entry = models.entry_from_file(modelPath)
        self.assertIsNotNone(entry, f"{modelPath} is not a gvsl model")
        logic = GVSLSegmentLogic()
        segmentation = logic.segmentBlocking(volume, entry, device="auto", fast=True)
        self.assertGreater(segmentation.GetSegmentation().GetNumberOfSegments(), 0)
        segment = segmentation.GetSegmentation().GetNthSegment(0)
        self.assertTrue(segment.GetName())
        tag = slicerglue._segment_tag(segment, slicer.vtkSegment.GetTerminologyEntryTagName())
        self.assertIn("SCT^", tag)
        # Referenced to the input geometry
        self.assertEqual(segmentation.GetNodeReferenceID(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()),
                         volume.GetID())
        self.delayDisplay("CTACardio segmented")


def tiny_test_model():
    """A tiny heart model fine-tuned on phantoms, made once per Slicer session (for self-tests).

    It only has to run, not to segment well: 4 phantoms, 4 pre-training and 4 fine-tuning steps at
    width 4. Takes minutes on a CPU (most of it the 1 mm validation pass of fine-tuning).
    """
    cache = Path(slicer.app.temporaryPath) / "GVSLTest"
    model = cache / "tiny-heart.safetensors"
    if model.is_file():
        return str(model)
    cache.mkdir(parents=True, exist_ok=True)
    phantoms = cache / "phantoms"
    steps = [
        commands.phantom_args(str(phantoms), cases=4, size=48),
        # 64-voxel windows keep inference on CTACardio (resampled to 1 mm) to about a hundred windows.
        commands.pretrain_args([str(phantoms / "images")], str(cache / "pretrain"), steps=4, patch=64, batch=1, width=4),
        commands.finetune_args(str(cache / "pretrain" / "model.safetensors"), str(phantoms / "images"),
                               str(phantoms / "labels"), str(model), steps=4, patch=64, batch=1),
    ]
    for args in steps:
        job = jobs.create_job(cache / "jobs", args[0], f"self-test {args[0]}")
        jobs.start_job(job, jobs.gvsl_argv(*args, "--progress", "json"),
                       python=slicerglue.job_python(), env=slicerglue.job_env())
        status = job.wait(timeout=1800)
        if status != "done":
            raise RuntimeError(f"gvsl {args[0]} {status}: {job.log_tail(20)}")
        logger.info(f"GVSL self-test: gvsl {args[0]} done")
    return str(model)

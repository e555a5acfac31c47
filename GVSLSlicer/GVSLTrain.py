"""GVSL Train: self-supervised pre-training and segmentation fine-tuning, as background jobs.

Pre-training reads a folder of volumes (or the loaded volumes); fine-tuning reads loaded volume +
segmentation pairs, the annotators' loop: annotate a few volumes, fine-tune, segment the next one
with the new model, correct it, add it, fine-tune again starting from the last model.
Jobs are detached processes: they keep running when Slicer closes and are listed again, with their
status, step and loss, when it opens. The loss chart is drawn from the job's events.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from GVSLLib import commands, events, jobs, models, slicerglue, terminology

logger = logging.getLogger(__name__)

TRAINING_KINDS = ("pretrain", "finetune")
JOB_COLUMNS = ("Job", "Status", "Step", "Loss", "Started")
PLOT_VIEW_TAG = "GVSLTrain"


class GVSLTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "GVSL Train"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["GVSL for 3D Slicer contributors"]
        self.parent.helpText = (
            "Pre-train a GVSL network on unlabeled volumes (self-supervised), and fine-tune segmentation "
            "models from volumes annotated in Segment Editor. Training runs as a background job that keeps "
            "going when Slicer closes; finished models appear in GVSL Segment and GVSL Register."
        )
        self.parent.acknowledgementText = "Based on Geometric Visual Similarity Learning (Y. He et al., CVPR 2023)."
        slicerglue.set_module_icon(self.parent, "GVSLTrain")


class GVSLTrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.jobs = {}  # job id -> jobs.Job, kept so that event files are read incrementally
        self.pairs = []  # [(volume node ID, segmentation node ID)]
        self.plotWidget = None
        self.chartedJob = None
        self.backboneEntries = []
        self.segmentationEntries = []

    def onReload(self):
        slicerglue.reload_lib()
        ScriptedLoadableModuleWidget.onReload(self)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.uiWidget, self.ui = slicerglue.load_ui(self, "GVSLTrain")
        self.logic = GVSLTrainLogic()

        slicerglue.fill_device_combo(self.ui.deviceComboBox)
        self.ui.loopHelpLabel.connect("linkActivated(QString)", slicerglue.on_link)
        self.ui.pretrainButton.connect("clicked(bool)", self.onPretrain)
        self.ui.finetuneButton.connect("clicked(bool)", self.onFinetune)
        self.ui.addPairButton.connect("clicked(bool)", self.onAddPair)
        self.ui.removePairButton.connect("clicked(bool)", self.onRemovePair)
        self.ui.refreshJobsButton.connect("clicked(bool)", self.refreshJobs)
        self.ui.cancelJobButton.connect("clicked(bool)", self.onCancelJob)
        self.ui.resumeJobButton.connect("clicked(bool)", self.onResumeJob)
        self.ui.showLogButton.connect("clicked(bool)", self.onShowLog)
        self.ui.removeJobButton.connect("clicked(bool)", self.onRemoveJob)
        self.ui.jobsTableWidget.connect("itemSelectionChanged()", self.onJobSelected)
        self.ui.folderRadioButton.connect("toggled(bool)", self.updateButtons)
        self.ui.dataFolderPathLineEdit.connect("currentPathChanged(QString)", self.updateButtons)
        self.ui.pretrainVolumesSelector.connect("checkedNodesChanged()", self.updateButtons)
        self.ui.initModelComboBox.connect("currentIndexChanged(int)", self.updatePairsTable)

        header = self.ui.jobsTableWidget.horizontalHeader()
        header.setSectionResizeMode(0, qt.QHeaderView.Stretch)
        for column in range(1, len(JOB_COLUMNS)):
            header.setSectionResizeMode(column, qt.QHeaderView.ResizeToContents)
        self.ui.pairsTableWidget.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)

        self.ui.lossChartPlaceholderLabel.hide()
        self.plotWidget = slicer.qMRMLPlotWidget()
        self.plotWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.lossChartFrame.layout().addWidget(self.plotWidget)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.timer = qt.QTimer()
        self.timer.setInterval(2000)
        self.timer.connect("timeout()", self.onTimer)
        self.timer.start()
        self.refreshModels()
        self.refreshJobs()

    def cleanup(self):
        # Jobs are separate processes: they keep running; only stop watching.
        self.removeObservers()
        self.timer.stop()

    def enter(self):
        self.refreshModels()
        self.refreshJobs()

    def onSceneEndClose(self, caller, event):
        self.pairs = []
        self.updatePairsTable()
        self.chartedJob = None

    def onTimer(self):
        slicerglue.update_device_label(self.ui.deviceInfoLabel, self.ui.deviceComboBox)
        if slicerglue.catalog_changed():
            self.refreshModels()
        self.pollJobs()

    # -- models ----------------------------------------------------------------------------------
    def refreshModels(self):
        entries = slicerglue.all_models()
        backbones = [e for e in models.backbone_models(entries) if e.installed]
        slicerglue.fill_model_combo(self.ui.pretrainedModelComboBox, backbones,
                                    "No pre-trained model yet: pre-train above or import one in GVSL Register")
        self.segmentationEntries = [e for e in models.segmentation_models(entries) if e.installed]
        combo = self.ui.initModelComboBox
        current = combo.currentData
        known = {combo.itemData(i) for i in range(combo.count)}
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        combo.addItem("The pre-trained network (first round)", "")
        for entry in self.segmentationEntries:
            combo.addItem(f"Continue from {entry.name}", entry.id)
        # The annotators' loop: a model that just appeared (the last fine-tuning) is where the next
        # round starts; otherwise the user's choice stays.
        newest = self.logic.newestModel(self.segmentationEntries)
        # (Not when the list is filled the first time: every model is "new" then, and the first round
        # starts from the pre-trained network.)
        choice = newest.id if newest is not None and known and newest.id not in known else current
        combo.setCurrentIndex(max(combo.findData(choice or ""), 0))
        combo.blockSignals(wasBlocked)
        self.backboneEntries = backbones
        self.updateButtons()

    def entryById(self, entries, modelId):
        return next((e for e in entries if e.id == modelId), None)

    # -- training data -----------------------------------------------------------------------------
    def onAddPair(self):
        volume = self.ui.pairVolumeSelector.currentNode()
        segmentation = self.ui.pairSegmentationSelector.currentNode()
        if volume is None or segmentation is None:
            slicer.util.errorDisplay("Select a volume and its segmentation.")
            return
        pair = (volume.GetID(), segmentation.GetID())
        if pair not in self.pairs:
            self.pairs.append(pair)
        self.updatePairsTable()

    def onRemovePair(self):
        row = self.ui.pairsTableWidget.currentRow()
        if 0 <= row < len(self.pairs):
            del self.pairs[row]
        self.updatePairsTable()

    def updatePairsTable(self, *args):
        self.pairs = [p for p in self.pairs if all(slicer.mrmlScene.GetNodeByID(i) for i in p)]
        table = self.ui.pairsTableWidget
        table.setRowCount(len(self.pairs))
        labels = self.logic.targetLabels(self.initModelPath())
        for row, (volumeId, segmentationId) in enumerate(self.pairs):
            volume = slicer.mrmlScene.GetNodeByID(volumeId)
            segmentation = slicer.mrmlScene.GetNodeByID(segmentationId)
            matched, total = self.logic.countMatchedSegments(segmentation, labels)
            for column, text in enumerate((volume.GetName(), segmentation.GetName(), f"{matched} of {total} segments")):
                item = qt.QTableWidgetItem(text)
                if column == 2 and matched < total:
                    item.setToolTip("Segments whose names are not in the label table are left out of training")
                table.setItem(row, column, item)
        self.updateButtons()

    def initModelPath(self):
        entry = self.entryById(self.segmentationEntries, self.ui.initModelComboBox.currentData)
        return entry.path if entry else None

    def settings(self):
        return {
            "steps": self.ui.stepsSpinBox.value,
            "patch": self.ui.patchSpinBox.value,
            "batch": self.ui.batchSpinBox.value,
            "width": self.ui.widthSpinBox.value,
        }

    def updateButtons(self, *args):
        if self.ui.folderRadioButton.checked:
            hasData = bool(self.ui.dataFolderPathLineEdit.currentPath)
        else:
            hasData = len(self.ui.pretrainVolumesSelector.checkedNodes()) > 0
        self.ui.dataFolderPathLineEdit.enabled = self.ui.folderRadioButton.checked
        self.ui.pretrainVolumesSelector.enabled = not self.ui.folderRadioButton.checked
        self.ui.pretrainButton.enabled = hasData
        self.ui.finetuneButton.enabled = bool(self.pairs) and bool(self.ui.pretrainedModelComboBox.currentData)

    # -- starting jobs -----------------------------------------------------------------------------
    def onPretrain(self):
        if not slicerglue.ensure_dependencies():
            return
        device = slicerglue.device_argument(self.ui.deviceComboBox)
        if device is None:
            return
        name = self.ui.pretrainNameLineEdit.text.strip() or "gvsl-pretrain"
        if self.ui.folderRadioButton.checked:
            source = self.ui.dataFolderPathLineEdit.currentPath
        else:
            source = list(self.ui.pretrainVolumesSelector.checkedNodes())
        with slicer.util.tryWithErrorDisplay("Could not start pre-training.", waitCursor=True):
            job = self.logic.startPretrain(source, name, device=device, **self.settings())
            self.track(job)

    def onFinetune(self):
        pretrained = self.entryById(self.backboneEntries, self.ui.pretrainedModelComboBox.currentData)
        if pretrained is None or not self.pairs:
            slicer.util.errorDisplay("Add at least one volume + segmentation pair and choose a pre-trained model.")
            return
        if not slicerglue.ensure_dependencies():
            return
        device = slicerglue.device_argument(self.ui.deviceComboBox)
        if device is None:
            return
        pairs = [(slicer.mrmlScene.GetNodeByID(v), slicer.mrmlScene.GetNodeByID(s)) for v, s in self.pairs]
        name = self.ui.modelNameLineEdit.text.strip() or "heart-finetuned"
        settings = self.settings()
        settings.pop("width")  # fine-tuning keeps the pre-trained network's width
        with slicer.util.tryWithErrorDisplay("Could not start fine-tuning.", waitCursor=True):
            job, skipped = self.logic.startFinetune(pairs, pretrained.path, self.initModelPath(), name,
                                                    device=device, **settings)
            self.track(job)
            if skipped:
                slicer.util.warningDisplay("These segments match no label of the model and were left out:\n"
                                           + "\n".join(skipped), "GVSL fine-tuning")

    def track(self, job):
        self.jobs[job.id] = job
        self.refreshJobs(select=job.id)

    # -- jobs table --------------------------------------------------------------------------------
    def refreshJobs(self, *args, select=None):
        """Read the jobs folder again (new jobs, jobs from earlier sessions) and redraw the table."""
        root = slicerglue.jobs_root()
        found = {}
        if root.is_dir():
            for folder in root.iterdir():
                if (folder / jobs.JOB_FILE).is_file():
                    found[folder.name] = self.jobs.get(folder.name) or jobs.Job(folder)
        self.jobs = found
        for job in self.jobs.values():
            job.poll()
        selected = select or self.selectedJobId()
        ordered = sorted(self.jobs.values(), key=lambda j: float(j.spec.get("created_ts") or 0.0), reverse=True)
        table = self.ui.jobsTableWidget
        table.setRowCount(len(ordered))
        for row, job in enumerate(ordered):
            self.fillJobRow(row, job)
        if selected:
            for row in range(table.rowCount):
                if table.item(row, 0).data(qt.Qt.UserRole) == selected:
                    table.selectRow(row)
                    break
        self.onJobSelected()

    def fillJobRow(self, row, job):
        summary = job.summary()
        step = f"{summary.step}/{summary.total}" if summary.total else (str(summary.step) if summary.step else "")
        loss = f"{summary.loss:.4g}" if summary.loss is not None else ""
        started = summary.created.replace("T", " ")[:16]
        for column, text in enumerate((summary.title, summary.status, step, loss, started)):
            item = qt.QTableWidgetItem(text)
            item.setData(qt.Qt.UserRole, job.id)
            if column == 1 and summary.message:
                item.setToolTip(summary.message)
            self.ui.jobsTableWidget.setItem(row, column, item)

    def pollJobs(self):
        """Poll the running jobs and refresh their rows; notice jobs that just finished."""
        table = self.ui.jobsTableWidget
        for row in range(table.rowCount):
            item = table.item(row, 0)
            job = self.jobs.get(item.data(qt.Qt.UserRole)) if item else None
            if job is None:
                continue
            before = table.item(row, 1).text() if table.item(row, 1) else ""
            if before not in jobs.ACTIVE_STATES:
                continue
            status = job.poll()
            self.fillJobRow(row, job)
            if status in jobs.FINAL_STATES:
                self.onJobEnded(job, status)
        self.onJobSelected()

    def onJobEnded(self, job, status):
        if status == "done" and job.kind in TRAINING_KINDS:
            self.refreshModels()
            slicer.util.showStatusMessage(f"GVSL: {job.title} finished; the model is in the model lists", 10000)
        elif status == "failed":
            slicer.util.showStatusMessage(f"GVSL: {job.title} failed: {job.status_info().get('message')}", 10000)

    def selectedJobId(self):
        items = self.ui.jobsTableWidget.selectedItems()
        return items[0].data(qt.Qt.UserRole) if items else None

    def selectedJob(self):
        jobId = self.selectedJobId()
        return self.jobs.get(jobId) if jobId else None

    def onJobSelected(self):
        job = self.selectedJob()
        active = job is not None and job.status in jobs.ACTIVE_STATES
        self.ui.cancelJobButton.enabled = active
        self.ui.resumeJobButton.enabled = (job is not None and job.kind in TRAINING_KINDS
                                           and job.status in ("cancelled", "failed"))
        self.ui.showLogButton.enabled = job is not None
        self.ui.removeJobButton.enabled = job is not None and not active
        if job is None:
            self.ui.jobStatusLabel.text = "No job selected"
            self.ui.jobProgressBar.setValue(0)
            return
        fraction = job.progress.fraction
        self.ui.jobProgressBar.setValue(round((fraction or 0.0) * 1000))
        info = job.status_info()
        text = f"{job.title}: {info['status']}"
        if info["status"] in jobs.ACTIVE_STATES:
            text += f" - {job.progress.describe()}"
        elif info.get("message"):
            text += f" - {info['message']}"
        self.ui.jobStatusLabel.text = text
        if job.progress.history and (self.chartedJob != job.id or info["status"] in jobs.ACTIVE_STATES):
            self.chartedJob = job.id
            chart = self.logic.updateLossChart(job)
            self.plotWidget.setMRMLPlotViewNode(self.logic.plotViewNode(chart))

    def onCancelJob(self):
        job = self.selectedJob()
        if job is not None and slicer.util.confirmYesNoDisplay(
                f"Stop '{job.title}'? A training job saves a checkpoint first and can be resumed."):
            job.cancel()
            self.ui.jobStatusLabel.text = f"{job.title}: cancelling..."

    def onResumeJob(self):
        job = self.selectedJob()
        if job is None:
            return
        with slicer.util.tryWithErrorDisplay("Could not resume the job.", waitCursor=True):
            jobs.restart_job(job, ["--resume"], python=slicerglue.job_python(), env=slicerglue.job_env())
            self.refreshJobs(select=job.id)

    def onShowLog(self):
        job = self.selectedJob()
        if job is not None:
            slicer.util.infoDisplay(f"Log of '{job.title}' ({job.folder})", "GVSL job log",
                                    detailedText=job.log_tail(300) or "(empty)")

    def onRemoveJob(self):
        job = self.selectedJob()
        if job is None or not slicer.util.confirmYesNoDisplay(
                f"Delete the job folder of '{job.title}'? Trained models are kept."):
            return
        with slicer.util.tryWithErrorDisplay("Could not remove the job."):
            jobs.remove_job(job)
            self.jobs.pop(job.id, None)
            self.refreshJobs()


class GVSLTrainLogic(ScriptedLoadableModuleLogic):
    """Prepares training data from the scene, starts training jobs, draws loss charts."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    @staticmethod
    def newestModel(entries):
        entries = [e for e in entries if e.installed]
        return max(entries, key=lambda e: Path(e.path).stat().st_mtime) if entries else None

    @staticmethod
    def targetLabels(initModelPath=None):
        """The label table fine-tuning maps segments to: the starting model's, else the heart template."""
        return slicerglue.model_labels(initModelPath)

    @staticmethod
    def countMatchedSegments(segmentation, labels):
        segmentationObject = segmentation.GetSegmentation()
        names = [segmentationObject.GetNthSegment(i).GetName() for i in range(segmentationObject.GetNumberOfSegments())]
        matched = terminology.match_segments([(n, None) for n in names], labels)
        return len(matched), len(names)

    def startPretrain(self, source, name, steps=2000, patch=96, batch=1, width=32, device="auto"):
        """Pre-train on a folder (str) or on loaded volumes (a list of nodes, saved to the job first)."""
        models.runs_dir().mkdir(parents=True, exist_ok=True)
        runDir = models.unique_path(models.runs_dir(), name)
        if isinstance(source, str) and not os.path.isdir(source):
            raise ValueError(f"{source} is not a folder")
        data = source if isinstance(source, str) else "data"
        args = commands.pretrain_args([data], str(runDir), steps, patch, batch, width, device)

        def prepare(job):
            if not isinstance(source, str):
                (job.folder / "data").mkdir()
                for index, volume in enumerate(source):
                    slicerglue.export_volume(volume, job.folder / "data" / f"volume_{index:03d}.nrrd")
            return []

        return slicerglue.start_gvsl_job("pretrain", f"Pre-train {runDir.name}", args,
                                         meta={"run": str(runDir), "model": str(runDir / "model.safetensors")},
                                         prepare=prepare)

    def startFinetune(self, pairs, pretrainedPath, initPath, name, steps=2000, patch=96, batch=1, device="auto"):
        """Export (volume, segmentation) pairs as images/ + labels/ and start ``gvsl finetune``.

        Returns (job, skipped segment descriptions).
        """
        labels = self.targetLabels(initPath)
        out = models.unique_model_path(models.models_dir(), name)
        out.parent.mkdir(parents=True, exist_ok=True)
        models.runs_dir().mkdir(parents=True, exist_ok=True)
        runDir = models.unique_path(models.runs_dir(), f"{out.stem}-finetune")
        args = commands.finetune_args(pretrainedPath, "data/images", "data/labels", str(out), steps, patch, batch,
                                      device, label_table="data/label_table.json", init=initPath, run=str(runDir))
        skipped = []

        def prepare(job):
            images, labelsDir = job.folder / "data" / "images", job.folder / "data" / "labels"
            images.mkdir(parents=True)
            labelsDir.mkdir(parents=True)
            usable = 0
            for index, (volume, segmentation) in enumerate(pairs):
                labelmap, mapping, unmatched = slicerglue.segment_label_map(segmentation, volume, labels)
                skipped.extend(f"{segmentation.GetName()}: {n}" for n in unmatched)
                if not mapping:
                    continue
                slicerglue.export_volume(volume, images / f"case_{index:03d}.nrrd")
                slicerglue.export_label_map(labelmap, volume, labelsDir / f"case_{index:03d}.nrrd")
                usable += 1
            if usable == 0:
                raise ValueError("no segment matches the label table: name segments as in the heart template "
                                 "(left ventricle, right ventricle, ...)")
            (job.folder / "data" / "label_table.json").write_text(
                json.dumps(terminology.label_table_dicts(labels), indent=2), encoding="utf-8")
            return []

        job = slicerglue.start_gvsl_job("finetune", f"Fine-tune {out.stem}", args,
                                        meta={"model": str(out), "run": str(runDir), "pretrained": pretrainedPath,
                                              "init": initPath or ""},
                                        prepare=prepare)
        return job, skipped

    @staticmethod
    def plotViewNode(chart):
        view = slicer.mrmlScene.GetSingletonNode(PLOT_VIEW_TAG, "vtkMRMLPlotViewNode")
        if view is None:
            view = slicer.mrmlScene.CreateNodeByClass("vtkMRMLPlotViewNode")
            view.SetSingletonTag(PLOT_VIEW_TAG)
            view.SetName("GVSL loss view")
            slicer.mrmlScene.AddNode(view)
            view.UnRegister(None)
        view.SetPlotChartNodeID(chart.GetID())
        return view

    @staticmethod
    def updateLossChart(job):
        """A table, one plot series per loss component and a chart for ``job`` (reused across updates)."""
        history = job.progress.history
        keys = sorted({k for point in history for k in point.values})
        prefix = f"GVSL loss {job.id}"
        table = slicer.mrmlScene.GetFirstNodeByName(f"{prefix} table")
        if table is None:
            table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"{prefix} table")
        steps = np.array([p.step for p in history], dtype=np.float64)
        columns = [steps] + [np.array([p.values.get(k, np.nan) for p in history], dtype=np.float64) for k in keys]
        slicer.util.updateTableFromArray(table, columns, ["step", *keys])
        chart = slicer.mrmlScene.GetFirstNodeByName(f"{prefix} chart")
        if chart is None:
            chart = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{prefix} chart")
            chart.SetTitle(job.title)
            chart.SetXAxisTitle("step")
            chart.SetYAxisTitle("loss")
        existing = {}
        for index in range(chart.GetNumberOfPlotSeriesNodes()):
            node = chart.GetNthPlotSeriesNode(index)
            existing[node.GetAttribute("GVSL.Series")] = node
        for key in keys:
            seriesName = f"{prefix} {key}"
            series = existing.get(seriesName)
            if series is None:
                series = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", seriesName)
                series.SetAndObserveTableNodeID(table.GetID())
                series.SetXColumnName("step")
                series.SetYColumnName(key)
                series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
                series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
                series.SetUniqueColor()
                series.SetName(key)  # the legend shows the loss component
                series.SetAttribute("GVSL.Series", seriesName)
                chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return chart


class GVSLTrainTest(ScriptedLoadableModuleTest):
    """Runs in Slicer: a tiny fine-tuning job from a CTACardio volume and a drawn segmentation,
    followed to its end; checks the exported label map, the loss events and chart, the model file."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_GVSLTrainFinetune()

    def test_GVSLTrainFinetune(self):
        import SampleData

        from GVSLSegment import tiny_test_model

        volume = SampleData.downloadSample("CTACardio")
        tiny_test_model()
        pretrained = str(Path(slicer.app.temporaryPath) / "GVSLTest" / "pretrain" / "model.safetensors")

        self.delayDisplay("Drawing a small 'left ventricle' segment")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "annotation")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentId = segmentation.GetSegmentation().AddEmptySegment("left ventricle")
        mask = np.zeros(slicer.util.arrayFromVolume(volume).shape, dtype=np.uint8)
        center = [s // 2 for s in mask.shape]
        mask[center[0] - 5:center[0] + 5, center[1] - 10:center[1] + 10, center[2] - 10:center[2] + 10] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segmentId, volume)

        logic = GVSLTrainLogic()
        # Keep the test's model, run and job folders out of the user's ~/.gvsl.
        os.environ["GVSL_HOME"] = str(Path(slicer.app.temporaryPath) / "GVSLTest" / "home")
        job, skipped = logic.startFinetune([(volume, segmentation)], pretrained, None, "selftest",
                                           steps=6, patch=32, batch=1, device="auto")
        self.assertEqual(skipped, [])
        self.assertTrue((job.folder / "data" / "labels" / "case_000.nrrd").is_file())
        status = job.wait(timeout=1800)
        self.assertEqual(status, "done", job.log_tail(30))
        self.assertTrue(job.progress.history, "no loss events")
        chart = logic.updateLossChart(job)
        self.assertGreater(chart.GetNumberOfPlotSeriesNodes(), 0)
        self.assertTrue(Path(job.meta["model"]).is_file())
        entry = models.entry_from_file(job.meta["model"])
        self.assertEqual(entry.task, "segmentation")
        self.assertIn(job.id, [j.id for j in jobs.list_jobs(job.folder.parent)])
        self.assertIsInstance(job.progress, events.JobProgress)
        self.delayDisplay("Fine-tuning test passed")

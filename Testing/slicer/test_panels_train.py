"""GVSL Train's panel, clicked as a user would (offscreen, see slicer_panels): pre-training and fine-tuning jobs
(real ``gvsl`` subprocesses, tiny settings on phantoms) started from the panel, the live loss chart filling
real MRML table / plot nodes, Cancel and Resume from the jobs table, a new panel (Slicer restarted)
re-attaching to a running job, and the annotators' loop through GVSL Segment's model list.

Skipped, with the reason, when slicer-core is not installed (the ``mrml`` fixture).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from GVSLLib import events, jobs

JOB_TIMEOUT = 240  # seconds; a safety net, not a timing assertion


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from gvslcore.labels import HEART_LABELS
    from gvslcore.phantom import make_phantom
    from gvslcore.segfile import write_labels

    folder = tmp_path_factory.mktemp("train_panel")
    (folder / "images").mkdir()
    for seed in (1, 2, 3):
        image, label = make_phantom(seed, 24, spacing=(4.0, 4.5, 5.0))
        sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(folder / "images" / f"case{seed}.nrrd"))
        write_labels(label, folder / f"case{seed}.seg.nrrd", HEART_LABELS)
    return {"folder": folder, "images": folder / "images"}


def _row(table, jobId: str) -> int:
    import qt

    for row in range(table.rowCount):
        item = table.item(row, 0)
        if item is not None and item.data(qt.Qt.UserRole) == jobId:
            return row
    return -1


def _status_in_table(ui, jobId: str) -> str:
    row = _row(ui.jobsTableWidget, jobId)
    return ui.jobsTableWidget.item(row, 1).text() if row >= 0 else ""


def _wait_final(env, ui, job, what: str) -> str:
    """Until the jobs table shows a final status for ``job``; returns it."""
    env.wait_until(lambda: _status_in_table(ui, job.id) in jobs.FINAL_STATES, JOB_TIMEOUT, what)
    return _status_in_table(ui, job.id)


def _steps(job) -> list[int]:
    return [e["step"] for e in events.read_events(job.events_path) if e.get("event") == "progress" and e.get("loss")]


def _choose(combo, text: str) -> None:
    index = next((i for i in range(combo.count) if text in combo.itemText(i).replace(" ", "-")), -1)
    assert index >= 0, f"{text} is not in {[combo.itemText(i) for i in range(combo.count)]}"
    combo.setCurrentIndex(index)


def test_pretrain_chart_cancel_resume(panel_env, phantoms) -> None:
    import slicer

    env = panel_env
    panel = env.open("GVSLTrain")
    ui = panel.ui
    assert ui.folderRadioButton.checked and not ui.pretrainButton.enabled  # no folder yet
    ui.dataFolderPathLineEdit.currentPath = str(phantoms["images"])
    assert ui.pretrainButton.enabled
    ui.stepsSpinBox.value = 300
    ui.patchSpinBox.value = 16
    ui.widthSpinBox.value = 4
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
    ui.pretrainNameLineEdit.text = "panel-pretrain"
    ui.pretrainButton.click()

    assert len(panel.widget.jobs) == 1
    job = next(iter(panel.widget.jobs.values()))
    assert job.kind == "pretrain" and panel.widget.selectedJobId() == job.id
    argv = job.spec["argv"]
    for option, value in (("--steps", "300"), ("--patch", "16"), ("--width", "4"), ("--device", "cpu")):
        assert argv[argv.index(option) + 1] == value

    # The live loss chart: a table and plot series in the scene, shown by the panel's plot widget.
    def chart_rows():
        table = slicer.mrmlScene.GetFirstNodeByName(f"GVSL loss {job.id} table")
        return table.GetNumberOfRows() if table is not None else 0

    env.wait_until(chart_rows, JOB_TIMEOUT, "the first loss points in the chart")
    chart = slicer.mrmlScene.GetFirstNodeByName(f"GVSL loss {job.id} chart")
    assert chart.GetNumberOfPlotSeriesNodes() >= 2  # one per loss component
    view = panel.widget.plotWidget.mrmlPlotViewNode()
    assert view is not None and view.GetPlotChartNodeID() == chart.GetID()
    assert ui.cancelJobButton.enabled and not ui.resumeJobButton.enabled
    assert _status_in_table(ui, job.id) == "running"

    # Cancel (the panel asks first; the message box answers Yes), then Resume.
    ui.cancelJobButton.click()
    assert [m["title"] for m in env.messages] == ["Slicer confirmation"]
    assert env.messages[0]["text"].startswith("Stop 'Pre-train panel-pretrain'?")
    assert _wait_final(env, ui, job, "the cancelled status") == "cancelled", job.log_tail(20)
    cancelled_at = job.status_info().get("step")
    logged = _steps(job)
    assert logged and max(logged) < 300, "the job ended before the cancel: make it longer"
    assert ui.resumeJobButton.enabled and not ui.cancelJobButton.enabled
    rows_before = chart_rows()

    ui.resumeJobButton.click()
    assert _wait_final(env, ui, job, "the resumed job to finish") == "done", job.log_tail(20)
    steps = _steps(job)
    assert steps == sorted(steps) and len(set(steps)) == len(steps), f"the step count restarted: {steps}"
    assert steps[-1] == 300
    assert steps[len(logged)] > (cancelled_at or max(logged)) - 10  # continued from the checkpoint
    assert chart_rows() > rows_before  # the chart went on with the resumed steps
    assert ui.jobsTableWidget.item(_row(ui.jobsTableWidget, job.id), 2).text() == "300/300"
    # The finished run is a pre-trained model for fine-tuning (and GVSL Register).
    _choose(ui.pretrainedModelComboBox, "panel-pretrain")
    assert len(env.messages) == 1


def test_finetune_reattach_and_the_annotators_loop(panel_env, phantoms) -> None:
    """Fine-tune from a segmentation in the scene, close the panel while the job runs, a new panel lists it and
    sees it end; the model is then in GVSL Segment's model list and segments the next volume."""
    import slicer

    from GVSLLib import models

    env = panel_env
    # A tiny pre-trained run in GVSL_HOME/runs (as a finished pre-training from the panel leaves it).
    run = models.runs_dir() / "tiny-backbone"
    subprocess.run([sys.executable, "-m", "gvslcore", "pretrain", "--data", str(phantoms["images"]), "--out", str(run),
                    "--steps", "2", "--patch", "16", "--batch", "1", "--width", "4", "--device", "cpu",
                    "--progress", "none"], check=True, capture_output=True, timeout=JOB_TIMEOUT)
    volume = slicer.util.loadVolume(str(phantoms["images"] / "case1.nrrd"))
    nextVolume = slicer.util.loadVolume(str(phantoms["images"] / "case2.nrrd"))
    annotation = slicer.util.loadSegmentation(str(phantoms["folder"] / "case1.seg.nrrd"))

    panel = env.open("GVSLTrain")
    ui = panel.ui
    assert not ui.finetuneButton.enabled  # no pairs yet
    ui.pairVolumeSelector.setCurrentNode(volume)
    ui.pairSegmentationSelector.setCurrentNode(annotation)
    ui.addPairButton.click()
    assert ui.pairsTableWidget.rowCount == 1
    assert ui.pairsTableWidget.item(0, 2).text() == "7 of 7 segments"
    _choose(ui.pretrainedModelComboBox, "tiny-backbone")
    assert ui.initModelComboBox.currentData == ""  # the first round starts from the pre-trained network
    assert ui.finetuneButton.enabled
    ui.stepsSpinBox.value = 30
    ui.patchSpinBox.value = 16
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
    ui.modelNameLineEdit.text = "panel-heart"
    ui.finetuneButton.click()
    assert env.messages == [], env.messages  # no segment was left out
    job = next(j for j in panel.widget.jobs.values() if j.kind == "finetune")
    env.wait_until(lambda: _status_in_table(ui, job.id) == "running", JOB_TIMEOUT, "the fine-tuning to run")

    # Slicer closes (the module is unloaded) while the job runs; a new panel re-attaches to it.
    old = panel
    old.close()
    assert not old.widget.timer.isActive()
    assert jobs.Job(job.folder).poll() in jobs.ACTIVE_STATES
    panel = env.open("GVSLTrain")
    ui = panel.ui
    assert _status_in_table(ui, job.id) == "running", "the new panel does not list the running job"
    assert panel.widget.jobs[job.id] is not old.widget.jobs.get(job.id)
    assert _wait_final(env, ui, job, "the fine-tuning to finish") == "done", job.log_tail(20)
    model = Path(job.meta["model"])
    assert model.is_file() and model.parent == models.models_dir()
    # The next round of the loop starts from the new model.
    assert ui.initModelComboBox.currentText == "Continue from panel heart"
    assert env.app.statusMessage().endswith("finished; the model is in the model lists")

    # GVSL Segment lists the fine-tuned model and segments the next volume with it.
    segment = env.open("GVSLSegment")
    _choose(segment.ui.modelComboBox, "panel-heart")
    segment.ui.inputVolumeSelector.setCurrentNode(nextVolume)
    assert segment.ui.applyButton.enabled
    segment.ui.applyButton.click()
    env.wait_until(lambda: not segment.widget.runner.busy, JOB_TIMEOUT, "the segmentation with the new model")
    assert env.messages == [], env.messages
    result = segment.ui.outputSegmentationSelector.currentNode()
    assert result is not None and result.GetName() == f"{nextVolume.GetName()} heart"
    reference = result.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
    assert reference is nextVolume
    segmentJob = next(j for j in jobs.list_jobs(job.folder.parent) if j.kind == "segment")
    argv = segmentJob.spec["argv"]
    assert argv[argv.index("--model") + 1] == str(model)

"""GVSL Train's Logic against Slicer's real MRML (slicer-core): a pre-training job started from volumes
in the scene (exported by the Logic) and followed to its end, its loss chart drawn as real
vtkMRMLTableNode / vtkMRMLPlotSeriesNode / vtkMRMLPlotChartNode from the job's events, and a
fine-tuning job whose training pairs the Logic exports from a volume and a segmentation node.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from GVSLLib import events, terminology
from slicer_testpaths import RESOURCES


@pytest.fixture(scope="module")
def scene_data(mrml, tmp_path_factory: pytest.TempPathFactory) -> dict:
    import slicer
    from gvslcore.labels import HEART_LABELS
    from gvslcore.phantom import make_phantom
    from gvslcore.segfile import write_labels

    mrml.clear()
    folder = tmp_path_factory.mktemp("train")
    volumes, labels = [], []
    for seed in (1, 2):
        image, label = make_phantom(seed, 24, spacing=(4.0, 4.5, 5.0))
        sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(folder / f"case{seed}.nrrd"))
        write_labels(label, folder / f"case{seed}.seg.nrrd", HEART_LABELS)
        volumes.append(slicer.util.loadVolume(str(folder / f"case{seed}.nrrd")))
        labels.append(label)
    segmentation = slicer.util.loadSegmentation(str(folder / "case1.seg.nrrd"))
    return {"volumes": volumes, "labels": labels, "segmentation": segmentation}


@pytest.fixture(scope="module")
def pretrained(scene_data: dict) -> dict:
    import GVSLTrain

    logic = GVSLTrain.GVSLTrainLogic()
    job = logic.startPretrain(scene_data["volumes"], "mrml-pretrain", steps=30, patch=16, batch=1, width=4, device="cpu")
    status = job.wait(timeout=300)
    job.poll()
    assert status == "done", f"gvsl pretrain {status}: {job.status_info().get('message')}\n{job.log_tail(30)}"
    return {"logic": logic, "job": job}


def test_pretraining_data_came_from_the_scene(pretrained: dict, scene_data: dict) -> None:
    import slicer

    data = Path(pretrained["job"].folder) / "data"
    files = sorted(data.glob("volume_*.nrrd"))
    assert len(files) == 2
    for path, volume in zip(files, scene_data["volumes"]):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), slicer.util.arrayFromVolume(volume))
    assert Path(pretrained["job"].meta["model"]).is_file()


def test_loss_chart_is_real_mrml_from_the_events(pretrained: dict) -> None:
    import slicer

    job = pretrained["job"]
    chart = pretrained["logic"].updateLossChart(job)
    assert chart.GetClassName() == "vtkMRMLPlotChartNode"
    progress = [e for e in events.read_events(job.events_path) if e.get("event") == "progress" and e.get("loss")]
    assert len(progress) >= 3
    keys = sorted(progress[0]["loss"])
    table = slicer.mrmlScene.GetFirstNodeByName(f"GVSL loss {job.id} table")
    assert table.GetClassName() == "vtkMRMLTableNode"
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == ["step", *keys]
    assert table.GetNumberOfRows() == len(progress)
    np.testing.assert_array_equal(slicer.util.arrayFromTableColumn(table, "step"), [e["step"] for e in progress])
    for key in keys:
        np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, key), [e["loss"][key] for e in progress])
    assert chart.GetNumberOfPlotSeriesNodes() == len(keys)
    for index in range(chart.GetNumberOfPlotSeriesNodes()):
        series = chart.GetNthPlotSeriesNode(index)
        assert series.GetClassName() == "vtkMRMLPlotSeriesNode"
        assert series.GetTableNode() is table and series.GetXColumnName() == "step"
        assert series.GetName() == series.GetYColumnName() and series.GetName() in keys
        assert series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter
    assert chart.GetTitle() == job.title and chart.GetXAxisTitle() == "step"
    # Updating again (the panel does on every poll) reuses the nodes.
    again = pretrained["logic"].updateLossChart(job)
    assert again is chart and chart.GetNumberOfPlotSeriesNodes() == len(keys)
    assert len(slicer.util.getNodesByClass("vtkMRMLPlotSeriesNode")) == len(keys)
    view = pretrained["logic"].plotViewNode(chart)
    assert view.GetClassName() == "vtkMRMLPlotViewNode" and view.GetPlotChartNodeID() == chart.GetID()
    assert pretrained["logic"].plotViewNode(chart) is view  # a singleton


def test_segments_matched_on_a_real_segmentation_node(scene_data: dict) -> None:
    import GVSLTrain

    labels = GVSLTrain.GVSLTrainLogic.targetLabels(None)
    assert GVSLTrain.GVSLTrainLogic.countMatchedSegments(scene_data["segmentation"], labels) == (7, 7)


def test_finetune_exports_pairs_from_the_scene(pretrained: dict, scene_data: dict) -> None:
    """startFinetune turns (volume, segmentation node) into images/ + labels/ + label_table.json; the label
    map is the one gvslcore wrote, and gvsl finetune trains on them to a model file."""
    logic = pretrained["logic"]
    volume, segmentation = scene_data["volumes"][0], scene_data["segmentation"]
    job, skipped = logic.startFinetune([(volume, segmentation)], pretrained["job"].meta["model"], None, "mrml-finetune",
                                       steps=2, patch=16, batch=1, device="cpu")
    assert skipped == []
    data = Path(job.folder) / "data"
    written = sitk.ReadImage(str(data / "labels" / "case_000.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(scene_data["labels"][0]))
    image = sitk.ReadImage(str(data / "images" / "case_000.nrrd"))
    np.testing.assert_allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), image.GetDirection(), atol=1e-6)
    table = json.loads((data / "label_table.json").read_text(encoding="utf-8"))
    assert [entry["name"] for entry in table] == [lab.name for lab in terminology.heart_template(RESOURCES)]
    status = job.wait(timeout=300)
    assert status == "done", f"gvsl finetune {status}: {job.status_info().get('message')}\n{job.log_tail(30)}"
    assert Path(job.meta["model"]).is_file()

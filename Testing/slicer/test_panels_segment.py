"""GVSL Segment's panel, clicked as a user would (offscreen, see slicer_panels): the Widget built as Slicer
builds it, volumes loaded into slicer-core's real MRML scene, the buttons clicked, Qt events processed
until the ``gvsl segment`` job (a real subprocess with the bundled default model) ends.

Skipped, with the reason, when slicer-core is not installed (the ``mrml`` fixture).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

JOB_TIMEOUT = 180  # seconds; a safety net, not a timing assertion


@pytest.fixture(scope="module")
def chest_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic chest CTA around the heart at 3 mm (a case outside the model's bank) and a 2-D image."""
    import torch
    from gvslcore.synth.appearance import AppearanceConfig, add_noise, paint, scanner
    from gvslcore.synth.chest import render_case

    folder = tmp_path_factory.mktemp("segment_panel")
    seed = 123_456_789
    tissue = render_case(seed, 3.0, region="heart")
    rng = np.random.default_rng(seed)
    cfg = AppearanceConfig(p_noncontrast=0.0, p_venous=0.0, p_shuffle=0.0, p_fov_cut=0.0)
    hu, _ = paint(torch.from_numpy(sitk.GetArrayFromImage(tissue).astype(np.int64)), 3.0, rng, cfg)
    hu = add_noise(scanner(hu, 3.0, rng, cfg), rng, cfg)
    image = sitk.GetImageFromArray(np.clip(hu.numpy(), -1024, 3000).astype(np.int16))
    image.CopyInformation(tissue)
    sitk.WriteImage(image, str(folder / "chest.nrrd"))
    flat = sitk.GetImageFromArray(np.zeros((64, 64), dtype=np.int16))
    sitk.WriteImage(flat, str(folder / "slice.nrrd"))
    return {"chest": folder / "chest.nrrd", "slice": folder / "slice.nrrd"}


def _segmentation_nodes() -> list:
    import slicer

    return [n for n in slicer.util.getNodesByClass("vtkMRMLSegmentationNode") if not n.GetHideFromEditors()]


def _wait_idle(env, panel, what: str) -> None:
    env.wait_until(lambda: not panel.widget.runner.busy, JOB_TIMEOUT, what)


def test_segment_heart_chambers_with_nothing_installed(panel_env, chest_files) -> None:
    """Nothing in GVSL_HOME: the bundled heart model; one click gives the seven named, coloured, coded segments
    on the input's geometry, the progress bar moving on the way."""
    import slicer

    env = panel_env
    panel = env.open("GVSLSegment")
    ui = panel.ui
    assert not ui.segmentHeartButton.enabled  # no input volume yet
    volume = slicer.util.loadVolume(str(chest_files["chest"]))
    assert ui.inputVolumeSelector.currentNode() is volume  # the selector picked the first volume, as in Slicer
    assert ui.segmentHeartButton.enabled
    assert not ui.heartModelHelpLabel.visible  # a heart model is there (bundled)
    assert "gvsl-heart-ct" in ui.segmentHeartButton.toolTip or "heart" in ui.segmentHeartButton.toolTip.lower()
    assert not ui.cancelButton.enabled
    assert ui.refineCheckBox.checked  # the blood-pool refinement is on by default, as in `gvsl segment`

    shown: list[tuple[int, int]] = []
    ui.progressBar.connect("valueChanged(int)", lambda value: shown.append((value, ui.progressBar.maximum)))
    ui.segmentHeartButton.click()
    assert panel.widget.runner.busy
    job = panel.widget.runner.job
    assert ui.cancelButton.enabled and not ui.segmentHeartButton.enabled  # no second run while one is going
    _wait_idle(env, panel, "the segmentation job")

    assert env.messages == [], env.messages
    assert "segment" in job.spec["argv"] and "--no-refine" not in job.spec["argv"]
    assert ui.statusLabel.text.startswith("Done: "), ui.statusLabel.text
    assert ui.progressBar.value == ui.progressBar.maximum == 1000
    assert any(0 < value < 1000 for value, maximum in shown if maximum == 1000), f"the bar never moved: {shown}"
    assert ui.segmentHeartButton.enabled and not ui.cancelButton.enabled

    nodes = _segmentation_nodes()
    assert len(nodes) == 1
    node = nodes[0]
    assert ui.outputSegmentationSelector.currentNode() is node
    assert node.GetName() == f"{volume.GetName()} heart"
    reference = node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
    assert reference is volume
    import mrml_app

    segmentation = node.GetSegmentation()
    # the model file keeps 4 decimals of each colour
    for index, _segment, label, _entry in mrml_app.heart_segment_entries(segmentation, atol=0.5 / 255):
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(index), volume)
        assert mask.any(), f"{label.name} is empty"
    # The volumes the job measured are in the status line.
    assert "ml" in ui.statusLabel.text

    # Each structure's confidence came with the result; those below the threshold are listed under it.
    from GVSLLib import imaging

    outputs = job.progress.outputs
    assert set(outputs["confidence"]) == {label.name for _i, _s, label, _e in mrml_app.heart_segment_entries(segmentation, atol=0.5 / 255)}
    for line in imaging.confidence_lines(outputs):
        assert line in ui.plausibilityLabel.text
    # A result the model was unsure of (the same event, one structure lower): named in the same label.
    unsure = {**outputs, "confidence": {**outputs["confidence"], "right atrium": 0.62},
              "uncertain_fraction": {**outputs["uncertain_fraction"], "right atrium": 0.31}}
    panel.widget.showChecks(unsure)
    assert ui.plausibilityLabel.visible
    assert "right atrium: low confidence 0.62 (31 % of its voxels below 0.5)" in ui.plausibilityLabel.text.splitlines()


def test_cancel_mid_run_leaves_the_scene_clean(panel_env, chest_files) -> None:
    import slicer

    env = panel_env
    panel = env.open("GVSLSegment")
    ui = panel.ui
    slicer.util.loadVolume(str(chest_files["chest"]))
    before = {slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes())}
    ui.refineCheckBox.click()  # off: the job runs `gvsl segment --no-refine`
    assert not ui.refineCheckBox.checked
    ui.segmentHeartButton.click()
    job = panel.widget.runner.job
    env.wait_until(lambda: ui.progressBar.maximum == 1000 and 0 < ui.progressBar.value < 1000, JOB_TIMEOUT,
                   "the first progress of the segmentation")
    ui.cancelButton.click()
    assert "cancel" in ui.statusLabel.text.lower()
    assert not ui.cancelButton.enabled
    _wait_idle(env, panel, "the cancelled job to end")

    assert job.status == "cancelled", job.log_tail(20)
    assert "--no-refine" in job.spec["argv"]
    assert not job.is_alive()
    assert ui.statusLabel.text == "Cancelled"
    assert ui.progressBar.value == 0
    assert env.messages == []  # a cancel is no error
    after = {slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes())}
    assert after == before, f"nodes left behind: {sorted(after - before)}"
    assert not (job.folder / "segmentation.seg.nrrd").exists()
    assert ui.segmentHeartButton.enabled  # ready for the next run


def test_a_2d_image_gives_one_clear_message(panel_env, chest_files) -> None:
    import slicer

    env = panel_env
    panel = env.open("GVSLSegment")
    ui = panel.ui
    flat = slicer.util.loadVolume(str(chest_files["slice"]))
    assert ui.inputVolumeSelector.currentNode() is flat
    ui.segmentHeartButton.click()
    env.process_events(0.5)

    assert not panel.widget.runner.busy  # refused before any job starts
    assert len(env.messages) == 1, env.messages
    message = env.messages[0]
    assert message["icon"] == env.qt.QMessageBox.Critical
    assert message["text"].startswith(f"'{flat.GetName()}' is not a 3-D volume (size 64 x 64 x 1)"), message["text"]
    assert "Traceback" not in message["text"] + message["detailedText"]
    assert _segmentation_nodes() == []
    assert ui.segmentHeartButton.enabled

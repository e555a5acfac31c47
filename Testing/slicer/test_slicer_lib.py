"""The Slicer-free helpers of GVSLSlicer/GVSLLib: events, dependencies, model list, terminology, imaging."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from GVSLLib import commands, deps, events, imaging, models, terminology
from slicer_testpaths import CORE_DIR, RESOURCES, SLICER_DIR

# -- purity ------------------------------------------------------------------------------------------
SLICER_ONLY = {"slicer", "qt", "vtk", "ctk", "PythonQt", "SampleData"}


@pytest.mark.parametrize("path", sorted((SLICER_DIR / "GVSLLib").glob("*.py")), ids=lambda p: p.name)
def test_helpers_do_not_import_slicer(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    if path.name == "slicerglue.py":
        assert {"slicer", "qt", "vtk"} <= imported  # the one Slicer-side file
    else:
        assert not imported & SLICER_ONLY, f"{path.name} imports {imported & SLICER_ONLY}"


# -- events ------------------------------------------------------------------------------------------
def test_event_reader_is_incremental_and_waits_for_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    reader = events.EventReader(path)
    assert reader.read_new() == []  # no file yet
    with open(path, "w") as f:
        f.write('{"event": "start", "command": "pretrain", "total": 10}\nsome stray print\n{"event": "progr')
    assert [e["event"] for e in reader.read_new()] == ["start"]
    assert reader.skipped_lines == 1
    with open(path, "a") as f:
        f.write('ess", "step": 2, "total": 10, "loss": {"ncc": 0.5, "mse": 0.1}}\n')
    new = reader.read_new()
    assert len(new) == 1 and new[0]["step"] == 2
    assert reader.read_new() == []
    path.write_text('{"event": "done", "outputs": {}}\n')  # replaced by a shorter file: start over
    assert [e["event"] for e in reader.read_new()] == ["done"]


def test_job_progress_folds_events() -> None:
    progress = events.JobProgress()
    assert progress.fraction is None and progress.describe() == "Starting..."
    progress.update_all([
        {"event": "start", "command": "pretrain", "total": 200},
        {"event": "progress", "step": 50, "total": 200, "loss": {"ncc": 0.41, "smooth": 0.02}, "eta_s": 90,
         "stage": "training"},
        {"event": "artifact", "kind": "checkpoint", "path": "/runs/a/checkpoints/step_50.pt"},
        {"event": "progress", "step": 100, "total": 200, "loss": 0.3},
    ])
    assert progress.fraction == 0.5
    assert [p.step for p in progress.history] == [50, 100]
    assert progress.history[0].total == pytest.approx(0.43)
    assert progress.loss == {"loss": 0.3}
    assert progress.last_checkpoint == "/runs/a/checkpoints/step_50.pt"
    assert progress.describe() == "training - 100/200 - loss loss 0.3"
    progress.update({"event": "error", "message": "out of memory"})
    assert progress.describe() == "Failed: out of memory"
    progress.update({"event": "start", "command": "pretrain", "total": 200, "step": 100})  # resumed
    assert progress.error is None and progress.step == 100 and progress.starts == 2
    progress.update({"event": "done", "outputs": {"model": "m.safetensors"}})
    assert progress.fraction == 1.0 and progress.step == 200 and progress.describe() == "Done"


@pytest.mark.parametrize(("seconds", "text"), [(None, "unknown"), (4.4, "4 s"), (125, "2 min 5 s"),
                                               (3600 * 2 + 240, "2 h 4 min"), (float("nan"), "unknown")])
def test_format_duration(seconds, text) -> None:
    assert events.format_duration(seconds) == text


def test_parse_event_line_rejects_non_events() -> None:
    assert events.parse_event_line('{"event": "progress", "step": 1}')["step"] == 1
    assert events.parse_event_line(b'{"event": "done", "outputs": {}}\n')["event"] == "done"
    for line in ("", "hello", "{broken", '{"step": 1}', '{"event": "unknown"}', "[1, 2]"):
        assert events.parse_event_line(line) is None


# -- dependencies ------------------------------------------------------------------------------------
def core_dependencies() -> list[str]:
    text = (CORE_DIR / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.DOTALL | re.MULTILINE).group(1)
        return re.findall(r'"([^"]+)"', block)
    return tomllib.loads(text)["project"]["dependencies"]


def test_requirements_match_gvslcore_pyproject() -> None:
    wanted = {deps.parse_requirement(r).dist.lower(): deps.parse_requirement(r).spec for r in core_dependencies()}
    ours = {r.dist.lower(): r.spec for r in deps.REQUIREMENTS}
    assert ours == wanted
    assert [r.dist for r in deps.REQUIREMENTS if r.via == "pytorch"] == ["torch"]


@pytest.mark.parametrize(("version", "spec", "ok"), [
    ("2.13.0+cpu", ">=2.1", True), ("2.0.1", ">=2.1", False), ("1.26.4", ">=1.23,<3", True),
    ("3.0", ">=1.23,<3", False), ("0.4.0", "==0.4", True), ("4.66.1", ">4.66", True), ("2.2", "!=2.2.0", False),
    ("1.4.2", "~=1.4", True), ("2.0", "~=1.4", False),
])
def test_version_satisfies(version, spec, ok) -> None:
    assert deps.version_satisfies(version, spec) is ok


def test_missing_requirements_and_confirmation() -> None:
    reqs = (deps.Requirement("numpy", ">=1.0"), deps.Requirement("gvsl-no-such-package", ">=1"),
            deps.Requirement("numpy", ">=999"), deps.Requirement("torch", ">=99", via="pytorch"))
    missing = deps.missing_requirements(reqs)
    assert [r.pip_spec for r in missing] == ["gvsl-no-such-package>=1", "numpy>=999", "torch>=99"]
    question, details = deps.confirmation_text(missing)
    assert "gvsl-no-such-package>=1: not installed" in question
    assert "needs >=999" in question and "PyTorch extension" in question
    assert details == "pip install gvsl-no-such-package>=1 numpy>=999"  # torch goes through PyTorchUtils


def test_where_the_core_and_python_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert deps.gvslcore_root(SLICER_DIR) == CORE_DIR  # source tree: <repo>/GVSLCore
    installed = tmp_path / "qt-scripted-modules"
    (installed / "GVSLCore" / "gvslcore").mkdir(parents=True)
    (installed / "GVSLCore" / "gvslcore" / "__init__.py").write_text("")
    assert deps.gvslcore_root(installed) == installed / "GVSLCore"  # installed extension
    assert deps.gvslcore_root(tmp_path / "elsewhere") is None
    monkeypatch.setenv("PYTHONPATH", "/a")
    env = deps.job_environment(CORE_DIR)
    assert env["PYTHONPATH"].split(":") == [str(CORE_DIR), "/a"]
    assert env["PYTHONUNBUFFERED"] == "1"
    assert deps.python_executable(None) == sys.executable
    fake_home = tmp_path / "Slicer"
    (fake_home / "bin").mkdir(parents=True)
    (fake_home / "bin" / "PythonSlicer").write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert deps.python_executable(fake_home) == str(fake_home / "bin" / "PythonSlicer")


def test_device_probe_parsing() -> None:
    out = 'noise\nGVSL_DEVICES {"torch": "2.4.0", "cuda": true, "cuda_name": "RTX", "cuda_memory_gb": 24.0, "mps": false}\n'
    info = deps.parse_device_probe(out)
    assert info.cuda and info.summary() == "GPU: RTX, 24 GB (PyTorch 2.4.0)"
    cpu = deps.parse_device_probe('GVSL_DEVICES {"torch": "2.4.0", "cuda": false}')
    assert "runs on the CPU" in cpu.summary()
    assert deps.device_argument("cuda", cpu) == "cpu" and deps.device_argument("auto", cpu) == "auto"
    assert deps.parse_device_probe("").error
    assert "not installed" in deps.DeviceInfo().summary()


# -- models ------------------------------------------------------------------------------------------
def write_model(path: Path, meta: dict | None) -> Path:
    from safetensors.numpy import save_file

    metadata = {"gvsl": json.dumps(meta)} if meta is not None else {"other": "x"}
    save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(path), metadata=metadata)
    return path


def heart_labels() -> list[dict]:
    from gvslcore.labels import HEART_LABELS

    return HEART_LABELS.to_list()


def test_model_files_are_read_without_torch(tmp_path: Path) -> None:
    write_model(tmp_path / "heart_ct.safetensors",
                      {"format": "gvsl-model", "task": "segmentation", "labels": heart_labels()})
    write_model(tmp_path / "backbone.safetensors", {"format": "gvsl-model", "task": "pretrain", "labels": []})
    (tmp_path / "run-7").mkdir()
    write_model(tmp_path / "run-7" / "model.safetensors", {"format": "gvsl-model", "task": "pretrain"})
    [run_model] = models.scan_models([tmp_path / "run-7"])
    assert (run_model.id, run_model.name) == ("run-7", "run 7")  # a run's export is named after the run
    write_model(tmp_path / "foreign.safetensors", None)
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 20)
    entries = models.scan_models([tmp_path, tmp_path / "missing"])
    assert [e.id for e in entries] == ["backbone", "heart_ct"]
    heart = next(e for e in entries if e.id == "heart_ct")
    assert heart.name == "heart ct" and heart.installed and heart.task == "segmentation"
    assert heart.label_names[0] == "left ventricle"
    assert models.is_heart_model(heart) and not models.is_heart_model(entries[0])
    assert models.default_heart_model(entries) is heart
    assert [e.id for e in models.backbone_models(entries)] == ["backbone"]
    assert models.read_safetensors_metadata(tmp_path / "foreign.safetensors") is None


def test_model_written_by_gvslcore_is_listed(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from gvslcore import bundle

    meta = bundle.default_metadata("segmentation", 4, labels=heart_labels())
    bundle.save_model(tmp_path / "m.safetensors", {"w": torch.zeros(3)}, meta)
    entry = models.entry_from_file(tmp_path / "m.safetensors")
    assert entry is not None and models.is_heart_model(entry)
    assert entry.meta["architecture"]["width"] == 4


def test_catalog_list_parsing_and_merge(tmp_path: Path) -> None:
    local = write_model(tmp_path / "heart.safetensors", {"format": "gvsl-model", "task": "segmentation",
                                                          "labels": heart_labels()})
    rows = [  # gvslcore.zoo.list_models rows: catalog fields plus "installed" (path or null)
        {"id": "heart", "title": "Heart CT", "task": "segmentation", "labels": heart_labels(), "installed": str(local),
         "download": "direct", "url": "https://example.org/heart.safetensors", "sha256": "ab" * 32},
        {"id": "gvsl3d-unet-official", "title": "GVSL (authors' weights)", "task": "pretrain", "labels": [],
         "installed": None, "download": "manual", "url": "https://example.org/drive", "sha256": None,
         "description": "CVPR 2023 release"},
        {"id": "remote-heart", "title": "Remote heart", "task": "segmentation", "labels": [], "installed": None,
         "download": "direct", "url": "https://example.org/r.safetensors", "sha256": "cd" * 32},
        {"id": "mine", "title": "(installed locally)", "task": "segmentation", "labels": ["left ventricle", "myo"],
         "installed": str(local)},
        {"title": "no id"},
    ]
    catalog = models.parse_models_list(json.dumps(rows))
    assert [(e.id, e.installed, e.source) for e in catalog] == [
        ("heart", True, "installed"), ("gvsl3d-unet-official", False, "catalog"),
        ("remote-heart", False, "catalog"), ("mine", True, "installed")]
    official, remote, mine = catalog[1:]
    assert official.display_name() == "GVSL (authors' weights) (manual download)" and not official.downloadable
    assert "https://example.org/drive" in official.manual_instructions()
    assert remote.display_name() == "Remote heart (download)" and remote.downloadable
    assert mine.name == "mine" and mine.label_names == ["left ventricle", "myo"]
    assert models.parse_models_list(json.dumps({"models": rows[:1]}))[0].id == "heart"
    assert models.parse_models_list("") == []
    merged = models.merge_models(models.scan_models([tmp_path]), catalog)
    assert [e.id for e in merged] == ["heart", "gvsl3d-unet-official", "remote-heart"]


def test_catalog_shipped_in_resources_parses() -> None:
    """Resources/Models.json (gvslcore.zoo's catalog) read the way the modules read `gvsl models list`."""
    data = json.loads((RESOURCES / "Models.json").read_text(encoding="utf-8"))
    rows = [{**entry, "installed": None} for entry in data["models"]]
    entries = models.parse_models_list(json.dumps(rows))
    assert len(entries) == len(rows) and all(not e.installed for e in entries)
    assert all(e.task in ("pretrain", "segmentation") for e in entries)


def test_import_model_file(isolated_home: Path, tmp_path: Path) -> None:
    source = write_model(tmp_path / "from colleague.safetensors", {"format": "gvsl-model", "task": "segmentation",
                                                                     "labels": heart_labels()})
    entry = models.import_model_file(source)
    assert Path(entry.path).parent == isolated_home / "models" and entry.source == "imported"
    assert models.scan_models()[0].id == "from colleague"
    with pytest.raises(ValueError, match="not a gvsl model"):
        models.import_model_file(write_model(tmp_path / "x.safetensors", None))
    assert models.unique_model_path(isolated_home / "models", "from colleague").name == "from_colleague.safetensors"
    (isolated_home / "models" / "from_colleague.safetensors").write_bytes(b"")
    assert models.unique_model_path(isolated_home / "models", "from colleague").name == "from_colleague_2.safetensors"
    assert models.runs_dir() == isolated_home / "runs"


# -- terminology -------------------------------------------------------------------------------------
def test_heart_template_matches_gvslcore_and_terminology_file() -> None:
    from gvslcore.labels import HEART_LABELS

    template = terminology.heart_template(RESOURCES)
    assert [lab.value for lab in template] == [1, 2, 3, 4, 5, 6, 7]
    core = terminology.labels_from_table(HEART_LABELS.to_list())
    assert [lab.name for lab in template] == [lab.name for lab in core]
    assert [lab.type for lab in template] == [lab.type for lab in core]
    for ours, theirs in zip(template, core):
        assert ours.color == pytest.approx(theirs.color, abs=1e-3), ours.name
    assert {lab.source_value for lab in HEART_LABELS} == {500, 600, 420, 550, 205, 820, 850}

    context = json.loads((RESOURCES / "Terminology" / terminology.TERMINOLOGY_FILE).read_text())
    assert context["SegmentationCategoryTypeContextName"] == terminology.CONTEXT_NAME
    [category] = context["SegmentationCodes"]["Category"]
    assert (category["CodingSchemeDesignator"], category["CodeValue"]) == ("SCT", "123037004")
    types = {t["CodeValue"]: t for t in category["Type"]}
    for lab in template:
        entry = types[lab.type.value]
        assert entry["CodingSchemeDesignator"] == "SCT" and entry["CodeMeaning"] == lab.type.meaning
        assert entry["3dSlicerLabel"] == lab.name
        assert [c / 255 for c in entry["recommendedDisplayRGBValue"]] == pytest.approx(list(lab.color))


def test_terminology_entry_string() -> None:
    lv = terminology.heart_template(RESOURCES)[0]
    entry = terminology.terminology_entry(lv)
    parts = entry.split("~")
    assert len(parts) == 7
    assert parts[0] == terminology.CONTEXT_NAME
    assert parts[1] == "SCT^123037004^Anatomical Structure"
    assert parts[2] == "SCT^87878005^Left ventricle"
    assert parts[3] == "^^" and parts[4] == terminology.REGION_CONTEXT_NAME
    assert terminology.type_code_from_entry(entry) == "87878005"
    assert terminology.type_code_from_entry("") is None and terminology.type_code_from_entry("a~b") is None


def test_match_segments_to_labels() -> None:
    labels = terminology.heart_template(RESOURCES)
    segments = [("Left Ventricle", None), ("myo", None), ("Segment_3", "82471001"), ("LV", None),
                ("Aorta", None), ("tumor", None), ("PA", None)]
    assert terminology.match_segments(segments, labels) == {
        "Left Ventricle": 1, "myo": 5, "Segment_3": 3, "Aorta": 6, "PA": 7}


def test_label_table_dicts_read_by_gvslcore() -> None:
    from gvslcore.labels import HEART_LABELS, LabelTable

    template = terminology.heart_template(RESOURCES)
    table = LabelTable.from_list(json.loads(json.dumps(terminology.label_table_dicts(template))))
    assert table.values == HEART_LABELS.values
    assert [lab.type for lab in table] == [lab.type for lab in HEART_LABELS]
    assert [lab.name for lab in table] == [lab.name for lab in HEART_LABELS]


def test_labels_from_table_accepts_0_255_colours() -> None:
    [label] = terminology.labels_from_table([{"value": 3, "name": "liver", "color": [255, 0, 0],
                                             "type": {"scheme": "SCT", "value": "10200004", "meaning": "Liver"}}])
    assert label.color == (1.0, 0.0, 0.0) and label.type.value == "10200004"
    assert label.category == terminology.ANATOMICAL_STRUCTURE


# -- imaging -----------------------------------------------------------------------------------------
def test_checkerboard_alternates_fixed_and_warped() -> None:
    rng = np.random.default_rng(0)
    fixed = rng.normal(0, 100, (2, 8, 8)).astype(np.float32)
    warped = rng.normal(500, 10, (2, 8, 8)).astype(np.float32)
    board = imaging.checkerboard(fixed, warped, squares=2)
    assert board.shape == (2, 8, 8) and board.dtype == np.float32
    f, w = imaging.normalize_for_display(fixed), imaging.normalize_for_display(warped)
    # 4 x 4 blocks: fixed in the top-left and bottom-right blocks, warped in the others, on every slice.
    assert np.array_equal(board[:, :4, :4], f[:, :4, :4]) and np.array_equal(board[:, 4:, 4:], f[:, 4:, 4:])
    assert np.array_equal(board[:, :4, 4:], w[:, :4, 4:]) and np.array_equal(board[:, 4:, :4], w[:, 4:, :4])
    assert 0.0 <= board.min() and board.max() <= 1.0
    with pytest.raises(ValueError):
        imaging.checkerboard(fixed, warped[:, :4])


def test_compose_labelmap() -> None:
    a = np.zeros((3, 3, 3), bool)
    b = np.zeros((3, 3, 3), bool)
    a[0] = True
    b[:2] = True
    out = imaging.compose_labelmap({5: b, 1: a})
    assert out.dtype == np.uint8
    assert (out[0] == 1).all() and (out[1] == 5).all() and (out[2] == 0).all()
    assert imaging.compose_labelmap({}, (2, 2, 2)).shape == (2, 2, 2)
    assert imaging.compose_labelmap({300: a}).dtype == np.uint16


def test_volumes_text() -> None:
    assert imaging.volumes_text({"left ventricle": 152.04, "myocardium": 98.51, "x": None}) == \
        "left ventricle 152 ml, myocardium 98.5 ml"
    assert imaging.volumes_text(None) == ""


def test_metrics_and_jacobian_window(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps({"ncc_before": 0.41234, "ncc_after": 0.78, "folding_percent": 0.02}))
    metrics = imaging.read_metrics(tmp_path)
    assert imaging.metrics_text(metrics) == "NCC 0.412 \u2192 0.780, folding 0.02 % of voxels"
    assert imaging.read_metrics(tmp_path / "none") == {}
    assert imaging.metrics_text({}) == "no metrics"
    gvsl_metrics = {"ncc": {"before": 0.2, "initial_alignment": 0.3, "after": 0.654}, "folding_percent": 0.0}
    assert imaging.metrics_text(gvsl_metrics) == "NCC 0.200 \u2192 0.654, folding 0 % of voxels"
    low, high = imaging.jacobian_window(np.linspace(0.7, 1.1, 1000))
    assert low + high == pytest.approx(2.0) and low < 0.71
    assert imaging.jacobian_window(np.ones(10)) == pytest.approx((0.95, 1.05))


def test_low_confidence_lines_match_gvslcore() -> None:
    """The panel flags the structures gvsl segment logs, in the same words (GVSLLib cannot import gvslcore)."""
    from gvslcore import segment

    outputs = {"confidence": {"left ventricle": 0.97, "right atrium": 0.62, "cyst": 0.3},
               "uncertain_fraction": {"left ventricle": 0.01, "right atrium": 0.31, "cyst": 0.0},
               "confidence_threshold": 0.7}
    lines = imaging.confidence_lines(outputs)
    assert lines == ["right atrium: low confidence 0.62 (31 % of its voxels below 0.5)", "cyst: low confidence 0.30"]
    assert lines == segment.low_confidence_lines(outputs["confidence"], outputs["uncertain_fraction"])
    assert imaging.LOW_CONFIDENCE == segment.LOW_CONFIDENCE
    assert imaging.confidence_lines({**outputs, "confidence_threshold": 0.5}) == ["cyst: low confidence 0.30"]
    assert imaging.confidence_lines(None) == [] and imaging.confidence_lines({"confidence": None}) == []


def test_metrics_warnings() -> None:
    assert imaging.metrics_warnings({"warnings": ["the field folds in 2 % of voxels", ""]}) == [
        "the field folds in 2 % of voxels"]
    assert imaging.metrics_warnings({}) == [] and imaging.metrics_warnings({"warnings": "x"}) == []


# -- command lines ----------------------------------------------------------------------------------
def gvsl_parser():
    from gvslcore.cli import build_parser

    return build_parser()


def command_available(parser, name: str) -> bool:
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return name in sub.choices


COMMAND_LINES = {
    "phantom": lambda: commands.phantom_args("out", 4, 48),
    "segment": lambda: commands.segment_args("input.nrrd", "seg.seg.nrrd", "m.safetensors", "cpu", fast=True),
    "segment unrefined": lambda: commands.segment_args("input.nrrd", "seg.seg.nrrd", "m.safetensors", refine=False),
    "register": lambda: commands.register_args("fixed.nrrd", "moving.nrrd", "m.safetensors", "result", 20, "cuda",
                                               "moving.seg.nrrd"),
    "pretrain": lambda: commands.pretrain_args(["data"], "/runs/a", 100, 64, 2, 16, "auto"),
    "finetune": lambda: commands.finetune_args("p.safetensors", "data/images", "data/labels", "out.safetensors", 10,
                                               32, 1, "cpu", label_table="data/label_table.json", init="i.safetensors",
                                               run="/runs/out-finetune"),
    "models download": lambda: commands.download_args("some-id"),
    "models list": commands.list_models_args,
}


@pytest.mark.parametrize("name", list(COMMAND_LINES))
def test_module_command_lines_parse_with_gvsl(name: str) -> None:
    """Every command line the modules run is accepted by gvsl's own parser (with --progress json)."""
    parser = gvsl_parser()
    if not command_available(parser, name.split()[0]):
        pytest.skip(f"`gvsl {name}` is not part of gvslcore yet")
    args = COMMAND_LINES[name]()
    parsed = parser.parse_args([*args, "--progress", "json"])
    assert parsed.func is not None and parsed.progress == "json"
    if name == "segment":
        assert parsed.fast and parsed.model == "m.safetensors" and parsed.device == "cpu" and not parsed.no_refine
    if name == "segment unrefined":
        assert parsed.no_refine and not parsed.fast
    if name == "register":
        assert parsed.iterations == 20 and parsed.moving_labels == "moving.seg.nrrd" and parsed.no_qc
    if name == "finetune":
        assert parsed.init == "i.safetensors" and parsed.label_table == "data/label_table.json"
        assert parsed.run == "/runs/out-finetune"
    if name == "pretrain":
        assert parsed.width == 16 and parsed.out == "/runs/a"


def test_the_shipped_heart_model_is_the_default_even_beside_newer_ones(tmp_path: Path) -> None:
    """'Segment heart chambers' runs the bundled gvsl-heart-ct; a newer model of one's own runs by Apply."""
    import os

    bundled = tmp_path / "Resources" / "Models"
    bundled.mkdir(parents=True)
    write_model(bundled / "gvsl-heart-ct.safetensors", {"format": "gvsl-model", "task": "segmentation",
                                                        "labels": heart_labels(), "id": "gvsl-heart-ct"})
    mine = write_model(tmp_path / "my_heart.safetensors", {"format": "gvsl-model", "task": "segmentation",
                                                           "labels": heart_labels()})
    os.utime(mine, (2e9, 2e9))  # newer than the shipped file
    entries = models.scan_models([tmp_path]) + models.scan_models([models.bundled_models_dir(tmp_path / "Resources")])
    assert models.default_heart_model(entries).id == "gvsl-heart-ct"
    assert models.default_heart_model([e for e in entries if e.id != "gvsl-heart-ct"]).id == "my_heart"

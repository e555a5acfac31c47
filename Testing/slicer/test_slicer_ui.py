"""Every .ui file loads in real Qt (PySide6 QUiLoader, offscreen); the module code only uses widgets
and signals that exist; a PNG of each panel is saved ($GVSL_PANEL_PNG_DIR or a temporary folder)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from PySide6 import QtGui, QtWidgets

import slicer_uiload as uiload
from GVSLLib import deps
from slicer_testpaths import MODULES, RESOURCES, SLICER_DIR

# Signals of Slicer's own widget classes that the modules connect to (these classes only exist in Slicer).
SLICER_SIGNALS = {
    "qMRMLNodeComboBox": {"currentNodeChanged", "nodeAdded", "currentNodeIDChanged"},
    "qMRMLCheckableNodeComboBox": {"checkedNodesChanged", "currentNodeChanged"},
    "ctkPathLineEdit": {"currentPathChanged", "validInputChanged"},
    "ctkSliderWidget": {"valueChanged"},
    "ctkCollapsibleButton": {"contentsCollapsed", "toggled", "clicked"},
}


def module_source(module: str) -> str:
    return (SLICER_DIR / f"{module}.py").read_text(encoding="utf-8")


@pytest.mark.parametrize("module", MODULES)
def test_ui_is_designer_xml_with_declared_custom_widgets(module: str) -> None:
    root = ET.parse(RESOURCES / "UI" / f"{module}.ui").getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == module
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == module
    declared = {cw.findtext("class"): cw.findtext("extends") for cw in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    for cls in used:
        if not hasattr(QtWidgets, cls):
            assert cls in declared, f"{module}.ui uses {cls} without declaring it in <customwidgets>"
    for cls, base in declared.items():
        assert base, f"{cls} has no <extends>"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate object names"


@pytest.mark.parametrize("module", MODULES)
def test_ui_loads_with_base_classes_and_names_exist(module: str) -> None:
    loaded = uiload.load_ui(RESOURCES / "UI" / f"{module}.ui", mode="base")
    assert loaded.widget.objectName() == module
    names = loaded.names()
    used = uiload.used_widget_names(module_source(module))
    assert used, f"{module}.py uses no self.ui widgets?"
    missing = sorted(used - names)
    assert not missing, f"{module}.py uses widgets missing from {module}.ui: {missing}"
    for sender, signal, receiver, slot in loaded.connections:
        assert sender in names and receiver in names, (sender, receiver)
        assert signal == "mrmlSceneChanged(vtkMRMLScene*)" and slot == "setMRMLScene(vtkMRMLScene*)"
    # Every MRML node selector gets the scene through a connection.
    selectors = {n for n, c in loaded.classes.items() if c in ("qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox")}
    assert selectors == {r for _, _, r, _ in loaded.connections}


@pytest.mark.parametrize("module", MODULES)
def test_signals_used_by_module_exist(module: str) -> None:
    loaded = uiload.load_ui(RESOURCES / "UI" / f"{module}.ui", mode="base")
    problems = []
    for name, signal in uiload.used_signals(module_source(module)):
        cls = loaded.classes.get(name, "")
        if cls in SLICER_SIGNALS:
            if signal not in SLICER_SIGNALS[cls]:
                problems.append(f"{name} ({cls}) has no signal {signal}")
            continue
        widget_class = getattr(QtWidgets, cls, None)
        assert widget_class is not None, f"unexpected class {cls} for {name}"
        meta = widget_class.staticMetaObject
        found = any(meta.method(i).name().data().decode() == signal for i in range(meta.methodCount()))
        if not found:
            problems.append(f"{name} ({cls}) has no signal {signal}")
    assert not problems, problems


@pytest.mark.parametrize("module", MODULES)
def test_panel_png(module: str, panel_png_dir) -> None:
    loaded = uiload.load_ui(RESOURCES / "UI" / f"{module}.ui", mode="preview")
    # What setup() puts into the device combo boxes, so the picture shows the real choices.
    for combo in loaded.widget.findChildren(QtWidgets.QComboBox, "deviceComboBox"):
        for _, text in deps.DEVICE_CHOICES:
            combo.addItem(text)
    path = panel_png_dir / f"{module}.png"
    width, height = uiload.render_png(loaded, path)
    assert path.is_file()
    assert width >= 400 and height >= 400
    image = QtGui.QImage(str(path))
    # Not blank: many distinct colours (text, frames, buttons).
    colors = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colors) > 20

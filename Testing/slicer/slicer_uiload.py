"""Load Slicer module .ui files in plain Qt (PySide6), without Slicer.

Slicer's widgets (qMRMLNodeComboBox, ctkCollapsibleButton, ...) exist only inside Slicer. Two ways
to stand in for them:

- ``mode="base"``: every custom class becomes the base class its ``<customwidget>`` declares
  (following chains such as qMRMLCheckableNodeComboBox -> qMRMLNodeComboBox -> QWidget). This is
  the strict check: the XML is valid Designer output and every named widget exists.
- ``mode="preview"``: a plain Qt widget that looks like the Slicer one (a group box for a
  collapsible button, a combo box showing the node type for a node selector, ...), so the PNG of
  the panel shows what a user sees.

Properties the substitute class does not have are dropped (and counted), and the
``mrmlSceneChanged -> setMRMLScene`` connections are removed after checking their endpoints exist.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore, QtWidgets
from PySide6.QtUiTools import QUiLoader

PREVIEW_CLASSES = {
    "qMRMLWidget": "QWidget",
    "ctkCollapsibleButton": "QGroupBox",
    "qMRMLNodeComboBox": "QComboBox",
    "qMRMLCheckableNodeComboBox": "QComboBox",
    "qMRMLSegmentSelectorWidget": "QComboBox",
    "ctkSliderWidget": "QDoubleSpinBox",
    "ctkPathLineEdit": "QLineEdit",
    "ctkComboBox": "QComboBox",
}

_NODE_WORDS = {
    "vtkMRMLScalarVolumeNode": "volume",
    "vtkMRMLSegmentationNode": "segmentation",
    "vtkMRMLTransformNode": "transform",
    "vtkMRMLLabelMapVolumeNode": "label map",
}


@dataclass
class LoadedUi:
    widget: QtWidgets.QWidget
    classes: dict[str, str]  # object name -> class in the .ui file
    dropped_properties: list[tuple[str, str]] = field(default_factory=list)
    connections: list[tuple[str, str, str, str]] = field(default_factory=list)

    def names(self) -> set[str]:
        found = {self.widget.objectName()}
        for child in self.widget.findChildren(QtCore.QObject):
            if child.objectName():
                found.add(child.objectName())
        return found


def application() -> QtWidgets.QApplication:
    app = QtWidgets.QApplication.instance()
    if app is None:
        app = QtWidgets.QApplication(["uiload"])
    return app


def _declared_bases(root: ET.Element) -> dict[str, str]:
    bases = {}
    for cw in root.iter("customwidget"):
        cls = cw.findtext("class")
        ext = cw.findtext("extends")
        if cls and ext:
            bases[cls] = ext
    return bases


def _resolve_base(cls: str, bases: dict[str, str]) -> str:
    seen = set()
    while cls in bases and cls not in seen:
        seen.add(cls)
        cls = bases[cls]
    return cls


def _has_property(class_name: str, prop: str) -> bool:
    widget_class = getattr(QtWidgets, class_name, None)
    if widget_class is None:
        return True
    return widget_class.staticMetaObject.indexOfProperty(prop) >= 0


def _text_property(name: str, text: str) -> ET.Element:
    prop = ET.Element("property", {"name": name})
    ET.SubElement(prop, "string").text = text
    return prop


def _preview_adjust(widget: ET.Element, original: str) -> None:
    """Make a stand-in show what the Slicer widget would show."""
    props = {p.get("name"): p for p in widget.findall("property")}
    if original == "ctkCollapsibleButton" and "text" in props:
        props["text"].set("name", "title")
    if original in ("qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox", "qMRMLSegmentSelectorWidget"):
        node_types = [s.text for s in widget.findall("./property[@name='nodeTypes']/stringlist/string")]
        none_display = widget.findtext("./property[@name='noneDisplay']/string")
        word = _NODE_WORDS.get(node_types[0] if node_types else "", "node")
        text = none_display or (f"Check {word}s" if original == "qMRMLCheckableNodeComboBox" else f"Select a {word}")
        item = ET.Element("item")
        item.append(_text_property("text", text))
        widget.append(item)
    if original == "ctkPathLineEdit":
        widget.append(_text_property("placeholderText", "Choose a folder..."))


def prepare_xml(path: str | os.PathLike, mode: str = "base") -> tuple[bytes, dict[str, str], list[tuple[str, str]], list]:
    """The .ui XML rewritten for plain Qt; also object classes, dropped properties, connections."""
    tree = ET.parse(path)
    root = tree.getroot()
    bases = _declared_bases(root)
    classes: dict[str, str] = {}
    dropped: list[tuple[str, str]] = []
    for widget in root.iter("widget"):
        original = widget.get("class", "")
        classes[widget.get("name", "")] = original
        if original in bases:
            target = PREVIEW_CLASSES.get(original) if mode == "preview" else None
            target = target or _resolve_base(original, bases)
            widget.set("class", target)
            if mode == "preview":
                _preview_adjust(widget, original)
        target = widget.get("class", "")
        for prop in list(widget.findall("property")):
            if not _has_property(target, prop.get("name", "")):
                dropped.append((widget.get("name", ""), prop.get("name", "")))
                widget.remove(prop)
    connections = []
    for conn in root.findall("./connections/connection"):
        connections.append((conn.findtext("sender"), conn.findtext("signal"), conn.findtext("receiver"), conn.findtext("slot")))
    for element in root.findall("connections"):
        root.remove(element)
    for element in root.findall("customwidgets"):
        root.remove(element)
    return ET.tostring(root, encoding="utf-8"), classes, dropped, connections


def load_ui(path: str | os.PathLike, mode: str = "base") -> LoadedUi:
    application()
    data, classes, dropped, connections = prepare_xml(path, mode)
    buffer = QtCore.QBuffer()
    buffer.setData(QtCore.QByteArray(data))
    buffer.open(QtCore.QIODevice.OpenModeFlag.ReadOnly)
    loader = QUiLoader()
    widget = loader.load(buffer)
    if widget is None:
        raise RuntimeError(f"QUiLoader could not load {path}: {loader.errorString()}")
    return LoadedUi(widget, classes, dropped, connections)


def render_png(loaded: LoadedUi, path: str | os.PathLike, width: int = 440) -> tuple[int, int]:
    """Lay the panel out at a module-panel width and save it as a PNG; returns its size."""
    widget = loaded.widget
    widget.setStyleSheet("QGroupBox { font-weight: bold; margin-top: 1.2em; } "
                         "QGroupBox::title { subcontrol-origin: margin; left: 6px; padding: 0 3px; }")
    widget.resize(width, 100)
    widget.ensurePolished()
    widget.adjustSize()
    height = max(widget.sizeHint().height(), widget.minimumSizeHint().height())
    widget.resize(width, height)
    widget.show()
    QtWidgets.QApplication.processEvents()
    pixmap = widget.grab()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not pixmap.save(str(path), "PNG"):
        raise RuntimeError(f"could not save {path}")
    widget.hide()
    return pixmap.width(), pixmap.height()


UI_ATTRIBUTE = re.compile(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)")
CONNECT_CALL = re.compile(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)\.connect\(\s*[\"']([A-Za-z_][A-Za-z0-9_]*)\(")


def used_widget_names(source: str) -> set[str]:
    """Names a module uses as ``self.ui.<name>``."""
    return set(UI_ATTRIBUTE.findall(source))


def used_signals(source: str) -> set[tuple[str, str]]:
    """(widget name, signal name) for every ``self.ui.<name>.connect("signal(...)", ...)``."""
    return set(CONNECT_CALL.findall(source))

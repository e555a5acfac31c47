"""Strict stand-ins for the Slicer and CTK Qt widgets the GVSL panels use, and the Qt side of ``slicer``.

Each stand-in is a PySide6 widget whose Python-visible API (through :mod:`pythonqt_shim`) is its Qt base
class plus exactly the properties, signals, slots and ``Q_INVOKABLE`` methods of the C++ header it
follows; anything else raises. The headers (read from the public repositories; commit of the version read):

- ``qMRMLWidget``: Slicer/Slicer ``Libs/MRML/Widgets/qMRMLWidget.h`` (11ac587)
- ``qMRMLNodeComboBox``: Slicer/Slicer ``Libs/MRML/Widgets/qMRMLNodeComboBox.h`` (06536db); filtering as
  ``qMRMLSortFilterProxyModel`` (node types, child types, hidden nodes), selection as QComboBox's
  (the first node becomes current when a combobox without "None" gets its first node; removing the current
  node selects the row that took its place)
- ``qMRMLCheckableNodeComboBox``: Slicer/Slicer ``Libs/MRML/Widgets/qMRMLCheckableNodeComboBox.h`` (1a7aa64)
- ``qMRMLPlotWidget``: Slicer/Slicer ``Libs/MRML/Widgets/qMRMLPlotWidget.h`` (1d3a0b7) (no drawing)
- ``ctkCollapsibleButton``: commontk/CTK ``Libs/Widgets/ctkCollapsibleButton.h`` (0d0ec63), a QAbstractButton
- ``ctkSliderWidget``: commontk/CTK ``Libs/Widgets/ctkSliderWidget.h`` (099a88b); the value is a QDoubleSpinBox's
  (rounded to ``decimals``, clamped to the range)
- ``ctkPathLineEdit``: commontk/CTK ``Libs/Widgets/ctkPathLineEdit.h`` (03bf847)
- ``ctkMessageBox``: commontk/CTK ``Libs/Widgets/ctkMessageBox.h`` (its three dontShowAgain properties); ``exec``
  records the box in :data:`messages` and answers at once (from :data:`message_answers`, else Yes / Ok)
- ``slicer.ScriptedLoadableModule``: Slicer/Slicer ``Base/Python/slicer/ScriptedLoadableModule.py`` (044f457):
  the four classes with the same constructor behaviour (parent widget and its layout, the module manager's
  ``moduleAboutToBeUnloaded(QString)`` calling ``cleanup``); no developer section (developer mode off)
- ``slicer.app``: the attributes of qSlicerApplication the modules and ``slicer/util.py`` use (main window
  named ``qSlicerMainWindow`` for ``slicer.util.mainWindow()``, override cursor, processEvents, settings in a
  temporary folder, ``testingEnabled()`` False so that message boxes are "shown" and recorded).

Everything else of ``slicer`` is slicer-core's: MRML, the logics, and Slicer's own ``slicer/util.py``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, ClassVar

from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Property, Signal, Slot

import pythonqt_shim

#: Every message box shown: dict(icon, title, text, detailedText, answer).
messages: list[dict[str, Any]] = []
#: Answers for the next message boxes (QMessageBox.StandardButton), first in first out.
message_answers: list[Any] = []


def _prop(kind: Any, name: str, default: Any, notify: Any = None, on_set: str | None = None) -> Property:
    """A Q_PROPERTY kept in ``self._p``; ``on_set`` names a method called after a change."""

    def getter(self: Any) -> Any:
        return self._p.get(name, default)

    def setter(self: Any, value: Any) -> None:
        old = self._p.get(name, default)
        self._p[name] = value
        if on_set is not None and old != value:
            getattr(self, on_set)(value)

    return Property(kind, getter, setter) if notify is None else Property(kind, getter, setter, notify=notify)


# -- qMRMLWidget ------------------------------------------------------------------------------------------
class qMRMLWidget(QtWidgets.QWidget):
    PYTHONQT_API: ClassVar[dict[str, Any]] = {
        "signals": {"mrmlSceneChanged(vtkMRMLScene*)": "mrmlSceneChanged"},
        "slots": {"setMRMLScene(vtkMRMLScene*)": "setMRMLScene"},
        "invokables": ("mrmlScene", "preInitializeApplication", "postInitializeApplication", "pixmapFromIcon"),
    }
    mrmlSceneChanged = Signal(object)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._p: dict[str, Any] = {}
        self._scene = None

    def mrmlScene(self) -> Any:
        return self._scene

    @Slot(object)
    def setMRMLScene(self, scene: Any) -> None:
        if scene is self._scene:
            return
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)


class qMRMLPlotWidget(qMRMLWidget):
    PYTHONQT_API: ClassVar[dict[str, Any]] = {
        "signals": dict(qMRMLWidget.PYTHONQT_API["signals"]),
        "slots": {**qMRMLWidget.PYTHONQT_API["slots"],
                  "setMRMLPlotViewNode(vtkMRMLPlotViewNode*)": "setMRMLPlotViewNode",
                  "setMRMLAbstractViewNode(vtkMRMLAbstractViewNode*)": "setMRMLPlotViewNode"},
        "invokables": (*qMRMLWidget.PYTHONQT_API["invokables"], "mrmlPlotViewNode", "mrmlAbstractViewNode",
                       "plotView", "viewWidget", "plotController", "controllerWidget"),
    }

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewNode = None

    @Slot(object)
    def setMRMLPlotViewNode(self, node: Any) -> None:
        self._viewNode = node

    def mrmlPlotViewNode(self) -> Any:
        return self._viewNode

    mrmlAbstractViewNode = mrmlPlotViewNode


# -- qMRMLNodeComboBox --------------------------------------------------------------------------------------
class qMRMLNodeComboBox(QtWidgets.QWidget):
    PYTHONQT_API: ClassVar[dict[str, Any]] = {
        "signals": {
            "currentNodeChanged(vtkMRMLNode*)": "currentNodeChangedNode",
            "currentNodeChanged(bool)": "currentNodeChangedValid",
            "currentNodeIDChanged(QString)": "currentNodeIDChanged",
            "nodeActivated(vtkMRMLNode*)": "nodeActivated",
            "nodeAdded(vtkMRMLNode*)": "nodeAdded",
            "nodeAddedByUser(vtkMRMLNode*)": "nodeAddedByUser",
            "nodeAddedByUserAction(vtkMRMLNode*)": "nodeAddedByUserAction",
            "nodeAboutToBeRemoved(vtkMRMLNode*)": "nodeAboutToBeRemoved",
            "currentNodeRenamed(QString)": "currentNodeRenamed",
            "nodeAboutToBeEdited(vtkMRMLNode*)": "nodeAboutToBeEdited",
        },
        "slots": {
            "setMRMLScene(vtkMRMLScene*)": "setMRMLScene",
            "setCurrentNode(vtkMRMLNode*)": "setCurrentNode",
            "setCurrentNode(QString)": "setCurrentNode",
            "setCurrentNodeID(QString)": "setCurrentNodeID",
            "setCurrentNodeIndex(int)": "setCurrentNodeIndex",
            "addNode(QString)": "addNode",
            "addNode()": "addNode",
            "removeCurrentNode()": "removeCurrentNode",
            "editCurrentNode()": "editCurrentNode",
            "renameCurrentNode()": "renameCurrentNode",
        },
        "invokables": ("mrmlScene", "addAttribute", "removeAttribute", "setNodeTypeLabel", "nodeTypeLabel",
                       "nodeCount", "nodeFromIndex", "currentNode", "currentNodeId", "sortFilterProxyModel",
                       "addMenuAction"),
    }
    currentNodeChangedNode = Signal(object)
    currentNodeChangedValid = Signal(bool)
    currentNodeIDChanged = Signal(str)
    nodeActivated = Signal(object)
    nodeAdded = Signal(object)
    nodeAddedByUser = Signal(object)
    nodeAddedByUserAction = Signal(object)
    nodeAboutToBeRemoved = Signal(object)
    currentNodeRenamed = Signal(str)
    nodeAboutToBeEdited = Signal(object)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._p: dict[str, Any] = {}
        self._scene = None
        self._observers: list[int] = []
        self._nodes: list[Any] = []
        self._currentID = ""
        self._attributes: dict[tuple[str, str], Any] = {}
        self._combo = QtWidgets.QComboBox(self)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._combo)
        self.setEnabled(False)  # "disabled (grayed out) until a valid scene (not null) is provided"

    # properties (qMRMLNodeComboBox.h)
    def _get_current_id(self) -> str:
        return self._currentID

    def _set_current_id(self, nodeID: str) -> None:
        self.setCurrentNodeID(nodeID)

    currentNodeID = Property(str, _get_current_id, _set_current_id, notify=currentNodeIDChanged)
    currentNodeId = Property(str, _get_current_id, _set_current_id)
    nodeTypes = _prop("QStringList", "nodeTypes", [], on_set="_refresh")
    showHidden = _prop(bool, "showHidden", False, on_set="_refresh")
    showChildNodeTypes = _prop(bool, "showChildNodeTypes", True, on_set="_refresh")
    hideChildNodeTypes = _prop("QStringList", "hideChildNodeTypes", [], on_set="_refresh")
    baseName = _prop(str, "baseName", "")
    noneEnabled = _prop(bool, "noneEnabled", False, on_set="_refresh")
    addEnabled = _prop(bool, "addEnabled", True)
    removeEnabled = _prop(bool, "removeEnabled", True)
    editEnabled = _prop(bool, "editEnabled", False)
    renameEnabled = _prop(bool, "renameEnabled", False)
    interactionNodeSingletonTag = _prop(str, "interactionNodeSingletonTag", "Singleton")
    selectNodeUponCreation = _prop(bool, "selectNodeUponCreation", True)
    noneDisplay = _prop(str, "noneDisplay", "None", on_set="_refresh")
    sizeAdjustPolicy = _prop(int, "sizeAdjustPolicy", 0)

    # invokables
    def mrmlScene(self) -> Any:
        return self._scene

    def addAttribute(self, nodeType: str, attributeName: str, attributeValue: Any = None) -> None:
        self._attributes[(nodeType, attributeName)] = attributeValue
        self._refresh()

    def removeAttribute(self, nodeType: str, attributeName: str) -> None:
        self._attributes.pop((nodeType, attributeName), None)
        self._refresh()

    def nodeCount(self) -> int:
        return len(self._nodes)

    def nodeFromIndex(self, index: int) -> Any:
        return self._nodes[index] if 0 <= index < len(self._nodes) else None

    def currentNode(self) -> Any:
        if not self._currentID or self._scene is None:
            return None
        return self._scene.GetNodeByID(self._currentID)

    # slots
    @Slot(object)
    def setMRMLScene(self, scene: Any) -> None:
        import vtk

        if self._scene is not None:
            for tag in self._observers:
                self._scene.RemoveObserver(tag)
        self._observers = []
        self._scene = scene
        if scene is not None:
            @vtk.calldata_type(vtk.VTK_OBJECT)
            def added(caller: Any, event: Any, node: Any) -> None:
                self._onNodeAdded(node)

            @vtk.calldata_type(vtk.VTK_OBJECT)
            def removed(caller: Any, event: Any, node: Any) -> None:
                self._onNodeRemoved(node)

            self._callbacks = (added, removed)
            self._observers = [scene.AddObserver(scene.NodeAddedEvent, added),
                               scene.AddObserver(scene.NodeRemovedEvent, removed),
                               scene.AddObserver(scene.EndCloseEvent, lambda *a: self._refresh()),
                               scene.AddObserver(scene.EndBatchProcessEvent, lambda *a: self._refresh())]
        self.setEnabled(scene is not None)
        self._refresh(select_first=True)

    @Slot(object)
    def setCurrentNode(self, node: Any) -> None:
        if isinstance(node, str):
            self.setCurrentNodeID(node)
            return
        if node is not None and not any(n is node or n.GetID() == node.GetID() for n in self._nodes):
            node = None  # not in the list (wrong type, not in the scene): no current node
        self._setCurrent(node.GetID() if node is not None else "")

    @Slot(str)
    def setCurrentNodeID(self, nodeID: str) -> None:
        node = self._scene.GetNodeByID(nodeID) if (self._scene is not None and nodeID) else None
        self.setCurrentNode(node)

    @Slot(int)
    def setCurrentNodeIndex(self, index: int) -> None:
        self.setCurrentNode(self.nodeFromIndex(index))

    @Slot(str)
    def addNode(self, nodeType: str | None = None) -> Any:
        types_ = self.nodeTypes
        nodeType = nodeType or (types_[0] if types_ else None)
        if self._scene is None or nodeType not in types_:
            return None
        node = self._scene.AddNewNodeByClass(nodeType, self._scene.GenerateUniqueName(self.baseName or nodeType))
        self.nodeAddedByUserAction.emit(node)
        if self.selectNodeUponCreation:
            self.setCurrentNode(node)
        return node

    @Slot()
    def removeCurrentNode(self) -> None:
        node = self.currentNode()
        if node is not None and self._scene is not None:
            self._scene.RemoveNode(node)

    @Slot()
    def editCurrentNode(self) -> None:
        node = self.currentNode()
        if node is not None:
            self.nodeAboutToBeEdited.emit(node)

    @Slot()
    def renameCurrentNode(self) -> None:
        raise NotImplementedError("renaming opens a dialog; set the node's name instead")

    # the node list
    def _accepts(self, node: Any) -> bool:
        if node is None:
            return False
        classes = self.nodeTypes
        if self.showChildNodeTypes:
            ok = any(node.IsA(c) for c in classes)
        else:
            ok = node.GetClassName() in classes
        if not ok or any(node.IsA(c) for c in self.hideChildNodeTypes):
            return False
        if node.GetHideFromEditors() and not self.showHidden:
            return False
        for (nodeType, attribute), value in self._attributes.items():
            if node.IsA(nodeType):
                found = node.GetAttribute(attribute)
                if found is None or (value is not None and str(found) != str(value)):
                    return False
        return True

    def _scene_nodes(self, skip: Any = None) -> list[Any]:
        if self._scene is None:
            return []
        found = []
        collection = self._scene.GetNodes()
        for i in range(collection.GetNumberOfItems()):
            node = collection.GetItemAsObject(i)
            if node is not skip and self._accepts(node):
                found.append(node)
        return found

    def _rows(self) -> list[Any]:
        return ([None] if self.noneEnabled else []) + self._nodes

    def _redraw(self) -> None:
        blocked = self._combo.blockSignals(True)
        self._combo.clear()
        for node in self._rows():
            self._combo.addItem(self.noneDisplay if node is None else node.GetName())
        ids = [n.GetID() if n is not None else "" for n in self._rows()]
        self._combo.setCurrentIndex(ids.index(self._currentID) if self._currentID in ids else -1)
        self._combo.blockSignals(blocked)

    def _refresh(self, *args: Any, skip: Any = None, select_first: bool = False) -> None:
        oldRows = [n.GetID() if n is not None else "" for n in self._rows()]
        self._nodes = self._scene_nodes(skip)
        ids = [n.GetID() for n in self._nodes]
        current = self._currentID
        if current and current not in ids:
            # QComboBox: the row that took the removed row's place, else the last row
            rows = self._rows()
            row = oldRows.index(current) if current in oldRows else 0
            replacement = rows[min(row, len(rows) - 1)] if rows else None
            current = replacement.GetID() if replacement is not None else ""
        if not current and not self.noneEnabled and self._nodes and (select_first or not oldRows):
            current = self._nodes[0].GetID()
        self._setCurrent(current)
        self._redraw()

    def _onNodeAdded(self, node: Any) -> None:
        if not self._accepts(node) or self._scene is None or self._scene.IsBatchProcessing():
            return
        wasEmpty = not self._nodes
        self._nodes = self._scene_nodes()
        self.nodeAdded.emit(node)
        if wasEmpty and not self.noneEnabled and not self._currentID:
            self._setCurrent(node.GetID())
        self._redraw()

    def _onNodeRemoved(self, node: Any) -> None:
        if node is None or not any(n is node for n in self._nodes):
            return
        self.nodeAboutToBeRemoved.emit(node)
        self._refresh(skip=node)

    def _setCurrent(self, nodeID: str) -> None:
        if nodeID == self._currentID:
            return
        self._currentID = nodeID
        self._redraw()
        node = self.currentNode()
        self.currentNodeChangedNode.emit(node)
        self.currentNodeChangedValid.emit(node is not None)
        self.currentNodeIDChanged.emit(nodeID)


class qMRMLCheckableNodeComboBox(qMRMLNodeComboBox):
    PYTHONQT_API: ClassVar[dict[str, Any]] = {
        "signals": {**qMRMLNodeComboBox.PYTHONQT_API["signals"], "checkedNodesChanged()": "checkedNodesChanged"},
        "slots": {**qMRMLNodeComboBox.PYTHONQT_API["slots"], "check(vtkMRMLNode*)": "check",
                  "uncheck(vtkMRMLNode*)": "uncheck"},
        "invokables": (*qMRMLNodeComboBox.PYTHONQT_API["invokables"], "checkedNodes", "uncheckedNodes",
                       "allChecked", "noneChecked", "checkState", "setCheckState", "setUserCheckable"),
    }
    checkedNodesChanged = Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._checked: set[str] = set()

    def checkedNodes(self) -> list[Any]:
        return [n for n in self._nodes if n.GetID() in self._checked]

    def uncheckedNodes(self) -> list[Any]:
        return [n for n in self._nodes if n.GetID() not in self._checked]

    def allChecked(self) -> bool:
        return not self.uncheckedNodes()

    def noneChecked(self) -> bool:
        return not self.checkedNodes()

    def checkState(self, node: Any) -> Any:
        checked = node is not None and node.GetID() in self._checked and any(n is node for n in self._nodes)
        return QtCore.Qt.CheckState.Checked if checked else QtCore.Qt.CheckState.Unchecked

    def setCheckState(self, node: Any, state: Any) -> None:
        if node is None or not any(n.GetID() == node.GetID() for n in self._nodes):
            return
        before = set(self._checked)
        if state == QtCore.Qt.CheckState.Checked:
            self._checked.add(node.GetID())
        else:
            self._checked.discard(node.GetID())
        if before != self._checked:
            self.checkedNodesChanged.emit()

    def setUserCheckable(self, node: Any, userCheckable: bool) -> None:
        pass

    @Slot(object)
    def check(self, node: Any) -> None:
        self.setCheckState(node, QtCore.Qt.CheckState.Checked)

    @Slot(object)
    def uncheck(self, node: Any) -> None:
        self.setCheckState(node, QtCore.Qt.CheckState.Unchecked)

    def _onNodeRemoved(self, node: Any) -> None:
        had = node is not None and node.GetID() in self._checked
        self._checked.discard(node.GetID() if node is not None else "")
        super()._onNodeRemoved(node)
        if had:
            self.checkedNodesChanged.emit()


# -- CTK ---------------------------------------------------------------------------------------------------
class ctkCollapsibleButton(QtWidgets.QAbstractButton):
    PYTHONQT_API: ClassVar[dict[str, Any]] = {"signals": {"contentsCollapsed(bool)": "contentsCollapsed"}, "slots": {}, "invokables": ()}
    contentsCollapsed = Signal(bool)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._p: dict[str, Any] = {}
        self.setCheckable(True)
        self.setChecked(True)
        self.toggled.connect(self._onToggled)

    def _get_collapsed(self) -> bool:
        return not self.isChecked()

    def _set_collapsed(self, collapsed: bool) -> None:
        self.setChecked(not collapsed)

    collapsed = Property(bool, _get_collapsed, _set_collapsed, notify=contentsCollapsed)
    collapsedHeight = _prop(int, "collapsedHeight", 14)
    contentsFrameShape = _prop(int, "contentsFrameShape", 0)
    contentsFrameShadow = _prop(int, "contentsFrameShadow", 0)
    contentsLineWidth = _prop(int, "contentsLineWidth", 1)
    contentsMidLineWidth = _prop(int, "contentsMidLineWidth", 0)
    buttonTextAlignment = _prop(int, "buttonTextAlignment", 0)
    indicatorAlignment = _prop(int, "indicatorAlignment", 0)

    def _onToggled(self, checked: bool) -> None:
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindChildOption.FindDirectChildrenOnly):
            child.setVisible(checked)
        self.contentsCollapsed.emit(not checked)

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:
        painter = QtGui.QPainter(self)
        painter.drawText(4, 14, ("v " if self.isChecked() else "> ") + self.text())


class ctkSliderWidget(QtWidgets.QWidget):
    PYTHONQT_API: ClassVar[dict[str, Any]] = {
        "signals": {"valueChanged(double)": "valueChanged", "valueIsChanging(double)": "valueIsChanging"},
        "slots": {"reset()": "reset", "setValue(double)": "setValue", "setSpinBoxVisible(bool)": "setSpinBoxVisible"},
        "invokables": (),
    }
    valueChanged = Signal(float)
    valueIsChanging = Signal(float)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._p: dict[str, Any] = {}
        self._spin = QtWidgets.QDoubleSpinBox(self)
        self._spin.setRange(0.0, 99.0)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._spin)
        self._spin.valueChanged.connect(self.valueChanged.emit)

    decimals = Property(int, lambda s: s._spin.decimals(), lambda s, v: s._spin.setDecimals(v))
    singleStep = Property(float, lambda s: s._spin.singleStep(), lambda s, v: s._spin.setSingleStep(v))
    pageStep = _prop(float, "pageStep", 10.0)
    minimum = Property(float, lambda s: s._spin.minimum(), lambda s, v: s._spin.setMinimum(v))
    maximum = Property(float, lambda s: s._spin.maximum(), lambda s, v: s._spin.setMaximum(v))
    value = Property(float, lambda s: s._spin.value(), lambda s, v: s._spin.setValue(v))
    prefix = Property(str, lambda s: s._spin.prefix(), lambda s, v: s._spin.setPrefix(v))
    suffix = Property(str, lambda s: s._spin.suffix(), lambda s, v: s._spin.setSuffix(v))
    tickInterval = _prop(float, "tickInterval", 0.0)
    tickPosition = _prop(int, "tickPosition", 0)
    autoSpinBoxWidth = _prop(bool, "autoSpinBoxWidth", True)
    spinBoxAlignment = _prop(int, "spinBoxAlignment", 0)
    tracking = _prop(bool, "tracking", True)
    spinBoxVisible = Property(bool, lambda s: s._spin.isVisibleTo(s), lambda s, v: s._spin.setVisible(v))
    popupSlider = _prop(bool, "popupSlider", False)

    @Slot()
    def reset(self) -> None:
        self._spin.setValue(0.0)

    @Slot(float)
    def setValue(self, value: float) -> None:
        self._spin.setValue(value)

    @Slot(bool)
    def setSpinBoxVisible(self, visible: bool) -> None:
        self._spin.setVisible(visible)


class ctkPathLineEdit(QtWidgets.QWidget):
    PYTHONQT_API: ClassVar[dict[str, Any]] = {
        "signals": {"validInputChanged(bool)": "validInputChanged", "currentPathChanged(QString)": "currentPathChanged"},
        "slots": {"setCurrentPath(QString)": "setCurrentPath", "browse()": "browse",
                  "retrieveHistory()": "retrieveHistory", "addCurrentPathToHistory()": "addCurrentPathToHistory"},
        "invokables": (),
    }
    PYTHONQT_ENUMS: ClassVar[dict[str, int]] = {"Dirs": 0x001, "Files": 0x002, "Drives": 0x004, "NoSymLinks": 0x008, "AllEntries": 0x007,
                      "TypeMask": 0x00f, "Readable": 0x010, "Writable": 0x020, "Executable": 0x040,
                      "PermissionMask": 0x070, "Modified": 0x080, "Hidden": 0x100, "System": 0x200,
                      "AccessMask": 0x3F0, "AllDirs": 0x400, "CaseSensitive": 0x800, "NoDotAndDotDot": 0x1000,
                      "NoDot": 0x2000, "NoDotDot": 0x4000, "NoFilter": -1}
    validInputChanged = Signal(bool)
    currentPathChanged = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._p: dict[str, Any] = {}
        self._edit = QtWidgets.QLineEdit(self)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._edit)
        self._edit.textChanged.connect(self.currentPathChanged.emit)

    label = _prop(str, "label", "")
    filters = _prop(int, "filters", 0x007 | 0x010)
    currentPath = Property(str, lambda s: s._edit.text(), lambda s, v: s._edit.setText(v), user=True)
    options = _prop(int, "options", 0)
    settingKey = _prop(str, "settingKey", "")
    showBrowseButton = _prop(bool, "showBrowseButton", True)
    showHistoryButton = _prop(bool, "showHistoryButton", True)
    sizeAdjustPolicy = _prop(int, "sizeAdjustPolicy", 1)
    minimumContentsLength = _prop(int, "minimumContentsLength", 0)
    nameFilters = _prop("QStringList", "nameFilters", [])

    @Slot(str)
    def setCurrentPath(self, path: str) -> None:
        self._edit.setText(path)

    @Slot()
    def browse(self) -> None:
        raise NotImplementedError("browse() opens a file dialog; set currentPath instead")

    @Slot()
    def retrieveHistory(self) -> None:
        pass

    @Slot()
    def addCurrentPathToHistory(self) -> None:
        pass


class ctkMessageBox(QtWidgets.QMessageBox):
    PYTHONQT_API: ClassVar[dict[str, Any]] = {"signals": {}, "slots": {}, "invokables": ()}
    dontShowAgain = _prop(bool, "dontShowAgain", False)
    dontShowAgainVisible = _prop(bool, "dontShowAgainVisible", False)
    dontShowAgainSettingsKey = _prop(str, "dontShowAgainSettingsKey", "")

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._p: dict[str, Any] = {}

    def exec(self) -> Any:
        buttons = self.standardButtons()
        if message_answers:
            answer = message_answers.pop(0)
        elif buttons & QtWidgets.QMessageBox.StandardButton.Yes:
            answer = QtWidgets.QMessageBox.StandardButton.Yes
        else:
            answer = QtWidgets.QMessageBox.StandardButton.Ok
        messages.append({"icon": self.icon(), "title": self.windowTitle().strip(), "text": self.text(),
                         "detailedText": self.detailedText(), "answer": answer})
        return answer


STANDINS = {cls.__name__: cls for cls in (qMRMLWidget, qMRMLNodeComboBox, qMRMLCheckableNodeComboBox,
                                          qMRMLPlotWidget, ctkCollapsibleButton, ctkSliderWidget, ctkPathLineEdit)}


# -- the application -------------------------------------------------------------------------------------
class qSlicerModuleManager(QtCore.QObject):
    PYTHONQT_API: ClassVar[dict[str, Any]] = {"signals": {"moduleAboutToBeUnloaded(QString)": "moduleAboutToBeUnloaded"}, "slots": {},
                    "invokables": ()}
    moduleAboutToBeUnloaded = Signal(str)


class PanelApp:
    """``slicer.app`` for module panels: what mrml_app's _App has, plus the Qt application's side."""

    SIGNALS = ("startupCompleted()",)

    def __init__(self, base: Any, temporary: Path) -> None:
        self._base = base
        self._qapp = pythonqt_shim.application()
        QtCore.QCoreApplication.setOrganizationName("GVSLPanelTests")
        QtCore.QCoreApplication.setApplicationName("Slicer")
        QtCore.QSettings.setDefaultFormat(QtCore.QSettings.Format.IniFormat)
        QtCore.QSettings.setPath(QtCore.QSettings.Format.IniFormat, QtCore.QSettings.Scope.UserScope,
                                 str(temporary / "settings"))
        self.temporaryPath = str(temporary / "tmp")
        Path(self.temporaryPath).mkdir(parents=True, exist_ok=True)
        self.applicationName = "Slicer"
        self.slicerHome = base.slicerHome
        self.commandOptions = base.commandOptions
        self.mainWindow = QtWidgets.QMainWindow()
        self.mainWindow.setObjectName("qSlicerMainWindow")
        self._moduleManager = qSlicerModuleManager()
        self.startupHandlers: list[Any] = []

    # from mrml_app._App
    def coreIOManager(self) -> Any:
        return self._base.coreIOManager()

    def layoutManager(self) -> None:
        return None

    # the Qt application
    def testingEnabled(self) -> bool:
        return False

    def processEvents(self, *args: Any) -> None:
        self._qapp.processEvents()

    def connect(self, signal: str, handler: Any) -> bool:
        if pythonqt_shim._cpp_signature(signal) not in self.SIGNALS:
            raise pythonqt_shim.PythonQtError(f"QObject::connect(): signal '{signal}' does not exist on qSlicerApplication")
        self.startupHandlers.append(handler)
        return True

    def topLevelWidgets(self) -> list[Any]:
        return [pythonqt_shim.wrap(self.mainWindow)]

    def moduleManager(self) -> Any:
        return pythonqt_shim.wrap(self._moduleManager)

    def setOverrideCursor(self, cursor: Any) -> None:
        QtWidgets.QApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self) -> None:
        QtWidgets.QApplication.restoreOverrideCursor()

    def settings(self) -> Any:
        return pythonqt_shim.wrap(QtCore.QSettings())

    userSettings = settings

    def statusMessage(self) -> str:
        return self.mainWindow.statusBar().currentMessage()


# -- slicer.ScriptedLoadableModule --------------------------------------------------------------------------
def scripted_loadable_module() -> types.ModuleType:
    """The four base classes as Slicer's ScriptedLoadableModule.py defines them (the parts panels run)."""
    import slicer

    qt = sys.modules["qt"]
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent: Any) -> None:
            super().__init__()
            self.parent = parent
            self.moduleName = self.__class__.__name__

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent: Any = None) -> None:
            super().__init__()
            self.moduleName = self.__class__.__name__
            self.moduleName = self.moduleName.removesuffix("Widget")
            self.developerMode = slicer.util.settingsValue("Developer/DeveloperMode", False,
                                                           converter=slicer.util.toBool)
            if not parent:
                self.parent = slicer.qMRMLWidget()
                self.parent.setLayout(qt.QVBoxLayout())
                self.parent.setMRMLScene(slicer.mrmlScene)
            else:
                self.parent = parent
            self.layout = self.parent.layout()
            if not parent:
                self.setup()
                self.parent.show()
            slicer.app.moduleManager().connect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

        def cleanup(self) -> None:
            pass

        def _onModuleAboutToBeUnloaded(self, moduleName: str) -> None:
            if moduleName == self.moduleName:
                self.cleanup()
                slicer.app.moduleManager().disconnect("moduleAboutToBeUnloaded(QString)",
                                                      self._onModuleAboutToBeUnloaded)

        def setupDeveloperSection(self) -> None:
            if self.developerMode:
                raise NotImplementedError("the developer section (Reload & Test) is not part of these tests")

        def setup(self) -> None:
            self.setupDeveloperSection()

        def onReload(self) -> None:
            raise NotImplementedError("reloading a module needs Slicer")

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent: Any = None) -> None:
            super().__init__()
            self.moduleName = self.__class__.__name__
            self.moduleName = self.moduleName.removesuffix("Logic")
            self.isSingletonParameterNode = True

    class ScriptedLoadableModuleTest:
        pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        cls.__module__ = module.__name__
        setattr(module, cls.__name__, cls)
    return module


def ctk_module() -> types.ModuleType:
    module = types.ModuleType("ctk", "CTK widgets (stand-ins, see slicer_qt_standins)")
    for cls in (ctkCollapsibleButton, ctkSliderWidget, ctkPathLineEdit, ctkMessageBox):
        setattr(module, cls.__name__, pythonqt_shim.QtClass(cls))
    return module

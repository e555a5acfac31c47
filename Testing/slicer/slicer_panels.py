"""Run the GVSL module panels (the Widget classes) outside Slicer: ``qt`` is PythonQt's dialect over PySide6
(:mod:`pythonqt_shim`), ``ctk`` and Slicer's Qt widgets are strict stand-ins (:mod:`slicer_qt_standins`),
and the rest of ``slicer`` is slicer-core's real MRML with Slicer's own ``slicer/util.py`` (:mod:`mrml_app`).

:func:`install` swaps these into ``sys.modules`` on top of an installed :class:`mrml_app.MRMLApp` and
re-imports the module files and ``GVSLLib.slicerglue`` (which bind ``qt`` when imported); :func:`uninstall`
puts everything back. :class:`Panel` builds a module panel as Slicer does: a parent widget with a vertical
layout, ``Widget(parent)``, ``setup()``, shown, ``enter()``; :meth:`Panel.close` is what Slicer does when it
unloads the module (``moduleAboutToBeUnloaded`` -> ``cleanup()``), then the widget is deleted.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6 import QtWidgets

import pythonqt_shim
import slicer_qt_standins as standins

MODULES = ("GVSLSegment", "GVSLRegister", "GVSLTrain")
_REIMPORTED = (*MODULES, "GVSLLib.slicerglue")
_SLICER_ATTRIBUTES = ("qMRMLWidget", "qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox", "qMRMLPlotWidget",
                      "ScriptedLoadableModule")


class Harness:
    def __init__(self, mrml: Any, temporary: Path) -> None:
        import slicer

        self.mrml = mrml
        self.slicer = slicer
        self._saved_modules = {name: sys.modules.get(name) for name in
                               ("qt", "ctk", "slicer.ScriptedLoadableModule", *_REIMPORTED)}
        self._saved_attributes = {name: getattr(slicer, name, None) for name in _SLICER_ATTRIBUTES}
        self._saved_app = slicer.app
        lib = sys.modules.get("GVSLLib")
        self._saved_glue = getattr(lib, "slicerglue", None) if lib is not None else None

        pythonqt_shim.application()
        for name in _REIMPORTED:
            sys.modules.pop(name, None)
        if lib is not None and hasattr(lib, "slicerglue"):
            delattr(lib, "slicerglue")
        self.qt = pythonqt_shim.qt_module()
        sys.modules["qt"] = self.qt
        pythonqt_shim.register_standins(standins.STANDINS)
        sys.modules["ctk"] = standins.ctk_module()
        for name in ("qMRMLWidget", "qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox", "qMRMLPlotWidget"):
            setattr(slicer, name, pythonqt_shim.QtClass(standins.STANDINS[name]))
        self.app = standins.PanelApp(slicer.app, temporary)
        slicer.app = self.app
        module = standins.scripted_loadable_module()
        sys.modules["slicer.ScriptedLoadableModule"] = module
        slicer.ScriptedLoadableModule = module
        self.panels: list[Panel] = []

    def uninstall(self) -> None:
        for panel in list(self.panels):
            panel.close()
        slicer = self.slicer
        for name, module in self._saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name, value in self._saved_attributes.items():
            if value is None:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)
        slicer.app = self._saved_app
        lib = sys.modules.get("GVSLLib")
        if lib is not None:
            if self._saved_glue is not None:
                lib.slicerglue = self._saved_glue
            elif hasattr(lib, "slicerglue"):
                delattr(lib, "slicerglue")

    # -- helpers for tests ------------------------------------------------------------------------------
    def open(self, moduleName: str) -> Panel:
        panel = Panel(self, moduleName)
        self.panels.append(panel)
        return panel

    def process_events(self, seconds: float = 0.0) -> None:
        end = time.monotonic() + seconds
        while True:
            QtWidgets.QApplication.processEvents()
            if time.monotonic() >= end:
                return
            time.sleep(0.02)

    def wait_until(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """Process Qt events (the panels' timers) until ``condition()`` is true; raises TimeoutError."""
        end = time.monotonic() + timeout
        while True:
            QtWidgets.QApplication.processEvents()
            value = condition()
            if value:
                return value
            if time.monotonic() > end:
                raise TimeoutError(f"waited {timeout:.0f} s for {what}")
            time.sleep(0.05)

    def slot_errors(self) -> list[str]:
        return [text for _, _, text in pythonqt_shim.slot_errors]

    def reset_records(self) -> None:
        pythonqt_shim.slot_errors.clear()
        standins.messages.clear()
        standins.message_answers.clear()

    @property
    def messages(self) -> list[dict[str, Any]]:
        return standins.messages

    def answer_next(self, *answers: Any) -> None:
        standins.message_answers.extend(answers)


class Panel:
    """One module panel: ``parent`` (a qMRMLWidget with a QVBoxLayout, like qSlicerScriptedLoadableModuleWidget),
    ``widget`` (the module's Widget instance), ``ui`` (its widgets by name)."""

    def __init__(self, harness: Harness, moduleName: str) -> None:
        import slicer

        qt = harness.qt
        self.harness = harness
        self.moduleName = moduleName
        self.module = importlib.import_module(moduleName)
        self.parent = slicer.qMRMLWidget()
        self.parent.setLayout(qt.QVBoxLayout())
        self.parent.setMRMLScene(slicer.mrmlScene)
        self.widget = getattr(self.module, f"{moduleName}Widget")(self.parent)
        self.widget.setup()
        self.parent.show()
        self.widget.enter()
        harness.process_events()
        self.closed = False

    @property
    def ui(self) -> Any:
        return self.widget.ui

    def close(self) -> None:
        """What Slicer does when it unloads the module (closing Slicer): cleanup(), then the widget goes."""
        if self.closed:
            return
        self.closed = True
        self.harness.app._moduleManager.moduleAboutToBeUnloaded.emit(self.moduleName)
        self.parent.hide()
        self.parent.deleteLater()
        self.harness.process_events()
        if self in self.harness.panels:
            self.harness.panels.remove(self)

"""A real MRML scene with Slicer's module logics, without Slicer's Qt application (PyPI ``slicer-core``).

``slicer-core`` is Slicer's non-Qt core as a wheel: MRML, the Volumes / Segmentations / Transforms /
Terminologies / Colors / Plots / Tables / Subject hierarchy logics and ``slicer/util.py``. What it lacks
is what the Qt application adds: ``slicer.app`` (its IO manager reads and writes files), the module
registry ``slicer.modules``, Slicer's share folder (terminology lists, colour files) and the scripted
module base classes. :class:`MRMLApp` sets those up in the small, honest way that Slicer itself does:

- the logics are created, given the scene and the application logic, and registered by name
  (what qSlicerCoreApplication and each module's ``setup`` do);
- ``slicer.app.coreIOManager()`` is :class:`CoreIOManager`, which reads files with the same logic calls
  as Slicer's readers (qSlicerVolumesReader -> vtkSlicerVolumesLogic::AddArchetypeVolume,
  qSlicerSegmentationsReader -> LoadSegmentationFromFile, qSlicerTransformsReader -> AddTransform)
  and writes them with each node's default storage node, as qSlicerCoreIOManager::exportNodes does;
- the terminology lists come from the ``trame-slicer`` wheel, which ships Slicer's lists;
- subject hierarchy items are created for added nodes, as qSlicerSubjectHierarchyPluginLogic (Qt) does;
- ``qt`` and ``slicer.ScriptedLoadableModule`` are stand-ins: the module Logic classes only inherit
  from the base classes and never touch Qt in the code these tests run.

Everything else (nodes, storage, logics, ``slicer.util``) is Slicer's own code.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

SKIP_REASON = ("slicer-core (Slicer's MRML core from PyPI, Python 3.11 wheels) is not installed: "
               "`make venv` installs it where a wheel exists; these MRML tests need it")


# -- importing slicer-core --------------------------------------------------------------------------
def import_slicer_core() -> types.ModuleType | None:
    """``import slicer`` from slicer-core, or None when it is not installed.

    This test folder is itself called ``slicer``. slicer-core's ``slicer`` package extends its
    ``__path__`` with every ``slicer`` folder on sys.path (pkgutil.extend_path) and imports each
    module found there, so with Testing/ on sys.path it would import the test files as
    ``slicer.test_*``. It is imported with those folders hidden, and its path is cut to its own.
    """
    module = sys.modules.get("slicer")
    if module is None:
        here = Path(__file__).resolve().parent
        saved = list(sys.path)
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in (here, here.parent)]
        try:
            if importlib.util.find_spec("slicer") is None:
                return None
            module = importlib.import_module("slicer")
        except ImportError:
            return None
        finally:
            sys.path[:] = saved
    if not hasattr(module, "vtkMRMLScene"):
        return None
    if isinstance(getattr(module, "__path__", None), list):
        module.__path__[:] = [p for p in module.__path__ if "site-packages" in p or "dist-packages" in p]
    return module


def terminology_dir() -> Path | None:
    """Slicer's terminology lists as the trame-slicer wheel ships them (found without importing it)."""
    spec = importlib.util.find_spec("trame_slicer")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "resources" / "terminologies"
    return folder if folder.is_dir() else None


# -- stand-ins for the Qt side ----------------------------------------------------------------------
class _QtStandIn(types.ModuleType):
    """``qt`` for importing the module files: any class name resolves to an inert placeholder."""

    class QSettings:
        def contains(self, key: str) -> bool:
            return False

        def value(self, key: str, default: Any = None) -> Any:
            return default

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        placeholder = type(name, (), {"__init__": lambda self, *a, **k: None})
        setattr(self, name, placeholder)
        return placeholder


def _scripted_module_stand_in() -> types.ModuleType:
    """``slicer.ScriptedLoadableModule``: the four base classes, each a plain object."""
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent: Any) -> None:
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleTest:
        pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    return module


# -- files: what Slicer's IO manager does, with the same logic calls ------------------------------------
VOLUME_LABELMAP, VOLUME_CENTERED, VOLUME_SINGLE_FILE, VOLUME_AUTO_WL, VOLUME_DISCARD_ORIENTATION = 1, 2, 4, 8, 16


def _base_name(path: str) -> str:
    name = Path(path).name
    for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd", ".nhdr", ".tfm", ".h5", ".txt"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


class CoreIOManager:
    """The part of qSlicerCoreIOManager that ``slicer.util`` load/save/export functions call."""

    def __init__(self, app: MRMLApp) -> None:
        self.app = app

    def fileType(self, filename: str) -> str:
        name = str(filename).lower()
        if name.endswith(".seg.nrrd"):
            return "SegmentationFile"
        if name.endswith((".tfm", ".h5", ".hdf5", ".mat")):
            return "TransformFile"
        return "VolumeFile"

    def loadNodes(self, fileType: str, properties: dict[str, Any], loaded: Any, userMessages: Any = None) -> bool:
        slicer = self.app.slicer
        filename = str(properties["fileName"])
        name = properties.get("name") or _base_name(filename)
        scene = self.app.scene
        if fileType == "VolumeFile":
            options = (VOLUME_LABELMAP if properties.get("labelmap") else 0) \
                | (VOLUME_CENTERED if properties.get("center") else 0) \
                | (VOLUME_SINGLE_FILE if properties.get("singleFile") else 0) \
                | (VOLUME_AUTO_WL if properties.get("autoWindowLevel", True) else 0) \
                | (VOLUME_DISCARD_ORIENTATION if properties.get("discardOrientation") else 0)
            node = self.app.logic("Volumes").AddArchetypeVolume(filename, name, options)
            if node is not None and properties.get("colorNodeID") and node.GetDisplayNode() is not None:
                node.GetDisplayNode().SetAndObserveColorNodeID(properties["colorNodeID"])
            if node is not None and properties.get("show", True):
                slicer.util.setSliceViewerLayers(background=node)
        elif fileType == "SegmentationFile":
            node = self.app.logic("Segmentations").LoadSegmentationFromFile(
                filename, bool(properties.get("autoOpacities", True)), name)
        elif fileType == "TransformFile":
            node = slicer.vtkSlicerTransformLogic().AddTransform(filename, scene)
            if node is not None:
                node.SetName(scene.GenerateUniqueName(name))
        else:
            raise ValueError(f"no reader for file type {fileType}")
        if node is None:
            return False
        loaded.AddItem(node)
        return True

    # writing
    @staticmethod
    def _storage(node: Any) -> Any:
        storage = node.CreateDefaultStorageNode()
        if storage is None:
            raise ValueError(f"{node.GetClassName()} has no storage node")
        return storage

    # slicer-core limitation: vtkMRMLVolumeArchetypeStorageNode lists no write formats there (Slicer fills
    # that list from ITK's image IO factories, which the wheel does not register; GetSupportedReadFileTypes
    # gives only "All files (.*)"), although its WriteData writes these formats.
    VOLUME_FORMATS = ("NRRD (.nrrd)", "NRRD (.nhdr)", "NIfTI (.nii.gz)", "NIfTI (.nii)", "MetaImage (.mha)",
                      "MetaImage (.mhd)")

    def fileWriterExtensions(self, node: Any) -> list[str]:
        """The storage node's write formats, e.g. ``NRRD (.nrrd)``."""
        types_ = self._storage(node).GetSupportedWriteFileTypes()
        formats = [types_.GetValue(i) for i in range(types_.GetNumberOfValues())]
        return formats or (list(self.VOLUME_FORMATS) if node.IsA("vtkMRMLVolumeNode") else [])

    def extractKnownExtension(self, filename: str, node: Any) -> str:
        extensions = sorted((f.rsplit("(", 1)[-1].rstrip(")") for f in self.fileWriterExtensions(node)), key=len, reverse=True)
        return next((e for e in extensions if str(filename).lower().endswith(e)), "")

    def fileWriterFileType(self, node: Any) -> str:
        return "NodeFile"

    def _write(self, node: Any, filename: str, hardenTransform: bool = False) -> bool:
        storage = self._storage(node)
        storage.SetFileName(str(filename))
        if hardenTransform and node.GetParentTransformNode() is not None:
            clone = self.app.scene.AddNewNodeByClass(node.GetClassName(), "__export__")
            try:
                clone.CopyContent(node, True)
                clone.SetAndObserveTransformNodeID(node.GetTransformNodeID())
                clone.HardenTransform()
                return bool(storage.WriteData(clone))
            finally:
                self.app.scene.RemoveNode(clone)
        return bool(storage.WriteData(node))

    def exportNodes(self, nodeIDs: list[str], fileNames: list[str], properties: dict[str, Any],
                    hardenTransform: bool = False, userMessages: Any = None) -> bool:
        ok = True
        for nodeID, filename in zip(nodeIDs, fileNames):
            ok = self._write(self.app.scene.GetNodeByID(nodeID), filename, hardenTransform) and ok
        return ok

    def saveNodes(self, fileType: str, properties: dict[str, Any], userMessages: Any = None) -> bool:
        return self._write(self.app.scene.GetNodeByID(properties["nodeID"]), properties["fileName"])


class _App:
    """``slicer.app`` without Qt: the IO manager and the few attributes the modules read."""

    def __init__(self, mrml: MRMLApp) -> None:
        self._io = CoreIOManager(mrml)
        self.slicerHome = str(Path(sys.executable).resolve().parent.parent)  # no PythonSlicer: jobs use this Python
        self.commandOptions = types.SimpleNamespace(noMainWindow=True)

    def coreIOManager(self) -> CoreIOManager:
        return self._io

    def layoutManager(self) -> None:
        return None  # no views: code that fits or resets views skips that part, as in Slicer --no-main-window

    def processEvents(self) -> None:
        pass

    def connect(self, *args: Any) -> None:
        pass


class _Module:
    def __init__(self, logic: Any) -> None:
        self._logic = logic

    def logic(self) -> Any:
        return self._logic


# -- the application ----------------------------------------------------------------------------------
class MRMLApp:
    """One scene with Slicer's logics registered; installed as ``slicer.mrmlScene``/``app``/``modules``."""

    LOGICS: ClassVar[dict[str, str]] = {
        "Volumes": "vtkSlicerVolumesLogic",
        "Terminologies": "vtkSlicerTerminologiesModuleLogic",
        "Segmentations": "vtkSlicerSegmentationsModuleLogic",
        "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
        "Transforms": "vtkSlicerTransformLogic",
        "Plots": "vtkSlicerPlotsLogic",
        "Tables": "vtkSlicerTablesLogic",
        "Data": "vtkSlicerDataModuleLogic",
    }

    def __init__(self, slicer: types.ModuleType, terminologies: Path | None, home: Path | None = None) -> None:
        """``home``: Slicer's home folder; its ``share/ColorFiles`` holds the file-based colour tables."""
        import vtk

        self.slicer = slicer
        self.scene = slicer.vtkMRMLScene()
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetCrosshairName("default")
        self.scene.AddNode(crosshair)
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        if home is not None:
            self.app_logic.SetHomeDirectory(str(home))
            self.app_logic.SetShareDirectory("share")
        self.app_logic.SetSliceLogics(vtk.vtkCollection())
        self.app_logic.SetViewLogics(vtk.vtkCollection())
        self._logics: dict[str, Any] = {}
        self._register("Colors", slicer.vtkSlicerColorLogic())
        for name, class_name in self.LOGICS.items():
            logic = getattr(slicer, class_name)()
            if name == "Terminologies" and terminologies is not None:
                logic.SetModuleShareDirectory(str(terminologies))
            self._register(name, logic)
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)
        self.slice_logics: list[Any] = []

    def _register(self, name: str, logic: Any) -> None:
        logic.SetMRMLApplicationLogic(self.app_logic)
        logic.SetMRMLScene(self.scene)
        self.app_logic.SetModuleLogic(name, logic)
        self._logics[name] = logic

    def logic(self, name: str) -> Any:
        return self._logics[name]

    def add_slice_views(self, names: tuple[str, ...] = ("Red", "Yellow", "Green")) -> list[Any]:
        """Slice nodes, composite nodes and slice logics, as the layout manager creates them for views."""
        orientation = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
        for name in names:
            logic = self.slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            logic.AddSliceNode(name)
            logic.GetSliceNode().SetOrientation(orientation.get(name, "Axial"))
            self.app_logic.GetSliceLogics().AddItem(logic)
            self.slice_logics.append(logic)
        return self.slice_logics

    def _add_subject_hierarchy_item(self, caller: Any, event: Any, node: Any) -> None:
        """What qSlicerSubjectHierarchyPluginLogic (Qt) does for every node added: a subject hierarchy item."""
        sh = self.slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        if node.IsA("vtkMRMLDisplayableNode") and not node.GetHideFromEditors() and not sh.GetItemByDataNode(node):
            sh.CreateItem(sh.GetSceneItemID(), node)

    def install(self) -> None:
        import vtk

        slicer = self.slicer
        if not hasattr(self, "_sh_observer"):
            @vtk.calldata_type(vtk.VTK_OBJECT)
            def callback(caller: Any, event: Any, node: Any) -> None:
                self._add_subject_hierarchy_item(caller, event, node)

            self._sh_callback = callback
            self._sh_observer = self.scene.AddObserver(self.scene.NodeAddedEvent, callback)
        slicer.mrmlScene = self.scene
        slicer.app = _App(self)
        modules = types.SimpleNamespace()
        for name, logic in self._logics.items():
            setattr(modules, name.lower(), _Module(logic))
        slicer.modules = modules
        slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)

    def clear(self) -> None:
        """Remove the data nodes (singletons, slice and view nodes stay), like File > Close scene."""
        self.scene.Clear(False)
        self.slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)


def install_module_stand_ins() -> list[str]:
    """Put ``qt`` and ``slicer.ScriptedLoadableModule`` stand-ins in sys.modules; returns the names added."""
    added = []
    if importlib.util.find_spec("qt") is None and "qt" not in sys.modules:
        sys.modules["qt"] = _QtStandIn("qt")
        added.append("qt")
    if "slicer.ScriptedLoadableModule" not in sys.modules:
        module = _scripted_module_stand_in()
        sys.modules["slicer.ScriptedLoadableModule"] = module
        sys.modules["slicer"].ScriptedLoadableModule = module
        added.append("slicer.ScriptedLoadableModule")
    return added


def write_color_files(home: Path) -> None:
    """slicer-core ships no ``share/ColorFiles``: a stand-in ``DivergingBlueRed.txt`` (blue - white - red,
    256 entries, Slicer's colour-table text format) so that the file-based colour node the Jacobian
    overlay asks for exists under the ID Slicer gives it (vtkMRMLColorTableNodeFileDivergingBlueRed.txt)."""
    folder = home / "share" / "ColorFiles"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# stand-in for Slicer's DivergingBlueRed colour table"]
    for i in range(256):
        t = i / 255.0
        rgb = (min(1.0, 2 * t), 1.0 - abs(2 * t - 1), min(1.0, 2 * (1 - t)))
        lines.append(f"{i} c{i} " + " ".join(str(round(255 * c)) for c in rgb) + " 255")
    (folder / "DivergingBlueRed.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


class Unavailable(RuntimeError):
    """slicer-core or the terminology lists are missing; the message says what to install."""


def open_app(home: Path) -> tuple[MRMLApp, list[str]]:
    """An installed :class:`MRMLApp` with Slicer's home (colour files) in ``home``, and the names of the
    module stand-ins it put in sys.modules; raises :class:`Unavailable` when slicer-core is missing."""
    slicer = import_slicer_core()
    if slicer is None:
        raise Unavailable(SKIP_REASON)
    terminologies = terminology_dir()
    if terminologies is None:
        raise Unavailable("trame-slicer (which ships Slicer's terminology lists) is not installed: `make venv` "
                          "installs it with slicer-core")
    write_color_files(home)
    added = install_module_stand_ins()
    app = MRMLApp(slicer, terminologies, home)
    app.install()
    return app, added


def session(tmp: Path) -> Any:
    """Generator for a session fixture: yields an installed :class:`MRMLApp`, or skips the tests."""
    import pytest

    saved_env = {k: os.environ.get(k) for k in ("GVSL_HOME",)}
    try:
        app, added = open_app(tmp / "slicer_home")
    except Unavailable as missing:
        pytest.skip(str(missing))
    os.environ["GVSL_HOME"] = str(tmp / "gvsl_home")
    try:
        yield app
    finally:
        app.clear()
        for name in ("GVSLSegment", "GVSLRegister", "GVSLTrain", *added):
            sys.modules.pop(name, None)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def heart_segment_entries(segmentation: Any, atol: float) -> Any:
    """Yield (index, segment, template label, terminology entry) for the seven heart segments of a
    vtkSegmentation, after checking the count, each name and colour (within ``atol``) and that each
    segment carries a terminology entry whose type is the template's SNOMED CT code."""
    import numpy as np
    import slicer
    import vtk

    from GVSLLib import terminology
    from slicer_testpaths import RESOURCES

    template = terminology.heart_template(RESOURCES)
    assert segmentation.GetNumberOfSegments() == 7
    tag = slicer.vtkSegment.GetTerminologyEntryTagName()
    logic = slicer.modules.terminologies.logic()
    for index, label in enumerate(template):
        segment = segmentation.GetNthSegment(index)
        assert segment.GetName() == label.name
        np.testing.assert_allclose(segment.GetColor(), label.color, atol=atol)
        value = vtk.mutable("")
        assert segment.GetTag(tag, value)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(str(value), entry)
        assert entry.GetTypeObject().GetCodeValue() == label.type.value
        assert entry.GetTypeObject().GetCodingSchemeDesignator() == "SCT"
        yield index, segment, label, entry

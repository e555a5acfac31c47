"""Slicer-side pieces shared by GVSL Segment, Register and Train.

This is the only file in GVSLLib that imports slicer, qt and vtk: it runs inside Slicer only.
It holds what the three panels share: finding resources and the bundled gvslcore, the one
dependency-install confirmation, the GPU probe and the CPU offer, a timer that follows a background
job into a progress bar, and label-table / terminology handling for segmentation nodes.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import qt
import slicer
import vtk

from . import commands, deps, jobs, models, terminology

MODULE_DIR = Path(__file__).resolve().parent.parent
SETTINGS_JOBS_DIR = "GVSL/JobsDirectory"
DICOM_CONTEXT = "Segmentation category and type - DICOM master list"
logger = logging.getLogger(__name__)


# -- files and environment ----------------------------------------------------------------------
def resources_dir() -> Path:
    """``Resources`` next to the module files (installed) or at the repository root (source tree)."""
    for candidate in (MODULE_DIR / "Resources", MODULE_DIR.parent / "Resources"):
        if (candidate / "UI").is_dir():
            return candidate
    return MODULE_DIR / "Resources"


def resource_path(*parts: str) -> str:
    return str(resources_dir().joinpath(*parts))


def core_root() -> Path | None:
    return deps.gvslcore_root(MODULE_DIR)


def ensure_gvslcore_importable() -> bool:
    """Put the bundled gvslcore on sys.path (for its label tables); True if it can be imported."""
    root = core_root()
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.util.find_spec("gvslcore") is not None


def job_python() -> str:
    return deps.python_executable(slicer.app.slicerHome)


def job_env() -> dict[str, str]:
    return deps.job_environment(core_root())


def jobs_root() -> Path:
    configured = slicer.util.settingsValue(SETTINGS_JOBS_DIR, "")
    return Path(configured) if configured else jobs.default_jobs_root()


def start_gvsl_job(kind: str, title: str, args: list[str], meta: dict[str, Any] | None = None,
                   prepare: Callable[[jobs.Job], list[str]] | None = None) -> jobs.Job:
    """Create a job folder, let ``prepare`` write inputs into it (returning extra args), start ``gvsl``."""
    job = jobs.create_job(jobs_root(), kind, title, meta)
    extra = prepare(job) if prepare is not None else []
    argv = jobs.gvsl_argv(*args, *extra, "--progress", "json")
    jobs.start_job(job, argv, python=job_python(), env=job_env())
    logger.info(f"GVSL job {job.id} started: {' '.join(argv)}")
    return job


def export_volume(volumeNode: Any, path: str | os.PathLike) -> None:
    """Write a volume for a job without changing where the scene saves it."""
    if hasattr(slicer.util, "exportNode"):
        ok = slicer.util.exportNode(volumeNode, str(path))
    else:  # Slicer < 5.2
        ok = slicer.util.saveNode(volumeNode, str(path))
    if not ok:
        raise RuntimeError(f"could not write {volumeNode.GetName()} to {path}")


def export_segmentation(segmentationNode: Any, referenceVolume: Any, path: str | os.PathLike) -> None:
    """Write a segmentation as ``.seg.nrrd`` on the grid of ``referenceVolume`` (gvsl takes labels on
    the image's grid only).

    Slicer's segmentation writer saves the extent of the segments' content, unless the segmentation
    has a reference geometry: a segmentation loaded from a file would come out on a cropped grid that
    gvsl rejects. A temporary copy gets the volume's geometry; the node in the scene is unchanged.
    """
    copy = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "__gvsl_export__")
    try:
        copy.GetSegmentation().DeepCopy(segmentationNode.GetSegmentation())
        copy.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
        export_volume(copy, path)
    finally:
        slicer.mrmlScene.RemoveNode(copy)


def load_ui(moduleWidget: Any, name: str) -> tuple[Any, Any]:
    """Load ``Resources/UI/<name>.ui`` into a module panel; returns (widget, ui namespace)."""
    uiWidget = slicer.util.loadUI(resource_path("UI", f"{name}.ui"))
    moduleWidget.layout.addWidget(uiWidget)
    ui = slicer.util.childWidgetVariables(uiWidget)
    uiWidget.setMRMLScene(slicer.mrmlScene)
    return uiWidget, ui


def set_module_icon(parent: Any, name: str) -> None:
    """Icons live in the shared Resources folder, which Slicer's default lookup may not see."""
    for ext in (".png", ".svg"):
        path = resources_dir() / "Icons" / f"{name}{ext}"
        if path.is_file():
            parent.icon = qt.QIcon(str(path))
            return


def reload_lib() -> None:
    """Developer 'Reload': load edited GVSLLib files too (Slicer reloads only the module file)."""
    import importlib

    for name in ("events", "jobs", "commands", "deps", "models", "terminology", "imaging", "slicerglue"):
        module = sys.modules.get(f"GVSLLib.{name}")
        if module is not None:
            importlib.reload(module)


def on_link(url: str) -> None:
    """Links in help labels: ``module:Name`` opens a module, anything else the browser."""
    if url.startswith("module:"):
        slicer.util.selectModule(url.split(":", 1)[1])
    else:
        qt.QDesktopServices.openUrl(qt.QUrl(url))


# -- terminology ---------------------------------------------------------------------------------
_terminology_loaded = False


def load_terminology() -> None:
    """Register the heart template with Slicer's terminologies (once per session)."""
    global _terminology_loaded
    if _terminology_loaded:
        return
    try:
        logic = slicer.modules.terminologies.logic()
        logic.LoadTerminologyFromFile(resource_path("Terminology", terminology.TERMINOLOGY_FILE))
        _terminology_loaded = True
    except Exception:  # terminology is a nicety; segmentation works without it
        logger.exception("GVSL: could not load the heart terminology")


def heart_template() -> list[terminology.SegmentLabel]:
    return terminology.heart_template(resources_dir())


def model_labels(model_path: str | None) -> list[terminology.SegmentLabel]:
    """The label table of a model file, or the heart template if the file has none."""
    meta = models.read_safetensors_metadata(model_path) if model_path else None
    items = (meta or {}).get("labels") or []
    return terminology.labels_from_table(items) if items else heart_template()


def _segment_tag(segment: Any, tagName: str) -> str:
    value = vtk.mutable("")
    return str(value) if segment.GetTag(tagName, value) else ""


def apply_labels(segmentationNode: Any, labels: list[terminology.SegmentLabel]) -> int:
    """Give each segment its label's name, colour and terminology; returns how many matched.

    Segments are matched by name, then by their label value in the file (``.seg.nrrd`` keeps it).
    """
    load_terminology()
    heart_codes = {lab.type.value for lab in heart_template() if lab.type}
    by_name = {terminology.normalize_name(lab.name): lab for lab in labels}
    by_value = {lab.value: lab for lab in labels}
    tagName = slicer.vtkSegment.GetTerminologyEntryTagName()
    segmentation = segmentationNode.GetSegmentation()
    matched = 0
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        label = by_name.get(terminology.normalize_name(segment.GetName()))
        if label is None and hasattr(segment, "GetLabelValue"):
            label = by_value.get(int(segment.GetLabelValue()))
        if label is None:
            continue
        context = terminology.CONTEXT_NAME if label.type and label.type.value in heart_codes else DICOM_CONTEXT
        segment.SetName(label.name)
        segment.SetColor(*label.color)
        segment.SetTag(tagName, terminology.terminology_entry(label, context))
        matched += 1
    return matched


def show_segmentation(segmentationNode: Any, referenceVolume: Any | None) -> None:
    """Reference the input geometry, follow its transform, show in slice views and in 3D."""
    if referenceVolume is not None:
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
        segmentationNode.SetAndObserveTransformNodeID(referenceVolume.GetTransformNodeID())
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.CreateClosedSurfaceRepresentation()
    layoutManager = slicer.app.layoutManager()
    if layoutManager is not None and layoutManager.threeDViewCount > 0:
        layoutManager.threeDWidget(0).threeDView().resetFocalPoint()


def segment_label_map(segmentationNode: Any, referenceVolume: Any,
                      labels: list[terminology.SegmentLabel]) -> tuple[Any, dict[str, int], list[str]]:
    """(label array (z, y, x), segment name -> value, unmatched segment names) on the volume's grid."""
    from .imaging import compose_labelmap

    segmentation = segmentationNode.GetSegmentation()
    tagName = slicer.vtkSegment.GetTerminologyEntryTagName()
    ids = vtk.vtkStringArray()
    segmentation.GetSegmentIDs(ids)
    segments = []
    for i in range(ids.GetNumberOfValues()):
        segmentId = ids.GetValue(i)
        segment = segmentation.GetSegment(segmentId)
        segments.append((segmentId, segment.GetName(), terminology.type_code_from_entry(_segment_tag(segment, tagName))))
    mapping = terminology.match_segments([(name, code) for _, name, code in segments], labels)
    masks = {}
    for segmentId, name, _ in segments:
        if name in mapping:
            masks[mapping[name]] = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolume) > 0
    shape = tuple(slicer.util.arrayFromVolume(referenceVolume).shape)
    labelmap = compose_labelmap(masks, shape)
    unmatched = [name for _, name, _ in segments if name not in mapping]
    return labelmap, mapping, unmatched


def export_label_map(array: Any, referenceVolume: Any, path: str | os.PathLike) -> None:
    labelNode = slicer.modules.volumes.logic().CreateAndAddLabelVolume(slicer.mrmlScene, referenceVolume, "__gvsl_export__")
    try:
        slicer.util.updateVolumeFromArray(labelNode, array)
        export_volume(labelNode, path)
    finally:
        slicer.mrmlScene.RemoveNode(labelNode)


# -- dependencies and devices ---------------------------------------------------------------------
def ensure_dependencies() -> bool:
    """Install what gvslcore needs, after one confirmation that lists it; True when all is there."""
    missing = deps.missing_requirements()
    if not missing:
        return True
    question, details = deps.confirmation_text(missing)
    if not slicer.util.confirmOkCancelDisplay(question, "GVSL: install Python packages", detailedText=details):
        return False
    torch = [r for r in missing if r.via == "pytorch"]
    if torch:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            slicer.util.errorDisplay("GVSL installs PyTorch through the PyTorch extension, which is missing.\n\n"
                                     "Install 'PyTorch' from the Extensions Manager, restart Slicer and try again.")
            return False
        slicer.util.showStatusMessage("Installing PyTorch (this can take several minutes)...")
        with slicer.util.WaitCursor():
            installed = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                                        torchVersionRequirement=torch[0].spec)
        if installed is None:
            slicer.util.errorDisplay("PyTorch was not installed. Use the PyTorch Utils module to install it, then try again.")
            return False
    pip = [r.pip_spec for r in missing if r.via == "pip"]
    if pip:
        slicer.util.showStatusMessage("Installing " + ", ".join(pip) + "...")
        with slicer.util.WaitCursor():
            slicer.util.pip_install(pip)
    still = deps.missing_requirements()
    if still:
        slicer.util.errorDisplay("These packages are still missing: " + ", ".join(r.pip_spec for r in still))
        return False
    reset_device_info()
    return True


_device_probe: deps.DeviceProbe | None = None
_device_info: deps.DeviceInfo | None = None


def reset_device_info() -> None:
    global _device_probe, _device_info
    _device_probe, _device_info = None, None


def poll_device_info() -> deps.DeviceInfo | None:
    """What torch sees in the job interpreter; starts the probe once per session, never blocks."""
    global _device_probe, _device_info
    if _device_info is not None:
        return _device_info
    if deps.installed_version("torch") is None:
        return deps.DeviceInfo()
    if _device_probe is None:
        _device_probe = deps.DeviceProbe(job_python(), job_env())
    _device_info = _device_probe.poll()
    return _device_info


def fill_device_combo(combo: Any) -> None:
    combo.clear()
    for key, text in deps.DEVICE_CHOICES:
        combo.addItem(text, key)


def update_device_label(label: Any, combo: Any) -> bool:
    """Show what the probe found; switch the device choice to CPU if there is no GPU. True when known."""
    info = poll_device_info()
    if info is None:
        label.text = "Checking for a GPU..."
        return False
    label.text = info.summary()
    if info.torch is not None and not info.cuda and combo.currentData == "cuda":
        combo.setCurrentIndex(combo.findData("cpu"))
    return True


def device_argument(combo: Any) -> str | None:
    """The ``--device`` value; offers CPU when a GPU was asked for and none exists (None: user declined)."""
    choice = combo.currentData or "auto"
    info = poll_device_info()
    if choice == "cuda" and info is not None and info.torch is not None and not info.cuda:
        if not slicer.util.confirmYesNoDisplay(
                "No CUDA GPU was found. Run on the CPU instead?\n\n"
                "It gives the same result, only slower (fast mode and fewer steps help).",
                "GVSL: no GPU"):
            return None
        combo.setCurrentIndex(combo.findData("cpu"))
        return "cpu"
    return deps.device_argument(choice, info)


# -- model lists ------------------------------------------------------------------------------------
class CatalogFetcher:
    """Runs ``gvsl models list --json`` once in the background and keeps the entries."""

    def __init__(self) -> None:
        self._command: jobs.QuickCommand | None = None
        self.entries: list[models.ModelEntry] = []
        self.done = False

    def start(self) -> None:
        if self._command is None and deps.installed_version("torch") is not None:
            self._command = jobs.QuickCommand(jobs.gvsl_argv(*commands.list_models_args()), env=job_env(),
                                              python=job_python())

    def poll(self) -> bool:
        """True when new entries arrived."""
        if self.done or self._command is None or not self._command.poll():
            return False
        self.done = True
        if self._command.returncode == 0:
            try:
                self.entries = models.parse_models_list(self._command.stdout)
            except ValueError:
                logger.warning("GVSL: could not read the model catalog")
        return True


_catalog = CatalogFetcher()


def all_models() -> list[models.ModelEntry]:
    """Installed files (models folder and finished training runs) first, then the catalog."""
    _catalog.start()
    _catalog.poll()
    runs = [p.parent for p in models.runs_dir().glob("*/model.safetensors")] if models.runs_dir().is_dir() else []
    # Pre-training runs export RUN/model.safetensors; fine-tuned models are written to the models folder.
    local = models.scan_models([models.models_dir()]) + [e for e in models.scan_models(runs) if e.task == "pretrain"]
    # The shipped heart model is there from the first click, before the catalog job answers.
    bundled = models.scan_models([models.bundled_models_dir(resources_dir())])
    for entry in bundled:
        entry.source = "bundled"
    return models.merge_models(local, bundled, _catalog.entries)


def catalog_changed() -> bool:
    _catalog.start()
    return _catalog.poll()


def fill_model_combo(combo: Any, entries: list[models.ModelEntry], empty_text: str, keep: str | None = None) -> None:
    """Model entries into a combo box (item data: the entry id); keeps the current choice if possible."""
    current = keep if keep is not None else combo.currentData
    combo.clear()
    if not entries:
        combo.addItem(empty_text, "")
        combo.enabled = False
        return
    combo.enabled = True
    for entry in entries:
        combo.addItem(entry.display_name(), entry.id)
        combo.setItemData(combo.count - 1, entry.description, qt.Qt.ToolTipRole)
    index = combo.findData(current) if current else -1
    combo.setCurrentIndex(max(index, 0))


def download_or_explain(entry: models.ModelEntry) -> jobs.Job | None:
    """For a catalog model that is not installed: start ``gvsl models download`` (a job), or, for
    models published for download by hand, say where to get them (returns None)."""
    if not entry.downloadable:
        slicer.util.infoDisplay(entry.manual_instructions(), "GVSL: model not installed")
        return None
    return start_gvsl_job("download", f"Download {entry.name}", commands.download_args(entry.id))


def import_model_dialog(parent: Any = None) -> models.ModelEntry | None:
    path = qt.QFileDialog.getOpenFileName(parent, "Import a GVSL model", "", "GVSL model (*.safetensors)")
    if not path:
        return None
    try:
        return models.import_model_file(path)
    except (ValueError, OSError) as exc:
        slicer.util.errorDisplay(f"Could not import the model: {exc}")
        return None


# -- following a job --------------------------------------------------------------------------------
class JobRunner:
    """Follows one background job with a QTimer: progress bar, status text, Cancel, log.

    Stopping the runner (module cleanup, Slicer closing) leaves the job running.
    """

    def __init__(self, progressBar: Any, statusLabel: Any, cancelButton: Any, logEdit: Any | None = None,
                 onFinished: Callable[[jobs.Job, str], None] | None = None, intervalMs: int = 500) -> None:
        self.progressBar = progressBar
        self.statusLabel = statusLabel
        self.cancelButton = cancelButton
        self.logEdit = logEdit
        self.onFinished = onFinished
        self.job: jobs.Job | None = None
        self._logOffset = 0
        self.timer = qt.QTimer()
        self.timer.setInterval(intervalMs)
        self.timer.connect("timeout()", self._onTimeout)
        self.cancelButton.connect("clicked()", self.cancel)
        self.cancelButton.enabled = False

    @property
    def busy(self) -> bool:
        return self.job is not None

    def watch(self, job: jobs.Job) -> None:
        self.job = job
        self._logOffset = 0
        if self.logEdit is not None:
            self.logEdit.clear()
        self.cancelButton.enabled = True
        self.statusLabel.text = "Starting..."
        self.progressBar.setRange(0, 0)
        self.timer.start()

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.statusLabel.text = "Cancelling (a training job saves a checkpoint first)..."
            self.cancelButton.enabled = False

    def stop(self) -> None:
        self.timer.stop()

    def _onTimeout(self) -> None:
        job = self.job
        if job is None:
            self.timer.stop()
            return
        try:
            status = job.poll()
            alive = job.is_alive()
        except Exception:  # never let a timer callback raise into Qt
            logger.exception("GVSL: polling the job failed")
            return
        self._appendLog(job)
        fraction = job.progress.fraction
        if fraction is None:
            self.progressBar.setRange(0, 0)
        else:
            self.progressBar.setRange(0, 1000)
            self.progressBar.setValue(round(fraction * 1000))
        if status in jobs.FINAL_STATES and not alive:
            self.timer.stop()
            self.job = None
            self.cancelButton.enabled = False
            self.progressBar.setRange(0, 1000)
            self.progressBar.setValue(1000 if status == "done" else 0)
            message = job.status_info().get("message")
            self.statusLabel.text = {"done": "Done", "cancelled": "Cancelled"}.get(status, f"Failed: {message}")
            if self.onFinished is not None:
                self.onFinished(job, status)
        elif "cancel" not in self.statusLabel.text.lower():
            self.statusLabel.text = job.progress.describe()

    def _appendLog(self, job: jobs.Job) -> None:
        if self.logEdit is None:
            return
        try:
            with open(job.log_path, "rb") as f:
                f.seek(self._logOffset)
                chunk = f.read()
        except OSError:
            return
        if chunk:
            self._logOffset += len(chunk)
            self.logEdit.appendPlainText(chunk.decode("utf-8", errors="replace").rstrip("\n"))


def report_failure(job: jobs.Job, what: str) -> None:
    message = job.status_info().get("message") or "unknown error"
    slicer.util.errorDisplay(f"{what} failed: {message}", detailedText=job.log_tail(40))

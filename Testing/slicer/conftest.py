"""Shared setup for the Slicer-extension tests (run without Slicer).

The module helpers (GVSLSlicer/GVSLLib) are imported from the source tree; Qt runs offscreen.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["QT_QPA_PLATFORM"] = "offscreen"

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import slicer_testpaths  # noqa: F401 - puts GVSLSlicer on sys.path


@pytest.fixture(scope="session")
def panel_png_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the panel PNGs go: $GVSL_PANEL_PNG_DIR, else a temporary folder."""
    configured = os.environ.get("GVSL_PANEL_PNG_DIR")
    folder = Path(configured) if configured else tmp_path_factory.mktemp("gvsl_panels")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture()
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """GVSL_HOME (models, runs, jobs) in a temporary folder."""
    home = tmp_path / "gvsl_home"
    monkeypatch.setenv("GVSL_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def mrml(tmp_path_factory: pytest.TempPathFactory):
    """A real MRML scene with Slicer's module logics (PyPI slicer-core), installed as slicer.mrmlScene,
    slicer.app and slicer.modules; the tests skip when slicer-core is not installed."""
    import mrml_app

    yield from mrml_app.session(tmp_path_factory.mktemp("mrml"))


@pytest.fixture(scope="session")
def panels(mrml, tmp_path_factory: pytest.TempPathFactory):
    """The module panels' world (see slicer_panels): PythonQt's ``qt`` over PySide6, strict CTK/Slicer widget
    stand-ins, slicer-core's MRML; skips (with mrml) when slicer-core is not installed."""
    import slicer_panels

    harness = slicer_panels.Harness(mrml, tmp_path_factory.mktemp("panels"))
    try:
        yield harness
    finally:
        harness.uninstall()


@pytest.fixture()
def panel_env(panels, isolated_home: Path):
    """Per test: GVSL_HOME in tmp, an empty scene, no recorded messages; fails on exceptions raised in slots."""
    panels.mrml.clear()
    panels.reset_records()
    yield panels
    for panel in list(panels.panels):
        panel.close()
    errors = panels.slot_errors()
    panels.reset_records()
    panels.mrml.clear()
    assert not errors, "exceptions in slots connected from Qt:\n" + "\n".join(errors)

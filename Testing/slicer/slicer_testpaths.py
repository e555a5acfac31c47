"""Paths shared by the Slicer-extension tests (a module name that cannot clash with Testing/core)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SLICER_DIR = REPO / "GVSLSlicer"
RESOURCES = REPO / "Resources"
CORE_DIR = REPO / "GVSLCore"
MODULES = ("GVSLSegment", "GVSLRegister", "GVSLTrain")

# GVSLLib is imported from the source tree, as Slicer would from the module folder.
if str(SLICER_DIR) not in sys.path:
    sys.path.insert(0, str(SLICER_DIR))

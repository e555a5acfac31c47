"""Helpers shared by the GVSL Slicer modules.

Everything in this package except :mod:`GVSLLib.slicerglue` is plain Python (standard library,
plus numpy in :mod:`GVSLLib.imaging`): no slicer, qt or vtk imports, so it runs and is tested
outside Slicer. The heavy work never runs here: it runs in a separate ``gvsl`` process
(:mod:`GVSLLib.jobs`) that reports through the JSON progress events of DESIGN.md
(:mod:`GVSLLib.events`).
"""

__all__ = ["commands", "deps", "events", "imaging", "jobs", "models", "terminology"]

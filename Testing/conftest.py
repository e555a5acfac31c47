"""Shared test fixtures: where the real volumes live and small synthetic volumes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GVSL_SHARED_DATA", REPO.parent / "shared" / "data"))

# Two cores in CI: one intra-op thread per test process keeps subprocess-heavy tests from
# oversubscribing the machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with a clear message."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (the ../shared/data folder is absent)")
    return path


@pytest.fixture
def oblique_image() -> sitk.Image:
    """A non-cubic, anisotropic volume with a non-identity (rotated, flipped) direction."""
    rng = np.random.default_rng(7)
    from scipy.ndimage import gaussian_filter

    arr = gaussian_filter(rng.normal(size=(18, 22, 26)), 2.0).astype(np.float32) * 1000.0
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.9, 1.3, 2.1))
    image.SetOrigin((-12.5, 30.0, 7.25))
    angle = np.deg2rad(25)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rot = rot @ np.diag([1, -1, -1])  # plus a half turn about x: not a plain axis permutation
    image.SetDirection(tuple(rot.ravel()))
    return image

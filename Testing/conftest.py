"""Shared test fixtures: where the real volumes live and small synthetic volumes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

# Two cores in CI: subprocesses started by tests use at most two intra-op threads.
os.environ.setdefault("OMP_NUM_THREADS", "2")


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


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    """Two small noise volumes (2 mm, non-cubic) for runs that only need something to read."""
    folder = tmp_path_factory.mktemp("volumes")
    for i, shape in enumerate([(20, 24, 28), (24, 24, 24)]):
        image = sitk.GetImageFromArray((np.random.default_rng(i).normal(size=shape) * 400.0).astype(np.float32))
        image.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(image, str(folder / f"vol{i}.nii.gz"))
    return folder

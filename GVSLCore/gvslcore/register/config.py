"""The settings of one registration (``RegisterConfig``) and what it gives (``RegistrationResult``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import SimpleITK as sitk

from ..errors import InputError

INIT_MODES = ("moments", "geometry", "none")
DEFAULT_SPACING_MM = 4.0
"""Working spacing when ``--spacing`` is not given (or the fixed image's own spacing when that is
coarser), with or without a model: the field is smooth at this scale and the output is written on
the fixed image's own grid (see pipeline._working_spacing for the measurement)."""
COARSE_SPACING_MM = 4.0
"""Spacing of the copies the initial alignment is computed on (moments need no detail)."""
MIN_OVERLAP = 0.10
"""Below this fraction of the fixed foreground falling inside the moving image, registration stops."""


@dataclass
class RegisterConfig:
    """Settings of one registration.

    Attributes:
        iterations: instance-optimization steps per resolution level (0: feed-forward only).
        levels: resolution levels of the instance optimization (factors 2^(levels-1) ... 1).
        init: initial alignment: 'moments' (centres of mass), 'geometry' (image centres), 'none'.
        spacing: isotropic working spacing in mm; None: DEFAULT_SPACING_MM, or the fixed image's finest
            spacing when coarser.
        predict_spacing: mm of the grid the network's feed-forward field is computed on when the working
            grid is finer (the field is carried back to the working grid); None: the working grid.
        max_size: cap on the working grid's longest axis, in voxels (bounds memory and time; the
            spacing is coarsened when the fixed image is larger).
        smooth_weight: weight of the smoothness term (squared gradient of the residual, mm/mm).
        ncc_window: local NCC window in voxels of each level.
        lr: Adam step of the residual field, in voxels of the level.
        lr_affine: Adam step of the affine parameters (normalized coordinates, about 1 = half extent).
        affine_only_first: at the coarsest level, run the affine alone before the joint optimization.
        device: 'auto' | 'cpu' | 'cuda'.
        seed: torch seed (the optimization itself is deterministic on the CPU).
    """

    iterations: int = 0
    levels: int = 3
    init: str = "moments"
    spacing: float | None = None
    predict_spacing: float | None = 4.0
    max_size: int = 160
    smooth_weight: float = 3.0
    ncc_window: int = 7
    lr: float = 0.1
    lr_affine: float = 0.005
    affine_only_first: bool = True
    device: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        if self.iterations < 0:
            raise InputError(f"--iterations {self.iterations} is not valid; give 0 (feed-forward) or more steps")
        if self.levels < 1:
            raise InputError(f"--levels {self.levels} is not valid; give 1 or more")
        if self.init not in INIT_MODES:
            raise InputError(f"--init {self.init} is not valid; use one of {', '.join(INIT_MODES)}")
        if self.spacing is not None and not (self.spacing > 0 and math.isfinite(self.spacing)):
            raise InputError(f"--spacing {self.spacing} is not valid; give a positive size in mm")
        if self.predict_spacing is not None and not (self.predict_spacing > 0 and math.isfinite(self.predict_spacing)):
            raise InputError(f"--predict-spacing {self.predict_spacing} is not valid; give a positive size in mm")
        if self.max_size < 16:
            raise InputError(f"--max-size {self.max_size} is not valid; give at least 16 voxels")
        if self.ncc_window < 3 or self.ncc_window % 2 == 0:
            raise InputError(f"--ncc-window {self.ncc_window} is not valid; give an odd number >= 3")

    @property
    def total_steps(self) -> int:
        """Instance-optimization steps over all levels (the affine-only phase counts as one level)."""
        return self.iterations * (self.levels + (1 if self.affine_only_first else 0))


@dataclass
class RegistrationResult:
    """What :func:`register_images` gives (everything in memory; :func:`write_outputs` writes it).

    Attributes:
        displacement: ITK displacement field on the fixed grid (sitkVectorFloat64, LPS mm):
            fixed point x -> moving point x + d(x); the full mapping (initial + affine + deformable).
        affine: the global part (initial alignment composed with the predicted/optimized affine).
        warped: moving resampled into the fixed geometry through ``displacement``.
        jacobian: determinant of the mapping's Jacobian on the fixed grid (float32).
        propagated: moving labels mapped onto the fixed grid (uint16), or None.
        metrics: NCC before/after, folding %, seconds per stage, settings.
        moving: the moving image as read, for the QC picture's "before" column (resampled there, on
            its three planes only, through the identity in physical space).
        working: the (empty) working grid the model and the optimization ran on.
        fixed_display: the fixed image, for the QC picture.
    """

    displacement: sitk.Image
    affine: sitk.AffineTransform
    warped: sitk.Image
    jacobian: sitk.Image
    propagated: sitk.Image | None
    metrics: dict[str, Any]
    moving: sitk.Image
    working: sitk.Image | None = None
    fixed_display: sitk.Image | None = None

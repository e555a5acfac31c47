"""Inter-image registration with the GVSL Z-Matching head, optional instance optimization, and
export of the result as ITK objects in physical LPS millimetres.

The pipeline (``gvsl register FIXED MOVING``, :mod:`.pipeline`):

1. **Initial alignment** ``T_init`` (fixed physical point -> moving physical point): centres of mass
   of the normalized intensities (``moments``), of the image boxes (``geometry``) or none. This makes
   large offsets between scanners harmless before any learned step (:mod:`.grid`).
2. **Working grid** ``W``: a grid in the FIXED image's frame (its direction), at the model's spacing,
   centred on and covering the fixed image. Both images are resampled onto it (moving through
   ``T_init``) and normalized to [0, 1] (:mod:`.grid`).
3. **Z-Matching** (feed-forward, :mod:`.feedforward`): the network predicts an affine ``Aff`` (working
   voxels, (z, y, x), about the grid centre) and a residual ``v``; the working-grid pull mapping is
   ``p -> Aff(p + v(p))`` (paper Eq. 12, :func:`gvslcore.spatial.fuse_affine_and_displacement`). The
   affine head runs both ways and ``Aff`` is their inverse-consistent root, which cancels the head's
   own bias (:func:`.feedforward.inverse_consistent_affine`).
4. **Instance optimization** (``iterations > 0``, :mod:`.instance`): Adam on local NCC + smoothness
   of ``v``, from the prediction (or the identity without a model), coarse to fine over an image pyramid.
5. **Export** (:mod:`.fields`, :mod:`.export`): the full mapping ``x -> T_init(x + d_W(x))`` becomes
   ONE ITK displacement field on the FIXED grid (``d(x) = T_init(x + d_W(x)) - x``, LPS mm), so that
   ``sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(d))`` is the registered image; the
   global part ``T_init o Aff`` becomes an ITK ``AffineTransform`` (.tfm).

Every array is (z, y, x); every physical quantity is LPS millimetres (DESIGN.md section 3).
Settings and result types live in :mod:`.config`.
"""

from .config import (
    COARSE_SPACING_MM,
    DEFAULT_SPACING_MM,
    INIT_MODES,
    MIN_OVERLAP,
    RegisterConfig,
    RegistrationResult,
)
from .export import (
    OUTPUT_NAMES,
    check_output_dir,
    label_table_for,
    propagate_labels,
    working_affine_matrix,
    write_outputs,
)
from .feedforward import load_registration_model, predict
from .fields import (
    displacement_error_mm,
    field_transform,
    folding_percent,
    full_displacement,
    global_ncc,
    jacobian_image,
)
from .grid import (
    affine_to_matrix,
    background_value,
    initial_transform,
    matrix_to_affine,
    normalized,
    overlap_fraction,
    working_grid,
)
from .instance import instance_optimize, local_ncc
from .pipeline import check_labels, logger, register_images, run_register

__all__ = [
    "COARSE_SPACING_MM",
    "DEFAULT_SPACING_MM",
    "INIT_MODES",
    "MIN_OVERLAP",
    "OUTPUT_NAMES",
    "RegisterConfig",
    "RegistrationResult",
    "affine_to_matrix",
    "background_value",
    "check_labels",
    "check_output_dir",
    "displacement_error_mm",
    "field_transform",
    "folding_percent",
    "full_displacement",
    "global_ncc",
    "initial_transform",
    "instance_optimize",
    "jacobian_image",
    "label_table_for",
    "load_registration_model",
    "local_ncc",
    "logger",
    "matrix_to_affine",
    "normalized",
    "overlap_fraction",
    "predict",
    "propagate_labels",
    "register_images",
    "run_register",
    "working_affine_matrix",
    "working_grid",
    "write_outputs",
]

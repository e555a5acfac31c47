"""Fine-tuning a segmentation model: the (GVSL-pre-trained) U-Net backbone plus a one-layer 3x3x3 head.

Modes (DESIGN.md, the paper's downstream protocol):

- fine-tune (default): every weight trains, the backbone starts from ``--pretrained``;
- linear probe (``--linear-probe``): the backbone is frozen, only the head trains (the paper's
  linear evaluation of the representation, :mod:`.probe`);
- from scratch (``--from-scratch``): random backbone (the baseline); with ``--linear-probe`` it
  gives the random-feature linear baseline;
- incremental (``--init MODEL``): continue from an earlier fine-tuned model (the annotators' loop).

Loss: soft Dice (foreground) + cross-entropy. Patches: a fixed fraction centred on a random voxel
of a random foreground class (nnU-Net-style oversampling), the rest anywhere; spatial (rotation,
scale) and intensity (gamma, contrast, brightness, noise) augmentation; no mirroring, because the
left/right structures are not mirror-symmetric (:mod:`.data`). A validation split picks the best
model by Dice; early stopping after ``patience`` validations without improvement (:mod:`.loop`).
Same run folder, progress events, checkpoints, resume and cancel as pre-training
(:mod:`gvslcore.engine`). Settings in :mod:`.config`, the model start in :mod:`.model`, the model
file in :mod:`.export`.

``StopAgreement`` is re-exported because tests patch ``gvslcore.finetune.StopAgreement.poll``
(a class attribute, so the patch reaches the loop).
"""

from ..distributed import StopAgreement
from .config import MODES, FinetuneConfig, check_config, read_label_table_json, write_label_table
from .data import (
    AugmentConfig,
    Case,
    SegPatchDataset,
    intensity_augment,
    load_case,
    pair_cases,
    spatial_sample,
    split_cases,
)
from .export import model_metadata
from .loop import logger, run_finetune
from .model import ModelStart, build_network, model_start
from .probe import Statistics, class_weights, feature_statistics, fold_standardization, standardize
from .validation import validate

__all__ = [
    "MODES",
    "AugmentConfig",
    "Case",
    "FinetuneConfig",
    "ModelStart",
    "SegPatchDataset",
    "Statistics",
    "StopAgreement",
    "build_network",
    "check_config",
    "class_weights",
    "feature_statistics",
    "fold_standardization",
    "intensity_augment",
    "load_case",
    "logger",
    "model_metadata",
    "model_start",
    "pair_cases",
    "read_label_table_json",
    "run_finetune",
    "spatial_sample",
    "split_cases",
    "standardize",
    "validate",
    "write_label_table",
]

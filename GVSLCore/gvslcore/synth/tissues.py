"""The tissue classes of a synthetic chest and the heart labels they carry.

A synthetic case is first a *tissue map* (uint8, one class per voxel); appearance is painted on it
later, per training sample (:mod:`gvslcore.synth.appearance`), so that one anatomy gives many
images. Seven tissues are the heart labels of :data:`gvslcore.labels.HEART_LABELS`; every other
tissue is background for segmentation, but has an appearance of its own: a background of many
classes (lungs, fat, muscle, bone, liver, vessels, airway, ...) is what keeps a model trained on
synthetic data from labelling chest-wall muscle or the liver as myocardium.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    AIR = 0            # outside the body
    SKIN = 1
    FAT = 2            # subcutaneous
    MUSCLE = 3
    CORTEX = 4         # cortical bone
    MARROW = 5         # cancellous bone
    CARTILAGE = 6      # costal cartilage
    LUNG = 7
    LUNG_VESSEL = 8
    AIRWAY = 9         # air in trachea and bronchi
    SOFT = 10          # airway and vessel walls, esophagus, pericardium, nodes
    MEDIASTINAL_FAT = 11  # mediastinal, pericardial and epicardial fat
    LIVER = 12
    SPLEEN = 13
    STOMACH = 14       # gastric content
    GAS = 15           # bowel or stomach gas
    CSF = 16           # spinal canal
    ARTERY = 17        # aortic arch, descending aorta, arch branches (left-heart contrast)
    SVC = 18           # superior vena cava, brachiocephalic veins, azygos (the injected side)
    IVC = 19           # inferior vena cava, hepatic veins
    PULMONARY_VEIN = 20
    PULMONARY_BRANCH = 21  # pulmonary arteries beyond the labelled trunk
    HEART_WALL = 22    # right ventricular free wall, atrial walls and septa
    TABLE = 23
    DENSE = 24         # calcium, stent struts
    ABDOMEN = 25       # abdominal fat and bowel
    GLAND = 26         # breast gland
    KIDNEY = 27
    PAPILLARY = 28     # papillary muscles: myocardial tissue inside the LV blood pool, labelled LV
    CORONARY_SINUS = 29  # coronary sinus and great cardiac vein (venous return of the myocardium)
    LV = 30            # left ventricular blood pool
    RV = 31
    LA = 32
    RA = 33
    MYO = 34           # left ventricular myocardium
    AO = 35            # ascending aorta
    PA = 36            # pulmonary trunk and proximal branches


NUM_TISSUES = 37
"""Size of lookup tables indexed by tissue value."""

HEART_TISSUES = (Tissue.LV, Tissue.RV, Tissue.LA, Tissue.RA, Tissue.MYO, Tissue.AO, Tissue.PA)
"""The tissues that are heart labels 1..7, in label order."""


def target_lookup() -> np.ndarray:
    """(NUM_TISSUES,) uint8: tissue value -> heart label (0 for every other tissue)."""
    lut = np.zeros(NUM_TISSUES, dtype=np.uint8)
    for label, tissue in enumerate(HEART_TISSUES, start=1):
        lut[int(tissue)] = label
    # The blood-pool labels hold what lies inside the pool (MM-WHS and TotalSegmentator alike).
    lut[int(Tissue.PAPILLARY)] = HEART_TISSUES.index(Tissue.LV) + 1
    return lut


def tissues_to_labels(tissues: np.ndarray) -> np.ndarray:
    """Heart label map (values 0..7) of a tissue map of any shape."""
    return target_lookup()[tissues]

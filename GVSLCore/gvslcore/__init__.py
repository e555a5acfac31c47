"""gvslcore: Geometric Visual Similarity Learning (He et al., CVPR 2023) for 3D medical images.

Conventions (see the top-level README): arrays are (z, y, x); displacement fields pull
(``warped(p) = moving(p + u(p))``); geometry always travels with the array.
gvslcore never imports slicer, qt or vtk.
"""

__version__ = "0.1.0"

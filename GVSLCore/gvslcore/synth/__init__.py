"""Synthetic adult chests for training without real labels.

- :mod:`~gvslcore.synth.shapes`: implicit shapes (signed distances in mm);
- :mod:`~gvslcore.synth.tissues`: the tissue classes and the heart labels they carry;
- :mod:`~gvslcore.synth.heart`: the heart's chambers, walls and valve planes;
- :mod:`~gvslcore.synth.chest`: the whole chest as a tissue map on any grid;
- :mod:`~gvslcore.synth.appearance`: CT appearance painted on a tissue map, new every sample;
- :mod:`~gvslcore.synth.patches`: training views of a bank of chests, image and labels aligned.
"""

"""Networks: the 3-D U-Net backbone, the GVSL pre-training model (Z-Matching + restoration) and
the segmentation model."""

from .gvsl import GVSLNet, ZMatchOutput, affine_matrix_from_parameters, feature_moments
from .segnet import SegNet
from .unet import Features, UNet3D, unet_channels

__all__ = ["Features", "GVSLNet", "SegNet", "UNet3D", "ZMatchOutput", "affine_matrix_from_parameters", "feature_moments",
           "unet_channels"]

"""Networks: the 3-D U-Net backbone, the GVSL pre-training model (Z-Matching + restoration) and
the segmentation model."""

from .gvsl import GVSLNet, ZMatchOutput, affine_matrix_from_parameters
from .segnet import SegNet
from .unet import UNet3D, unet_channels

__all__ = ["GVSLNet", "SegNet", "UNet3D", "ZMatchOutput", "affine_matrix_from_parameters", "unet_channels"]

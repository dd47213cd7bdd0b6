"""Semantic segmentation models: FCN, U-Net, DeepLabv3+. Each maps ``N x 3 x H x W`` images to
``N x num_classes x H x W`` scores (logits) of the input's size."""

from segdet.models.segmentation.deeplabv3plus import ASPP, DeepLabV3Plus
from segdet.models.segmentation.fcn import FCN
from segdet.models.segmentation.unet import BackboneUNet, UNet
from segdet.models.segmentation.upsampling import UPSAMPLE_MODES, make_upsample

__all__ = ["ASPP", "FCN", "UPSAMPLE_MODES", "BackboneUNet", "DeepLabV3Plus", "UNet", "make_upsample"]

"""SSD (Liu et al. 2016) on VGG-16 (SSD300, SSD512) and SSDLite on MobileNetV3-Large."""

from segdet.models.detection.ssd.builders import ssd300_vgg16, ssd512_vgg16, ssdlite320_mobilenet_v3_large
from segdet.models.detection.ssd.model import SSD, SSDSettings

__all__ = ["SSD", "SSDSettings", "ssd300_vgg16", "ssd512_vgg16", "ssdlite320_mobilenet_v3_large"]

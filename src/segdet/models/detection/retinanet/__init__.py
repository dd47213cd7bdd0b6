"""RetinaNet (Lin et al. 2017): ResNet + FPN P3-P7, the focal loss, torchvision's v1 and v2 designs."""

from segdet.models.detection.retinanet.builders import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2
from segdet.models.detection.retinanet.model import RetinaNet, RetinaNetSettings

__all__ = ["RetinaNet", "RetinaNetSettings", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2"]

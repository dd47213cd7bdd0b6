"""segdet.models.detection: the parts and builders of the two-stage detectors (Faster / Mask R-CNN)."""

from segdet.models.detection.convert import (
    convert_torchvision_state_dict,
    from_torchvision,
    load_torchvision_weights,
)
from segdet.models.detection.faster_rcnn import (
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_c4,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
    fasterrcnn_resnet101_fpn,
)
from segdet.models.detection.generalized_rcnn import GeneralizedRCNN
from segdet.models.detection.mask_rcnn import (
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
    maskrcnn_resnet101_fpn,
)
from segdet.models.detection.rcnn_settings import RCNNSettings
from segdet.models.detection.transform import DetectionTransform

__all__ = [
    "DetectionTransform",
    "GeneralizedRCNN",
    "RCNNSettings",
    "convert_torchvision_state_dict",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_c4",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_resnet101_fpn",
    "from_torchvision",
    "load_torchvision_weights",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "maskrcnn_resnet101_fpn",
]

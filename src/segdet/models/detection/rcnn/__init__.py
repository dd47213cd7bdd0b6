"""The two-stage detectors (R-CNN family): Fast R-CNN, Faster R-CNN (C4 and FPN) and Mask R-CNN, their
parts (RPN, RoI heads, box and mask heads, RoI pooling, sampling), settings and torchvision conversion."""

from segdet.models.detection.rcnn.fast_rcnn import FastRCNN, FastRCNNSettings, fastrcnn_resnet50_c4
from segdet.models.detection.rcnn.faster_rcnn import (
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_c4,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
    fasterrcnn_resnet101_fpn,
)
from segdet.models.detection.rcnn.generalized_rcnn import GeneralizedRCNN
from segdet.models.detection.rcnn.mask_rcnn import (
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
    maskrcnn_resnet101_fpn,
)
from segdet.models.detection.rcnn.settings import RCNNSettings

__all__ = [
    "FastRCNN",
    "FastRCNNSettings",
    "GeneralizedRCNN",
    "RCNNSettings",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_c4",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_resnet101_fpn",
    "fastrcnn_resnet50_c4",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "maskrcnn_resnet101_fpn",
]

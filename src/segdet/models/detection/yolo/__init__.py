"""YOLO v1 (Redmon et al. 2016): an ``S x S`` grid of ``B`` boxes and ``C`` class probabilities per cell,
on the paper's 24-convolution network or a ResNet."""

from segdet.models.detection.yolo.builders import (
    yolov1,
    yolov1_mobilenet_v3_large,
    yolov1_mobilenet_v3_small,
    yolov1_resnet50,
)
from segdet.models.detection.yolo.model import YOLOv1, YOLOv1Settings

__all__ = [
    "YOLOv1",
    "YOLOv1Settings",
    "yolov1",
    "yolov1_mobilenet_v3_large",
    "yolov1_mobilenet_v3_small",
    "yolov1_resnet50",
]

"""segdet.models.detection: the detectors and the parts they share.

Shared here: the :class:`~.detector.Detector` base (targets, transform in and out, fusing), the
transform, anchors, matching, head-output flattening, post-processing (top-k, batched NMS, cap),
settings and torchvision conversion. Each family is a sub-package composing them: ``region_cnn``
(R-CNN, 2014), ``rcnn`` (Fast / Faster / Mask R-CNN), ``retinanet``, ``ssd`` (SSD300 / SSD512,
SSDLite), ``yolo`` (YOLO v1), ``centernet``, ``yolact`` (YOLACT, one-stage instance segmentation),
``tridentnet`` (TridentNet: trident branches in the C4 Faster R-CNN), ``efficientdet`` (EfficientNet +
BiFPN on RetinaNet's loss and post-processing).
"""

from segdet.models.detection.centernet import (
    CenterNet,
    CenterNetSettings,
    centernet_resnet18,
    centernet_resnet50,
)
from segdet.models.detection.convert import from_torchvision, load_detector_weights, load_torchvision_weights
from segdet.models.detection.detector import Detector
from segdet.models.detection.efficientdet import (
    efficientdet_d0,
    efficientdet_d1,
    efficientdet_d2,
    efficientdet_d3,
    efficientdet_d4,
    efficientdet_d5,
    efficientdet_d6,
    efficientdet_d7,
)
from segdet.models.detection.rcnn import (
    GeneralizedRCNN,
    RCNNSettings,
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_c4,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
    fasterrcnn_resnet101_fpn,
    fastrcnn_resnet50_c4,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
    maskrcnn_resnet101_fpn,
)
from segdet.models.detection.rcnn.convert import convert_torchvision_state_dict
from segdet.models.detection.region_cnn.model import RCNN, rcnn_resnet_c4
from segdet.models.detection.retinanet import (
    RetinaNet,
    RetinaNetSettings,
    retinanet_resnet50_fpn,
    retinanet_resnet50_fpn_v2,
)
from segdet.models.detection.settings import TransformSettings
from segdet.models.detection.ssd import (
    SSD,
    SSDSettings,
    ssd300_vgg16,
    ssd512_vgg16,
    ssdlite320_mobilenet_v3_large,
)
from segdet.models.detection.transform import DetectionTransform
from segdet.models.detection.tridentnet import TridentRCNN, tridentnet_resnet50_c4, tridentnet_resnet101_c4
from segdet.models.detection.yolact import YOLACT, YolactSettings, yolact_resnet50_fpn, yolact_resnet101_fpn
from segdet.models.detection.yolo import (
    YOLOv1,
    YOLOv1Settings,
    yolov1,
    yolov1_mobilenet_v3_large,
    yolov1_mobilenet_v3_small,
    yolov1_resnet50,
)

__all__ = [
    "RCNN",
    "SSD",
    "YOLACT",
    "CenterNet",
    "CenterNetSettings",
    "DetectionTransform",
    "Detector",
    "GeneralizedRCNN",
    "RCNNSettings",
    "RetinaNet",
    "RetinaNetSettings",
    "SSDSettings",
    "TransformSettings",
    "TridentRCNN",
    "YOLOv1",
    "YOLOv1Settings",
    "YolactSettings",
    "centernet_resnet18",
    "centernet_resnet50",
    "convert_torchvision_state_dict",
    "efficientdet_d0",
    "efficientdet_d1",
    "efficientdet_d2",
    "efficientdet_d3",
    "efficientdet_d4",
    "efficientdet_d5",
    "efficientdet_d6",
    "efficientdet_d7",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_c4",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_resnet101_fpn",
    "fastrcnn_resnet50_c4",
    "from_torchvision",
    "load_detector_weights",
    "load_torchvision_weights",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "maskrcnn_resnet101_fpn",
    "rcnn_resnet_c4",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "ssd300_vgg16",
    "ssd512_vgg16",
    "ssdlite320_mobilenet_v3_large",
    "tridentnet_resnet50_c4",
    "tridentnet_resnet101_c4",
    "yolact_resnet50_fpn",
    "yolact_resnet101_fpn",
    "yolov1",
    "yolov1_mobilenet_v3_large",
    "yolov1_mobilenet_v3_small",
    "yolov1_resnet50",
]

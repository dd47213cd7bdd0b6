"""YOLACT (Bolya et al. 2019): one-stage instance segmentation from prototypes and per-anchor coefficients."""

from segdet.models.detection.yolact.builders import yolact_resnet50_fpn, yolact_resnet101_fpn
from segdet.models.detection.yolact.fast_nms import fast_nms
from segdet.models.detection.yolact.model import YOLACT, YolactSettings

__all__ = ["YOLACT", "YolactSettings", "fast_nms", "yolact_resnet50_fpn", "yolact_resnet101_fpn"]

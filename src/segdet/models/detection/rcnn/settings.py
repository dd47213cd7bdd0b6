"""The non-structural settings of the two-stage detectors (resizing, proposal and detection counts and
thresholds), their defaults, and the assembly of a :class:`~.generalized_rcnn.GeneralizedRCNN` from parts.

The settings carry torchvision's keyword names (``min_size``, ``rpn_score_thresh``, ``box_score_thresh``
...), so ``build("fasterrcnn_resnet50_fpn", num_classes=K, box_score_thresh=0.3)`` reads like
``torchvision.models.detection.fasterrcnn_resnet50_fpn(box_score_thresh=0.3)``. The defaults are those
of torchvision's ``FasterRCNN`` (Detectron's FPN settings): 1000 proposals per image in inference,
NMS 0.7 for the RPN and 0.5 per class for the detections, 100 detections per image.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from segdet.models.detection.anchors import AnchorGenerator
from segdet.models.detection.rcnn.box_head import FastRCNNPredictor
from segdet.models.detection.rcnn.generalized_rcnn import GeneralizedRCNN
from segdet.models.detection.rcnn.roi_heads import RoIHeads
from segdet.models.detection.rcnn.rpn import RegionProposalNetwork
from segdet.models.detection.settings import TransformSettings, check_num_classes


@dataclass(frozen=True)
class RCNNSettings(TransformSettings):
    """Transform, RPN and RoI-head settings; the names and defaults of torchvision's ``FasterRCNN``.

    Transform: the :class:`~segdet.models.detection.settings.TransformSettings` fields. RPN: anchors
    kept per level before NMS and proposals kept per image after it (``rpn_pre_nms_top_n_*``,
    ``rpn_post_nms_top_n_*``), ``rpn_nms_thresh``, the
    matching thresholds and sampling of its training, ``rpn_score_thresh`` and ``rpn_min_size``
    (proposals scored or sized below are dropped). RoI heads: ``box_score_thresh``, ``box_nms_thresh``,
    ``box_detections_per_img`` (inference), matching and sampling (training), ``bbox_reg_weights``.
    """

    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0
    rpn_min_size: float = 1e-3
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)


def assemble(
    num_classes: int,
    settings: RCNNSettings,
    *,
    backbone: nn.Module,
    anchor_generator: AnchorGenerator,
    rpn_head: nn.Module,
    box_pooler: nn.Module,
    box_head: nn.Module,
    representation_size: int,
    mask_pooler: nn.Module | None = None,
    mask_head: nn.Module | None = None,
    mask_predictor: nn.Module | None = None,
) -> GeneralizedRCNN:
    """A :class:`GeneralizedRCNN` with ``num_classes`` object classes (``num_classes + 1`` logits, the
    background included) from its parts and ``settings``."""
    check_num_classes(num_classes)
    s = settings
    rpn = RegionProposalNetwork(
        anchor_generator,
        rpn_head,
        fg_iou_thresh=s.rpn_fg_iou_thresh,
        bg_iou_thresh=s.rpn_bg_iou_thresh,
        batch_size_per_image=s.rpn_batch_size_per_image,
        positive_fraction=s.rpn_positive_fraction,
        pre_nms_top_n={"training": s.rpn_pre_nms_top_n_train, "testing": s.rpn_pre_nms_top_n_test},
        post_nms_top_n={"training": s.rpn_post_nms_top_n_train, "testing": s.rpn_post_nms_top_n_test},
        nms_thresh=s.rpn_nms_thresh,
        score_thresh=s.rpn_score_thresh,
        min_size=s.rpn_min_size,
    )
    roi_heads = RoIHeads(
        box_pooler,
        box_head,
        FastRCNNPredictor(representation_size, num_classes + 1),
        fg_iou_thresh=s.box_fg_iou_thresh,
        bg_iou_thresh=s.box_bg_iou_thresh,
        batch_size_per_image=s.box_batch_size_per_image,
        positive_fraction=s.box_positive_fraction,
        bbox_reg_weights=tuple(s.bbox_reg_weights),
        score_thresh=s.box_score_thresh,
        nms_thresh=s.box_nms_thresh,
        detections_per_img=s.box_detections_per_img,
        mask_pooler=mask_pooler,
        mask_head=mask_head,
        mask_predictor=mask_predictor,
    )
    model = GeneralizedRCNN(s.transform(), backbone, rpn, roi_heads, num_classes)
    model.settings = settings
    return model

"""The non-structural settings of the two-stage detectors (resizing, proposal and detection counts and
thresholds), their defaults, and the assembly of a :class:`~.generalized_rcnn.GeneralizedRCNN` from parts.

The settings carry torchvision's keyword names (``min_size``, ``rpn_score_thresh``, ``box_score_thresh``
...), so ``build("fasterrcnn_resnet50_fpn", num_classes=K, box_score_thresh=0.3)`` reads like
``torchvision.models.detection.fasterrcnn_resnet50_fpn(box_score_thresh=0.3)``. The defaults are those
of torchvision's ``FasterRCNN`` (Detectron's FPN settings): 1000 proposals per image in inference,
NMS 0.7 for the RPN and 0.5 per class for the detections, 100 detections per image.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from segdet.models.detection.anchors import AnchorGenerator
from segdet.models.detection.box_head import FastRCNNPredictor
from segdet.models.detection.generalized_rcnn import GeneralizedRCNN
from segdet.models.detection.roi_heads import RoIHeads
from segdet.models.detection.rpn import RegionProposalNetwork
from segdet.models.detection.transform import IMAGENET_MEAN, IMAGENET_STD, DetectionTransform


@dataclass(frozen=True)
class RCNNSettings:
    """Transform, RPN and RoI-head settings; the names and defaults of torchvision's ``FasterRCNN``.

    Transform: ``min_size`` (int, or a tuple drawn from in training), ``max_size``, ``image_mean``,
    ``image_std``, ``size_divisible``. RPN: anchors kept per level before NMS and proposals kept per
    image after it (``rpn_pre_nms_top_n_*``, ``rpn_post_nms_top_n_*``), ``rpn_nms_thresh``, the
    matching thresholds and sampling of its training, ``rpn_score_thresh`` and ``rpn_min_size``
    (proposals scored or sized below are dropped). RoI heads: ``box_score_thresh``, ``box_nms_thresh``,
    ``box_detections_per_img`` (inference), matching and sampling (training), ``bbox_reg_weights``.
    """

    min_size: int | tuple[int, ...] = 800
    max_size: int = 1333
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    size_divisible: int = 32
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


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(RCNNSettings))


def with_settings(**defaults: object) -> Callable:
    """Decorate a builder ``fn(num_classes, *, <own options>, settings: RCNNSettings)`` so that it takes
    the :class:`RCNNSettings` fields as keyword options instead (``defaults`` overriding the class's),
    and so that its signature lists them (``segdet.models.model_options`` and ``build`` read it)."""
    unknown = set(defaults) - set(SETTING_NAMES)
    if unknown:
        raise ValueError(f"not RCNNSettings fields: {sorted(unknown)}")

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)
        own = [p for name, p in signature.parameters.items() if name != "settings"]
        own_names = {p.name for p in own}
        extra = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(f.name, f.default))
            for f in dataclasses.fields(RCNNSettings)
        ]

        @functools.wraps(fn)
        def builder(num_classes: int, **options: object) -> GeneralizedRCNN:
            own_options = {k: v for k, v in options.items() if k in own_names}
            setting_options = {k: v for k, v in options.items() if k not in own_names}
            unknown = sorted(set(setting_options) - set(SETTING_NAMES))
            if unknown:
                raise TypeError(f"{fn.__name__}() got unexpected options {unknown}")
            settings = RCNNSettings(**{**defaults, **setting_options})
            return fn(num_classes, **own_options, settings=settings)

        builder.__signature__ = signature.replace(parameters=own + extra)  # type: ignore[attr-defined]
        return builder

    return decorate


def pretrained_defaults(
    weights: object, trainable_layers: int | None, frozen_bn: bool | None, all_layers: int
) -> tuple[int, bool]:
    """torchvision's rule: with a pretrained backbone, 3 trainable stages and frozen BatchNorm (small
    detection batches give poor batch statistics); from scratch, everything trains with plain BatchNorm.
    Explicit values win."""
    pretrained = weights is not None
    trainable = trainable_layers if trainable_layers is not None else (3 if pretrained else all_layers)
    frozen = frozen_bn if frozen_bn is not None else pretrained
    return trainable, frozen


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
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    s = settings
    min_size = tuple(s.min_size) if isinstance(s.min_size, Sequence) else s.min_size
    transform = DetectionTransform(min_size, s.max_size, s.image_mean, s.image_std, s.size_divisible)
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
    model = GeneralizedRCNN(transform, backbone, rpn, roi_heads, num_classes)
    model.settings = settings
    return model

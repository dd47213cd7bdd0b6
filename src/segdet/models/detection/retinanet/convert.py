"""torchvision's RetinaNet -> ours: the same weights and settings (the RetinaNet part of
:func:`segdet.models.detection.convert.from_torchvision` and ``load_torchvision_weights``).

Keys are torchvision's (see :mod:`.head`, :mod:`segdet.models.necks.fpn`), except:

* the classifier: torchvision's ``num_classes`` counts a background class 0 that no anchor is ever
  trained positive for, so its sigmoid logit only learns to stay low. Ours has no such logit: the
  ``A (K + 1)`` output channels of ``cls_logits`` (channel ``a (K + 1) + c``) lose those of ``c = 0``,
  leaving ``A K`` (channel ``a K + c - 1``), and our labels are torchvision's minus one;
* legacy names (torchvision < 0.13): ``head.*_head.conv.{2i}.*`` are ``head.*_head.conv.{i}.0.*``.

The released ``retinanet_resnet50_fpn`` COCO weights were trained with a frozen BatchNorm of
``eps = 0`` (torchvision's ``overwrite_eps``); so does :func:`load_retinanet_weights` for that file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from segdet.errors import DataError, SegdetError
from segdet.models.detection.convert import (
    body_options,
    check_and_load,
    copy_flags,
    load_converted,
    norms,
    transform_options,
)
from segdet.models.detection.retinanet import builders
from segdet.models.detection.retinanet.model import RetinaNet

_LEGACY_HEAD_CONV = re.compile(r"^(head\.(?:classification|regression)_head\.conv)\.(\d+)\.(weight|bias)$")
EPS_ZERO_FILES = ("retinanet_resnet50_fpn_coco-eeacb38b",)


def _convert_key(key: str) -> str:
    match = _LEGACY_HEAD_CONV.match(key)
    if match and int(match[2]) % 2 == 0:
        return f"{match[1]}.{int(match[2]) // 2}.0.{match[3]}"
    return key


def convert_retinanet_state_dict(state: Mapping[str, Tensor], num_anchors: int) -> dict[str, Tensor]:
    """torchvision's RetinaNet state dict with our keys and without the background logits (module
    docstring); ``num_anchors``: ``A`` per location."""
    converted = {_convert_key(k): v for k, v in state.items()}
    for name in ("head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"):
        if name in converted:
            value = converted[name]
            if value.shape[0] % num_anchors:
                raise DataError(f"{name} has {value.shape[0]} channels, not a multiple of {num_anchors}")
            per_anchor = value.reshape(num_anchors, value.shape[0] // num_anchors, *value.shape[1:])
            converted[name] = per_anchor[:, 1:].reshape(-1, *value.shape[1:])
    return converted


def load_retinanet_weights(
    model: RetinaNet, state: Mapping[str, Tensor], source: str, bn_eps: float | None = None
) -> None:
    """Load a torchvision RetinaNet state dict into ``model`` (see
    :func:`segdet.models.detection.convert.load_torchvision_weights`)."""
    num_anchors = model.head.classification_head.num_anchors
    check_and_load(model, convert_retinanet_state_dict(state, num_anchors), source)
    if bn_eps is None and any(name in source for name in EPS_ZERO_FILES):
        bn_eps = 0.0
    if bn_eps is not None:
        for norm in norms(model.backbone).values():
            norm.eps = bn_eps


def _head_norm(tv_model: nn.Module) -> str | None:
    block = tv_model.head.classification_head.conv[0]
    norm = block[1] if len(block) > 2 else None
    if norm is None:
        return None
    if isinstance(norm, nn.GroupNorm) and norm.num_groups == 32:
        return "group"
    raise SegdetError(f"unsupported RetinaNet head normalisation {norm}")


def retinanet_from_torchvision(tv_model: nn.Module) -> RetinaNet:
    """Our RetinaNet equal to torchvision's ``tv_model`` (``retinanet_resnet50_fpn``, ``_v2``, or the
    same designs on other ResNets): architecture, weights, BatchNorm eps, settings, trainable
    parameters, mode and device."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    if not isinstance(tv_model.backbone, BackboneWithFPN):
        raise SegdetError("only torchvision RetinaNets with an FPN backbone (BackboneWithFPN) are converted")
    extra = tv_model.backbone.fpn.extra_blocks
    if not isinstance(extra, LastLevelP6P7):
        raise SegdetError("only RetinaNets with LastLevelP6P7 extra FPN blocks are converted")
    kind, options = body_options(tv_model.backbone.body)
    if kind != "resnet50":
        raise SegdetError("only RetinaNets on ResNet backbones are converted")
    head = tv_model.head
    v2 = head.regression_head._loss_type == "giou"
    anchors = tv_model.anchor_generator
    matcher = tv_model.proposal_matcher
    builder = builders.retinanet_resnet50_fpn_v2 if v2 else builders.retinanet_resnet50_fpn
    ours = builder(
        head.classification_head.num_classes - 1,
        trainable_layers=5,
        anchor_sizes=tuple(tuple(s) for s in anchors.sizes),
        aspect_ratios=tuple(tuple(r) for r in anchors.aspect_ratios),
        fpn_channels=tv_model.backbone.out_channels,
        p6_from="p5" if extra.use_P5 else "c5",
        head_norm=_head_norm(tv_model),
        **options,
        **transform_options(tv_model.transform),
        score_thresh=tv_model.score_thresh,
        nms_thresh=tv_model.nms_thresh,
        detections_per_img=tv_model.detections_per_img,
        topk_candidates=tv_model.topk_candidates,
        fg_iou_thresh=matcher.high_threshold,
        bg_iou_thresh=matcher.low_threshold,
        box_loss=head.regression_head._loss_type,
    )
    if not matcher.allow_low_quality_matches:
        raise SegdetError("only RetinaNets whose matcher allows low-quality matches are converted")
    state = convert_retinanet_state_dict(tv_model.state_dict(), head.classification_head.num_anchors)
    load_converted(ours, state, "RetinaNet")
    return copy_flags(ours, tv_model, _convert_key)

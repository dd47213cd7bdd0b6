"""torchvision's Faster / Mask R-CNN -> ours: the same weights and inference settings (the R-CNN part of
:func:`segdet.models.detection.convert.from_torchvision` and ``load_torchvision_weights``).

* :func:`rcnn_from_torchvision` converts a built torchvision model (``fasterrcnn_resnet50_fpn``,
  ``_v2``, ``fasterrcnn_mobilenet_v3_large_fpn``, ``_320_fpn``, ``maskrcnn_resnet50_fpn``, ``_v2``, or
  the same designs on other ResNets) into the equivalent :class:`~.generalized_rcnn.GeneralizedRCNN`;
* :func:`convert_torchvision_state_dict` renames a torchvision state dict to our keys;
* :func:`load_rcnn_weights` loads a torchvision state dict into one of our models.

Key mapping (everything else is identical, see the parts' modules):

====================================================  ==================================================
torchvision                                           ours
====================================================  ==================================================
``backbone.body.{i}.*`` (MobileNetV3)                  ``backbone.body.features.{i}.*``
``rpn.head.conv.{weight,bias}`` (before 0.13)          ``rpn.head.conv.0.0.*``
``backbone.fpn.{inner,layer}_blocks.{i}.{w,b}`` (old)  ``backbone.fpn.{inner,layer}_blocks.{i}.0.*``
``roi_heads.mask_head.mask_fcn{k}.{w,b}`` (old)        ``roi_heads.mask_head.{k-1}.0.*``
====================================================  ==================================================

Labels: torchvision's ``num_classes`` counts the background; ours does not, so a 91-class torchvision
model becomes ``num_classes = 90`` and our label ``l`` is torchvision's ``l + 1``.

The released ``fasterrcnn_resnet50_fpn`` and ``maskrcnn_resnet50_fpn`` COCO weights were trained with a
frozen BatchNorm of ``eps = 0`` (torchvision sets it on loading them, ``overwrite_eps``); so does
:func:`load_rcnn_weights` for those files.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

from torch import Tensor, nn

from segdet.errors import DataError, SegdetError
from segdet.models.backbones import MobileNetV3Backbone
from segdet.models.detection.convert import (
    body_options,
    check_and_load,
    copy_flags,
    load_converted,
    norms,
    transform_options,
)
from segdet.models.detection.rcnn.generalized_rcnn import GeneralizedRCNN
from segdet.models.detection.rcnn.settings import RCNNSettings

_LEGACY_RENAMES: list[tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), lambda m: f"rpn.head.conv.0.0.{m[1]}"),
    (
        re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$"),
        lambda m: f"backbone.fpn.{m[1]}_blocks.{m[2]}.0.{m[3]}",
    ),
    (
        re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$"),
        lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.0.{m[2]}",
    ),
]
_MOBILENET_BODY = re.compile(r"^backbone\.body\.(\d+)\.")

# Released COCO files trained with FrozenBatchNorm2d(eps=0) (torchvision's overwrite_eps(model, 0.0)).
EPS_ZERO_FILES = ("fasterrcnn_resnet50_fpn_coco-258fb6c6", "maskrcnn_resnet50_fpn_coco-bf2d0c1e")


def convert_key(key: str, arch: str) -> str:
    """Our name of torchvision's state-dict key ``key`` of a model of architecture ``arch`` (a name
    such as ``"fasterrcnn_mobilenet_v3_large_fpn"``; only whether it contains ``"mobilenet"`` matters)."""
    for pattern, new in _LEGACY_RENAMES:
        match = pattern.match(key)
        if match:
            return new(match)
    if "mobilenet" in arch:
        return _MOBILENET_BODY.sub(r"backbone.body.features.\1.", key)
    return key


def convert_torchvision_state_dict(state_dict: Mapping[str, Tensor], arch: str) -> dict[str, Tensor]:
    """torchvision's Faster / Mask R-CNN state dict (current or legacy key names) with our key names;
    the tensors are the same objects (no copies). ``arch``: see :func:`convert_key`."""
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = convert_key(key, arch)
        if new in converted:
            raise DataError(f"two keys map to {new!r} (the legacy and current names of one tensor?)")
        converted[new] = value
    return converted


def _arch_of(model: GeneralizedRCNN) -> str:
    body = getattr(model.backbone, "body", None)
    return "mobilenet_v3_large_fpn" if isinstance(body, MobileNetV3Backbone) else "resnet_fpn"


def load_rcnn_weights(
    model: GeneralizedRCNN, state: Mapping[str, Tensor], source: str, bn_eps: float | None = None
) -> None:
    """Load a torchvision Faster / Mask R-CNN state dict (current or legacy key names) into ``model``
    (see :func:`segdet.models.detection.convert.load_torchvision_weights`); ``source`` names it in
    errors and decides the eps of the released v1 COCO files."""
    check_and_load(model, convert_torchvision_state_dict(state, _arch_of(model)), source)
    if bn_eps is None and any(name in source for name in EPS_ZERO_FILES):
        bn_eps = 0.0
    if bn_eps is not None:
        for norm in norms(model.backbone).values():
            norm.eps = bn_eps


# ------------------------------------------------------------------------------------ from_torchvision
def _settings_of(tv: nn.Module) -> RCNNSettings:
    rpn, heads = tv.rpn, tv.roi_heads
    return RCNNSettings(
        **transform_options(tv.transform),
        rpn_pre_nms_top_n_train=rpn._pre_nms_top_n["training"],
        rpn_pre_nms_top_n_test=rpn._pre_nms_top_n["testing"],
        rpn_post_nms_top_n_train=rpn._post_nms_top_n["training"],
        rpn_post_nms_top_n_test=rpn._post_nms_top_n["testing"],
        rpn_nms_thresh=rpn.nms_thresh,
        rpn_fg_iou_thresh=rpn.proposal_matcher.high_threshold,
        rpn_bg_iou_thresh=rpn.proposal_matcher.low_threshold,
        rpn_batch_size_per_image=rpn.fg_bg_sampler.batch_size_per_image,
        rpn_positive_fraction=rpn.fg_bg_sampler.positive_fraction,
        rpn_score_thresh=rpn.score_thresh,
        rpn_min_size=rpn.min_size,
        box_score_thresh=heads.score_thresh,
        box_nms_thresh=heads.nms_thresh,
        box_detections_per_img=heads.detections_per_img,
        box_fg_iou_thresh=heads.proposal_matcher.high_threshold,
        box_bg_iou_thresh=heads.proposal_matcher.low_threshold,
        box_batch_size_per_image=heads.fg_bg_sampler.batch_size_per_image,
        box_positive_fraction=heads.fg_bg_sampler.positive_fraction,
        bbox_reg_weights=tuple(float(w) for w in heads.box_coder.weights),
    )


def rcnn_from_torchvision(tv_model: nn.Module) -> GeneralizedRCNN:
    """Our model equivalent to torchvision's Faster / Mask R-CNN ``tv_model``: same architecture,
    weights (and BatchNorm eps), inference and training settings, trainable parameters, train/eval mode
    and device. See the module docstring for the label shift."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    from segdet.models.detection.rcnn import faster_rcnn, mask_rcnn

    if not isinstance(tv_model, FasterRCNN):
        raise SegdetError(f"expected a torchvision FasterRCNN or MaskRCNN, got {type(tv_model).__name__}")
    if not isinstance(tv_model.backbone, BackboneWithFPN):
        raise SegdetError("only torchvision detectors with an FPN backbone (BackboneWithFPN) are converted")
    if not isinstance(tv_model.backbone.fpn.extra_blocks, LastLevelMaxPool):
        raise SegdetError("only FPNs with LastLevelMaxPool extra blocks are converted")
    kind, options = body_options(tv_model.backbone.body)
    heads = tv_model.roi_heads
    v2 = isinstance(heads.box_head, FastRCNNConvFCHead)
    if not v2 and not isinstance(heads.box_head, TwoMLPHead):
        raise SegdetError(f"unsupported box head {type(heads.box_head).__name__}")
    mask = heads.has_mask()
    pools = [(heads.box_roi_pool, faster_rcnn.BOX_POOL_SIZE)]
    if mask:
        pools.append((heads.mask_roi_pool, faster_rcnn.MASK_POOL_SIZE))
    for pool, size in pools:
        if tuple(pool.output_size) != (size, size) or pool.sampling_ratio != faster_rcnn.SAMPLING_RATIO:
            raise SegdetError(f"unsupported RoI pooling {pool.output_size}, sampling {pool.sampling_ratio}")

    name = f"{'maskrcnn' if mask else 'fasterrcnn'}_{kind}_fpn{'_v2' if v2 else ''}"
    builders = {**vars(faster_rcnn), **vars(mask_rcnn)}
    if name not in builders:
        raise SegdetError(f"no segdet builder for a torchvision {name}")
    anchors = tv_model.rpn.anchor_generator
    ours = builders[name](
        heads.box_predictor.cls_score.out_features - 1,
        trainable_layers=6 if kind.startswith("mobilenet") else 5,
        anchor_sizes=tuple(tuple(s) for s in anchors.sizes),
        aspect_ratios=tuple(tuple(r) for r in anchors.aspect_ratios),
        **options,
        **dataclasses.asdict(_settings_of(tv_model)),
    )

    arch = name
    state = convert_torchvision_state_dict(tv_model.state_dict(), arch)
    load_converted(ours, state, "R-CNN")
    return copy_flags(ours, tv_model, lambda key: convert_key(key, arch))

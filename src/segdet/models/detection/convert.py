"""torchvision's Faster / Mask R-CNN -> ours: the same weights and inference settings.

* :func:`from_torchvision` converts a built torchvision model (``fasterrcnn_resnet50_fpn``, ``_v2``,
  ``fasterrcnn_mobilenet_v3_large_fpn``, ``_320_fpn``, ``maskrcnn_resnet50_fpn``, ``_v2``, or the same
  designs on other ResNets) into the equivalent :class:`~.generalized_rcnn.GeneralizedRCNN`;
* :func:`convert_torchvision_state_dict` renames a torchvision state dict to our keys;
* :func:`load_torchvision_weights` loads a torchvision checkpoint (file, URL or weights enum, e.g. the
  released COCO models) into one of our models.

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
:func:`load_torchvision_weights` for those files.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

from torch import Tensor, nn

from segdet.errors import DataError, SegdetError
from segdet.models.backbones import MobileNetV3Backbone
from segdet.models.detection.generalized_rcnn import GeneralizedRCNN
from segdet.models.detection.rcnn_settings import RCNNSettings

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


def _norms(model: nn.Module) -> dict[str, nn.Module]:
    """Every BatchNorm-like module (torch's, torchvision's frozen or ours) by name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d) or type(m).__name__ == "FrozenBatchNorm2d"
    }


def _check_and_load(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Strict load with a one-line :class:`DataError` listing what does not match."""
    own = model.state_dict()
    # A source with frozen BatchNorm has no num_batches_tracked; a model with nn.BatchNorm2d keeps its own.
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    misshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = [
        f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
        for what, v in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("keys of another shape", misshaped),
        )
        if v
    ]
    if problems:
        raise DataError(f"weights do not match {type(model).__name__}: " + "; ".join(problems), file=source)
    model.load_state_dict({k: v for k, v in state.items() if k in own})


def load_torchvision_weights(model: GeneralizedRCNN, source: object, *, bn_eps: float | None = None) -> None:
    """Load torchvision Faster / Mask R-CNN weights into ``model`` (built with the same design and
    ``num_classes`` = torchvision's minus one, e.g. 90 for the COCO files).

    Args:
        model: e.g. ``build("maskrcnn_resnet50_fpn", num_classes=90)``.
        source: a torchvision weights enum or its name (``"MaskRCNN_ResNet50_FPN_Weights.COCO_V1"``), a
            URL or a local file (read with ``weights_only=True``, never unpickled otherwise).
        bn_eps: the eps to give the backbone's BatchNorms; ``None``: 0 for the released v1 ResNet-50 FPN
            COCO files (recognised by their file name), unchanged otherwise.

    Raises :class:`~segdet.errors.DataError` naming the missing, unexpected or mis-shaped keys.
    """
    from segdet.models.weights import load_state_dict

    label = str(getattr(source, "url", source))
    state = convert_torchvision_state_dict(load_state_dict(source), _arch_of(model))
    _check_and_load(model, state, label)
    if bn_eps is None and any(name in label for name in EPS_ZERO_FILES):
        bn_eps = 0.0
    if bn_eps is not None:
        for norm in _norms(model.backbone).values():
            norm.eps = bn_eps


# ------------------------------------------------------------------------------------ from_torchvision
def _settings_of(tv: nn.Module) -> RCNNSettings:
    t, rpn, heads = tv.transform, tv.rpn, tv.roi_heads
    if getattr(t, "fixed_size", None) is not None:
        raise SegdetError("torchvision models with a transform fixed_size are not supported")
    min_size = tuple(int(s) for s in t.min_size)
    return RCNNSettings(
        min_size=min_size[0] if len(min_size) == 1 else min_size,
        max_size=int(t.max_size),
        image_mean=tuple(float(m) for m in t.image_mean),
        image_std=tuple(float(s) for s in t.image_std),
        size_divisible=int(t.size_divisible),
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


def _body_options(body: nn.Module) -> tuple[str, dict]:
    """``(kind, builder options)`` read from torchvision's ``backbone.body`` (an IntermediateLayerGetter)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    returns = dict(body.return_layers)
    frozen = any(type(m).__name__ == "FrozenBatchNorm2d" for m in body.modules())
    if hasattr(body, "layer1"):
        block = type(body.layer3[0])
        depths = {(BasicBlock, 2): 18, (BasicBlock, 6): 34, (Bottleneck, 6): 50, (Bottleneck, 23): 101}
        depth = depths.get((block, len(body.layer3)))
        if depth is None:
            raise SegdetError(f"unsupported torchvision ResNet body ({block.__name__} x {len(body.layer3)})")
        layers = sorted(int(name.removeprefix("layer")) for name in returns)
        return "resnet50", {
            "backbone": f"resnet{depth}",
            "returned_layers": tuple(layers),
            "frozen_bn": frozen,
        }
    blocks = list(body.children())
    strided = [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)]
    stages = [0, *strided, len(blocks) - 1]
    if len(blocks) != 17 or len(stages) != 6:
        raise SegdetError(
            "unsupported torchvision backbone: only ResNets and MobileNetV3-Large are converted"
        )
    layers = sorted(stages.index(int(name)) for name in returns)
    return "mobilenet_v3_large", {"returned_layers": tuple(layers), "frozen_bn": frozen}


def from_torchvision(tv_model: nn.Module) -> GeneralizedRCNN:
    """Our model equivalent to torchvision's Faster / Mask R-CNN ``tv_model``: same architecture,
    weights (and BatchNorm eps), inference and training settings, trainable parameters, train/eval mode
    and device. See the module docstring for the label shift."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    from segdet.models.detection import faster_rcnn, mask_rcnn

    if not isinstance(tv_model, FasterRCNN):
        raise SegdetError(f"expected a torchvision FasterRCNN or MaskRCNN, got {type(tv_model).__name__}")
    if not isinstance(tv_model.backbone, BackboneWithFPN):
        raise SegdetError("only torchvision detectors with an FPN backbone (BackboneWithFPN) are converted")
    if not isinstance(tv_model.backbone.fpn.extra_blocks, LastLevelMaxPool):
        raise SegdetError("only FPNs with LastLevelMaxPool extra blocks are converted")
    kind, options = _body_options(tv_model.backbone.body)
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
    try:
        _check_and_load(ours, state, f"torchvision {name}")
    except DataError as e:
        raise SegdetError(f"unsupported torchvision model variant: {e}") from None
    our_norms = _norms(ours)
    for tv_name, tv_norm in _norms(tv_model).items():
        our_norms[convert_key(tv_name + ".w", arch)[: -len(".w")]].eps = tv_norm.eps
    our_params = dict(ours.named_parameters())
    for tv_name, param in tv_model.named_parameters():
        our_params[convert_key(tv_name, arch)].requires_grad_(param.requires_grad)
    first = next(tv_model.parameters())
    return ours.to(device=first.device, dtype=first.dtype).train(tv_model.training)

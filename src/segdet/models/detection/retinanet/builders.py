"""RetinaNet builders: ResNet + FPN ``P3 .. P7`` with torchvision's v1 and v2 designs.

* ``retinanet_resnet50_fpn`` (torchvision's v1, the paper's design): the FPN on ``C3 .. C5``
  (``returned_layers = (2, 3, 4)``: ``P2`` would add 4x the anchors for little gain, paper sec. 4),
  ``P6 = conv3x3/2(P5)``, ``P7 = conv3x3/2(ReLU(P6))`` (torchvision computes ``P6`` from ``P5``; the
  paper and Detectron2 from ``C5``: ``p6_from="c5"``), heads without normalisation, L1 box loss.
* ``retinanet_resnet50_fpn_v2`` (torchvision's v2, Li et al.'s recipe): ``P6`` from ``C5``, GroupNorm
  (32 groups) in the heads, GIoU box loss; plain BatchNorm in the backbone even when pretrained.

Either takes ``neck="bifpn"``: EfficientDet's BiFPN (:class:`~segdet.models.necks.BiFPN`, ``bifpn_layers``
layers, BatchNorm, ``P6`` / ``P7`` max-pooled from ``C5``) in place of the FPN, the rest unchanged:
EfficientDet's detector is this RetinaNet head on a BiFPN (Tan et al. 2020, sec. 4.1).

Every builder takes ``num_classes`` (object classes, no background), the options below and the
:class:`~.model.RetinaNetSettings` fields (torchvision's keyword names: ``min_size``, ``score_thresh``,
``nms_thresh``, ``detections_per_img``, ``topk_candidates``, ``fg_iou_thresh``, ``bg_iou_thresh``, ...).
``backbone_weights`` loads ImageNet weights into the backbone; then by default 3 stages train and
BatchNorm is frozen (v1), otherwise everything trains (torchvision's rule).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

from torch import nn

from segdet.models.detection.anchors import AnchorGenerator
from segdet.models.detection.backbone_fpn import BackboneWithFPN, resnet_body
from segdet.models.detection.retinanet.head import PRIOR_PROBABILITY, RetinaNetHead
from segdet.models.detection.retinanet.model import RetinaNet, RetinaNetSettings
from segdet.models.detection.settings import check_num_classes, pretrained_defaults, with_settings
from segdet.models.necks import BiFPN, LastLevelP6P7

RESNET_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
# Per level P3..P7: base size 32 * 2^l and the scales 2^0, 2^(1/3), 2^(2/3), truncated to integers as
# torchvision does (its released weights were trained with these anchors).
RETINANET_SIZES = tuple(
    (x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in (32, 64, 128, 256, 512)
)
RATIOS = (0.5, 1.0, 2.0)
HEAD_NORMS = {"group": functools.partial(nn.GroupNorm, 32), None: None}


def _neck(body: nn.Module, neck: str, channels: int, p6_from: str, bifpn_layers: int) -> BackboneWithFPN:
    """The ResNet ``body`` with its neck: an FPN over the returned stages plus P6 / P7 (from P5 or C5), or
    a BiFPN of ``bifpn_layers`` layers."""
    if neck == "bifpn":
        in_channels = [body.out_channels[name] for name in body.out_features]
        return BackboneWithFPN(body, channels, neck=BiFPN(in_channels, channels, bifpn_layers))
    if neck == "fpn":
        p6_in = channels if p6_from == "p5" else body.out_channels[body.out_features[-1]]
        return BackboneWithFPN(body, channels, LastLevelP6P7(p6_in, channels, use_P5=p6_from == "p5"))
    raise ValueError(f"neck must be 'fpn' or 'bifpn', got {neck!r}")


def _level_sizes(anchor_sizes: Sequence[Sequence[int]] | None, levels: int) -> Sequence[Sequence[int]]:
    """Anchor sizes per feature level: RetinaNet's 32..512 px octaves, the last ``levels`` of them, when
    none are given."""
    if anchor_sizes is None:
        if levels > len(RETINANET_SIZES):
            raise ValueError(f"give anchor_sizes for {levels} levels")
        anchor_sizes = RETINANET_SIZES[len(RETINANET_SIZES) - levels :]
    if len(anchor_sizes) != levels:
        raise ValueError(f"{len(anchor_sizes)} anchor size levels for {levels} feature levels")
    return anchor_sizes


def _builder(name: str, v2: bool, doc: str):
    @with_settings(RetinaNetSettings, **({"box_loss": "giou"} if v2 else {}))
    def build(
        num_classes: int,
        *,
        backbone: str = "resnet50",
        backbone_weights: object = None,
        trainable_layers: int | None = None,
        frozen_bn: bool | None = None,
        returned_layers: Sequence[int] = (2, 3, 4),
        anchor_sizes: Sequence[Sequence[int]] | None = None,
        aspect_ratios: Sequence[Sequence[float]] | None = None,
        fpn_channels: int = 256,
        p6_from: Literal["p5", "c5"] = "c5" if v2 else "p5",
        head_norm: Literal["group"] | None = "group" if v2 else None,
        prior_probability: float = PRIOR_PROBABILITY,
        neck: Literal["fpn", "bifpn"] = "fpn",
        bifpn_layers: int = 3,
        settings: RetinaNetSettings,
    ) -> RetinaNet:
        check_num_classes(num_classes)
        if backbone not in RESNET_DEPTHS:
            raise ValueError(f"backbone must be one of {sorted(RESNET_DEPTHS)}, got {backbone!r}")
        if p6_from not in ("p5", "c5"):
            raise ValueError(f"p6_from must be 'p5' or 'c5', got {p6_from!r}")
        if head_norm not in HEAD_NORMS:
            raise ValueError(f"head_norm must be 'group' or None, got {head_norm!r}")
        trainable, frozen = pretrained_defaults(backbone_weights, trainable_layers, frozen_bn, 5)
        if v2 and frozen_bn is None:
            frozen = False  # torchvision's v2 recipe trains with BatchNorm everywhere
        body = resnet_body(
            RESNET_DEPTHS[backbone],
            returned_layers=returned_layers,
            trainable_layers=trainable,
            frozen_bn=frozen,
            weights=backbone_weights,
        )
        net = _neck(body, neck, fpn_channels, p6_from, bifpn_layers)
        levels = len(returned_layers) + 2
        anchors = AnchorGenerator(
            _level_sizes(anchor_sizes, levels),
            aspect_ratios if aspect_ratios is not None else (RATIOS,) * levels,
        )
        head = RetinaNetHead(
            fpn_channels,
            anchors.num_anchors_per_location()[0],
            num_classes,
            prior_probability,
            norm_layer=HEAD_NORMS[head_norm],
        )
        return RetinaNet(settings.transform(), net, anchors, head, num_classes, settings)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc + (
        "\n\n    Options: ``backbone`` (resnet18/34/50/101), ``backbone_weights``, ``trainable_layers``"
        " (0-5), ``frozen_bn``, ``returned_layers`` (ResNet stages feeding the FPN), ``anchor_sizes`` /"
        " ``aspect_ratios`` per level (default 3 scales x 3 ratios, 32..512 px), ``fpn_channels`` (256),"
        " ``p6_from`` (``p5`` / ``c5``, FPN only), ``head_norm`` (``group`` / None), ``prior_probability``"
        " (0.01), ``neck`` (``fpn`` / ``bifpn``), ``bifpn_layers`` (3), and the RetinaNetSettings fields."
    )
    return build


retinanet_resnet50_fpn = _builder(
    "retinanet_resnet50_fpn", False, "RetinaNet, ResNet-50 + FPN P3-P7 (Lin et al. 2017; torchvision's v1)."
)
retinanet_resnet50_fpn_v2 = _builder(
    "retinanet_resnet50_fpn_v2",
    True,
    "RetinaNet v2, ResNet-50 + FPN with P6 from C5, GroupNorm heads and GIoU loss (torchvision's v2).",
)

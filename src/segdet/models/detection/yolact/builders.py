"""YOLACT builders: ResNet + FPN ``P3 .. P7`` as the paper's (Bolya et al., ICCV 2019, sec. 5.1).

The FPN on ``C3 .. C5`` (``returned_layers = (2, 3, 4)``) with ``P6 = conv3x3/2(P5)`` and
``P7 = conv3x3/2(ReLU(P6))`` (:class:`~segdet.models.necks.LastLevelP6P7`, RetinaNet's levels), 256
channels; per level one anchor size, 24, 48, 96, 192, 384 px for 550 px images (the paper's
``[24, 48, 96, 192, 384]``), aspect ratios 1:2, 1:1, 2:1; ``k = 32`` prototypes. The paper's base model
is ``yolact_resnet101_fpn`` (29.8 mask AP on COCO); ``yolact_resnet50_fpn`` is its ResNet-50 variant.

Every builder takes ``num_classes`` (object classes, no background), the options below and the
:class:`~.model.YolactSettings` fields (``min_size``, ``max_size``, ``score_thresh``, ``nms``,
``nms_thresh``, ``detections_per_img``, ``topk_candidates``, loss weights...). ``backbone_weights`` loads
ImageNet weights into the backbone; then by default 3 stages train and BatchNorm is frozen (torchvision's
rule for detectors), otherwise everything trains.
"""

from __future__ import annotations

from collections.abc import Sequence

from segdet.models.detection.anchors import AnchorGenerator
from segdet.models.detection.backbone_fpn import BackboneWithFPN, resnet_body
from segdet.models.detection.settings import check_num_classes, pretrained_defaults, with_settings
from segdet.models.detection.yolact.head import YolactHead
from segdet.models.detection.yolact.model import YOLACT, YolactSettings
from segdet.models.detection.yolact.protonet import Protonet
from segdet.models.necks import LastLevelP6P7

RESNET_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
YOLACT_SIZES = ((24,), (48,), (96,), (192,), (384,))
RATIOS = (0.5, 1.0, 2.0)


def _builder(name: str, default_backbone: str, doc: str):
    @with_settings(YolactSettings)
    def build(
        num_classes: int,
        *,
        backbone: str = default_backbone,
        backbone_weights: object = None,
        trainable_layers: int | None = None,
        frozen_bn: bool | None = None,
        anchor_sizes: Sequence[Sequence[int]] = YOLACT_SIZES,
        aspect_ratios: Sequence[float] = RATIOS,
        fpn_channels: int = 256,
        num_prototypes: int = 32,
        protonet_channels: int = 256,
        settings: YolactSettings,
    ) -> YOLACT:
        check_num_classes(num_classes)
        if backbone not in RESNET_DEPTHS:
            raise ValueError(f"backbone must be one of {sorted(RESNET_DEPTHS)}, got {backbone!r}")
        if len(anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs one entry per level P3..P7 (5), got {len(anchor_sizes)}")
        if num_prototypes < 1:
            raise ValueError(f"num_prototypes must be positive, got {num_prototypes}")
        trainable, frozen = pretrained_defaults(backbone_weights, trainable_layers, frozen_bn, 5)
        body = resnet_body(
            RESNET_DEPTHS[backbone],
            returned_layers=(2, 3, 4),
            trainable_layers=trainable,
            frozen_bn=frozen,
            weights=backbone_weights,
        )
        net = BackboneWithFPN(body, fpn_channels, LastLevelP6P7(fpn_channels, fpn_channels, use_P5=True))
        anchors = AnchorGenerator(anchor_sizes, (tuple(aspect_ratios),) * len(anchor_sizes))
        head = YolactHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes, num_prototypes)
        protonet = Protonet(fpn_channels, num_prototypes, protonet_channels)
        return YOLACT(settings.transform(), net, anchors, head, protonet, num_classes, settings)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc + (
        "\n\n    Options: ``backbone`` (resnet18/34/50/101), ``backbone_weights``, ``trainable_layers``,"
        " (0-5), ``frozen_bn``, ``anchor_sizes`` (one size per level P3-P7, 24..384 px), ``aspect_ratios``,"
        " ``fpn_channels`` (256), ``num_prototypes`` (32), ``protonet_channels`` (256), and the"
        " YolactSettings fields."
    )
    return build


yolact_resnet50_fpn = _builder(
    "yolact_resnet50_fpn", "resnet50", "YOLACT, ResNet-50 + FPN P3-P7 (Bolya et al. 2019)."
)
yolact_resnet101_fpn = _builder(
    "yolact_resnet101_fpn",
    "resnet101",
    "YOLACT, ResNet-101 + FPN P3-P7 (Bolya et al. 2019; the paper's base).",
)

"""CenterNet builders: ResNet-18 / ResNet-50 with the upsampling stages (:mod:`.upsampling`), output
stride 4, as in the paper's ResNet setting.

Options: ``backbone`` (resnet18/34/50/101), ``backbone_weights`` (ImageNet weights; then by default 3
stages train and BatchNorm is frozen, torchvision's rule), ``trainable_layers``, ``frozen_bn``,
``upsampling_channels`` (256, 128, 64), ``deformable`` (the paper's modulated deformable 3x3
convolutions; default plain), ``head_channels`` (64), and the :class:`~.model.CenterNetSettings` fields
(``min_size``, ``max_size``, ``detections_per_img``, ``radius_rule``, ``size_weight`` ...).
"""

from __future__ import annotations

from collections.abc import Sequence

from segdet.models.detection.backbone_fpn import resnet_body
from segdet.models.detection.centernet.head import CenterNetHead
from segdet.models.detection.centernet.model import CenterNet, CenterNetSettings
from segdet.models.detection.centernet.upsampling import CenterNetUpsampling, ResNetUpsampling
from segdet.models.detection.settings import check_num_classes, pretrained_defaults, with_settings

RESNET_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}


def _builder(name: str, default_backbone: str):
    @with_settings(CenterNetSettings)
    def build(
        num_classes: int,
        *,
        backbone: str = default_backbone,
        backbone_weights: object = None,
        trainable_layers: int | None = None,
        frozen_bn: bool | None = None,
        upsampling_channels: Sequence[int] = (256, 128, 64),
        deformable: bool = False,
        head_channels: int = 64,
        settings: CenterNetSettings,
    ) -> CenterNet:
        check_num_classes(num_classes)
        if backbone not in RESNET_DEPTHS:
            raise ValueError(f"backbone must be one of {sorted(RESNET_DEPTHS)}, got {backbone!r}")
        if len(upsampling_channels) != 3:
            raise ValueError(f"three upsampling stages (stride 32 -> 4), got {list(upsampling_channels)}")
        trainable, frozen = pretrained_defaults(backbone_weights, trainable_layers, frozen_bn, 5)
        body = resnet_body(
            RESNET_DEPTHS[backbone],
            returned_layers=(4,),
            trainable_layers=trainable,
            frozen_bn=frozen,
            weights=backbone_weights,
        )
        upsampling = CenterNetUpsampling(body.out_channels["c5"], upsampling_channels, deformable)
        net = ResNetUpsampling(body, upsampling)
        head = CenterNetHead(net.out_channels, num_classes, head_channels)
        return CenterNet(net, head, num_classes, settings)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"CenterNet (Zhou et al. 2019, objects as points) on {default_backbone} with three upsampling "
        "stages to stride 4; see segdet.models.detection.centernet.builders."
    )
    return build


centernet_resnet18 = _builder("centernet_resnet18", "resnet18")
centernet_resnet50 = _builder("centernet_resnet50", "resnet50")

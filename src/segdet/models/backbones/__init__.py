"""Backbones: torchvision classifiers as feature extractors with one interface (:class:`Backbone`).

``build_backbone("resnet50", output_stride=16, weights="ResNet50_Weights.IMAGENET1K_V2")`` returns a
module whose forward gives ``{"c1": ..., "c5": ...}`` (strides 2..32, see :mod:`.base`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from functools import partial

from segdet.errors import SegdetError
from segdet.models.backbones.base import (
    FEATURE_NAMES,
    Backbone,
    FrozenBatchNorm2d,
    convert_frozen_batchnorm,
)
from segdet.models.backbones.efficientnet import EfficientNetBackbone
from segdet.models.backbones.mobilenet import MobileNetV3Backbone
from segdet.models.backbones.resnet import ResNetBackbone
from segdet.models.backbones.vgg import VGGBackbone

# name -> constructor(output_stride=, weights=, frozen_stages=, frozen_bn=)
BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet18": partial(ResNetBackbone, 18),
    "resnet34": partial(ResNetBackbone, 34),
    "resnet50": partial(ResNetBackbone, 50),
    "resnet101": partial(ResNetBackbone, 101),
    "vgg16": VGGBackbone,
    "vgg16_bn": partial(VGGBackbone, batch_norm=True),
    "mobilenet_v3_large": partial(MobileNetV3Backbone, "large"),
    "mobilenet_v3_small": partial(MobileNetV3Backbone, "small"),
    "efficientnet_b0": partial(EfficientNetBackbone, "b0"),
    "efficientnet_b1": partial(EfficientNetBackbone, "b1"),
    "efficientnet_b2": partial(EfficientNetBackbone, "b2"),
    "efficientnet_b3": partial(EfficientNetBackbone, "b3"),
    "efficientnet_b4": partial(EfficientNetBackbone, "b4"),
    "efficientnet_b5": partial(EfficientNetBackbone, "b5"),
    "efficientnet_b6": partial(EfficientNetBackbone, "b6"),
    "efficientnet_b7": partial(EfficientNetBackbone, "b7"),
}


def build_backbone(name: str | Backbone, **kwargs) -> Backbone:
    """The backbone called ``name`` in :data:`BACKBONES` built with ``kwargs``; a :class:`Backbone`
    instance is returned as is (then ``kwargs`` must be empty)."""
    if isinstance(name, Backbone):
        if kwargs:
            raise SegdetError(f"backbone options {sorted(kwargs)} given with an already built backbone")
        return name
    if name not in BACKBONES:
        close = difflib.get_close_matches(str(name), BACKBONES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SegdetError(f"unknown backbone {name!r}{hint}; available: {', '.join(BACKBONES)}")
    return BACKBONES[name](**kwargs)


__all__ = [
    "BACKBONES",
    "FEATURE_NAMES",
    "Backbone",
    "EfficientNetBackbone",
    "FrozenBatchNorm2d",
    "MobileNetV3Backbone",
    "ResNetBackbone",
    "VGGBackbone",
    "build_backbone",
    "convert_frozen_batchnorm",
]

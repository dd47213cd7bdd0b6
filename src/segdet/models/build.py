"""Model constructors by name: the one table :data:`MODELS` and :func:`build` (costs: :mod:`.flops`).

Every constructor takes ``num_classes`` and keyword options; those with a backbone take ``backbone``
(a name in :data:`segdet.models.backbones.BACKBONES` or a built :class:`Backbone`), ``backbone_weights``
(see :func:`segdet.models.weights.load_weights`), ``output_stride``, ``frozen_stages`` and ``frozen_bn``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from segdet.errors import SegdetError
from segdet.models import detection
from segdet.models.backbones import Backbone, VGGBackbone, build_backbone
from segdet.models.segmentation import FCN, BackboneUNet, DeepLabV3Plus, UNet

BackboneSpec = str | Backbone


def _backbone(
    backbone: BackboneSpec,
    weights: str | Path | None,
    output_stride: int,
    frozen_stages: int,
    frozen_bn: bool,
) -> Backbone:
    if isinstance(backbone, Backbone):
        # Options that only take effect while building would be silently dropped (the pretrained
        # weights never loaded): refuse them, as build_backbone does.
        given = {"backbone_weights": weights, "frozen_stages": frozen_stages, "frozen_bn": frozen_bn}
        if any(given.values()):
            set_options = sorted(k for k, v in given.items() if v)
            raise SegdetError(f"backbone options {set_options} given with an already built backbone")
        return backbone
    return build_backbone(
        backbone,
        output_stride=output_stride,
        weights=weights,
        frozen_stages=frozen_stages,
        frozen_bn=frozen_bn,
    )


def _fcn(variant: int) -> Callable[..., FCN]:
    def fcn(
        num_classes: int,
        *,
        backbone: BackboneSpec = "vgg16",
        backbone_weights: str | Path | None = None,
        output_stride: int = 32,
        frozen_stages: int = 0,
        frozen_bn: bool = False,
        head_channels: int | None = -1,
        dropout: float = 0.5,
        upsample: str = "transposed",
    ) -> FCN:
        """FCN on ``backbone``; ``head_channels=-1`` means fc6/fc7 of 4096 for VGG, none otherwise."""
        net = _backbone(backbone, backbone_weights, output_stride, frozen_stages, frozen_bn)
        if head_channels == -1:
            head_channels = 4096 if isinstance(net, VGGBackbone) else None
        return FCN(
            net, num_classes, variant=variant, head_channels=head_channels, dropout=dropout, upsample=upsample
        )

    fcn.__name__ = fcn.__qualname__ = f"fcn{variant}s"
    fcn.__doc__ = f"FCN-{variant}s (Long et al. 2015). " + (fcn.__doc__ or "")
    return fcn


def unet(
    num_classes: int,
    *,
    in_channels: int = 3,
    base_channels: int = 64,
    depth: int = 4,
    upsample: str = "transposed",
    norm: bool = True,
) -> UNet:
    """The original U-Net (Ronneberger et al. 2015) with padded convolutions."""
    return UNet(
        num_classes,
        in_channels=in_channels,
        base_channels=base_channels,
        depth=depth,
        upsample=upsample,
        norm=norm,
    )


def unet_backbone(
    num_classes: int,
    *,
    backbone: BackboneSpec = "resnet34",
    backbone_weights: str | Path | None = None,
    output_stride: int = 32,
    frozen_stages: int = 0,
    frozen_bn: bool = False,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    upsample: str = "nearest",
) -> BackboneUNet:
    """U-Net decoder on a backbone encoder (segmentation_models_pytorch's ``Unet``)."""
    net = _backbone(backbone, backbone_weights, output_stride, frozen_stages, frozen_bn)
    return BackboneUNet(net, num_classes, decoder_channels=decoder_channels, upsample=upsample)


def deeplabv3plus(
    num_classes: int,
    *,
    backbone: BackboneSpec = "resnet50",
    backbone_weights: str | Path | None = None,
    output_stride: int = 16,
    frozen_stages: int = 0,
    frozen_bn: bool = False,
    atrous_rates: Sequence[int] | None = None,
    aspp_channels: int = 256,
    low_level_channels: int = 48,
    decoder_channels: int = 256,
    decoder_convs: int = 2,
    separable: bool = False,
    dropout: float = 0.1,
    upsample: str = "bilinear",
) -> DeepLabV3Plus:
    """DeepLabv3+ (Chen et al. 2018)."""
    net = _backbone(backbone, backbone_weights, output_stride, frozen_stages, frozen_bn)
    return DeepLabV3Plus(
        net,
        num_classes,
        atrous_rates=atrous_rates,
        aspp_channels=aspp_channels,
        low_level_channels=low_level_channels,
        decoder_channels=decoder_channels,
        decoder_convs=decoder_convs,
        separable=separable,
        dropout=dropout,
        upsample=upsample,
    )


# name -> constructor(num_classes, **options). The one table of models.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "fcn32s": _fcn(32),
    "fcn16s": _fcn(16),
    "fcn8s": _fcn(8),
    "unet": unet,
    "unet_backbone": unet_backbone,
    "deeplabv3plus": deeplabv3plus,
    # --- detection: two-stage detectors (segdet.models.detection.rcnn; torchvision's keyword options) ---
    # R-CNN (2014) is trained by `segdet rcnn`, stage by stage; here so that eval / predict rebuild it
    "rcnn_resnet_c4": detection.rcnn_resnet_c4,
    "fastrcnn_resnet50_c4": detection.fastrcnn_resnet50_c4,
    "fasterrcnn_resnet50_fpn": detection.fasterrcnn_resnet50_fpn,
    "fasterrcnn_resnet101_fpn": detection.fasterrcnn_resnet101_fpn,
    "fasterrcnn_resnet50_fpn_v2": detection.fasterrcnn_resnet50_fpn_v2,
    "fasterrcnn_mobilenet_v3_large_fpn": detection.fasterrcnn_mobilenet_v3_large_fpn,
    "fasterrcnn_mobilenet_v3_large_320_fpn": detection.fasterrcnn_mobilenet_v3_large_320_fpn,
    "fasterrcnn_resnet50_c4": detection.fasterrcnn_resnet50_c4,
    "tridentnet_resnet50_c4": detection.tridentnet_resnet50_c4,
    "tridentnet_resnet101_c4": detection.tridentnet_resnet101_c4,
    "maskrcnn_resnet50_fpn": detection.maskrcnn_resnet50_fpn,
    "maskrcnn_resnet101_fpn": detection.maskrcnn_resnet101_fpn,
    "maskrcnn_resnet50_fpn_v2": detection.maskrcnn_resnet50_fpn_v2,
    # --- detection: one-stage detectors ---
    "retinanet_resnet50_fpn": detection.retinanet_resnet50_fpn,
    "retinanet_resnet50_fpn_v2": detection.retinanet_resnet50_fpn_v2,
    "efficientdet_d0": detection.efficientdet_d0,
    "efficientdet_d1": detection.efficientdet_d1,
    "efficientdet_d2": detection.efficientdet_d2,
    "efficientdet_d3": detection.efficientdet_d3,
    "efficientdet_d4": detection.efficientdet_d4,
    "efficientdet_d5": detection.efficientdet_d5,
    "efficientdet_d6": detection.efficientdet_d6,
    "efficientdet_d7": detection.efficientdet_d7,
    "ssd300_vgg16": detection.ssd300_vgg16,
    "ssd512_vgg16": detection.ssd512_vgg16,
    "ssdlite320_mobilenet_v3_large": detection.ssdlite320_mobilenet_v3_large,
    "yolov1": detection.yolov1,
    "yolov1_resnet50": detection.yolov1_resnet50,
    "yolov1_mobilenet_v3_large": detection.yolov1_mobilenet_v3_large,
    "yolov1_mobilenet_v3_small": detection.yolov1_mobilenet_v3_small,
    "centernet_resnet18": detection.centernet_resnet18,
    "centernet_resnet50": detection.centernet_resnet50,
    # --- instance segmentation in one stage ---
    "yolact_resnet50_fpn": detection.yolact_resnet50_fpn,
    "yolact_resnet101_fpn": detection.yolact_resnet101_fpn,
    # --- end of detection ---
}


def available_models() -> list[str]:
    return list(MODELS)


def model_options(name: str) -> dict[str, object]:
    """The keyword options of model ``name`` and their defaults."""
    params = inspect.signature(_constructor(name)).parameters
    return {p.name: p.default for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _constructor(name: str) -> Callable[..., nn.Module]:
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SegdetError(f"unknown model {name!r}{hint}; available: {', '.join(MODELS)}")
    return MODELS[name]


def build(name: str, num_classes: int = 21, **kwargs) -> nn.Module:
    """Build model ``name`` of :data:`MODELS` with ``num_classes`` outputs and the given options.

    Raises :class:`SegdetError` for an unknown name (suggesting the closest) or option (listing the
    model's options).
    """
    constructor = _constructor(name)
    options = model_options(name)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        hints = [
            f"{k!r}"
            + (f" (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(k, options, n=1)) else "")
            for k in unknown
        ]
        raise SegdetError(f"model {name!r} has no option {', '.join(hints)}; options: {', '.join(options)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise SegdetError(f"num_classes must be a positive integer, got {num_classes!r}")
    return constructor(num_classes, **kwargs)


def build_from_config(name: str, num_classes: int, options: dict) -> nn.Module:
    """:func:`build` for options read from a config (a file, the command line): an option value the
    constructor refuses (a negative width, a string for a number...) is a :class:`SegdetError` naming
    the options, so the command line reports it in one line."""
    try:
        return build(name, num_classes=num_classes, **options)
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError, ZeroDivisionError) as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise SegdetError(f"model {name!r} cannot be built with {shown or 'its defaults'}: {e}") from None

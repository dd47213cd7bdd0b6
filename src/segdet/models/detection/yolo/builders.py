"""YOLO v1 builders: the paper's network, and YOLO v1 on our ResNets and MobileNetV3s.

* ``yolov1``: the paper's 24 convolutions + 2 fully connected layers (:mod:`.darknet`; the first 20 as
  the backbone, the last 4 and the FCs as the ``"fc"`` head), 448 x 448 input, ``S = 7``, ``B = 2``.
* ``yolov1_resnet50``: a ResNet (``backbone`` resnet18/34/50/101; ImageNet weights with
  ``backbone_weights``) whose ``C5`` (stride 32) feeds the head: the paper's ``"fc"`` head by default,
  or the fully convolutional ``"conv"`` one (then ``S`` is naturally ``size / 32``).
* ``yolov1_mobilenet_v3_large``: MobileNetV3-Large's last map (stride 32, 960 channels) and the
  ``"conv"`` head: a fast YOLO v1 on a CPU (the race against YOLOv8n, ``benchmarks/yolov8n_race.py``).
* ``yolov1_mobilenet_v3_small``: the same on MobileNetV3-Small (576 channels, a 128-wide head): the
  fastest, about half the arithmetic of the Large one.

Settings (both): ``grid_size`` (``S``), ``boxes_per_cell`` (``B``), ``size`` (input ``(H, W)``),
``head`` (``"fc"`` / ``"conv"``), ``head_channels`` (1024), ``fc_channels`` (4096), ``dropout`` (after
the first FC layer, 0.5), ``batch_norm`` (in the Darknet and the head; the paper has none, ResNets
always have theirs), ``width`` (Darknet channel multiplier), and the :class:`~.model.YOLOv1Settings`
fields.
"""

from __future__ import annotations

import math

from torch import nn

from segdet.models.detection.backbone_fpn import mobilenet_body, resnet_body
from segdet.models.detection.settings import check_num_classes, pretrained_defaults, with_settings
from segdet.models.detection.yolo.darknet import Darknet20, scaled
from segdet.models.detection.yolo.head import YOLOv1Head
from segdet.models.detection.yolo.model import YOLOv1, YOLOv1Settings

RESNET_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}


def _yolov1(
    num_classes: int,
    body: nn.Module,
    in_channels: int,
    settings: YOLOv1Settings,
    *,
    grid_size: int,
    boxes_per_cell: int,
    head: str,
    head_channels: int,
    fc_channels: int,
    dropout: float,
    batch_norm: bool,
) -> YOLOv1:
    if grid_size < 1 or boxes_per_cell < 1:
        raise ValueError(f"grid_size and boxes_per_cell must be positive, got {grid_size}, {boxes_per_cell}")
    feature_size = (math.ceil(settings.size[0] / 32), math.ceil(settings.size[1] / 32))
    yolo_head = YOLOv1Head(
        in_channels,
        feature_size,
        grid_size,
        boxes_per_cell,
        num_classes,
        kind=head,
        channels=head_channels,
        hidden=fc_channels,
        dropout=dropout,
        norm_layer=nn.BatchNorm2d if batch_norm else None,
    )
    return YOLOv1(body, yolo_head, num_classes, boxes_per_cell, settings)


@with_settings(YOLOv1Settings)
def yolov1(
    num_classes: int,
    *,
    grid_size: int = 7,
    boxes_per_cell: int = 2,
    head: str = "fc",
    width: float = 1.0,
    head_channels: int = 1024,
    fc_channels: int = 4096,
    dropout: float = 0.5,
    batch_norm: bool = False,
    settings: YOLOv1Settings,
) -> YOLOv1:
    """YOLO v1 with the paper's network (Redmon et al. 2016, Figure 3); see the module docstring."""
    check_num_classes(num_classes)
    body = Darknet20(width=width, batch_norm=batch_norm)
    body.out_features = ("c5",)
    return _yolov1(
        num_classes,
        body,
        body.out_channels["c5"],
        settings,
        grid_size=grid_size,
        boxes_per_cell=boxes_per_cell,
        head=head,
        head_channels=scaled(head_channels, width),
        fc_channels=fc_channels,
        dropout=dropout,
        batch_norm=batch_norm,
    )


@with_settings(YOLOv1Settings)
def yolov1_resnet50(
    num_classes: int,
    *,
    backbone: str = "resnet50",
    backbone_weights: object = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    grid_size: int = 7,
    boxes_per_cell: int = 2,
    head: str = "fc",
    head_channels: int = 1024,
    fc_channels: int = 4096,
    dropout: float = 0.5,
    batch_norm: bool = True,
    settings: YOLOv1Settings,
) -> YOLOv1:
    """YOLO v1 on a ResNet's ``C5``; see the module docstring."""
    check_num_classes(num_classes)
    if backbone not in RESNET_DEPTHS:
        raise ValueError(f"backbone must be one of {sorted(RESNET_DEPTHS)}, got {backbone!r}")
    trainable, frozen = pretrained_defaults(backbone_weights, trainable_layers, frozen_bn, 5)
    body = resnet_body(
        RESNET_DEPTHS[backbone],
        returned_layers=(4,),
        trainable_layers=trainable,
        frozen_bn=frozen,
        weights=backbone_weights,
    )
    return _yolov1(
        num_classes,
        body,
        body.out_channels["c5"],
        settings,
        grid_size=grid_size,
        boxes_per_cell=boxes_per_cell,
        head=head,
        head_channels=head_channels,
        fc_channels=fc_channels,
        dropout=dropout,
        batch_norm=batch_norm,
    )


def _yolov1_mobilenet(
    arch: str,
    num_classes: int,
    settings: YOLOv1Settings,
    *,
    backbone_weights: object,
    trainable_layers: int | None,
    **head_options: object,
) -> YOLOv1:
    check_num_classes(num_classes)
    # torchvision's last stage: the output of the last block (the 1x1 convolution to 960 / 576 channels).
    default_trainable = 3 if backbone_weights is not None else 6
    body = mobilenet_body(
        returned_layers=(5,),
        trainable_layers=default_trainable if trainable_layers is None else trainable_layers,
        weights=backbone_weights,
        arch=arch,
    )
    in_channels = body.out_channels[body.out_features[-1]]
    return _yolov1(num_classes, body, in_channels, settings, batch_norm=True, **head_options)


@with_settings(YOLOv1Settings, size=(640, 640))
def yolov1_mobilenet_v3_large(
    num_classes: int,
    *,
    backbone_weights: object = None,
    trainable_layers: int | None = None,
    grid_size: int = 20,
    boxes_per_cell: int = 2,
    head: str = "conv",
    head_channels: int = 256,
    fc_channels: int = 4096,
    dropout: float = 0.5,
    settings: YOLOv1Settings,
) -> YOLOv1:
    """YOLO v1 on MobileNetV3-Large (Howard et al. 2019), 640 x 640 input, a 20 x 20 grid; see the module
    docstring. ``trainable_layers``: the last ``t`` of its 6 stages train (default all from scratch, 3
    with ``backbone_weights``)."""
    return _yolov1_mobilenet(
        "large",
        num_classes,
        settings,
        backbone_weights=backbone_weights,
        trainable_layers=trainable_layers,
        grid_size=grid_size,
        boxes_per_cell=boxes_per_cell,
        head=head,
        head_channels=head_channels,
        fc_channels=fc_channels,
        dropout=dropout,
    )


@with_settings(YOLOv1Settings, size=(640, 640))
def yolov1_mobilenet_v3_small(
    num_classes: int,
    *,
    backbone_weights: object = None,
    trainable_layers: int | None = None,
    grid_size: int = 20,
    boxes_per_cell: int = 2,
    head: str = "conv",
    head_channels: int = 128,
    fc_channels: int = 4096,
    dropout: float = 0.5,
    settings: YOLOv1Settings,
) -> YOLOv1:
    """YOLO v1 on MobileNetV3-Small (Howard et al. 2019), otherwise as :func:`yolov1_mobilenet_v3_large`
    (640 x 640, a 20 x 20 grid, the ``"conv"`` head, the same ``trainable_layers`` rule over Small's 6
    stages).

    ``head_channels`` 128 for Small's 576 input channels: it keeps the head's cost in proportion to the
    backbone's as in the Large builder (at 640 px, torch's FLOP counter: Large 3.47 GFLOPs + head 960 ->
    256 2.26, 0.65 of it; Small 0.89 + head 576 -> 128 0.66, 0.74 of it), where Large's 256 would make
    the head 1.55 GFLOPs, 1.7 times the backbone it serves; it is still wider than the 5B + C = 90 numbers
    per cell it predicts for COCO, and a multiple of 32 (full SIMD vectors).
    """
    return _yolov1_mobilenet(
        "small",
        num_classes,
        settings,
        backbone_weights=backbone_weights,
        trainable_layers=trainable_layers,
        grid_size=grid_size,
        boxes_per_cell=boxes_per_cell,
        head=head,
        head_channels=head_channels,
        fc_channels=fc_channels,
        dropout=dropout,
    )

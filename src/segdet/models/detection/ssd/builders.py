"""SSD builders: SSD300 and SSD512 on VGG-16, SSDLite320 on MobileNetV3-Large.

* ``ssd300_vgg16`` (torchvision's): 300 x 300 input, six maps (38², 19², 10², 5², 3², 1²), 4 or 6
  default boxes per location (8732 in all), the SSD authors' COCO scales 0.07 ... 1.05 and steps
  8 ... 300; input normalised as the Caffe VGG was trained: ``x * 255 - mean_c * 255``
  (``image_mean = (0.48235, 0.45882, 0.40784)``, ``image_std = 1/255``), no division by a std.
* ``ssd512_vgg16``: the paper's SSD512 as a setting of the same design: 512 x 512, the extra conv12_2
  map (seven maps, 24564 boxes), COCO scales 0.04 ... 1.06 and steps 8 ... 512 (the authors' COCO
  SSD512 model).
* ``ssdlite320_mobilenet_v3_large`` (torchvision's): 320 x 320, six maps (20² ... 1²) of 6 boxes,
  scales 0.2 ... 0.95, separable heads, BatchNorm ``eps = 0.001, momentum = 0.03``, inputs in
  ``[-1, 1]``; trained from scratch its backbone has the reduced tail and ``N(0, 0.03²)`` weights.

Options: ``backbone_weights`` (ImageNet weights of the VGG-16 / MobileNetV3, e.g.
``"VGG16_Weights.IMAGENET1K_FEATURES"``), ``trainable_layers`` (torchvision's: the last ``t`` stages
train; default all from scratch, 4 of 5 for a pretrained VGG), and the
:class:`~.model.SSDSettings` fields.
"""

from __future__ import annotations

import functools

from torch import nn

from segdet.models.backbones import MobileNetV3Backbone, VGGBackbone
from segdet.models.detection.backbone_fpn import freeze_parameters, mobilenet_stage_indices
from segdet.models.detection.settings import check_num_classes, with_settings
from segdet.models.detection.ssd.default_boxes import DefaultBoxGenerator
from segdet.models.detection.ssd.head import ssd_head, ssdlite_head
from segdet.models.detection.ssd.mobilenet import SSDLiteMobileNetFeatures
from segdet.models.detection.ssd.model import SSD, SSDSettings
from segdet.models.detection.ssd.vgg import SSDVGGFeatures

# Caffe's VGG input: BGR means 104, 117, 123 on 0-255 pixels (here RGB and divided by 255).
CAFFE_VGG_MEAN = (0.48235, 0.45882, 0.40784)
CAFFE_VGG_STD = (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)
SSD300_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
SSD300_SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
SSD300_STEPS = (8, 16, 32, 64, 100, 300)
SSD512_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))
SSD512_SCALES = (0.04, 0.1, 0.26, 0.42, 0.58, 0.74, 0.9, 1.06)
SSD512_STEPS = (8, 16, 32, 64, 128, 256, 512)
SSDLITE_NORM = functools.partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)


def _freeze_stages(features: nn.Sequential, stage_starts: list[int], trainable_layers: int) -> None:
    """torchvision's rule: the parameters of ``features`` before the last ``trainable_layers`` stages
    (stage ``s`` starting at block ``stage_starts[s]``) stop training."""
    if not 0 <= trainable_layers <= len(stage_starts):
        raise ValueError(f"trainable_layers must be in [0, {len(stage_starts)}], got {trainable_layers}")
    first = len(features) if trainable_layers == 0 else stage_starts[len(stage_starts) - trainable_layers]
    freeze_parameters(features, [f"{i}." for i in range(first, len(features))])


def _ssd_vgg16(
    num_classes: int, settings: SSDSettings, weights: object, trainable: int | None, highres: bool
):
    check_num_classes(num_classes)
    vgg = VGGBackbone(weights=weights)
    pools = [i for i, layer in enumerate(vgg.features) if isinstance(layer, nn.MaxPool2d)]
    default_trainable = 4 if weights is not None else 5
    _freeze_stages(vgg.features, [0, *pools[:-1]], default_trainable if trainable is None else trainable)
    backbone = SSDVGGFeatures(vgg, highres=highres)
    if highres:
        boxes = DefaultBoxGenerator(SSD512_RATIOS, scales=SSD512_SCALES, steps=SSD512_STEPS)
    else:
        boxes = DefaultBoxGenerator(SSD300_RATIOS, scales=SSD300_SCALES, steps=SSD300_STEPS)
    head = ssd_head(backbone.out_channels, boxes.num_anchors_per_location(), num_classes + 1)
    return SSD(backbone, boxes, head, num_classes, settings)


@with_settings(SSDSettings, image_mean=CAFFE_VGG_MEAN, image_std=CAFFE_VGG_STD)
def ssd300_vgg16(
    num_classes: int,
    *,
    backbone_weights: object = None,
    trainable_layers: int | None = None,
    settings: SSDSettings,
) -> SSD:
    """SSD300 on VGG-16 (Liu et al. 2016; torchvision's ``ssd300_vgg16``)."""
    return _ssd_vgg16(num_classes, settings, backbone_weights, trainable_layers, highres=False)


@with_settings(SSDSettings, size=(512, 512), image_mean=CAFFE_VGG_MEAN, image_std=CAFFE_VGG_STD)
def ssd512_vgg16(
    num_classes: int,
    *,
    backbone_weights: object = None,
    trainable_layers: int | None = None,
    settings: SSDSettings,
) -> SSD:
    """SSD512 on VGG-16 (Liu et al. 2016, sec. 3.6): SSD300's design at 512 px with conv12_2."""
    return _ssd_vgg16(num_classes, settings, backbone_weights, trainable_layers, highres=True)


@with_settings(
    SSDSettings,
    size=(320, 320),
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
    score_thresh=0.001,
    nms_thresh=0.55,
    detections_per_img=300,
    topk_candidates=300,
)
def ssdlite320_mobilenet_v3_large(
    num_classes: int,
    *,
    backbone_weights: object = None,
    trainable_layers: int | None = None,
    reduced_tail: bool | None = None,
    width_mult: float = 1.0,
    settings: SSDSettings,
) -> SSD:
    """SSDLite320 on MobileNetV3-Large (Howard et al. 2019; torchvision's
    ``ssdlite320_mobilenet_v3_large``). ``reduced_tail``: ``None`` reduces it when training from scratch
    (torchvision's rule); ``width_mult`` scales the extra layers."""
    check_num_classes(num_classes)
    if reduced_tail is None:
        reduced_tail = backbone_weights is None
    body = MobileNetV3Backbone(weights=backbone_weights, reduced_tail=reduced_tail, norm_layer=SSDLITE_NORM)
    if backbone_weights is None:
        for layer in body.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, mean=0.0, std=0.03)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    stages = mobilenet_stage_indices(body)
    _freeze_stages(body.features, stages, len(stages) if trainable_layers is None else trainable_layers)
    backbone = SSDLiteMobileNetFeatures(body, SSDLITE_NORM, width_mult=width_mult)
    boxes = DefaultBoxGenerator([(2, 3)] * 6, min_ratio=0.2, max_ratio=0.95)
    head = ssdlite_head(
        backbone.out_channels, boxes.num_anchors_per_location(), num_classes + 1, SSDLITE_NORM
    )
    return SSD(backbone, boxes, head, num_classes, settings)

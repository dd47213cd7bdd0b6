"""SSD's prediction heads: per feature map, one small predictor of ``K + 1`` class scores (background
first) and 4 box offsets for each of its ``A_k`` default boxes (Liu et al. 2016, sec. 2.1,
"Convolutional predictors for detection"). Unlike RetinaNet's, the predictors are not shared: the
maps differ in width and in boxes per location.

* :func:`ssd_head` (SSD300 / SSD512): a ``3x3`` convolution per map, Xavier-uniform initialised
  (torchvision's; the SSD authors' Caffe model too);
* :func:`ssdlite_head` (MobileNetV2 paper, Sandler et al. 2018, sec. 6.2): each ``3x3`` convolution
  replaced by a depthwise ``3x3`` (BatchNorm, ReLU6) and a pointwise ``1x1``, initialised from
  ``N(0, 0.03²)`` (torchvision's ``ssdlite320_mobilenet_v3_large``).

Parameter names are torchvision's (``classification_head.module_list.{k}``,
``regression_head.module_list.{k}``; SSDLite: ``.{k}.0.0`` depthwise, ``.{k}.0.1`` its norm, ``.{k}.1``
pointwise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from segdet.models.layers import ConvNormAct


class SSDPredictor(nn.Module):
    """One predictor per feature map: ``forward(features)`` gives the list of ``module_list[k](f_k)``."""

    def __init__(self, module_list: nn.ModuleList) -> None:
        super().__init__()
        self.module_list = module_list

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        if len(features) != len(self.module_list):
            raise ValueError(f"{len(features)} feature maps for {len(self.module_list)} predictors")
        return [module(f) for module, f in zip(self.module_list, features, strict=True)]


class SSDHead(nn.Module):
    """Both predictors: ``forward(features)`` gives per map ``(N x A_k (K+1) x H x W`` class logits,
    ``N x 4 A_k x H x W`` box offsets). Built by :func:`ssd_head` or :func:`ssdlite_head`."""

    def __init__(self, classification_head: SSDPredictor, regression_head: SSDPredictor) -> None:
        super().__init__()
        self.classification_head = classification_head
        self.regression_head = regression_head

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return self.classification_head(features), self.regression_head(features)


def ssd_head(in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int) -> SSDHead:
    """SSD's ``3x3`` predictors for maps of ``in_channels`` with ``num_anchors`` boxes per location and
    ``num_classes`` (the background included) scores per box."""
    pairs = list(zip(in_channels, num_anchors, strict=True))
    head = SSDHead(
        SSDPredictor(nn.ModuleList(nn.Conv2d(c, num_classes * a, 3, padding=1) for c, a in pairs)),
        SSDPredictor(nn.ModuleList(nn.Conv2d(c, 4 * a, 3, padding=1) for c, a in pairs)),
    )
    for layer in head.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return head


def _separable_predictor(
    channels: int, outputs: int, norm_layer: Callable[[int], nn.Module]
) -> nn.Sequential:
    return nn.Sequential(
        ConvNormAct(channels, channels, 3, groups=channels, norm_layer=norm_layer, activation=nn.ReLU6),
        nn.Conv2d(channels, outputs, 1),
    )


def ssdlite_head(
    in_channels: Sequence[int],
    num_anchors: Sequence[int],
    num_classes: int,
    norm_layer: Callable[[int], nn.Module],
) -> SSDHead:
    """SSDLite's separable predictors (module docstring); arguments as :func:`ssd_head`, and
    ``norm_layer`` after each depthwise convolution."""
    pairs = list(zip(in_channels, num_anchors, strict=True))
    head = SSDHead(
        SSDPredictor(nn.ModuleList(_separable_predictor(c, num_classes * a, norm_layer) for c, a in pairs)),
        SSDPredictor(nn.ModuleList(_separable_predictor(c, 4 * a, norm_layer) for c, a in pairs)),
    )
    for layer in head.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, mean=0.0, std=0.03)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return head

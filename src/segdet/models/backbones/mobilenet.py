"""MobileNetV3-Large and -Small backbones (Howard et al., "Searching for MobileNetV3", ICCV 2019),
torchvision's ``mobilenet_v3_large`` / ``mobilenet_v3_small`` ``features`` with their parameter names
(torchvision's ImageNet weights load as they are).

Stages end before each block that downsamples (torchvision marks those ``_is_cn``). Large: ``c1`` =
``features[0:2]`` (stride 2, 16 channels), ``c2`` = ``[2:4]`` (4, 24), ``c3`` = ``[4:7]`` (8, 40), ``c4``
= ``[7:13]`` (16, 112), ``c5`` = ``[13:17]`` (32, 960, the last 1x1 convolution included). Small (its
first block already downsamples): ``c1`` = ``features[0:1]`` (2, 16), ``c2`` = ``[1:2]`` (4, 16), ``c3``
= ``[2:4]`` (8, 24), ``c4`` = ``[4:9]`` (16, 48), ``c5`` = ``[9:13]`` (32, 576).

``reduced_tail`` halves the channels of the last stage (Large 960 -> 480, Small 576 -> 288; MobileNetV3
paper, table 6: for detection heads that do not need ImageNet's wide features; torchvision's SSDLite
trains from scratch with it) and ``norm_layer`` replaces BatchNorm2d (e.g. SSDLite's ``eps = 0.001,
momentum = 0.03``).

Output stride 16 / 8 removes the stride of the downsampling block of ``c5`` / ``c4`` and ``c5`` and
dilates every depthwise convolution of the stage by the stride removed (torchvision's ``dilated=True``,
used by its DeepLabV3 and LR-ASPP models, is the output-stride-16 case of this).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torchvision
from torch import nn

from segdet.models.backbones.base import Backbone, check_output_stride, dilate_stages_, nominal_strides

ARCHS: dict[str, Callable[..., torchvision.models.MobileNetV3]] = {
    "large": torchvision.models.mobilenet_v3_large,
    "small": torchvision.models.mobilenet_v3_small,
}


class MobileNetV3Backbone(Backbone):
    """torchvision's MobileNetV3-Large or -Small (``arch``) feature part returning ``c1`` ... ``c5``.

    Args: ``arch`` (``"large"`` / ``"small"``), as :class:`ResNetBackbone`, and ``reduced_tail``,
    ``norm_layer`` (module docstring).
    """

    ignored_weight_prefixes = ("classifier.",)

    def __init__(
        self,
        arch: str = "large",
        *,
        output_stride: int = 32,
        weights: str | Path | None = None,
        frozen_stages: int = 0,
        frozen_bn: bool = False,
        reduced_tail: bool = False,
        norm_layer: Callable[..., nn.Module] | None = None,
    ):
        super().__init__()
        check_output_stride(output_stride)
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
        self.arch = arch
        self.features = ARCHS[arch](weights=None, reduced_tail=reduced_tail, norm_layer=norm_layer).features
        starts = [0] + [i for i, b in enumerate(self.features) if getattr(b, "_is_cn", False)]
        ends = [*starts[1:], len(self.features)]
        assert len(starts) == 5, "torchvision's MobileNetV3s have five strided stages"
        self.stage_layout = {}
        self.out_channels = {}
        for k, (start, end) in enumerate(zip(starts, ends, strict=True)):
            name = f"c{k + 1}"
            self.stage_layout[name] = tuple(f"features.{i}" for i in range(start, end))
            self.out_channels[name] = self.features[end - 1].out_channels
        dilate_stages_(self, output_stride)
        self.strides = nominal_strides(output_stride)
        if weights is not None:
            from segdet.models.weights import load_weights

            load_weights(self, weights)
        self._finish(output_stride, frozen_stages, frozen_bn)

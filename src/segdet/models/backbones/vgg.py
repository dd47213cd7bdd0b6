"""VGG-16 backbone (Simonyan & Zisserman, "Very Deep Convolutional Networks", ICLR 2015), torchvision's
``vgg16`` / ``vgg16_bn`` ``features`` with their parameter names (``features.<i>.weight``).

Features are the outputs of the five pooling layers: ``c1`` = pool1 (stride 2, 64 channels), ``c2`` =
pool2 (4, 128), ``c3`` = pool3 (8, 256), ``c4`` = pool4 (16, 512), ``c5`` = pool5 (32, 512) -- FCN's
``pool3``/``pool4``/``pool5``. The pools use ceil mode, as Caffe's did (the original FCN and DeepLab
models), so a stride-``s`` feature is ``ceil(H / s)`` high; this changes no weight.

Output stride 16 / 8 follows DeepLab-LargeFOV (Chen et al., ICLR 2015): the pooling layers that would
go past the output stride become 3x3 stride-1 pools (padding 1) and the convolutions after them are
dilated by the stride they skipped. The fully connected layers (fc6/fc7) are not part of the backbone:
FCN re-creates them as convolutions (:mod:`segdet.models.segmentation.fcn`).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from segdet.models.backbones.base import Backbone, check_output_stride, dilate_conv_, nominal_strides


class VGGBackbone(Backbone):
    """torchvision's VGG-16 convolutional part returning ``c1`` ... ``c5`` (the pool outputs).

    Args:
        batch_norm: use ``vgg16_bn`` (BatchNorm after every convolution) instead of ``vgg16``.
        output_stride, weights, frozen_stages, frozen_bn: as :class:`ResNetBackbone`.
    """

    ignored_weight_prefixes = ("classifier.",)

    def __init__(
        self,
        *,
        batch_norm: bool = False,
        output_stride: int = 32,
        weights: str | Path | None = None,
        frozen_stages: int = 0,
        frozen_bn: bool = False,
    ):
        super().__init__()
        check_output_stride(output_stride)
        # Only the convolutional part: torchvision's vgg16() would also initialise the 120M-parameter
        # classifier, seconds of work thrown away.
        self.features = make_layers(cfgs["D"], batch_norm=batch_norm)
        for m in self.features.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        layout: dict[str, tuple[str, ...]] = {}
        channels: dict[str, int] = {}
        stage: list[str] = []
        stride, dilation, last_conv = 1, 1, None
        for i, layer in enumerate(self.features):
            if isinstance(layer, nn.Conv2d):
                if dilation > 1:
                    dilate_conv_(layer, dilation)
                last_conv = layer
            stage.append(f"features.{i}")
            if isinstance(layer, nn.MaxPool2d):
                name = f"c{len(layout) + 1}"
                if stride * 2 > output_stride:
                    # Keep the resolution; later convolutions see the same field of view dilated.
                    self.features[i] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True)
                    dilation *= 2
                else:
                    layer.ceil_mode = True
                    stride *= 2
                layout[name] = tuple(stage)
                channels[name] = last_conv.out_channels
                stage = []
        self.stage_layout = layout
        self.out_channels = channels
        self.strides = nominal_strides(output_stride)
        if weights is not None:
            from segdet.models.weights import load_weights

            load_weights(self, weights)
        self._finish(output_stride, frozen_stages, frozen_bn)

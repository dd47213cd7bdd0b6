"""ResNet-18/34/50/101 backbones (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016),
built from torchvision's classifiers with their parameter names, so torchvision checkpoints load.

Features: ``c1`` = ``relu(bn1(conv1(x)))`` (stride 2), ``c2`` = ``layer1(maxpool(c1))`` (4), ``c3`` =
``layer2`` (8), ``c4`` = ``layer3`` (16), ``c5`` = ``layer4`` (32).

Output stride 16 dilates ``layer4`` by 2, output stride 8 also dilates ``layer3`` by 2 and ``layer4`` by
4, with torchvision's convention (its ``replace_stride_with_dilation``): the first block of a dilated
stage keeps the previous dilation in its (formerly strided) 3x3 convolution, the other 3x3 convolutions
of the stage take the new one. Written here rather than delegated to torchvision because its
``BasicBlock`` (ResNet-18/34) does not support dilation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from segdet.models.backbones.base import Backbone, check_output_stride, dilate_conv_, nominal_strides

_BUILDERS: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
}


def _dilate_stage(stage: nn.Sequential, previous: int, dilation: int) -> None:
    """Remove the stride of ``stage`` and dilate its 3x3 convolutions (torchvision's convention)."""
    for i, block in enumerate(stage):
        if isinstance(block, Bottleneck):
            convs = [block.conv2]
        elif isinstance(block, BasicBlock):
            convs = [block.conv1, block.conv2]
        else:  # pragma: no cover - torchvision ResNets only have these two
            raise TypeError(f"unknown ResNet block {type(block).__name__}")
        for j, conv in enumerate(convs):
            # The first block's first 3x3 conv is the one that was strided: it keeps the old dilation.
            dilate_conv_(conv, previous if i == 0 and j == 0 else dilation)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its pooling and classifier, returning ``c1`` ... ``c5``.

    Args:
        depth: 18, 34, 50 or 101.
        output_stride: 32, 16 or 8 (the last stages dilated instead of strided).
        weights: pretrained weights for :func:`segdet.models.weights.load_weights` (a torchvision
            weights name such as ``"ResNet50_Weights.IMAGENET1K_V2"``, a file or a URL), or None.
        frozen_stages: freeze the first ``n`` stages (1 = the stem).
        frozen_bn: replace every BatchNorm by :class:`FrozenBatchNorm2d`.
    """

    ignored_weight_prefixes = ("fc.",)

    def __init__(
        self,
        depth: int = 50,
        *,
        output_stride: int = 32,
        weights: str | Path | None = None,
        frozen_stages: int = 0,
        frozen_bn: bool = False,
    ):
        super().__init__()
        name = f"resnet{depth}"
        if name not in _BUILDERS:
            raise ValueError(f"ResNet depth must be one of 18, 34, 50, 101, got {depth}")
        check_output_stride(output_stride)
        net = _BUILDERS[name](weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if output_stride <= 16:
            _dilate_stage(self.layer4, previous=16 // output_stride, dilation=32 // output_stride)
        if output_stride == 8:
            _dilate_stage(self.layer3, previous=1, dilation=2)
        self.stage_layout = {
            "c1": ("conv1", "bn1", "relu"),
            "c2": ("maxpool", "layer1"),
            "c3": ("layer2",),
            "c4": ("layer3",),
            "c5": ("layer4",),
        }
        expansion = 4 if depth >= 50 else 1
        self.out_channels = {
            "c1": 64,
            "c2": 64 * expansion,
            "c3": 128 * expansion,
            "c4": 256 * expansion,
            "c5": 512 * expansion,
        }
        self.strides = nominal_strides(output_stride)
        if weights is not None:
            from segdet.models.weights import load_weights

            load_weights(self, weights)
        self._finish(output_stride, frozen_stages, frozen_bn)

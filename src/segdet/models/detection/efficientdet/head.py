"""EfficientDet's class and box networks (Tan, Pang, Le, "EfficientDet: Scalable and Efficient Object
Detection", CVPR 2020, sec. 4.1 and fig. 3).

RetinaNet's two subnets (:mod:`..retinanet.head`) made light: each of the ``D_class`` layers is a
depthwise-separable ``3x3`` convolution (depthwise ``3x3``, then pointwise ``1x1``, no bias: the
BatchNorm's shift replaces it), a BatchNorm and a swish (SiLU); the predictor is a separable convolution
(pointwise with bias) to ``K A`` class logits or ``4 A`` box deltas. As in RetinaNet the convolutions are
shared by the levels ``P3 .. P7``; unlike it, every level has **its own BatchNorms** (the paper's code,
and rwightman's ``effdet``): the levels' statistics differ (coarse levels see larger, sparser objects),
and one shared BatchNorm would normalise each level with a mixture of all of them.

Initialisation: the hidden convolutions keep PyTorch's default (each is followed by a BatchNorm); the
predictors' weights are ``N(0, 0.01²)`` with bias 0, except the classifier's bias ``-log((1 - π) / π)``,
``π = 0.01`` (RetinaNet's prior, Lin et al. 2017 sec. 4.1), so the first steps see every anchor as
background with probability 0.99.

``forward(features)`` returns per level ``(class logits N x K A x H x W, deltas N x 4 A x H x W)`` lists:
:class:`~..retinanet.head.RetinaNetHead`'s interface, so :class:`~..retinanet.model.RetinaNet` runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from segdet.models.detection.retinanet.head import PRIOR_PROBABILITY
from segdet.models.layers import ConvNormAct


def _separable(in_channels: int, out_channels: int) -> ConvNormAct:
    """Depthwise ``3x3`` (no bias) then pointwise ``1x1`` (with bias), no norm, no activation."""
    return ConvNormAct(in_channels, out_channels, 3, separable=True, norm_layer=None, activation=None)


def _separable_without_bias(channels: int) -> nn.Sequential:
    """Depthwise ``3x3`` then pointwise ``1x1``, neither with a bias (a BatchNorm follows)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        nn.Conv2d(channels, channels, 1, bias=False),
    )


class EfficientDetSubnet(nn.Module):
    """``depth`` x (separable conv, the level's BatchNorm, swish), then a separable predictor of
    ``outputs`` channels (module docstring).

    Parameters: ``convs.{i}`` (shared by the levels), ``norms.{level}.{i}``, ``predictor``.
    """

    def __init__(
        self,
        channels: int,
        outputs: int,
        depth: int,
        levels: int,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if depth < 1 or levels < 1:
            raise ValueError(f"need depth >= 1 and levels >= 1, got {depth}, {levels}")
        self.convs = nn.ModuleList(_separable_without_bias(channels) for _ in range(depth))
        self.norms = nn.ModuleList(
            nn.ModuleList(norm_layer(channels) for _ in range(depth)) for _ in range(levels)
        )
        self.predictor = _separable(channels, outputs)
        pointwise = self.predictor[1]
        nn.init.normal_(pointwise.weight, std=0.01)
        nn.init.zeros_(pointwise.bias)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """Per level ``N x C x H_l x W_l`` -> ``N x outputs x H_l x W_l``."""
        if len(features) != len(self.norms):
            raise ValueError(f"head built for {len(self.norms)} levels, got {len(features)}")
        outputs = []
        for x, norms in zip(features, self.norms, strict=True):
            for conv, norm in zip(self.convs, norms, strict=True):
                x = F.silu(norm(conv(x)))
            outputs.append(self.predictor(x))
        return outputs


class EfficientDetHead(nn.Module):
    """The class network (``K A`` logits) and the box network (``4 A`` deltas); module docstring.

    Args:
        channels: the BiFPN width ``W``.
        num_anchors: ``A`` per location (9).
        num_classes: ``K`` (no background).
        depth: ``D_class``, layers per network (3 for D0-D2, 4 for D3-D5, 5 for D6-D7).
        levels: pyramid levels (5: ``P3 .. P7``), each with its own BatchNorms.
        prior_probability: ``π`` of the classifier's bias.
        norm_layer: the per-level normalisation (``nn.BatchNorm2d``; EfficientDet's builders give it the
            paper's ``eps = 0.001``).
    """

    def __init__(
        self,
        channels: int,
        num_anchors: int,
        num_classes: int,
        depth: int = 3,
        levels: int = 5,
        prior_probability: float = PRIOR_PROBABILITY,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.class_net = EfficientDetSubnet(channels, num_anchors * num_classes, depth, levels, norm_layer)
        self.box_net = EfficientDetSubnet(channels, num_anchors * 4, depth, levels, norm_layer)
        prior = -math.log((1 - prior_probability) / prior_probability)
        nn.init.constant_(self.class_net.predictor[1].bias, prior)
        self.num_classes = num_classes
        self.num_anchors = num_anchors

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return self.class_net(features), self.box_net(features)

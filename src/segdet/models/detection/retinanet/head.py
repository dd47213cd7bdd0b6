"""RetinaNet's two subnets (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, sec. 4 and
fig. 3), shared across the pyramid levels P3-P7.

* classification subnet: four ``3x3`` convolutions of ``C`` channels with ReLU, then a ``3x3``
  convolution to ``K A`` outputs, the logits of the ``K`` classes of each of the ``A`` anchors of a
  location (sigmoid, no background class);
* box subnet: the same four convolutions (own weights), then ``4 A`` outputs, the deltas
  ``(t_x, t_y, t_w, t_h)`` of each anchor relative to it (class-agnostic).

Initialisation (paper sec. 4.1, "Initialization"): every convolution from ``N(0, 0.01²)`` with bias 0,
except the classifier's bias ``b = -log((1 - π) / π)``, ``π = 0.01``: at the start every anchor is
foreground with probability ``π``, so the ~100k easy background anchors do not swamp the first steps'
loss. torchvision's v2 (Li et al.'s recipe, after ATSS, Zhang et al. 2020) adds GroupNorm (32 groups)
after each of the four convolutions.

Parameter names are torchvision's (``classification_head.conv.{i}.0``, ``.1`` for the norm,
``classification_head.cls_logits``, ``regression_head.conv.{i}.0``, ``regression_head.bbox_reg``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from segdet.models.layers import ConvNormAct

PRIOR_PROBABILITY = 0.01


class _Subnet(nn.Module):
    """``depth`` x (``3x3`` conv, [norm], ReLU) then a ``3x3`` predictor of ``outputs`` channels, stored
    as ``self.<predictor>`` (torchvision's ``cls_logits`` / ``bbox_reg``); all from ``N(0, 0.01²)``."""

    def __init__(
        self,
        in_channels: int,
        outputs: int,
        predictor: str,
        norm_layer: Callable[[int], nn.Module] | None,
        depth: int,
    ) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            *(ConvNormAct(in_channels, in_channels, 3, norm_layer=norm_layer) for _ in range(depth))
        )
        self.add_module(predictor, nn.Conv2d(in_channels, outputs, 3, padding=1))
        self.predictor = predictor
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """Per level ``N x C x H_l x W_l`` -> ``N x outputs x H_l x W_l``."""
        predictor = getattr(self, self.predictor)
        return [predictor(self.conv(f)) for f in features]


class RetinaNetClassificationHead(_Subnet):
    """``K A`` class logits per location of every level (module docstring)."""

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        prior_probability: float = PRIOR_PROBABILITY,
        norm_layer: Callable[[int], nn.Module] | None = None,
        depth: int = 4,
    ) -> None:
        super().__init__(in_channels, num_anchors * num_classes, "cls_logits", norm_layer, depth)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))
        self.num_classes = num_classes
        self.num_anchors = num_anchors


class RetinaNetRegressionHead(_Subnet):
    """``4 A`` box deltas per location of every level (module docstring)."""

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        norm_layer: Callable[[int], nn.Module] | None = None,
        depth: int = 4,
    ) -> None:
        super().__init__(in_channels, num_anchors * 4, "bbox_reg", norm_layer, depth)


class RetinaNetHead(nn.Module):
    """Both subnets; ``forward(features)`` gives per level ``(class logits, box deltas)`` lists.

    Args:
        in_channels: the FPN width ``C``.
        num_anchors: ``A`` per location (9).
        num_classes: ``K`` (no background).
        prior_probability: ``π`` of the classifier's bias.
        norm_layer: after each subnet convolution (v2: ``GroupNorm(32, C)``); ``None``: none.
        depth: convolutions per subnet (4).
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        prior_probability: float = PRIOR_PROBABILITY,
        norm_layer: Callable[[int], nn.Module] | None = None,
        depth: int = 4,
    ) -> None:
        super().__init__()
        self.classification_head = RetinaNetClassificationHead(
            in_channels, num_anchors, num_classes, prior_probability, norm_layer, depth
        )
        self.regression_head = RetinaNetRegressionHead(in_channels, num_anchors, norm_layer, depth)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return self.classification_head(features), self.regression_head(features)

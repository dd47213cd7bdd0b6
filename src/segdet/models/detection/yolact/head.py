"""YOLACT's prediction head (Bolya et al., ICCV 2019, fig. 4), shared across the pyramid levels P3-P7.

RetinaNet's head made lighter and given a third branch: one shared ``3x3`` convolution with ReLU, then
three ``3x3`` predictors per location,

* ``(K + 1) A`` class logits (softmax with a background class, as SSD: the losses of
  :mod:`segdet.models.detection.ssd.loss`),
* ``4 A`` box deltas,
* ``k A`` mask coefficients, through ``tanh`` (in ``[-1, 1]``, so that prototypes can be subtracted),

laid out as every anchor head's outputs (:mod:`~segdet.models.detection.head_outputs`: channel
``a C + c`` is value ``c`` of anchor ``a``). Weights from ``N(0, 0.01²)``, biases 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segdet.models.layers import ConvNormAct


class YolactHead(nn.Module):
    """The head of the module docstring.

    Args:
        in_channels: the FPN width (256).
        num_anchors: ``A`` per location (3).
        num_classes: ``K``; the classifier has ``K + 1`` outputs per anchor (0 = background).
        num_prototypes: ``k`` coefficients per anchor (32).
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, num_prototypes: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.upfeature = ConvNormAct(in_channels, in_channels, 3)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * (num_classes + 1), 3, padding=1)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        self.coefficients = nn.Conv2d(in_channels, num_anchors * num_prototypes, 3, padding=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per level ``N x C x H_l x W_l`` -> ``(class logits, box deltas, coefficients)`` lists."""
        logits, deltas, coefficients = [], [], []
        for level in features:
            x = self.upfeature(level)
            logits.append(self.cls_logits(x))
            deltas.append(self.bbox_reg(x))
            coefficients.append(torch.tanh(self.coefficients(x)))
        return logits, deltas, coefficients

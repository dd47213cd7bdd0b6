"""Fully Convolutional Networks (Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015): FCN-32s, FCN-16s and FCN-8s.

A 1x1 "score" convolution turns the deepest features into class scores at stride 32; FCN-16s adds the
scores of ``pool4`` (stride 16) after upsampling the coarse ones 2x, FCN-8s also those of ``pool3``
(stride 8), and the fused scores are upsampled to the input size::

    s = score_fr(fc7(fc6(c5)))                          # stride 32
    s = up_2x(s) + score_pool4(c4)                      # FCN-16s, FCN-8s
    s = up_2x(s) + score_pool3(c3)                      # FCN-8s
    y = up_{stride}(s)                                  # input size

With VGG-16 the features are pool3/pool4/pool5 and ``fc6``/``fc7`` are the classifier's fully
connected layers recast as a 7x7 and a 1x1 convolution (``head_channels=4096``, dropout 0.5 after
each). With a ResNet the score layers read ``c3``/``c4``/``c5`` directly (``head_channels=None``).

As in the paper the skip score layers start at zero (the net starts as its coarser version) and the
upsampling is a transposed convolution initialised to bilinear interpolation and learned; any mode of
:func:`~segdet.models.segmentation.upsampling.make_upsample` may be chosen instead. Differences from the
Caffe original: "same" padding everywhere instead of the 100-pixel input padding and offset crops (so a
stride-``s`` map is aligned with the input's top-left corner and odd sizes need no special crop), and no
fixed scaling of the pool3/pool4 scores (used only by the "at-once" variant).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from segdet.models.backbones import Backbone
from segdet.models.segmentation.upsampling import make_upsample

# variant -> the features whose scores are fused, deepest first.
_SKIPS: dict[int, tuple[str, ...]] = {32: (), 16: ("c4",), 8: ("c4", "c3")}


class FCN(nn.Module):
    """FCN-32s / -16s / -8s on any :class:`Backbone` (``variant`` = 32, 16 or 8).

    Args:
        backbone: features ``c3``, ``c4``, ``c5``.
        num_classes: output channels.
        variant: 32, 16 or 8: the finest stride whose scores are fused.
        head_channels: width of the fc6/fc7 convolutions on ``c5`` (4096 for VGG-16), or None for none.
        dropout: dropout after fc6 and fc7.
        upsample: an upsampling mode (``"transposed"`` as in the paper).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        variant: int = 8,
        head_channels: int | None = None,
        dropout: float = 0.5,
        upsample: str = "transposed",
    ):
        super().__init__()
        if variant not in _SKIPS:
            raise ValueError(f"FCN variant must be 32, 16 or 8, got {variant}")
        self.variant = variant
        self.backbone = backbone
        self.skips = _SKIPS[variant]
        backbone.out_features = ("c5", *self.skips)
        c5 = backbone.out_channels["c5"]
        if head_channels:
            # fc6 saw the whole 7x7 pool5 map; on a dilated backbone it keeps that field of view.
            dilation = 32 // backbone.strides["c5"]
            self.head: nn.Module = nn.Sequential(
                nn.Conv2d(c5, head_channels, 7, padding=3 * dilation, dilation=dilation),
                nn.ReLU(inplace=True),
                nn.Dropout2d(dropout),
                nn.Conv2d(head_channels, head_channels, 1),
                nn.ReLU(inplace=True),
                nn.Dropout2d(dropout),
            )
            c5 = head_channels
        else:
            self.head = nn.Identity()
        self.score = nn.Conv2d(c5, num_classes, 1)
        self.skip_scores = nn.ModuleList(
            nn.Conv2d(backbone.out_channels[n], num_classes, 1) for n in self.skips
        )
        for layer in self.skip_scores:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        strides = [backbone.strides["c5"]] + [backbone.strides[n] for n in self.skips]
        self.skip_ups = nn.ModuleList(
            make_upsample(upsample, num_classes, num_classes, coarse // fine)
            for coarse, fine in itertools.pairwise(strides)
        )
        self.final_up = make_upsample(upsample, num_classes, num_classes, strides[-1])

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x)
        scores = self.score(self.head(features["c5"]))
        for name, score_layer, up in zip(self.skips, self.skip_scores, self.skip_ups, strict=True):
            skip = score_layer(features[name])
            scores = torch.add(up(scores, skip.shape[-2:]), skip)
        return self.final_up(scores, x.shape[-2:])

"""DeepLabv3+ (Chen, Zhu, Papandreou, Schroff & Adam, "Encoder-Decoder with Atrous Separable
Convolution for Semantic Image Segmentation", ECCV 2018).

Encoder: a backbone at output stride 16 (or 8), then Atrous Spatial Pyramid Pooling (DeepLabv3, Chen et
al. 2017): five parallel branches on ``c5`` -- a 1x1 conv, three 3x3 convs of dilation 6, 12, 18 (at
output stride 16; doubled at 8, halved at 32), and image-level pooling (global average, 1x1 conv,
broadcast back) -- concatenated and projected by a 1x1 conv to 256 channels (dropout 0.1).

Decoder: the ASPP output is upsampled to the stride-4 ``c2`` features, which are first projected to 48
channels by a 1x1 conv (fewer than the encoder's 256 so they do not outweigh it, section 3.1);
the concatenation goes through two 3x3 conv-BN-ReLU of 256 channels (``decoder_convs``; the paper's
Table 2 compares one, two and three and keeps two), a 1x1 classifier, and a bilinear upsampling to
the input size. ``separable=True`` makes the 3x3 convolutions of ASPP and decoder
depthwise-separable as in the paper's Xception model.

The image-pooling branch has a bias and no BatchNorm: batch statistics of a 1x1 map are undefined for
a batch of one (torchvision's and smp's versions fail there in training mode).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segdet.models.backbones import Backbone
from segdet.models.layers import ConvNormAct
from segdet.models.segmentation.upsampling import make_upsample

DEFAULT_RATES_AT_16: tuple[int, int, int] = (6, 12, 18)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, **kwargs) -> ConvNormAct:
    return ConvNormAct(in_channels, out_channels, kernel_size, norm_layer=nn.BatchNorm2d, **kwargs)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling: ``project(cat[1x1(x), 3x3_r1(x), 3x3_r2(x), 3x3_r3(x), pool(x)])``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = DEFAULT_RATES_AT_16,
        *,
        separable: bool = False,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, out_channels, 1)]
            + [_conv_bn_relu(in_channels, out_channels, 3, dilation=r, separable=separable) for r in rates]
        )
        self.pool_conv = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(
            _conv_bn_relu((len(rates) + 2) * out_channels, out_channels, 1), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool_conv(x.mean(dim=(2, 3), keepdim=True))
        outs = [branch(x) for branch in self.branches]
        # Broadcasting the pooled vector equals its bilinear upsampling from 1x1, without the copy.
        outs.append(pooled.expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ on any :class:`Backbone` (its ``c2`` and ``c5``).

    Args:
        backbone: a backbone, normally at output stride 16 or 8.
        num_classes: output channels.
        atrous_rates: ASPP rates; default (6, 12, 18) scaled by ``16 / output_stride``.
        aspp_channels: ASPP width (256).
        low_level_channels: projection of ``c2`` (48).
        decoder_channels: width of the 3x3 decoder convolutions (256).
        decoder_convs: number of 3x3 conv-BN-ReLU after the concatenation (2, the paper's choice).
        separable: depthwise-separable 3x3 convolutions in ASPP and decoder.
        upsample: upsampling mode of the decoder and of the final upsampling (bilinear in the paper).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        atrous_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        decoder_convs: int = 2,
        separable: bool = False,
        dropout: float = 0.1,
        upsample: str = "bilinear",
    ):
        super().__init__()
        self.backbone = backbone
        backbone.out_features = ("c2", "c5")
        stride5, stride2 = backbone.strides["c5"], backbone.strides["c2"]
        if atrous_rates is None:
            atrous_rates = tuple(max(1, r * 16 // stride5) for r in DEFAULT_RATES_AT_16)
        self.aspp = ASPP(
            backbone.out_channels["c5"], aspp_channels, atrous_rates, separable=separable, dropout=dropout
        )
        self.low_level = _conv_bn_relu(backbone.out_channels["c2"], low_level_channels, 1)
        self.up = make_upsample(upsample, aspp_channels, aspp_channels, stride5 // stride2)
        if decoder_convs < 1:
            raise ValueError(f"decoder_convs must be >= 1, got {decoder_convs}")
        widths = [aspp_channels + low_level_channels] + [decoder_channels] * decoder_convs
        self.decoder = nn.Sequential(
            *(_conv_bn_relu(a, b, 3, separable=separable) for a, b in itertools.pairwise(widths))
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        self.final_up = make_upsample(upsample, num_classes, num_classes, stride2)

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x)
        low = self.low_level(features["c2"])
        y = self.up(self.aspp(features["c5"]), low.shape[-2:])
        y = self.decoder(torch.cat([y, low], dim=1))
        return self.final_up(self.classifier(y), x.shape[-2:])

"""U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015) and a U-Net whose encoder is a pretrained backbone.

:class:`UNet` is the paper's architecture: a contracting path of ``depth`` + 1 blocks of two 3x3
convolutions + ReLU (``base_channels`` doubling after each 2x2 max-pool), an expanding path that
upsamples 2x ("2x2 up-convolution" halving the channels), concatenates the encoder feature of the same
level and applies two 3x3 convolutions, and a final 1x1 convolution to the classes. Two departures,
both standard today: the 3x3 convolutions are padded ("same"), so the output has the input's size
instead of shrinking 572 -> 388 and no skip needs cropping; and BatchNorm follows every convolution
(``norm=False`` gives the paper's unnormalised blocks). Pools use ceil mode so odd sizes work.

:class:`BackboneUNet` is the encoder-decoder of segmentation_models_pytorch's ``Unet``: the backbone's
``c5`` is upsampled and fused with ``c4``, ``c3``, ``c2``, ``c1`` in turn (concatenation, two 3x3
conv-BN-ReLU), a fifth block brings it to the input resolution, and a 3x3 convolution gives the class
scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdet.models.backbones import Backbone
from segdet.models.layers import ConvNormAct
from segdet.models.segmentation.upsampling import make_upsample


def _double_conv(in_channels: int, out_channels: int, norm: bool) -> nn.Sequential:
    norm_layer = nn.BatchNorm2d if norm else None
    return nn.Sequential(
        ConvNormAct(in_channels, out_channels, norm_layer=norm_layer),
        ConvNormAct(out_channels, out_channels, norm_layer=norm_layer),
    )


class UNet(nn.Module):
    """The 2015 U-Net with padded convolutions.

    Args:
        num_classes: output channels.
        in_channels: image channels.
        base_channels: width of the first level (64 in the paper); level ``i`` has ``base * 2^i``.
        depth: number of 2x downsamplings (4 in the paper).
        upsample: ``"transposed"`` (the paper's 2x2 up-convolution) or another mode of
            :func:`make_upsample`; every mode halves the channels.
        norm: BatchNorm after each convolution.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        base_channels: int = 64,
        depth: int = 4,
        upsample: str = "transposed",
        norm: bool = True,
    ):
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            _double_conv(c_in, c_out, norm)
            for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.ups = nn.ModuleList(
            make_upsample(upsample, widths[i + 1], widths[i], 2, kernel_size=2)
            for i in reversed(range(depth))
        )
        self.up_blocks = nn.ModuleList(
            _double_conv(2 * widths[i], widths[i], norm) for i in reversed(range(depth))
        )
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.ups, self.up_blocks, strict=True):
            skip = skips.pop()
            x = block(torch.cat([up(x, skip.shape[-2:]), skip], dim=1))
        return self.classifier(x)


class UNetDecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip (if any), two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, upsample: str, scale: int):
        super().__init__()
        self.up = make_upsample(upsample, in_channels, in_channels, scale)
        self.conv1 = ConvNormAct(in_channels + skip_channels, out_channels, norm_layer=nn.BatchNorm2d)
        self.conv2 = ConvNormAct(out_channels, out_channels, norm_layer=nn.BatchNorm2d)

    def forward(self, x: Tensor, size: tuple[int, int], skip: Tensor | None) -> Tensor:
        x = self.up(x, size)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class BackboneUNet(nn.Module):
    """U-Net decoder on a backbone's ``c5`` with skips ``c4``, ``c3``, ``c2``, ``c1``.

    Args:
        backbone: a :class:`Backbone` (any output stride).
        num_classes: output channels.
        decoder_channels: output width of each decoder block, deepest first; block ``i`` takes the skip
            ``c(4 - i)``; blocks past ``c1`` have no skip and upsample to the input size. 1 to 5 blocks;
            with fewer than 5 the scores are resized bilinearly to the input size.
        upsample: upsampling mode of the decoder blocks (``"nearest"``, as smp).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        upsample: str = "nearest",
    ):
        super().__init__()
        if not 1 <= len(decoder_channels) <= 5:
            raise ValueError(f"BackboneUNet takes 1 to 5 decoder blocks, got {len(decoder_channels)}")
        self.backbone = backbone
        self.skips: list[str | None] = ["c4", "c3", "c2", "c1", None][: len(decoder_channels)]
        backbone.out_features = ("c5", *(s for s in self.skips if s))
        strides = [backbone.strides["c5"]] + [backbone.strides[s] if s else 1 for s in self.skips]
        in_channels = [backbone.out_channels["c5"], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            UNetDecoderBlock(c_in, backbone.out_channels[s] if s else 0, c_out, upsample, coarse // fine)
            for c_in, s, c_out, coarse, fine in zip(
                in_channels, self.skips, decoder_channels, strides[:-1], strides[1:], strict=True
            )
        )
        self.classifier = nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        features = self.backbone(x)
        y = features["c5"]
        for name, block in zip(self.skips, self.blocks, strict=True):
            skip = features[name] if name else None
            y = block(y, skip.shape[-2:] if skip is not None else size, skip)
        y = self.classifier(y)
        if y.shape[-2:] != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y

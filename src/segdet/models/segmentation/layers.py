"""Small convolution blocks used by the decoders."""

from __future__ import annotations

from torch import nn


class ConvBNReLU(nn.Sequential):
    """``ReLU(BN(conv(x)))`` with "same" padding ``dilation * (k - 1) / 2``; the convolution has no bias
    (BatchNorm's shift replaces it). ``separable`` makes it a depthwise ``k x k`` followed by a pointwise
    1x1 convolution (Chollet, "Xception", CVPR 2017; DeepLabv3+ section 3.2), ``k^2 * in + in * out``
    weights instead of ``k^2 * in * out``. ``norm=False`` drops the BatchNorm (and adds the bias)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        dilation: int = 1,
        separable: bool = False,
        norm: bool = True,
    ):
        padding = dilation * (kernel_size - 1) // 2
        if separable and kernel_size > 1:
            conv: list[nn.Module] = [
                nn.Conv2d(
                    in_channels,
                    in_channels,
                    kernel_size,
                    padding=padding,
                    dilation=dilation,
                    groups=in_channels,
                    bias=False,
                ),
                nn.Conv2d(in_channels, out_channels, 1, bias=not norm),
            ]
        else:
            conv = [
                nn.Conv2d(
                    in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=not norm
                )
            ]
        super().__init__(*conv, *([nn.BatchNorm2d(out_channels)] if norm else []), nn.ReLU(inplace=True))

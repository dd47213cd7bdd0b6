"""The convolution block shared by the FPN neck and the R-CNN heads: ``act(norm(conv(x)))``.

Kept an ``nn.Sequential`` whose children are numbered ``0`` (conv), ``1`` (norm, if any), then the
activation, so that parameter names are torchvision's ``Conv2dNormActivation`` ones
(``inner_blocks.0.0.weight``, ``mask_head.0.1.running_mean``, ...) and its checkpoints load one-to-one.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


class ConvNormAct(nn.Sequential):
    """``conv -> [norm] -> [ReLU]`` with "same" padding ``dilation * (kernel_size - 1) // 2``.

    The convolution has a bias only without normalisation (a norm layer's shift replaces it).

    Args:
        in_channels, out_channels, kernel_size, stride, dilation: of the ``nn.Conv2d``.
        norm_layer: called with ``out_channels`` (e.g. ``nn.BatchNorm2d``); ``None``: no normalisation.
        activation: append ``ReLU(inplace=True)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        norm_layer: Callable[[int], nn.Module] | None = None,
        activation: bool = True,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                bias=norm_layer is None,
            )
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels

"""The one convolution block of every model: ``act(norm(conv(x)))``, plain or depthwise-separable.

Segmentation decoders (U-Net, ASPP, DeepLabv3+), the FPN neck and the detection heads (R-CNN, RetinaNet,
SSDLite) all build from :class:`ConvNormAct`. It is an ``nn.Sequential`` whose children are numbered
``0`` (conv), ``1`` (norm, if any), then the activation, so that parameter names are torchvision's
``Conv2dNormActivation`` ones (``inner_blocks.0.0.weight``, ``mask_head.0.1.running_mean``,
``classification_head.conv.0.1.weight`` ...) and its checkpoints load one-to-one. The separable form
has the depthwise convolution at ``0`` and the pointwise one at ``1`` (then norm and activation).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


class ConvNormAct(nn.Sequential):
    """``conv -> [norm] -> [activation]`` with "same" padding ``dilation * (kernel_size - 1) // 2``.

    The convolution has a bias only without normalisation (a norm layer's shift replaces it).
    ``separable`` makes the convolution a depthwise ``k x k`` followed by a pointwise 1x1 one (Chollet,
    "Xception", CVPR 2017; DeepLabv3+ sec. 3.2): ``k^2 in + in out`` weights instead of ``k^2 in out``.

    Args:
        in_channels, out_channels, kernel_size, stride, dilation, groups: of the ``nn.Conv2d``.
        separable: depthwise ``k x k`` then pointwise 1x1 (``groups`` must then be 1).
        norm_layer: called with ``out_channels`` (e.g. ``nn.BatchNorm2d``); ``None``: no normalisation.
        activation: called with ``inplace=True`` (``nn.ReLU``, ``nn.ReLU6``); ``None``: none.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        separable: bool = False,
        norm_layer: Callable[[int], nn.Module] | None = None,
        activation: Callable[..., nn.Module] | None = nn.ReLU,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        bias = norm_layer is None
        if separable and kernel_size > 1:
            if groups != 1:
                raise ValueError(f"a separable convolution takes groups=1, got {groups}")
            layers: list[nn.Module] = [
                nn.Conv2d(
                    in_channels,
                    in_channels,
                    kernel_size,
                    stride=stride,
                    padding=padding,
                    dilation=dilation,
                    groups=in_channels,
                    bias=False,
                ),
                nn.Conv2d(in_channels, out_channels, 1, bias=bias),
            ]
        else:
            layers = [
                nn.Conv2d(
                    in_channels,
                    out_channels,
                    kernel_size,
                    stride=stride,
                    padding=padding,
                    dilation=dilation,
                    groups=groups,
                    bias=bias,
                )
            ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels

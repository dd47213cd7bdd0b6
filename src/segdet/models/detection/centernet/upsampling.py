"""CenterNet's ResNet upsampling (Zhou et al. 2019, sec. 5; Xiao et al., "Simple Baselines for Human Pose
Estimation", ECCV 2018): ``C5`` (stride 32) brought to stride 4 by three stages of

    3x3 convolution -> BatchNorm -> ReLU -> 4x4/2 transposed convolution -> BatchNorm -> ReLU

with 256, 128 and 64 channels (the paper's ResNet setting). The transposed convolutions start as
bilinear upsampling (the official code's ``fill_up_weights``). The paper makes the 3x3 convolutions
deformable (modulated, DCNv2: ``deformable=True``, :class:`ModulatedDeformConv`); by default they are
plain, which the official ``resnet_dcn`` becomes without DCN and which is much faster on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from segdet.models.layers import ConvNormAct


class ModulatedDeformConv(nn.Module):
    """3x3 modulated deformable convolution (Zhu et al., "Deformable ConvNets v2", CVPR 2019): per output
    pixel, 9 sampling offsets ``(Δy, Δx)`` and 9 modulation scalars ``σ(m)`` predicted by a 3x3
    convolution that starts at zero (a plain convolution, modulation 0.5), then
    ``torchvision.ops.deform_conv2d``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.offset = nn.Conv2d(in_channels, 27, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        offset_y_x, modulation = self.offset(x).split([18, 9], dim=1)
        return deform_conv2d(x, offset_y_x, self.weight, padding=(1, 1), mask=modulation.sigmoid())


def bilinear_transposed_(deconv: nn.ConvTranspose2d) -> None:
    """Initialise ``deconv`` (``C -> C``, kernel ``k``, stride ``k / 2``) as bilinear upsampling of each
    channel: ``w(i, j) = (1 - |i/f - c|)(1 - |j/f - c|)`` with ``f = ceil(k / 2)``, ``c = (2f - 1 - f % 2)
    / (2f)`` (the official code's ``fill_up_weights``), identical for every channel."""
    k = deconv.kernel_size[0]
    f = (k + 1) // 2
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1 - (torch.arange(k, dtype=torch.float64) / f - c).abs()
    with torch.no_grad():
        deconv.weight.zero_()
        kernel = (ramp[:, None] * ramp[None, :]).to(deconv.weight.dtype)
        for ch in range(min(deconv.in_channels, deconv.out_channels)):
            deconv.weight[ch, ch] = kernel


class CenterNetUpsampling(nn.Sequential):
    """The stages of the module docstring on a ``in_channels`` map; ``channels`` per stage (each doubles
    the resolution)."""

    def __init__(
        self, in_channels: int, channels: Sequence[int] = (256, 128, 64), deformable: bool = False
    ) -> None:
        layers: list[nn.Module] = []
        for out in channels:
            if deformable:
                layers += [ModulatedDeformConv(in_channels, out), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            else:
                layers.append(ConvNormAct(in_channels, out, 3, norm_layer=nn.BatchNorm2d))
            deconv = nn.ConvTranspose2d(out, out, 4, stride=2, padding=1, bias=False)
            bilinear_transposed_(deconv)
            layers += [deconv, nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            in_channels = out
        super().__init__(*layers)
        self.out_channels = in_channels


class ResNetUpsampling(nn.Module):
    """A ResNet body (``C5``) then :class:`CenterNetUpsampling`: the stride-4 feature map."""

    def __init__(self, body: nn.Module, upsampling: CenterNetUpsampling) -> None:
        super().__init__()
        self.body = body
        self.upsampling = upsampling
        self.out_channels = upsampling.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.upsampling(self.body(x)["c5"])

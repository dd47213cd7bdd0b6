"""Upsampling layers shared by every decoder: one constructor, four methods, one exact output size.

Every module made by :func:`make_upsample` is called as ``up(x, size)`` and returns a map of exactly
``size = (h, w)``, so decoders work for any input size (odd ones included):

* ``"nearest"`` / ``"bilinear"``: ``F.interpolate(x, size=size)`` (``align_corners=False``). A channel
  change is a 1x1 convolution applied *before* interpolating: both are linear per pixel and commute, and
  the convolution then runs on ``scale^2`` times fewer pixels.
* ``"pixelshuffle"``: sub-pixel convolution (Shi et al., CVPR 2016): a 1x1 convolution to
  ``out * scale^2`` channels rearranged by ``PixelShuffle(scale)``. Initialised with ICNR (Aitken et
  al. 2017): the ``scale^2`` sub-kernels of an output channel start equal, so the layer starts as a
  nearest-neighbour upsampling of a 1x1 convolution, free of checkerboard artefacts.
* ``"transposed"``: a learnable transposed convolution of stride ``scale`` and kernel ``2 * scale``
  (padding ``scale / 2``) initialised to bilinear interpolation when ``in == out`` (Long et al., "Fully
  Convolutional Networks", CVPR 2015, section 3.3); ``kernel_size=scale`` gives U-Net's
  non-overlapping "2x2 up-convolution" (Ronneberger et al. 2015).

The learnable methods produce ``scale * (h_in, w_in)`` pixels; the map is then cropped at the top-left
to ``size``. That is where the extra row/column lies: every backbone pads so that feature pixel ``i`` of
stride ``s`` is centred on input pixel ``s * i``, and a stride-``s`` map of an odd input has
``ceil(H / s)`` rows. If the learnable output is smaller than ``size`` (a caller asking for more than
``scale`` times), it is resized bilinearly to ``size``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

UPSAMPLE_MODES: tuple[str, ...] = ("nearest", "bilinear", "pixelshuffle", "transposed")


def _fit(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop ``x`` at the top-left to ``size``, or resize it bilinearly if it is smaller."""
    h, w = size
    if x.shape[-2] < h or x.shape[-1] < w:
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    if x.shape[-2] != h or x.shape[-1] != w:
        x = x[..., :h, :w]
    return x


class Interpolate(nn.Module):
    """``F.interpolate`` to a given size, after an optional 1x1 convolution (``in != out``)."""

    def __init__(self, mode: str, in_channels: int, out_channels: int):
        super().__init__()
        self.mode = mode
        self.proj = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if self.proj is not None:
            x = self.proj(x)
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        if self.mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=self.mode, align_corners=False)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class PixelShuffleUp(nn.Module):
    """Sub-pixel convolution: 1x1 conv to ``out * scale^2`` channels, ``PixelShuffle(scale)``, crop."""

    def __init__(self, in_channels: int, out_channels: int, scale: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels * scale * scale, 1)
        self.shuffle = nn.PixelShuffle(scale)
        self._icnr_(scale)

    @torch.no_grad()
    def _icnr_(self, scale: int) -> None:
        # PixelShuffle maps channel c * scale^2 + k to sub-position k of output channel c: giving the
        # scale^2 channels of each c the same kernel makes the initial layer nearest upsampling.
        out = self.conv.out_channels // (scale * scale)
        base = torch.empty(out, *self.conv.weight.shape[1:], device=self.conv.weight.device)
        nn.init.kaiming_uniform_(base, a=5**0.5)  # nn.Conv2d's default initialisation
        self.conv.weight.copy_(base.repeat_interleave(scale * scale, dim=0))
        self.conv.bias.copy_(self.conv.bias[:: scale * scale].repeat_interleave(scale * scale))

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return _fit(self.shuffle(self.conv(x)), size)


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """The ``channels x channels x k x k`` transposed-convolution weight that performs bilinear
    upsampling channel by channel: ``w[c, c] = (1 - |i - center| / f) (1 - |j - center| / f)`` with
    ``f = ceil(k / 2)`` and ``center = f - 1`` (odd ``k``) or ``f - 0.5`` (even ``k``), as in FCN's
    ``upsample_filt`` (Long et al. 2015)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    r = torch.arange(kernel_size, dtype=torch.float32)
    filt1d = 1 - (r - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt1d[:, None] * filt1d[None, :]
    return weight


class TransposedUp(nn.Module):
    """``ConvTranspose2d`` of stride ``scale`` (kernel ``2 * scale`` by default), then crop to size."""

    def __init__(self, in_channels: int, out_channels: int, scale: int, kernel_size: int | None = None):
        super().__init__()
        kernel_size = 2 * scale if kernel_size is None else kernel_size
        if (kernel_size - scale) % 2:
            raise ValueError(
                f"transposed upsampling needs kernel_size - scale even, got {kernel_size}, {scale}"
            )
        # padding (k - s) / 2 makes the output exactly scale * input.
        self.conv = nn.ConvTranspose2d(
            in_channels, out_channels, kernel_size, stride=scale, padding=(kernel_size - scale) // 2
        )
        if in_channels == out_channels and kernel_size > 1:
            with torch.no_grad():
                self.conv.weight.copy_(bilinear_kernel(in_channels, kernel_size))
                self.conv.bias.zero_()

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return _fit(self.conv(x), size)


class Identity(nn.Module):
    """Scale 1 with equal channels: nothing to do but crop (dilated backbones give equal strides)."""

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return _fit(x, size)


def make_upsample(
    mode: str, in_channels: int, out_channels: int, scale: int, *, kernel_size: int | None = None
) -> nn.Module:
    """An upsampling module ``up(x, size)`` by an integer ``scale`` with the given ``mode`` (one of
    :data:`UPSAMPLE_MODES`, see the module docstring). ``kernel_size`` applies to ``"transposed"``."""
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsampling mode must be one of {', '.join(UPSAMPLE_MODES)}, got {mode!r}")
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"upsampling scale must be a positive integer, got {scale}")
    scale = int(scale)
    if scale == 1 and in_channels == out_channels:
        return Identity()
    if mode in ("nearest", "bilinear") or scale == 1:
        return Interpolate("nearest" if mode == "nearest" else "bilinear", in_channels, out_channels)
    if mode == "pixelshuffle":
        return PixelShuffleUp(in_channels, out_channels, scale)
    return TransposedUp(in_channels, out_channels, scale, kernel_size)

"""YOLACT's prototype masks and their assembly (Bolya et al., ICCV 2019, sec. 3.1-3.2).

**Protonet** (fig. 3): a small fully convolutional net on the finest pyramid level ``P3`` (stride 8)::

    3 x (conv3x3, 256, ReLU) -> upsample x2 (bilinear) -> conv3x3, 256, ReLU -> conv1x1, k, ReLU

gives ``k`` (32) prototype masks ``P`` of ``H_p x W_p`` at stride 4 of the padded batch, shared by every
instance of an image. The final ReLU keeps them unbounded above but non-negative (paper: "we found it
important ... to use ReLU"), so that a prototype can mark a region with a confident value.

**Assembly** (eq. 1): each detection predicts ``k`` coefficients ``c`` (tanh, in ``[-1, 1]``: a
prototype may be added or subtracted) and its mask is a linear combination passed through a sigmoid::

    M = σ(P c)        P: [H_p W_p, k],  c: [k]   ->   M: [H_p, W_p]

**Crop**: the mask is kept only inside the detection's box (the ground-truth box in training, the
predicted one at inference), which keeps small objects' masks from leaking to the background that the
prototypes share with other objects (sec. 3.2, "Cropping").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdet.models.layers import ConvNormAct


class Protonet(nn.Module):
    """The prototype branch (module docstring) on ``in_channels`` wide features.

    Args:
        in_channels: the FPN width (256).
        num_prototypes: ``k`` (32).
        channels: the width of its convolutions (256).
    """

    def __init__(self, in_channels: int, num_prototypes: int = 32, channels: int = 256) -> None:
        super().__init__()
        self.before = nn.Sequential(
            ConvNormAct(in_channels, channels, 3),
            ConvNormAct(channels, channels, 3),
            ConvNormAct(channels, channels, 3),
        )
        self.after = nn.Sequential(
            ConvNormAct(channels, channels, 3), ConvNormAct(channels, num_prototypes, 1)
        )
        self.num_prototypes = num_prototypes

    def forward(self, p3: Tensor) -> Tensor:
        """``N x C x H x W`` -> ``N x k x 2H x 2W`` non-negative prototypes."""
        x = self.before(p3)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.after(x)


def assemble_masks(prototypes: Tensor, coefficients: Tensor) -> Tensor:
    """The mask logits ``P c`` (eq. 1 before the sigmoid) of one image's detections.

    Args:
        prototypes: ``[k, H_p, W_p]``.
        coefficients: ``[D, k]``.

    Returns:
        ``[D, H_p, W_p]``.
    """
    k, height, width = prototypes.shape
    return (coefficients @ prototypes.reshape(k, -1)).reshape(-1, height, width)


def box_region(boxes: Tensor, size: tuple[int, int], stride: float) -> Tensor:
    """``[D, H, W]`` bool: the cells of an ``H x W`` grid of cell size ``stride`` (in the boxes' units;
    cell ``(y, x)`` spans ``[x s, (x + 1) s] x [y s, (y + 1) s]``) that overlap each xyxy box of
    ``boxes`` ``[D, 4]`` (the crop of the module docstring). Never empty for a box of positive size
    inside the grid, however small: YOLACT pads its crop by one cell for the same reason."""
    inside_y, inside_x = box_rows_and_columns(boxes, size, stride)
    return inside_y[:, :, None] & inside_x[:, None, :]


def box_rows_and_columns(boxes: Tensor, size: tuple[int, int], stride: float) -> tuple[Tensor, Tensor]:
    """:func:`box_region` as its two factors: the rows ``[D, H]`` and the columns ``[D, W]`` (bool) of
    the grid that overlap each box; the region is their outer product."""
    height, width = size
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype) * stride
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype) * stride
    inside_y = (ys[None, :] + stride > boxes[:, 1:2]) & (ys[None, :] < boxes[:, 3:4])  # [D, H]
    inside_x = (xs[None, :] + stride > boxes[:, 0:1]) & (xs[None, :] < boxes[:, 2:3])  # [D, W]
    return inside_y, inside_x

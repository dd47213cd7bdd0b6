"""R-CNN's region warping (Girshick et al. 2014, sec. 2.1 and appendix A): each proposal is dilated so
that, once warped to the network's ``S x S`` input, ``p`` pixels of image context surround the original
box (the paper's ``p = 16`` at ``S = 227``), then warped anisotropically (the aspect ratio is not kept).

Dilating by ``p`` pixels at the warped size means the box grows by the factor ``S / (S - 2p)`` about
its centre. We keep the paper's *fraction* ``p / S = 16 / 227`` at any ``S``. Where the dilated box
leaves the image, the paper fills with the image mean: the crops here are taken from the *normalised*
image, where the mean is 0, by bilinear sampling (``roi_align`` with 2 x 2 samples per output pixel,
which also low-pass filters a shrinking warp); samples more than one pixel outside the image read 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from segdet.ops.roi_align import roi_align
from segdet.ops.roi_pool import boxes_to_rois

#: The paper's context: 16 pixels at the 227-pixel input.
CONTEXT = 16 / 227


def dilate(boxes: Tensor, context: float = CONTEXT) -> Tensor:
    """xyxy ``boxes`` grown about their centres by ``1 / (1 - 2 context)`` (see the module docstring)."""
    if not 0 <= context < 0.5:
        raise ValueError(f"context must be in [0, 0.5), got {context}")
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 / (1 - 2 * context)
    return torch.cat([centre - half, centre + half], dim=1)


def warp_regions(
    images: Sequence[Tensor], boxes: Sequence[Tensor], size: int, context: float = CONTEXT
) -> Tensor:
    """``[sum R_i, 3, size, size]`` crops of the per-image ``[R_i, 4]`` xyxy ``boxes`` (pixels) from the
    normalised ``3 x H_i x W_i`` ``images`` (of any sizes), dilated by ``context``."""
    crops = []
    for image, b in zip(images, boxes, strict=True):
        if len(b) == 0:
            continue
        rois = boxes_to_rois([dilate(b.to(image.dtype), context)])
        crops.append(roi_align(image[None], rois, size, 1.0, 2, aligned=True))
    if not crops:
        return images[0].new_zeros((0, images[0].shape[0], size, size))
    return torch.cat(crops)

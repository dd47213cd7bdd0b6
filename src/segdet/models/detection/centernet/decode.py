"""CenterNet's decoding (Zhou et al. 2019, sec. 4, "From points to bounding boxes"): peaks instead of NMS.

1. **peaks**: a heatmap value ``Ŷ_xyc = σ(logit)`` is a peak when it is at least each of its 8
   neighbours: equal to the 3 x 3 max-pooled map (stride 1, padding 1) -- "an efficient 3 x 3 max
   pooling operation" that "serves as a sufficient NMS alternative";
2. **top k**: the ``k`` (100) peaks of highest value over all classes and pixels;
3. **boxes**: at peak ``(x, y)`` with offset ``(δx, δy)`` and size ``(w, h)`` (output-map pixels),
   ``(x + δx - w/2, y + δy - h/2, x + δx + w/2, y + δy + h/2) R`` in input pixels; the score is the
   peak's value. No NMS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from segdet.models.detection.postprocess import topk_pairs


def heatmap_peaks(heatmap: Tensor) -> Tensor:
    """``heatmap`` (``[N, C, H, W]`` scores) with every value that is not a 3 x 3 local maximum set to 0."""
    pooled = F.max_pool2d(heatmap, 3, stride=1, padding=1)
    return heatmap * (pooled == heatmap)


def decode_centers(
    heatmap: Tensor,
    size: Tensor,
    offset: Tensor,
    stride: int,
    k: int = 100,
    score_thresh: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Steps 1-3 of the module docstring.

    Args:
        heatmap: ``[N, C, H, W]`` scores (after the sigmoid).
        size, offset: ``[N, 2, H, W]`` (x then y).
        stride: ``R``.
        k: peaks per image.
        score_thresh: keep only peaks scoring above it (``None``: all ``k``).

    Returns:
        ``(image, boxes [R, 4] xyxy input pixels, labels, scores)`` over the batch, each image's by
        decreasing score.
    """
    n, c, h, w = heatmap.shape
    peaks = heatmap_peaks(heatmap).permute(0, 2, 3, 1).reshape(n, h * w, c)
    image, pixel, label, scores = topk_pairs(peaks, k, score_thresh)
    y = torch.div(pixel, w, rounding_mode="floor")
    x = pixel - y * w
    at = (image, slice(None), y, x)
    center = torch.stack([x, y], dim=1).to(offset.dtype) + offset[at]
    half = size[at] / 2
    boxes = torch.cat([center - half, center + half], dim=1) * stride
    return image, boxes, label, scores

"""CenterNet's training targets (Zhou, Wang, Krähenbühl, "Objects as Points", 2019, sec. 3): a
Gaussian heatmap of object centres per class, and each object's size and sub-pixel offset at its centre.

For an object of box ``(x1, y1, x2, y2)`` in the input and output stride ``R`` (4), on an ``H x W``
output map:

* the box is taken to the map, ``/ R``, and clipped to ``[0, W - 1] x [0, H - 1]`` (the official code's
  ``ctdet.py``: ``np.clip(bbox[[0, 2]], 0, output_w - 1)``, likewise in y; so an object reaching
  outside the image has its centre, size and offset those of its visible part, and one touching the
  right or bottom edge loses up to one map pixel); a box left without width or height (outside the
  map, or degenerate) gets no target, as there;
* centre ``p = ((x1 + x2) / 2, (y1 + y2) / 2) / R`` on the output map, its pixel ``p̃ = floor(p)``;
* heatmap ``Y_xyc = exp(-((x - p̃_x)² + (y - p̃_y)²) / (2 σ²))`` for ``|x - p̃_x|, |y - p̃_y| <= r``
  (0 outside), ``σ = (2r + 1) / 6`` with the radius ``r`` of :func:`gaussian_radius` from the box's
  size on the output map (``r = max(0, floor(radius(ceil(h / R), ceil(w / R))))``, the official code's
  rounding); where objects of one class overlap, the element-wise maximum. The peak, at ``p̃``, is 1;
* size ``s = (w, h) / R`` (output-map pixels, the official code's unit) and offset ``p - p̃``, both
  regressed only at ``p̃``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

RADIUS_RULES = ("correct", "official")


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7, rule: str = "correct") -> float:
    """CornerNet's radius (Law & Deng, ECCV 2018, sec. 3.1): the largest ``r`` such that a box whose two
    corners each move by up to ``r`` (in x and y) still has ``IoU >= min_overlap`` with the object's
    ``h x w`` box. Three ways the corners can move give three quadratics in ``r``, ``o = min_overlap``:

    1. both corners shifted the same way (the box translated by ``(r, r)``):
       ``(w - r)(h - r) / (2wh - (w - r)(h - r)) = o``  ->  ``r² - (w + h) r + wh (1 - o) / (1 + o) = 0``;
    2. both corners inward (the box shrunk by ``2r``): ``(w - 2r)(h - 2r) / (wh) = o``
       ->  ``4 r² - 2 (w + h) r + (1 - o) wh = 0``;
    3. both corners outward (grown by ``2r``): ``wh / ((w + 2r)(h + 2r)) = o``
       ->  ``4 o r² + 2 o (w + h) r + (o - 1) wh = 0``;

    and the radius is the smallest of the three roots that are the ranges' bound (the smaller root of 1
    and 2, the positive root of 3): ``r = (-b ± sqrt(b² - 4ac)) / (2a)``.

    ``rule="official"`` is CornerNet's and CenterNet's code (``gaussian_radius`` in their ``image.py``):
    each root computed as ``(b' + sqrt(b² - 4ac)) / 2`` with ``b' = (w + h)``, ``2 (w + h)`` and ``-2 o
    (w + h)`` -- the larger root instead of the smaller in cases 1 and 2, and no division by ``a`` (4 and
    ``4 o``) in cases 2 and 3. It is not the IoU bound the paper states (a 10 x 10 box at IoU 0.7 gets
    2.73 instead of 0.82); its Gaussians are wider, and the released models were trained with it.
    """
    if rule not in RADIUS_RULES:
        raise ValueError(f"rule must be one of {RADIUS_RULES}, got {rule!r}")
    h, w, o = float(height), float(width), float(min_overlap)
    b1, c1 = h + w, w * h * (1 - o) / (1 + o)
    b2, c2 = 2 * (h + w), (1 - o) * w * h
    b3, c3 = 2 * o * (h + w), (o - 1) * w * h
    sq1 = math.sqrt(b1 * b1 - 4 * c1)
    sq2 = math.sqrt(b2 * b2 - 16 * c2)
    sq3 = math.sqrt(b3 * b3 - 16 * o * c3)
    if rule == "official":
        return min((b1 + sq1) / 2, (b2 + sq2) / 2, (-b3 + sq3) / 2)
    return min((b1 - sq1) / 2, (b2 - sq2) / 8, (-b3 + sq3) / (8 * o))


@dataclass
class CenterTargets:
    """Targets of a batch on ``N x C x H x W`` output maps: ``heatmap`` (``[N, C, H, W]``), and per object
    (``G`` over the batch) its ``image``, centre pixel ``y`` / ``x`` (int64), ``size`` and ``offset``
    (``[G, 2]``, x then y)."""

    heatmap: Tensor
    image: Tensor
    y: Tensor
    x: Tensor
    size: Tensor
    offset: Tensor


def center_targets(
    targets: Sequence[dict[str, Tensor]],
    num_classes: int,
    map_size: Sequence[int],
    stride: int,
    *,
    min_overlap: float = 0.7,
    radius_rule: str = "correct",
) -> CenterTargets:
    """The targets of the module docstring for ``targets`` (per image ``boxes`` xyxy input pixels and
    ``labels``) on output maps of ``map_size`` ``(H, W)`` at ``stride``; the objects left without a
    target (outside the map) are not in the per-object fields."""
    height, width = int(map_size[0]), int(map_size[1])
    boxes = torch.cat([t["boxes"] for t in targets]).float() / stride
    labels = torch.cat([t["labels"] for t in targets])
    device = boxes.device
    counts = torch.tensor([len(t["boxes"]) for t in targets], device=device)
    image = torch.repeat_interleave(torch.arange(len(targets), device=device), counts)
    limit = torch.tensor([width - 1, height - 1], device=device, dtype=boxes.dtype)
    boxes = torch.minimum(boxes.clamp(min=0), limit.repeat(2))  # the official code's clipping
    size = boxes[:, 2:] - boxes[:, :2]
    kept = (size > 0).all(dim=1)
    boxes, labels, image, size = boxes[kept], labels[kept], image[kept], size[kept]
    center = (boxes[:, :2] + boxes[:, 2:]) / 2
    pixel = center.floor()  # within the map: the box is
    radius = torch.tensor(
        [
            max(0, int(gaussian_radius(math.ceil(h), math.ceil(w), min_overlap, radius_rule)))
            for w, h in size.tolist()
        ],
        device=device,
        dtype=center.dtype,
    )
    heatmap = torch.zeros(len(targets) * num_classes, height * width, device=device)
    if len(boxes):
        sigma = (2 * radius + 1) / 6
        dx = torch.arange(width, device=device, dtype=center.dtype)[None, :] - pixel[:, :1]  # [G, W]
        dy = torch.arange(height, device=device, dtype=center.dtype)[None, :] - pixel[:, 1:]  # [G, H]
        gx = torch.exp(-dx.square() / (2 * sigma[:, None] ** 2)) * (dx.abs() <= radius[:, None])
        gy = torch.exp(-dy.square() / (2 * sigma[:, None] ** 2)) * (dy.abs() <= radius[:, None])
        gaussians = (gy[:, :, None] * gx[:, None, :]).reshape(len(boxes), -1)  # separable: [G, H W]
        rows = (image * num_classes + labels)[:, None].expand_as(gaussians)
        heatmap.scatter_reduce_(0, rows, gaussians, "amax")
    pixel = pixel.long()
    return CenterTargets(
        heatmap.view(len(targets), num_classes, height, width),
        image,
        pixel[:, 1],
        pixel[:, 0],
        size,
        center - pixel,
    )

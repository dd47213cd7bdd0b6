"""Axis-aligned box geometry: format conversion, areas, IoU / GIoU, clipping and size filtering.

Every function works on tensors of boxes whose last dimension holds 4 coordinates, on any device and
dtype, without Python loops over boxes. Boxes are ``(x1, y1, x2, y2)`` ("xyxy") in absolute continuous
pixel coordinates unless a format is named (see :mod:`segdet.data.structures` for the convention), and
are expected to be well formed: ``x1 <= x2`` and ``y1 <= y2``.

Precision: half / bfloat16 boxes are upcast to float32 for areas and overlaps (as in torchvision), so
``box_iou`` of float16 boxes returns float32; float32 and float64 stay as they are.

Degenerate boxes (zero width or height, hence zero area) are handled without NaN, by one rule:
**a ratio whose denominator is zero is 0**. Concretely

* ``IoU(A, B) = 0`` when ``|A ∪ B| = 0`` (both boxes have zero area, whether they touch, coincide or
  are disjoint): a zero-area box overlaps nothing. torchvision returns ``0/0 = NaN`` there.
* In GIoU the penalty ``|C ∖ (A ∪ B)| / |C|`` is 0 when the enclosing box has ``|C| = 0`` (both boxes
  lie on one common horizontal or vertical line, or are one point), so ``GIoU = IoU = 0``. Two disjoint
  zero-area boxes with ``|C| > 0`` get ``GIoU = 0 - |C|/|C| = -1``, the same limit as two tiny far-apart
  boxes. torchvision returns NaN in both cases.

Wherever torchvision's result is defined (``|A ∪ B| > 0``) these functions compute the same arithmetic
and agree with it to floating-point round-off. The zero-denominator guard is written so that gradients
stay finite too (the denominator is replaced by 1 before dividing, not after).
"""

from __future__ import annotations

import torch
from torch import Tensor

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def _upcast(t: Tensor) -> Tensor:
    """Raise half precision / small integers to float32 / int32 so products of coordinates cannot overflow."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def _ratio_or_zero(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else 0.

    The denominator is made 1 *before* the division so that neither the value nor the gradient of the
    unused branch is ``0/0`` (``torch.where`` alone still back-propagates NaN through the other branch).
    """
    positive = den > 0
    safe_den = torch.where(positive, den, torch.ones_like(den))
    ratio = num / safe_den
    return torch.where(positive, ratio, torch.zeros_like(ratio))


def _to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    a, b, c, d = boxes.unbind(-1)
    if fmt == "xyxy":
        return boxes
    if fmt == "xywh":  # (x1, y1, w, h)
        return torch.stack((a, b, a + c, b + d), dim=-1)
    # cxcywh: (cx, cy, w, h)
    return torch.stack((a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d), dim=-1)


def _from_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    if fmt == "xyxy":
        return boxes
    if fmt == "xywh":
        return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)
    # cxcywh
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes ``[..., 4]`` between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"``.

    * ``xyxy``: ``(x1, y1, x2, y2)``, the two corners.
    * ``xywh``: ``(x1, y1, w, h)`` with ``w = x2 - x1``, ``h = y2 - y1`` (COCO's ``bbox``).
    * ``cxcywh``: ``(cx, cy, w, h)`` with ``cx = (x1 + x2) / 2``, ``cy = (y1 + y2) / 2`` (YOLO, DETR).

    Conversions go through ``xyxy``. The result is always a new tensor (also when ``in_fmt == out_fmt``).
    """
    # A literal tuple and string concatenation (not BOX_FORMATS and an f-string) keep this scriptable.
    if in_fmt not in ("xyxy", "xywh", "cxcywh") or out_fmt not in ("xyxy", "xywh", "cxcywh"):
        raise ValueError("box formats must be xyxy, xywh or cxcywh, got " + in_fmt + " -> " + out_fmt)
    if in_fmt == out_fmt:
        return boxes.clone()
    return _from_xyxy(_to_xyxy(boxes, in_fmt), out_fmt)


def box_area(boxes: Tensor) -> Tensor:
    """Area ``(x2 - x1) * (y2 - y1)`` of xyxy boxes ``[..., 4]`` -> ``[...]``."""
    boxes = _upcast(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _inter_union_elementwise(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """``|A ∩ B|`` and ``|A ∪ B| = |A| + |B| - |A ∩ B|`` of boxes paired by broadcasting ``[..., 4]``."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = _upcast(bottom_right - top_left).clamp(min=0)  # disjoint boxes: no overlap, not a negative one
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    return inter, union


def _enclosing_area_elementwise(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``|C|`` of the smallest box C enclosing both boxes, paired by broadcasting ``[..., 4]``."""
    top_left = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    wh = _upcast(bottom_right - top_left).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def _iou_elementwise(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    inter, union = _inter_union_elementwise(boxes1, boxes2)
    return _ratio_or_zero(inter, union)


def _giou_elementwise(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    inter, union = _inter_union_elementwise(boxes1, boxes2)
    iou = _ratio_or_zero(inter, union)
    enclosing = _enclosing_area_elementwise(boxes1, boxes2)
    return iou - _ratio_or_zero(enclosing - union, enclosing)


def _all_pairs(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Views ``[..., N, 1, 4]`` and ``[..., 1, M, 4]`` so elementwise ops give ``[..., N, M]``."""
    return boxes1[..., :, None, :], boxes2[..., None, :, :]


def box_inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection ``|A ∩ B|`` and union ``|A ∪ B| = |A| + |B| - |A ∩ B|`` areas of every pair.

    Args:
        boxes1: ``[..., N, 4]`` xyxy boxes.
        boxes2: ``[..., M, 4]`` xyxy boxes.

    Returns:
        ``(inter, union)``, each ``[..., N, M]``.
    """
    return _inter_union_elementwise(*_all_pairs(boxes1, boxes2))


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union (Jaccard index) of every pair: ``IoU = |A ∩ B| / |A ∪ B|``.

    Args:
        boxes1: ``[..., N, 4]`` xyxy boxes.
        boxes2: ``[..., M, 4]`` xyxy boxes.

    Returns:
        ``[..., N, M]`` in ``[0, 1]``; 0 where ``|A ∪ B| = 0`` (see the module docstring).
    """
    return _iou_elementwise(*_all_pairs(boxes1, boxes2))


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of every pair (Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019).

    ``GIoU = IoU - |C ∖ (A ∪ B)| / |C| = IoU - (|C| - |A ∪ B|) / |C|`` where C is the smallest box
    enclosing A and B. It lies in ``[-1, 1]`` and, unlike IoU, still says how far apart disjoint boxes are.

    Args:
        boxes1: ``[..., N, 4]`` xyxy boxes.
        boxes2: ``[..., M, 4]`` xyxy boxes.

    Returns:
        ``[..., N, M]``; zero-denominator terms are 0 (see the module docstring).
    """
    return _giou_elementwise(*_all_pairs(boxes1, boxes2))


def box_iou_pairwise(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of corresponding boxes, ``IoU(boxes1[i], boxes2[i])`` (for losses and matched pairs).

    Args:
        boxes1, boxes2: xyxy boxes ``[..., 4]`` of broadcastable shapes (typically both ``[N, 4]``).

    Returns:
        ``[...]`` (typically ``[N]``), the diagonal of :func:`box_iou` without computing the N×M matrix.
    """
    return _iou_elementwise(boxes1, boxes2)


def generalized_box_iou_pairwise(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of corresponding boxes, ``GIoU(boxes1[i], boxes2[i])``; see :func:`generalized_box_iou`.

    Args:
        boxes1, boxes2: xyxy boxes ``[..., 4]`` of broadcastable shapes (typically both ``[N, 4]``).

    Returns:
        ``[...]`` (typically ``[N]``).
    """
    return _giou_elementwise(boxes1, boxes2)


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp xyxy boxes ``[..., 4]`` into an image of ``size = (height, width)``.

    x coordinates go to ``[0, width]`` and y coordinates to ``[0, height]`` (continuous coordinates, so
    ``width`` itself is the right edge of the last pixel column, not outside the image).
    """
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the xyxy boxes ``[N, 4]`` whose width and height are both ``>= min_size``.

    Returns:
        int64 ``[K]``, increasing.
    """
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    keep = (widths >= min_size) & (heights >= min_size)
    return torch.nonzero(keep).flatten()

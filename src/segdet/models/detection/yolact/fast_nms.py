"""Fast NMS (Bolya et al., "YOLACT: Real-time Instance Segmentation", ICCV 2019, sec. 3.3).

For each class, take its ``n`` highest-scoring candidates sorted by decreasing score and their pairwise
IoU matrix ``X`` (``n x n``). Keep only the upper triangle (``X_ij`` with ``i < j``: box ``i`` scores
higher than box ``j``) and take each column's maximum::

    K_j = max_{i < j} X_ij        keep j  iff  K_j <= t

A box is removed when *any* higher-scoring box of its class overlaps it by more than ``t``, also one
that was itself removed; standard NMS would let a box removed earlier suppress nothing. Fast NMS hence
keeps a subset of what NMS keeps (the same set when no removed box overlaps a lower one above ``t``),
in exchange for one batched matrix product instead of a sequential loop: the paper measures +12 ms
saved at a 0.1 mask mAP cost.
"""

from __future__ import annotations

import torch
from torch import Tensor


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``[B, n, m]`` IoUs of each batch's xyxy boxes ``boxes1`` ``[B, n, 4]`` with ``boxes2`` ``[B, m, 4]``
    (``torchvision.ops.box_iou`` for a batch of box sets; 0 where the union is empty)."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    top_left = torch.maximum(boxes1[:, :, None, :2], boxes2[:, None, :, :2])
    bottom_right = torch.minimum(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, :, None] + area2[:, None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def fast_nms(boxes: Tensor, valid: Tensor, iou_thresh: float) -> Tensor:
    """Fast NMS of ``B`` independent groups (e.g. (image, class) pairs) at once; module docstring.

    Args:
        boxes: ``[B, n, 4]`` xyxy boxes of each group, by decreasing score.
        valid: ``[B, n]`` False for padding slots (a group with fewer than ``n`` candidates); they must
            come after the group's valid ones, so they can suppress nothing valid.
        iou_thresh: ``t``; a box overlapping a higher-scoring one by more than ``t`` is removed.

    Returns:
        ``[B, n]`` bool, the kept boxes (always False on padding).
    """
    iou = batched_box_iou(boxes, boxes).triu_(diagonal=1)  # X_ij for i < j
    overlap = iou.max(dim=1).values if boxes.shape[1] else iou.new_zeros(valid.shape)
    return valid & (overlap <= iou_thresh)

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

from torch import Tensor

from segdet.ops.boxes import box_iou


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
    iou = box_iou(boxes, boxes).triu_(diagonal=1)  # [B, n, n] (leading dims batch); X_ij for i < j
    overlap = iou.max(dim=1).values if boxes.shape[1] else iou.new_zeros(valid.shape)
    return valid & (overlap <= iou_thresh)

"""Matching predictions (anchors, proposals) to ground-truth boxes by IoU.

Each prediction gets the index of the ground-truth box it overlaps most when that IoU is high enough:

* ``IoU >= high``          -> matched to that box (foreground);
* ``IoU <  low``           -> :data:`BELOW_LOW_THRESHOLD` (``-1``, background);
* ``low <= IoU < high``    -> :data:`BETWEEN_THRESHOLDS` (``-2``, ignored by the loss).

With ``allow_low_quality_matches`` every ground-truth box also keeps the prediction(s) that overlap it
most, even below ``high`` (ties included), so no object is left without a positive anchor. These are
the rules of the Faster R-CNN RPN (Ren et al., NeurIPS 2015, sec. 3.1.2: IoU > 0.7 positive, < 0.3
negative, the best anchor of each object positive); the RoI head uses ``high = low = 0.5``
(foreground iff IoU >= 0.5, Girshick, ICCV 2015).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from segdet.ops.boxes import box_iou

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


class Matcher:
    """Assigns each prediction (column) at most one ground-truth box (row)."""

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold {low_threshold} > high_threshold {high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """``match_quality_matrix``: ``G x N`` IoUs of G ground-truth boxes with N predictions.

        Returns ``N`` int64 indices in ``[0, G)``, or :data:`BELOW_LOW_THRESHOLD` /
        :data:`BETWEEN_THRESHOLDS`. With no ground truth every prediction is background.
        """
        g, n = match_quality_matrix.shape
        if g == 0:
            return torch.full(
                (n,), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=match_quality_matrix.device
            )
        best_iou, matches = match_quality_matrix.max(dim=0)
        original = matches.clone() if self.allow_low_quality_matches else None
        matches[best_iou < self.low_threshold] = BELOW_LOW_THRESHOLD
        between = (best_iou >= self.low_threshold) & (best_iou < self.high_threshold)
        matches[between] = BETWEEN_THRESHOLDS
        if original is not None:
            # For each ground-truth box, every prediction reaching its highest IoU (ties too) is
            # restored to its best match, whatever that IoU is.
            best_per_gt = match_quality_matrix.max(dim=1, keepdim=True).values
            _, pred_idx = torch.nonzero(match_quality_matrix == best_per_gt, as_tuple=True)
            matches[pred_idx] = original[pred_idx]
        return matches


def match_to_targets(matcher: Matcher, anchors: Tensor, targets: Sequence[dict[str, Tensor]]) -> Tensor:
    """``[N, M]``: for each image the matcher's result on ``box_iou(target boxes, anchors)`` (index of
    each anchor's object, or a negative code), all background for an image without objects. ``anchors``
    (``[M, 4]``) are shared by the images (dense detectors)."""
    matched = []
    for target in targets:
        if target["boxes"].numel() == 0:
            matched.append(
                torch.full((anchors.shape[0],), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=anchors.device)
            )
        else:
            matched.append(matcher(box_iou(target["boxes"], anchors)))
    return torch.stack(matched)


def matched_objects(
    matched: Tensor, targets: Sequence[dict[str, Tensor]]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The foreground anchors of ``matched`` (``[N, M]``, from :func:`match_to_targets`) and their
    objects: ``(image, anchor, boxes, labels)``, one row per foreground anchor of the batch."""
    image, anchor = torch.nonzero(matched >= 0, as_tuple=True)
    counts = torch.as_tensor([len(t["boxes"]) for t in targets], device=matched.device)
    obj = matched[image, anchor] + (torch.cumsum(counts, 0) - counts)[image]
    boxes = torch.cat([t["boxes"] for t in targets])[obj]
    labels = torch.cat([t["labels"] for t in targets])[obj]
    return image, anchor, boxes, labels

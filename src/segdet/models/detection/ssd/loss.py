"""SSD's training targets and loss (Liu et al., ECCV 2016, sec. 2.2, "Training").

**Matching.** Every object first takes the default box it overlaps most ("bipartite" step: no object
goes unmatched); then every default box with ``IoU > 0.5`` to some object is matched to the object it
overlaps most. Unmatched boxes are background (class 0). (Implemented as torchvision's ``SSDMatcher``:
``IoU >= 0.5`` for the second step; when one box is the best of several objects, the last object wins.)

**Loss**::

    L = (1 / N) (L_conf + L_loc)

with ``N`` the number of matched default boxes of the batch (``L = 0`` when ``N = 0``):

* ``L_loc``: smooth L1 (β = 1) between the predicted offsets and the matched object's box encoded
  relative to the default box, ``(g_cx - d_cx) / (0.1 d_w)``, ``log(g_w / d_w) / 0.2`` ... (the
  "variances" 0.1, 0.2: box coder weights ``(10, 10, 5, 5)``), summed over the matched boxes;
* ``L_conf``: softmax cross-entropy over the ``K + 1`` classes, summed over the matched boxes and the
  **hard negatives**: of each image's unmatched boxes, the ``3 P_i`` with the highest cross-entropy
  (``P_i`` the image's matched boxes; none in an image without objects), so that the easy background
  does not dominate (negatives : positives at most 3 : 1). Boxes a matcher left between its thresholds
  (:data:`~segdet.models.detection.matcher.BETWEEN_THRESHOLDS`) are neither: YOLACT's IoU 0.4-0.5
  "neutral" anchors (SSD's own matcher has one threshold and leaves none).

Reported as ``bbox_regression`` (``L_loc / N``) and ``classification`` (``L_conf / N``); equal to
torchvision's ``SSD.compute_loss`` (tested to 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from segdet.losses import cross_entropy_loss, smooth_l1_loss
from segdet.models.detection.matcher import BETWEEN_THRESHOLDS, Matcher, matched_objects
from segdet.ops import BoxCoder


class SSDMatcher(Matcher):
    """``IoU >= threshold`` matches, then each object's best default box (module docstring)."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__(threshold, threshold, allow_low_quality_matches=False)

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        matches = super().__call__(match_quality_matrix)
        if match_quality_matrix.shape[0]:
            best = match_quality_matrix.argmax(dim=1)
            matches[best] = torch.arange(len(best), device=matches.device)
        return matches


def ssd_loss(
    logits: Tensor,
    deltas: Tensor,
    boxes: Tensor,
    matched: Tensor,
    targets: Sequence[dict[str, Tensor]],
    box_coder: BoxCoder,
    neg_to_pos_ratio: float = 3.0,
) -> dict[str, Tensor]:
    """The losses of the module docstring (SSD's; YOLACT's class and box losses).

    Args:
        logits: ``[N, M, K + 1]`` class logits (0 = background).
        deltas: ``[N, M, 4]`` predicted offsets.
        boxes: ``[M, 4]`` default boxes (xyxy), shared by the images.
        matched: ``[N, M]`` from :func:`~segdet.models.detection.matcher.match_to_targets`.
        targets: per image ``boxes`` and ``labels`` (in ``1 .. K``).
        box_coder: the offset encoding (weights ``(10, 10, 5, 5)``).
        neg_to_pos_ratio: hard negatives per matched box (3).
    """
    foreground = matched >= 0
    image, box, gt_boxes, gt_labels = matched_objects(matched, targets)
    class_targets = torch.zeros_like(matched)
    class_targets[image, box] = gt_labels

    encoded = box_coder.encode_single(gt_boxes.to(deltas.dtype), boxes[box])
    box_loss = smooth_l1_loss(deltas[image, box], encoded, reduction="sum")

    num_classes = logits.shape[-1]
    ce = cross_entropy_loss(logits.reshape(-1, num_classes), class_targets.reshape(-1), reduction="none")
    ce = ce.view(matched.shape)
    # Hard negatives: rank each image's background boxes by their loss (matched boxes last).
    neutral = matched == BETWEEN_THRESHOLDS
    negative_loss = ce.detach().masked_fill(foreground | neutral, float("-inf"))
    rank = negative_loss.argsort(dim=1, descending=True).argsort(dim=1)
    # Ranked last, a neutral box could still fall within 3 P_i in an image with few negatives.
    hard_negative = (rank < neg_to_pos_ratio * foreground.sum(dim=1, keepdim=True)) & ~neutral
    num = max(1, int(foreground.sum()))
    return {
        "bbox_regression": box_loss / num,
        "classification": (ce[foreground].sum() + ce[hard_negative].sum()) / num,
    }

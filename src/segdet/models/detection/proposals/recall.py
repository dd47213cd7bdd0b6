"""Proposal recall: the fraction of ground-truth objects that some proposal covers.

An object is *recalled at IoU t by the top N* when one of the first ``N`` proposals of its image has
``IoU >= t`` with it (Uijlings et al. 2013, sec. 5; Hosang et al., "What makes for effective detection
proposals?", PAMI 2016). Average recall (AR) is that recall averaged over ``t`` in
``0.5, 0.55, ..., 0.95`` (Hosang et al.), which tracks detection AP better than any single ``t``.
Crowd regions are left out, as in COCO's evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from segdet.ops.boxes import box_iou

AR_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())


def best_overlaps(gt_boxes: np.ndarray, proposals: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """``[len(counts), G]``: for each ``N`` in ``counts``, each object's best IoU with the first ``N``
    proposals (0 without any)."""
    out = np.zeros((len(counts), len(gt_boxes)), dtype=np.float64)
    if len(gt_boxes) == 0 or len(proposals) == 0:
        return out
    iou = box_iou(torch.from_numpy(gt_boxes).double(), torch.from_numpy(proposals).double()).numpy()
    # running maximum over the proposals in rank order, read at each N
    running = np.maximum.accumulate(iou, axis=1)
    for i, n in enumerate(counts):
        out[i] = running[:, min(n, iou.shape[1]) - 1]
    return out


def proposal_recall(
    gt_boxes: Sequence[np.ndarray],
    proposals: Sequence[np.ndarray],
    counts: Sequence[int],
    thresholds: Sequence[float] = (0.5, 0.7),
) -> dict[str, list[float]]:
    """Recall at each IoU threshold and AR, for the top ``N`` of ``counts``, over all images.

    Args:
        gt_boxes: per image the ``[G_i, 4]`` xyxy objects (no crowd regions).
        proposals: per image the ``[R_i, 4]`` xyxy proposals, best first.
        counts: the ``N`` to report at.
        thresholds: IoU thresholds.

    Returns:
        ``{"recall@<t>": [...], "AR": [...]}``, one value per ``N``; ``nan`` without objects.
    """
    overlaps = [best_overlaps(g, p, counts) for g, p in zip(gt_boxes, proposals, strict=True)]
    best = np.concatenate(overlaps, axis=1) if overlaps else np.zeros((len(counts), 0))
    report: dict[str, list[float]] = {}
    for t in thresholds:
        report[f"recall@{t:g}"] = _mean(best >= t - 1e-12)
    report["AR"] = np.mean([_mean(best >= t - 1e-12) for t in AR_THRESHOLDS], axis=0).tolist()
    return report


def _mean(hit: np.ndarray) -> list[float]:
    if hit.shape[1] == 0:
        return [float("nan")] * hit.shape[0]
    return hit.mean(axis=1).tolist()

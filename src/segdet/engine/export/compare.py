"""Exported detections against PyTorch's (:func:`compare_detections`), robust to near-tied scores: the
same count, the scores equal as sorted lists, and each detection of distinct score found among the
exported ones with its label, score, box and mask probabilities, within the tolerances below."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from segdet.engine.export.program import Check

#: largest box (pixels) and score differences of paired detections (measured: 8e-4 px, 3e-6)
BOX_TOLERANCE, SCORE_TOLERANCE = 1e-2, 1e-4
#: largest mask probability difference of paired detections (Mask R-CNN's m x m masks)
MASK_TOLERANCE = 1e-3


def check_detections(expected: tuple[Tensor, ...], run, image: Tensor, where: str) -> Check:
    """:func:`compare_detections` of ``run(image)`` with ``expected``; a program that fails on the image
    (e.g. torch.export's guard refusing its size: a feature level would be 1 px, module docstring) fails
    the check in one line with the error's first line."""
    try:
        got = run(image)
    except (AssertionError, RuntimeError) as e:
        first = (str(e).splitlines() or [""])[0][:160]
        size = f"{image.shape[-2]} x {image.shape[-1]}"
        return Check(False, f"on {where}: the exported program fails on a {size} image ({first})")
    return compare_detections(expected, got, where)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def compare_detections(expected: tuple[Tensor, ...], got: tuple[Tensor, ...], where: str) -> Check:
    """Exported detections (``boxes, scores, labels`` and maybe ``masks``) against PyTorch's, robust to
    near-tied scores: the same count; the scores equal as sorted lists (``SCORE_TOLERANCE``); and each
    detection whose score is distinct (over ``SCORE_TOLERANCE`` from every other one) found among the
    exported ones with its label, its score and its box (``BOX_TOLERANCE`` px), and its mask
    probabilities (``MASK_TOLERANCE``). Tied detections may come in another order, or swap boxes at an
    NMS or cap decision between equals: both are float rounding."""
    (boxes, scores, labels), (got_boxes, got_scores, got_labels) = expected[:3], got[:3]
    if len(scores) != len(got_scores):
        return Check(False, f"on {where}: {_count(len(got_scores), 'detection')}, PyTorch {len(scores)}")
    if len(scores) == 0:
        return Check(True, f"on {where}: no detections, as PyTorch")
    score_difference = float((scores.sort().values - got_scores.sort().values).abs().max())
    gaps = (scores[:, None] - scores[None, :]).abs().fill_diagonal_(math.inf)
    distinct = gaps.min(dim=1).values > SCORE_TOLERANCE
    same = (labels[:, None] == got_labels[None, :]) & (
        (scores[:, None] - got_scores[None, :]).abs() <= SCORE_TOLERANCE
    )
    box_distance = torch.cdist(boxes.double(), got_boxes.double(), p=math.inf).masked_fill(~same, math.inf)
    nearest, match = box_distance.min(dim=1)
    box_difference = float(nearest[distinct].max()) if distinct.any() else 0.0
    ok = score_difference <= SCORE_TOLERANCE and box_difference <= BOX_TOLERANCE
    n_distinct, tied = int(distinct.sum()), ~distinct
    boxes_said = (
        f"the {n_distinct} of distinct score at their boxes within {box_difference:.1e} px"
        if n_distinct
        else "no box checked: every score ties with another (as an untrained model's do)"
    )
    if tied.any():  # said, not required: tied detections may swap boxes at an NMS or cap decision
        found = int((nearest[tied] <= BOX_TOLERANCE).sum())
        boxes_said += f"; {found} of the {int(tied.sum())} tied ones at an exported box of their score"
    summary = (
        f"on {where}: {_count(len(scores), 'detection')} as PyTorch, scores within "
        f"{score_difference:.1e}, {boxes_said}"
    )
    if len(expected) > 3 and distinct.any() and box_difference <= BOX_TOLERANCE:
        masks, got_masks = expected[3][distinct], got[3][match[distinct]]
        mask_difference = (
            float((masks - got_masks).abs().max()) if masks.shape == got_masks.shape else math.inf
        )
        ok = ok and mask_difference <= MASK_TOLERANCE
        summary += f", their mask probabilities within {mask_difference:.1e}"
    return Check(ok, summary)

"""Grouping, IoU and greedy matching of COCO detections, vectorised over all image–category groups.

This is ``COCOeval.evaluate`` (pycocotools, Lin et al., "Microsoft COCO", ECCV 2014) without its
per-image Python loops. Each (image, category) group's detections are ranked by score (stable, ties in
results order, as ``np.argsort(-score, kind='mergesort')``) and cut to ``maxDets[-1]``. Only
(detection, ground truth) pairs of the same group whose IoU reaches the smallest threshold can ever match,
so only those *candidate pairs* are kept. The greedy matching then runs one detection rank per step
(at most ``maxDets[-1]`` steps) for every group, IoU threshold and area range at once. For one detection
at threshold ``t`` and area range ``a`` pycocotools' loop amounts to:

* candidates: gts with ``IoU >= min(t, 1 - 1e-10)`` not yet matched at ``(t, a)`` (crowd gts stay
  available: they may absorb any number of detections);
* if a candidate is *not ignored* at ``a`` (not crowd, area inside the range), the match is the
  non-ignored candidate of largest IoU, else the ignored one of largest IoU; on equal IoU the **last**
  one in ground-truth order wins (pycocotools' ``ious < iou: continue`` lets equal values replace).

A detection matched to an ignored gt is ignored; an unmatched detection whose area is outside the range
is ignored too (``COCOeval.evaluateImg``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils


@dataclass(frozen=True)
class Groups:
    """Detections and ground truths sorted by group; ``key = image * Kg + category`` (``Kg = 1`` without
    categories). ``det`` / ``gt`` index the original arrays; detections beyond ``maxDets[-1]`` per group
    are dropped."""

    det: np.ndarray  # (D,) original detection index, sorted by (key, -score, category, results order)
    det_key: np.ndarray  # (D,)
    det_rank: np.ndarray  # (D,) 0-based rank by score inside the group
    gt: np.ndarray  # (N,) original gt index, sorted by (key, category, file order)
    gt_key: np.ndarray  # (N,)


def group(
    gt_image: np.ndarray,
    gt_cat: np.ndarray,
    dt_image: np.ndarray,
    dt_cat: np.ndarray,
    dt_score: np.ndarray,
    n_categories: int,
    use_cats: bool,
    max_det: int,
) -> Groups:
    """Sort once by group. The tie orders are those of pycocotools' lists: ``_gts[img, cat]`` in file
    order (without categories: concatenated in category-id order), detections likewise, then stably sorted
    by descending score."""
    kg = n_categories if use_cats else 1
    gt_key = gt_image * kg + (gt_cat if use_cats else 0)
    dt_key = dt_image * kg + (dt_cat if use_cats else 0)
    # lexsort is stable, so full ties keep file / results order
    if use_cats:  # the key already holds the category
        gt_order = np.argsort(gt_key, kind="stable")
        dt_order = np.lexsort((-dt_score, dt_key))
    else:
        gt_order = np.lexsort((gt_cat, gt_key))
        dt_order = np.lexsort((dt_cat, -dt_score, dt_key))
    sorted_key = dt_key[dt_order]
    first = np.searchsorted(sorted_key, sorted_key, side="left")
    rank = np.arange(len(sorted_key)) - first
    keep = rank < max_det
    return Groups(dt_order[keep], sorted_key[keep], rank[keep], gt_order, gt_key[gt_order])


def candidate_pairs(groups: Groups) -> tuple[np.ndarray, np.ndarray]:
    """All (detection position, gt position) pairs of the same group, as positions in ``groups``."""
    lo = np.searchsorted(groups.gt_key, groups.det_key, side="left")
    hi = np.searchsorted(groups.gt_key, groups.det_key, side="right")
    counts = hi - lo
    det_pos = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    gt_pos = np.repeat(lo - starts, counts) + np.arange(int(counts.sum()))
    return det_pos, gt_pos


def box_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Pairwise-aligned IoU of xywh boxes ``d[i]`` and ``g[i]``, bit-for-bit pycocotools' ``bbIou``.

    ``inter = w * h`` with ``w = min(dx + dw, gx + gw) - max(dx, gx)`` (no +1), 0 unless ``w > 0`` and
    ``h > 0``; ``union = dw*dh + gw*gh - inter``, or the detection's area ``dw*dh`` for crowd gts.
    """
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    inter = w * h
    da = d[:, 2] * d[:, 3]
    union = np.where(crowd, da, da + g[:, 2] * g[:, 3] - inter)
    overlap = (w > 0) & (h > 0)
    out = np.zeros(len(d))
    out[overlap] = inter[overlap] / union[overlap]
    return out


def mask_iou(
    det_pos: np.ndarray,
    gt_pos: np.ndarray,
    det_key: np.ndarray,
    dt_rles: list,
    gt_rles: list,
    crowd: np.ndarray,
) -> np.ndarray:
    """IoU of each (detection, gt) pair with pycocotools' ``mask.iou`` (the reference RLE kernel): one call
    per group, on the detections and gts that occur in its pairs. ``dt_rles``/``gt_rles`` are in group
    order; pairs must be sorted by (group, detection). ``rleIou`` first compares the RLEs' boxes and only
    walks the runs of overlapping pairs, so passing whole groups costs little."""
    out = np.zeros(len(det_pos))
    if len(det_pos) == 0:
        return out
    # local indices of each pair's detection / gt inside its group's call, computed once, vectorised
    det_u = np.flatnonzero(np.r_[True, det_pos[1:] != det_pos[:-1]])  # first pair of each detection
    det_local_u = np.cumsum(np.r_[True, det_pos[1:] != det_pos[:-1]]) - 1
    key = det_key[det_pos]
    g_new = np.r_[True, key[1:] != key[:-1]]
    bounds = np.flatnonzero(np.r_[g_new, True])
    group_first_det = np.maximum.accumulate(np.where(g_new, det_local_u, 0))
    det_local = det_local_u - group_first_det
    gts = np.unique(gt_pos)
    gt_idx = np.searchsorted(gts, gt_pos)
    group_first_gt = np.minimum.reduceat(gt_idx, bounds[:-1])
    gt_local = gt_idx - np.repeat(group_first_gt, np.diff(bounds))
    group_last_gt = np.maximum.reduceat(gt_idx, bounds[:-1])
    dets_in_order = det_pos[det_u]
    crowd_u = crowd[gts].astype(np.uint8).tolist()
    du_bounds = det_local_u[bounds[:-1]]
    du_ends = np.r_[du_bounds[1:], len(dets_in_order)]
    for i, (lo, hi) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)):
        d_list = [dt_rles[j] for j in dets_in_order[du_bounds[i] : du_ends[i]].tolist()]
        g0, g1 = int(group_first_gt[i]), int(group_last_gt[i]) + 1
        g_list = [gt_rles[j] for j in gts[g0:g1].tolist()]
        ious = np.asarray(mask_utils.iou(d_list, g_list, crowd_u[g0:g1])).reshape(len(d_list), len(g_list))
        out[lo:hi] = ious[det_local[lo:hi], gt_local[lo:hi]]
    return out


@dataclass(frozen=True)
class MatchResult:
    """Matching outcome of the detections that have at least one candidate pair (``det``, positions in
    ``Groups`` order, ascending), per IoU threshold ``T`` and area range ``A``. Every other detection is
    unmatched everywhere: never a true positive, counted (as a false positive) iff its area is in range."""

    det: np.ndarray  # (U,)
    true_positive: np.ndarray  # (U, T, A) bool: matched to a gt with nonzero id, not ignored
    counted: np.ndarray  # (U, T, A) bool: not ignored (a true or false positive)


def greedy_match(
    det_pos: np.ndarray,
    gt_pos: np.ndarray,
    iou: np.ndarray,
    det_rank: np.ndarray,
    gt_ignore: np.ndarray,
    gt_crowd: np.ndarray,
    gt_nonzero_id: np.ndarray,
    det_outside: np.ndarray,
    thresholds: np.ndarray,
) -> MatchResult:
    """pycocotools' greedy matching for all groups, thresholds and area ranges at once.

    ``det_pos``/``gt_pos``/``iou``: the candidate pairs (any order); ``gt_ignore`` (N, A) and
    ``det_outside`` (D, A) are the area-range flags; ``thresholds`` are the IoU thresholds ``T``.
    """
    n_thr, n_area = len(thresholds), gt_ignore.shape[1]
    thr = np.minimum(thresholds, 1 - 1e-10)  # pycocotools: iou = min([t, 1 - 1e-10])
    keep = iou >= thr.min()
    det_pos, gt_pos, iou = det_pos[keep], gt_pos[keep], iou[keep]
    order = np.lexsort((gt_pos, det_pos, det_rank[det_pos]))
    det_pos, gt_pos, iou = det_pos[order], gt_pos[order], iou[order]
    touched = np.unique(det_pos)

    taken = np.zeros((len(gt_ignore), n_thr, n_area), bool)  # gt matched at (t, a)
    matched_ignored = np.zeros((len(touched), n_thr, n_area), bool)
    matched_nonzero = np.zeros((len(touched), n_thr, n_area), bool)
    rank = det_rank[det_pos]
    step_bounds = np.flatnonzero(np.r_[True, rank[1:] != rank[:-1], True]) if len(rank) else np.zeros(1, int)
    t_idx = np.arange(n_thr)[None, :, None]
    a_idx = np.arange(n_area)[None, None, :]
    for lo, hi in zip(step_bounds[:-1].tolist(), step_bounds[1:].tolist(), strict=True):
        # one detection rank: at most one detection per group, so groups never compete within a step
        d, g, v = det_pos[lo:hi], gt_pos[lo:hi], iou[lo:hi]
        new_det = np.r_[True, d[1:] != d[:-1]]
        seg_start = np.flatnonzero(new_det)
        seg = np.cumsum(new_det) - 1
        ok = (v[:, None, None] >= thr[None, :, None]) & (~taken[g] | gt_crowd[g][:, None, None])
        ign = gt_ignore[g][:, None, :]
        val = v[:, None, None]
        v_reg = np.where(ok & ~ign, val, -1.0)
        v_ign = np.where(ok & ign, val, -1.0)
        best_reg = np.maximum.reduceat(v_reg, seg_start, axis=0)
        best_ign = np.maximum.reduceat(v_ign, seg_start, axis=0)
        use_reg = best_reg >= 0  # a non-ignored candidate exists: it always wins
        best = np.where(use_reg, best_reg, best_ign)
        chosen_val = np.where(use_reg[seg], v_reg, v_ign)
        hit = (chosen_val == best[seg]) & (chosen_val >= 0)
        # the last candidate (in gt order) holding the best IoU
        pick = np.maximum.reduceat(np.where(hit, np.arange(hi - lo)[:, None, None], -1), seg_start, axis=0)
        found = pick >= 0
        gt_pick = g[np.maximum(pick, 0)]  # (S, T, A)
        t_b, a_b = np.broadcast_to(t_idx, pick.shape), np.broadcast_to(a_idx, pick.shape)
        taken[gt_pick[found], t_b[found], a_b[found]] = True
        u = np.searchsorted(touched, d[seg_start])
        matched_ignored[u] = found & gt_ignore[gt_pick, a_b]
        matched_nonzero[u] = found & gt_nonzero_id[gt_pick]

    # pycocotools keeps gt *ids* in dtMatches and tests them for != 0, so a gt with id 0 counts as no match
    ignored = matched_ignored | (~matched_nonzero & det_outside[touched][:, None, :])
    return MatchResult(touched, matched_nonzero & ~ignored, ~ignored)

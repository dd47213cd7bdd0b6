"""Precision/recall accumulation and the 12 summary numbers of COCO evaluation, vectorised.

Implements ``COCOeval.accumulate`` and ``COCOeval.summarize`` (pycocotools) for every category, area
range and maxDets at once. For one (category k, area a, maxDets m, threshold t), pycocotools concatenates
the top-m detections of every image (image order), sorts them by score (stable), and with cumulative
counts ``tp_i``, ``fp_i`` over that list computes

    recall_i = tp_i / npig,   precision_i = tp_i / (fp_i + tp_i + eps),   eps = np.spacing(1)

then makes precision non-increasing from the right and reads it at the first index whose recall reaches
each of the 101 recall thresholds (``searchsorted(side='left')``; 0 past the end); ``recall = tp_n / npig``.
npig = number of non-ignored gts; with npig = 0 everything stays -1.

Two facts keep this cheap without changing a bit of the result: (1) precision only rises at true
positives, so the right-to-left maximum at any index equals the maximum over the true positives from that
index on; (2) the first index reaching recall ``r`` is the position of the c-th true positive, with c the
smallest integer such that ``c / npig >= r`` in floating point. So only true-positive *events* are
materialised, and the 101 look-ups become segment maxima (``np.maximum.reduceat``) plus a reverse
cumulative maximum over the 101 recall points.
"""

from __future__ import annotations

import numpy as np


def min_true_positives(npig: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """Smallest integer ``c >= 0`` with ``float(c) / npig >= r`` (exactly as numpy divides), shape
    ``npig.shape + (R,)``; ``npig`` must be positive where it matters (0 gives garbage, masked later)."""
    n = np.maximum(npig, 1)[..., None].astype(np.int64)
    c = np.maximum(np.ceil(rec_thrs * n).astype(np.int64), 0)
    for _ in range(4):  # ceil(r * n) is off by at most one from the exact answer
        c = c - ((c > 0) & ((c - 1) / n >= rec_thrs))
        c = c + (c / n < rec_thrs)
    return c


def accumulate(
    touched: np.ndarray,
    touched_tp: np.ndarray,
    touched_counted: np.ndarray,
    det_outside: np.ndarray,
    det_cat: np.ndarray,
    det_rank: np.ndarray,
    det_score: np.ndarray,
    npig: np.ndarray,
    max_dets: list[int],
    rec_thrs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``precision`` (T, R, K, A, M), ``recall`` (T, K, A, M) and ``scores`` (T, R, K, A, M) as
    ``COCOeval.eval``.

    Detections come in group order (by image, then category, then rank), described by ``det_cat``,
    ``det_rank``, ``det_score`` (D,) and ``det_outside`` (D, A), the area-range test. Only the ``touched``
    detections (U,) can be matched; ``touched_tp``/``touched_counted`` (U, T, A) say whether each is a true
    positive / not ignored; every other detection is counted iff its area is in range. ``npig`` (K, A):
    non-ignored gts.
    """
    n_thr, n_area = touched_tp.shape[1], det_outside.shape[1]
    n_cat, n_rec, n_max = len(npig), len(rec_thrs), len(max_dets)
    # pycocotools: per image (in image order) top dets by score, concatenated, then a stable score sort;
    # the group order is already (image, rank) inside each category, so a stable (category, -score) sort
    order = np.lexsort((-det_score, det_cat))
    rank_sorted, cat_sorted, score_sorted = det_rank[order], det_cat[order], det_score[order]
    counted_default = ~det_outside  # (D, A) for the detections that match nothing
    delta_touched = touched_counted.astype(np.int64) - counted_default[touched][:, None, :]

    rows, counts, scores_ev = [], [], []
    seg_len = np.zeros((n_max, n_cat), np.int64)
    first_score = np.zeros((n_max, n_cat))
    cats = np.arange(n_cat)
    pos_of = np.empty(len(det_cat), np.int64)
    for m, max_det in enumerate(max_dets):
        sel = order[rank_sorted < max_det]  # group positions of the top-m detections, in sorted order
        cat_m = cat_sorted[rank_sorted < max_det]
        score_m = score_sorted[rank_sorted < max_det]
        start = np.searchsorted(cat_m, cats, side="left")
        seg_len[m] = np.searchsorted(cat_m, cats, side="right") - start
        first_score[m] = np.where(seg_len[m] > 0, np.r_[score_m, 0.0][start], 0.0)
        # counted detections so far = tp + fp: the default count ...
        cum_a = np.cumsum(counted_default[sel], axis=0, dtype=np.int64)  # (D_m, A)
        base_a = np.where(start[None, :] > 0, np.r_[np.zeros((1, n_area), np.int64), cum_a][start].T, 0)
        # ... corrected by the matched detections (sparse)
        pos_of.fill(-1)
        pos_of[sel] = np.arange(len(sel))
        tpos = pos_of[touched]
        u = np.flatnonzero(tpos >= 0)
        u = u[np.argsort(tpos[u], kind="stable")]
        tpos = tpos[u]
        ucat = cat_m[tpos]
        cd = np.cumsum(delta_touched[u].transpose(1, 2, 0), axis=-1)  # (T, A, U_m)
        ustart = np.searchsorted(ucat, cats, side="left")
        cd_pad = np.concatenate([np.zeros((n_thr, n_area, 1), np.int64), cd], axis=-1)
        cd_base = cd_pad[:, :, ustart]  # (T, A, K) correction before each category's segment
        t_e, a_e, u_e = np.nonzero(touched_tp[u].transpose(1, 2, 0))  # sorted by (t, a, k, position)
        pos_e, k_e = tpos[u_e], ucat[u_e]
        rows.append(((m * n_thr + t_e) * n_area + a_e) * n_cat + k_e)
        counts.append(cum_a[pos_e, a_e] - base_a[a_e, k_e] + cd[t_e, a_e, u_e] - cd_base[t_e, a_e, k_e])
        scores_ev.append(score_m[pos_e])
    row = np.concatenate(rows)
    n_counted = np.concatenate(counts)
    score_e = np.concatenate(scores_ev)
    n_rows = n_max * n_thr * n_area * n_cat
    row_start = np.searchsorted(row, np.arange(n_rows), side="left")
    row_end = np.searchsorted(row, np.arange(n_rows), side="right")
    ntp = row_end - row_start
    tp_count = (np.arange(len(row)) - row_start[row] + 1).astype(np.float64)
    prec_e = tp_count / (n_counted.astype(np.float64) + np.spacing(1))

    # (M, T, A, K) views of the per-row quantities
    shape = (n_max, n_thr, n_area, n_cat)
    c = min_true_positives(npig.T, rec_thrs)  # (A, K, R)
    c_rows = np.broadcast_to(c[None, None], (*shape, n_rec)).reshape(n_rows, n_rec)
    c_eff = np.maximum(c_rows, 1)  # recall 0 is reached at index 0; the max from there = max over all tps
    valid = c_eff <= ntp[:, None]
    pos = np.where(valid, row_start[:, None] + c_eff - 1, row_end[:, None])  # event index of the c-th tp
    bounds = np.concatenate([pos, row_end[:, None]], axis=1)
    seg_max = np.maximum.reduceat(np.r_[prec_e, -np.inf], bounds.ravel()).reshape(n_rows, n_rec + 1)[
        :, :n_rec
    ]
    seg_max = np.where(bounds[:, :-1] < bounds[:, 1:], seg_max, -np.inf)
    suffix_max = np.maximum.accumulate(seg_max[:, ::-1], axis=1)[:, ::-1]
    q = np.where(valid, suffix_max, 0.0)

    nd = np.broadcast_to(seg_len[:, None, None, :], shape).reshape(n_rows)
    first = np.broadcast_to(first_score[:, None, None, :], shape).reshape(n_rows)
    ss = np.where(valid, np.r_[score_e, 0.0][np.minimum(pos, len(score_e))], 0.0)
    ss = np.where((c_rows == 0) & (nd[:, None] > 0), first[:, None], ss)
    npig_rows = np.broadcast_to(npig.T[None, None], shape).reshape(n_rows)
    rec = ntp / np.maximum(npig_rows, 1)

    defined = npig_rows > 0
    q = np.where(defined[:, None], q, -1.0).reshape(*shape, n_rec)
    ss = np.where(defined[:, None], ss, -1.0).reshape(*shape, n_rec)
    rec = np.where(defined, rec, -1.0).reshape(shape)
    # (M, T, A, K, R) -> (T, R, K, A, M)
    precision = np.ascontiguousarray(q.transpose(1, 4, 3, 2, 0))
    scores = np.ascontiguousarray(ss.transpose(1, 4, 3, 2, 0))
    recall = np.ascontiguousarray(rec.transpose(1, 3, 2, 0))
    return precision, recall, scores


def summarize(
    precision: np.ndarray,
    recall: np.ndarray,
    iou_thrs: np.ndarray,
    area_labels: list[str],
    max_dets: list[int],
) -> np.ndarray:
    """The 12 numbers of ``COCOeval.summarize`` (means over entries > -1; -1 when there are none), with the
    same indexing so the floating-point sums are identical. The first number uses ``max_dets[-1]`` where
    pycocotools hard-codes 100 (the same for the default max_dets)."""

    def one(ap: bool, iou_thr: float | None = None, area: str = "all", max_det: int = max_dets[-1]) -> float:
        aind = [i for i, lbl in enumerate(area_labels) if lbl == area]
        mind = [i for i, md in enumerate(max_dets) if md == max_det]
        s = precision if ap else recall
        if iou_thr is not None:
            s = s[np.where(iou_thr == iou_thrs)[0]]
        s = s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]
        return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

    m0, m1, m2 = max_dets
    return np.array(
        [
            one(True),
            one(True, 0.5, max_det=m2),
            one(True, 0.75, max_det=m2),
            one(True, area="small", max_det=m2),
            one(True, area="medium", max_det=m2),
            one(True, area="large", max_det=m2),
            one(False, max_det=m0),
            one(False, max_det=m1),
            one(False, max_det=m2),
            one(False, area="small", max_det=m2),
            one(False, area="medium", max_det=m2),
            one(False, area="large", max_det=m2),
        ]
    )

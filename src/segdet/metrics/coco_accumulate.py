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
    per_m = []
    for m, max_det in enumerate(max_dets):
        top = rank_sorted < max_det
        per_m.append(
            _top_m_events(
                m,
                order[top],  # group positions of the top-m detections, in sorted order
                cat_sorted[top],
                score_sorted[top],
                counted_default,
                touched,
                touched_tp,
                delta_touched,
                n_cat,
            )
        )
    seg_lens, first_scores, rows, counts, scores_ev = zip(*per_m, strict=True)
    seg_len, first_score = np.stack(seg_lens), np.stack(first_scores)  # (M, K)
    row, n_counted, score_e = np.concatenate(rows), np.concatenate(counts), np.concatenate(scores_ev)
    n_rows = n_max * n_thr * n_area * n_cat
    row_start, row_end, prec_e = _event_precision(row, n_counted, n_rows)

    # (M, T, A, K) views of the per-row quantities
    shape = (n_max, n_thr, n_area, n_cat)
    c = min_true_positives(npig.T, rec_thrs)  # (A, K, R)
    c_rows = np.broadcast_to(c[None, None], (*shape, n_rec)).reshape(n_rows, n_rec)
    valid, pos, q = _precision_at_recalls(prec_e, row_start, row_end, c_rows)
    ss = _scores_at_recalls(score_e, valid, pos, c_rows, seg_len, first_score, shape)
    return _eval_layout(q, ss, row_end - row_start, npig, shape)


def _top_m_events(
    m: int,
    sel: np.ndarray,
    cat_m: np.ndarray,
    score_m: np.ndarray,
    counted_default: np.ndarray,
    touched: np.ndarray,
    touched_tp: np.ndarray,
    delta_touched: np.ndarray,
    n_cat: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The true-positive events of the ``m``-th maxDets, and its per-category segments.

    ``sel`` (D_m,): group positions of the top-m detections in (category, -score) order, ``cat_m`` and
    ``score_m`` (D_m,) their categories and scores. ``counted_default`` (D, A): the count of a detection
    that matches nothing (area in range); ``touched`` (U,), ``touched_tp`` (U, T, A) and ``delta_touched``
    (U, T, A) = counted - ``counted_default`` describe the matched ones.

    Returns ``seg_len`` (K,), the top-m detections per category, ``first_score`` (K,), the score of each
    category's first (0 without any), and per event (E_m,), sorted by (t, a, k, position): its row (flat
    (M, T, A, K) index), the number of counted detections (tp + fp) up to it, and its score.
    """
    n_thr, n_area = touched_tp.shape[1], counted_default.shape[1]
    start, seg_len, first_score = _category_segments(cat_m, score_m, n_cat)
    cats = np.arange(n_cat)
    # counted detections so far = tp + fp: the default count ...
    cum_a = np.cumsum(counted_default[sel], axis=0, dtype=np.int64)  # (D_m, A)
    base_a = np.where(start[None, :] > 0, np.r_[np.zeros((1, n_area), np.int64), cum_a][start].T, 0)
    # ... corrected by the matched detections (sparse)
    u, tpos = _touched_in_order(sel, touched, len(counted_default))
    ucat = cat_m[tpos]
    cd = np.cumsum(delta_touched[u].transpose(1, 2, 0), axis=-1)  # (T, A, U_m)
    ustart = np.searchsorted(ucat, cats, side="left")
    cd_pad = np.concatenate([np.zeros((n_thr, n_area, 1), np.int64), cd], axis=-1)
    cd_base = cd_pad[:, :, ustart]  # (T, A, K) correction before each category's segment
    t_e, a_e, u_e = np.nonzero(touched_tp[u].transpose(1, 2, 0))  # sorted by (t, a, k, position)
    pos_e, k_e = tpos[u_e], ucat[u_e]
    row = ((m * n_thr + t_e) * n_area + a_e) * n_cat + k_e
    n_counted = cum_a[pos_e, a_e] - base_a[a_e, k_e] + cd[t_e, a_e, u_e] - cd_base[t_e, a_e, k_e]
    return seg_len, first_score, row, n_counted, score_m[pos_e]


def _category_segments(
    cat_m: np.ndarray, score_m: np.ndarray, n_cat: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``start``, ``seg_len`` and ``first_score`` (K,): where each category's run begins in the sorted
    ``cat_m`` (D_m,), its length, and the score (``score_m``, D_m) at its start (0 for an empty run)."""
    cats = np.arange(n_cat)
    start = np.searchsorted(cat_m, cats, side="left")
    seg_len = np.searchsorted(cat_m, cats, side="right") - start
    first_score = np.where(seg_len > 0, np.r_[score_m, 0.0][start], 0.0)
    return start, seg_len, first_score


def _touched_in_order(sel: np.ndarray, touched: np.ndarray, n_det: int) -> tuple[np.ndarray, np.ndarray]:
    """The touched detections among the selected ones, in selection order: ``u`` (U_m,), indices into
    ``touched`` (U,), and ``tpos`` (U_m,), their positions in ``sel`` (D_m,); ``n_det`` = D."""
    pos_of = np.full(n_det, -1, np.int64)
    pos_of[sel] = np.arange(len(sel))
    tpos = pos_of[touched]
    u = np.flatnonzero(tpos >= 0)
    u = u[np.argsort(tpos[u], kind="stable")]
    return u, tpos[u]


def _event_precision(
    row: np.ndarray, n_counted: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the true-positive events (E,) sorted by ``row`` (flat (M, T, A, K) index, then position):
    ``row_start``/``row_end`` (n_rows,), each row's span of events, and ``prec_e`` (E,), the precision at
    each event, its true-positive count over ``n_counted`` (E,), the counted detections up to it."""
    row_start = np.searchsorted(row, np.arange(n_rows), side="left")
    row_end = np.searchsorted(row, np.arange(n_rows), side="right")
    tp_count = (np.arange(len(row)) - row_start[row] + 1).astype(np.float64)
    prec_e = tp_count / (n_counted.astype(np.float64) + np.spacing(1))
    return row_start, row_end, prec_e


def _precision_at_recalls(
    prec_e: np.ndarray, row_start: np.ndarray, row_end: np.ndarray, c_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interpolated precision at the R recall thresholds, per row (n_rows = M * T * A * K).

    ``prec_e`` (E,): precision at each true-positive event; ``row_start``/``row_end`` (n_rows,): each row's
    events; ``c_rows`` (n_rows, R): true positives needed per threshold (:func:`min_true_positives`).
    Returns ``valid`` (n_rows, R), the threshold is reached; ``pos`` (n_rows, R), the event index of the
    c-th true positive (``row_end`` if not reached); ``q`` (n_rows, R), the precision (0 if not reached).
    """
    n_rows, n_rec = c_rows.shape
    ntp = row_end - row_start
    c_eff = np.maximum(c_rows, 1)  # recall 0 is reached at index 0; the max from there = max over all tps
    valid = c_eff <= ntp[:, None]
    pos = np.where(valid, row_start[:, None] + c_eff - 1, row_end[:, None])  # event index of the c-th tp
    bounds = np.concatenate([pos, row_end[:, None]], axis=1)
    seg_max = np.maximum.reduceat(np.r_[prec_e, -np.inf], bounds.ravel()).reshape(n_rows, n_rec + 1)[
        :, :n_rec
    ]
    seg_max = np.where(bounds[:, :-1] < bounds[:, 1:], seg_max, -np.inf)
    suffix_max = np.maximum.accumulate(seg_max[:, ::-1], axis=1)[:, ::-1]
    return valid, pos, np.where(valid, suffix_max, 0.0)


def _scores_at_recalls(
    score_e: np.ndarray,
    valid: np.ndarray,
    pos: np.ndarray,
    c_rows: np.ndarray,
    seg_len: np.ndarray,
    first_score: np.ndarray,
    shape: tuple[int, int, int, int],
) -> np.ndarray:
    """The detection score at each recall threshold, (n_rows, R): that of the event ``pos`` (n_rows, R)
    where ``valid``, else 0; for a threshold needing no true positive (``c_rows`` == 0) the category's first
    score ``first_score`` (M, K) if it has detections (``seg_len`` (M, K) > 0). ``score_e`` (E,): event
    scores; ``shape`` = (M, T, A, K)."""
    n_rows = c_rows.shape[0]
    nd = np.broadcast_to(seg_len[:, None, None, :], shape).reshape(n_rows)
    first = np.broadcast_to(first_score[:, None, None, :], shape).reshape(n_rows)
    ss = np.where(valid, np.r_[score_e, 0.0][np.minimum(pos, len(score_e))], 0.0)
    return np.where((c_rows == 0) & (nd[:, None] > 0), first[:, None], ss)


def _eval_layout(
    q: np.ndarray, ss: np.ndarray, ntp: np.ndarray, npig: np.ndarray, shape: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``precision`` (T, R, K, A, M), ``recall`` (T, K, A, M) and ``scores`` (T, R, K, A, M) from the rows'
    precision ``q`` and scores ``ss`` (n_rows, R) and true-positive counts ``ntp`` (n_rows,), rows in
    ``shape`` = (M, T, A, K) order; -1 where ``npig`` (K, A), the non-ignored gts, is 0."""
    n_rows, n_rec = q.shape
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

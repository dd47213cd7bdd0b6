"""COCO detection evaluation (``bbox`` and ``segm``), numerically identical to pycocotools' ``COCOeval``.

The protocol is COCO's (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014; reference code
pycocotools ``cocoeval.py``): IoU thresholds 0.50:0.05:0.95, 101 recall points, greedy matching in score
order with crowd objects as ignore regions (crowd IoU = intersection / detection area), area ranges
all/small/medium/large, maxDets 1/10/100, and the 12 standard numbers. The work is split as

* :mod:`.coco_data` – reading and validating ground truth and results (``loadRes`` semantics);
* :mod:`.coco_match` – grouping, IoU of candidate pairs and the greedy matching, vectorised over all
  (image, category) groups, thresholds and area ranges, one detection rank per step;
* :mod:`.coco_accumulate` – precision/recall curves and the summary numbers.

Differences from pycocotools, none of which changes a number on valid input: bad input raises
:class:`segdet.errors.DataError` (see :mod:`.coco_data`); an empty results list is valid and evaluates
as "no detections" (pycocotools' ``loadRes`` crashes on it; a COCOeval run with an empty results set
gives precision and recall 0 for every category with ground truth, which is what we return); the first
summary number uses ``max_dets[-1]`` where pycocotools hard-codes 100.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike

import numpy as np

from segdet.errors import ConfigError
from segdet.metrics.coco_accumulate import accumulate, summarize
from segdet.metrics.coco_data import CocoDetections, CocoGroundTruth, read_detections, read_ground_truth
from segdet.metrics.coco_match import (
    Groups,
    MatchResult,
    box_iou,
    candidate_pairs,
    greedy_match,
    group,
    mask_iou,
)

#: pycocotools' default area ranges (pixel areas), label -> (min, max), both ends inclusive.
DEFAULT_AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0**2, 1e5**2),
    "small": (0.0**2, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}

STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

_STAT_LAYOUT = (  # (AP?, iou, area, maxDets index) of the 12 numbers, for the printed summary
    (True, None, "all", 2),
    (True, 0.5, "all", 2),
    (True, 0.75, "all", 2),
    (True, None, "small", 2),
    (True, None, "medium", 2),
    (True, None, "large", 2),
    (False, None, "all", 0),
    (False, None, "all", 1),
    (False, None, "all", 2),
    (False, None, "small", 2),
    (False, None, "medium", 2),
    (False, None, "large", 2),
)


@dataclass(frozen=True)
class CocoEvalResult:
    """What ``COCOeval`` leaves in ``stats`` and ``eval``, plus per-class AP.

    ``precision`` (T, R, K, A, M) and ``scores`` (T, R, K, A, M), ``recall`` (T, K, A, M): -1 where a
    category has no non-ignored ground truth in that area range. ``per_class_ap[name]``: AP@[.5:.95],
    area "all", the largest maxDets, i.e. the mean of ``precision[:, :, k, all, -1]``; NaN for a category
    without ground truth (where pycocotools' arrays hold -1). With ``use_cats=False`` K = 1 and
    ``per_class_ap`` has the single key ``"all"``.
    """

    stats: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    per_class_ap: dict[str, float]
    category_ids: list[int]
    iou_type: str
    iou_thrs: np.ndarray
    area_labels: tuple[str, ...]
    max_dets: tuple[int, ...]
    num_images: int = 0  # ground-truth images
    num_images_with_detections: int = 0
    num_detections: int = 0

    def summary(self) -> str:
        """The 12 lines ``COCOeval.summarize`` prints, in the same layout."""
        lines = []
        for value, (ap, iou, area, m) in zip(self.stats.tolist(), _STAT_LAYOUT, strict=True):
            iou_str = f"{self.iou_thrs[0]:0.2f}:{self.iou_thrs[-1]:0.2f}" if iou is None else f"{iou:0.2f}"
            title, kind = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
            lines.append(
                f" {title:<18} {kind} @[ IoU={iou_str:<9} | area={area:>6s} | "
                f"maxDets={self.max_dets[m]:>3d} ] = {value:0.3f}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """``{"AP": ..., ..., "ARl": ..., "per_class": {name: AP}}`` with Python floats."""
        out: dict = {k: float(v) for k, v in zip(STAT_KEYS, self.stats.tolist(), strict=True)}
        out["per_class"] = dict(self.per_class_ap)
        return out


def _check_params(
    iou_type: str, max_dets: Sequence[int], iou_thrs: Sequence[float] | None, area_ranges: Mapping | None
) -> tuple[list[int], np.ndarray, list[str], np.ndarray]:
    if iou_type not in ("bbox", "segm"):
        raise ConfigError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    max_dets = sorted(int(m) for m in max_dets)  # pycocotools sorts them too
    if len(max_dets) != 3 or max_dets[0] < 1 or len(set(max_dets)) != 3:
        raise ConfigError(f"max_dets must be 3 distinct positive integers, got {max_dets}")
    if iou_thrs is None:
        thrs = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
    else:
        thrs = np.asarray(iou_thrs, dtype=np.float64).reshape(-1)
        if len(thrs) == 0 or not ((thrs > 0) & (thrs <= 1)).all():
            raise ConfigError(f"iou_thrs must be non-empty and in (0, 1], got {list(iou_thrs)}")
    ranges = DEFAULT_AREA_RANGES if area_ranges is None else dict(area_ranges)
    if not ranges:
        raise ConfigError("area_ranges must not be empty")
    labels = [str(k) for k in ranges]
    try:
        rng = np.asarray([[float(lo), float(hi)] for lo, hi in ranges.values()], dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"area_ranges values must be (min, max) pairs, got {ranges}") from None
    return max_dets, thrs, labels, rng


def evaluate_coco(
    gt: dict | str | PathLike,
    dt: list[dict] | str | PathLike,
    iou_type: str = "bbox",
    *,
    max_dets: Sequence[int] = (1, 10, 100),
    iou_thrs: Sequence[float] | None = None,
    area_ranges: Mapping[str, tuple[float, float]] | None = None,
    use_cats: bool = True,
) -> CocoEvalResult:
    """Evaluate COCO results against COCO ground truth like ``COCOeval(gt, gt.loadRes(dt), iou_type)``.

    Args:
        gt: ground-truth dict (``images``, ``annotations``, ``categories``) or the path of its JSON.
        dt: results list (``image_id``, ``category_id``, ``score`` and ``bbox`` xywh and/or
            ``segmentation``) or the path of its JSON. Not modified.
        iou_type: ``"bbox"`` or ``"segm"``.
        max_dets: the three maxDets values (detections kept per image and category).
        iou_thrs: IoU thresholds; default 0.50:0.05:0.95 as pycocotools' ``np.linspace``.
        area_ranges: ``{label: (min_area, max_area)}``; default all/small/medium/large. The summary reads the
            labels "all", "small", "medium", "large" (-1 for a missing one).
        use_cats: False evaluates class-agnostically, like ``params.useCats = 0``.

    Raises:
        DataError: unreadable or malformed ground truth or results (one line naming file and record).
        ConfigError: bad parameters.
    """
    max_list, thrs, labels, area_rng = _check_params(iou_type, max_dets, iou_thrs, area_ranges)
    rec_thrs = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
    truth = read_ground_truth(gt, iou_type)
    dets = read_detections(dt, truth, iou_type)
    n_cat = len(truth.category_ids) if use_cats else 1

    groups = group(
        truth.image, truth.category, dets.image, dets.category, dets.score, n_cat, use_cats, max_list[-1]
    )
    gt_ignore, det_outside = _area_flags(truth, dets, groups, area_rng)
    match = _match(truth, dets, groups, iou_type, gt_ignore, det_outside, thrs)
    precision, recall, scores = _precision_recall(
        truth, dets, groups, match, gt_ignore, det_outside, n_cat, use_cats, max_list, rec_thrs
    )
    stats = summarize(precision, recall, thrs, labels, max_list)
    return CocoEvalResult(
        stats,
        precision,
        recall,
        scores,
        _per_class_ap(precision, truth, labels, use_cats),
        truth.category_ids.tolist(),
        iou_type,
        thrs,
        tuple(labels),
        tuple(max_list),
        len(truth.image_ids),
        len(np.unique(dets.image)),
        len(dets.image),
    )


def _area_flags(
    truth: CocoGroundTruth, dets: CocoDetections, groups: Groups, area_rng: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``gt_ignore`` (N, A): gt ``groups.gt`` is crowd or its area is outside range a, and ``det_outside``
    (D, A): detection ``groups.det`` has its area outside range a; ``area_rng`` (A, 2), inclusive ends."""
    gt_area = truth.area[groups.gt]
    lo, hi = area_rng[:, 0], area_rng[:, 1]
    gt_ignore = truth.crowd[groups.gt][:, None] | (gt_area[:, None] < lo) | (gt_area[:, None] > hi)  # (N, A)
    det_area = dets.area[groups.det]
    det_outside = (det_area[:, None] < lo) | (det_area[:, None] > hi)  # (D, A)
    return gt_ignore, det_outside


def _match(
    truth: CocoGroundTruth,
    dets: CocoDetections,
    groups: Groups,
    iou_type: str,
    gt_ignore: np.ndarray,
    det_outside: np.ndarray,
    thrs: np.ndarray,
) -> MatchResult:
    """Greedy matching of every group's candidate pairs at the IoU thresholds ``thrs`` (T,), with the
    area-range flags ``gt_ignore`` (N, A) and ``det_outside`` (D, A) of :func:`_area_flags`."""
    det_pos, gt_pos = candidate_pairs(groups)
    iou = _pair_iou(truth, dets, groups, det_pos, gt_pos, iou_type)
    return greedy_match(
        det_pos,
        gt_pos,
        iou,
        groups.det_rank,
        gt_ignore,
        truth.crowd[groups.gt],
        truth.nonzero_id[groups.gt],
        det_outside,
        thrs,
    )


def _precision_recall(
    truth: CocoGroundTruth,
    dets: CocoDetections,
    groups: Groups,
    match: MatchResult,
    gt_ignore: np.ndarray,
    det_outside: np.ndarray,
    n_cat: int,
    use_cats: bool,
    max_list: list[int],
    rec_thrs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``precision`` (T, R, K, A, M), ``recall`` (T, K, A, M) and ``scores`` (T, R, K, A, M) of the
    ``match``; ``npig`` (K, A) counts the non-ignored gts (``gt_ignore`` (N, A)) per category and area
    range, one category (K = 1) without ``use_cats``. ``rec_thrs`` (R,): the recall thresholds."""
    gt_cat = truth.category[groups.gt] if use_cats else np.zeros(len(groups.gt), np.int64)
    n_area = gt_ignore.shape[1]
    npig = np.stack([np.bincount(gt_cat[~gt_ignore[:, a]], minlength=n_cat) for a in range(n_area)], axis=1)
    det_cat = dets.category[groups.det] if use_cats else np.zeros(len(groups.det), np.int64)
    return accumulate(
        match.det,
        match.true_positive,
        match.counted,
        det_outside,
        det_cat,
        groups.det_rank,
        dets.score[groups.det],
        npig,
        max_list,
        rec_thrs,
    )


def _per_class_ap(
    precision: np.ndarray, truth: CocoGroundTruth, labels: list[str], use_cats: bool
) -> dict[str, float]:
    """AP@[.5:.95] per category name, from ``precision`` (T, R, K, A, M) at the area range labelled "all"
    in ``labels`` (else the first) and the largest maxDets; NaN without ground truth. A repeated name gets
    its id appended; without ``use_cats`` the single key is ``"all"``."""
    a_all = labels.index("all") if "all" in labels else 0
    names = list(truth.category_names) if use_cats else ["all"]
    per_class = {}
    for k, name in enumerate(names):
        p = precision[:, :, k, a_all, -1]
        key = name if name not in per_class else f"{name} ({int(truth.category_ids[k])})"
        per_class[key] = float(np.mean(p[p > -1])) if (p > -1).any() else float("nan")
    return per_class


def _pair_iou(
    truth: CocoGroundTruth,
    dets: CocoDetections,
    groups: Groups,
    det_pos: np.ndarray,
    gt_pos: np.ndarray,
    iou_type: str,
) -> np.ndarray:
    """IoU of the candidate pairs: boxes vectorised in numpy, masks with pycocotools' RLE kernel."""
    crowd = truth.crowd[groups.gt]
    if iou_type == "bbox":
        return box_iou(dets.box[groups.det][det_pos], truth.box[groups.gt][gt_pos], crowd[gt_pos])
    dt_rles = [dets.rles[i] for i in groups.det.tolist()]
    gt_rles = [truth.rles[i] for i in groups.gt.tolist()]
    return mask_iou(det_pos, gt_pos, groups.det_key, dt_rles, gt_rles, crowd)

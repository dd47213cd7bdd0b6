"""Pascal VOC detection average precision.

The protocol of Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge" (IJCV 2010,
section 4.2) and of the VOC devkit's ``VOCevaldet.m`` / ``VOCap.m``:

1. Per class, detections are sorted by descending score and matched greedily: each one is compared with
   the ground-truth objects of its image and class and takes the one of highest IoU. If that IoU is
   above the threshold (strictly, ``> 0.5``: the paper's "must exceed 50%" and the Python port of the
   devkit, ``voc_eval.py``; ``VOCevaldet.m`` tests ``>=``, which differs only at an IoU of exactly 0.5),
   the detection is a true positive when the object is not yet matched and a false positive (a
   duplicate) when it is; otherwise it is a false positive. A detection whose best object (above the
   threshold) is ``difficult`` is neither: it is dropped, and difficult objects do not count among the
   positives ``npos``.
2. ``recall = cumsum(TP) / npos`` and ``precision = cumsum(TP) / (cumsum(TP) + cumsum(FP))``.
3. AP is either the VOC2007 11-point interpolated AP or the VOC2010+ all-point AP (:func:`voc_ap`).

IoU is computed on continuous coordinates (``area = (x2 - x1) * (y2 - y1)``), the convention of
:mod:`segdet.data.structures`. The devkit adds 1 to widths and heights because its boxes are inclusive
integer pixel indices (a box from pixel 10 to pixel 19 is 10 pixels wide); our readers convert those
boxes to continuous coordinates (``x1 = xmin - 1, x2 = xmax``), so the same boxes give the same IoU
without the +1.

Crowd regions (``iscrowd``, from COCO-style ground truth) are treated like ``difficult`` objects: VOC
has no crowd annotations and ignoring detections on them is the closest equivalent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from segdet.data.structures import AnnotationSet, ImageRecord
from segdet.errors import DataError
from segdet.metrics.coco_columns import (
    box_array,
    check_file_names,
    column,
    file_name_hint,
    float_array,
    ids_by_base_name,
)


def voc_ap(
    recall: np.ndarray | Sequence[float], precision: np.ndarray | Sequence[float], use_07_metric: bool
) -> float:
    """Average precision of one precision/recall curve (points in detection-rank order).

    * ``use_07_metric=True`` (VOC2007, 11-point): ``AP = 1/11 sum_{t in {0, 0.1, ..., 1}} max_{r >= t} p(r)``
      (0 for thresholds no point reaches). The thresholds are exactly ``k / 10``; the Python devkit's
      ``np.arange(0, 1.1, 0.1)`` makes 0.3, 0.6 and 0.7 a hair larger, so a recall of exactly 3/10 would
      miss the 0.3 threshold there.
    * ``use_07_metric=False`` (VOC2010+, all-point): the area under the precision envelope made
      monotonically non-increasing from the right, ``p_interp(r) = max_{r' >= r} p(r')``, summed over
      the recall values where recall changes (``VOCap.m``).
    """
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"recall has {rec.size} points, precision {prec.size}")
    if use_07_metric:
        ap = 0.0
        for t in np.arange(11) / 10:
            reached = prec[rec >= t]
            ap += (reached.max() if reached.size else 0.0) / 11
        return float(ap)
    # Sentinels: recall runs from 0 to 1, with precision 0 beyond the last point.
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    change = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))


@dataclass
class VocResult:
    """Per-class AP (NaN for classes without non-difficult ground truth), their mean over the other
    classes, and the per-class precision/recall points (detection-rank order) for curves."""

    ap: dict[str, float]
    map: float
    precision: dict[str, np.ndarray]
    recall: dict[str, np.ndarray]
    npos: dict[str, int]
    use_07_metric: bool = False
    iou_threshold: float = 0.5
    num_detections: dict[str, int] = field(default_factory=dict)
    num_images: int = 0  # ground-truth images
    num_images_with_detections: int = 0

    def as_dict(self) -> dict:
        """JSON-ready form (NaN as ``None``)."""

        def f(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {
            "mAP": f(self.map),
            "metric": "VOC2007 11-point" if self.use_07_metric else "VOC2010 all-point",
            "iou_threshold": self.iou_threshold,
            "per_class": {name: f(ap) for name, ap in self.ap.items()},
            "npos": dict(self.npos),
        }

    def curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{class: (recall, precision)}`` for :func:`segdet.metrics.plots.plot_pr_curves`."""
        return {name: (self.recall[name], self.precision[name]) for name in self.ap}


# One detection: (image id, label, score, box xyxy).
_Detection = tuple[int, int, float, tuple[float, float, float, float]]


def _image_index(ground_truth: AnnotationSet) -> dict[object, int]:
    """Maps each image's id, file name and file stem to its id, so results may name images either way
    (the VOC devkit names them by file stem, COCO by integer id)."""
    index: dict[object, int] = {}
    for im in ground_truth.images:
        stem = im.file_name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        index.setdefault(stem, im.id)
        index.setdefault(im.file_name, im.id)
    for im in ground_truth.images:  # ids win over names
        index[im.id] = im.id
    return index


def _detections_from_results(ground_truth: AnnotationSet, results: Sequence[Mapping]) -> list[_Detection]:
    """Parse COCO results dicts (``image_id``, ``category_id``, ``bbox`` xywh, ``score``), checked record by
    record as ``segdet metrics coco`` checks them (:mod:`segdet.metrics.coco_columns`, same messages, the
    record named ``results[i]``); ``image_id`` may also be an image's file name or stem and
    ``category_id`` a class name."""
    what = "results"
    records = results if isinstance(results, list) else list(results)
    images = _image_index(ground_truth)
    gt_ids = [im.id for im in ground_truth.images]
    gt_names = [im.file_name for im in ground_truth.images]
    hint = file_name_hint(records, ids_by_base_name(gt_ids, gt_names))
    image = [_image_of(v, images, hint, i) for i, v in enumerate(column(records, "image_id", None, what))]
    position = {image_id: k for k, image_id in enumerate(gt_ids)}
    check_file_names(records, [position[v] for v in image], gt_names, None, what)
    label_of = ground_truth.label_of_category()
    label_of_name = {name: i for i, name in enumerate(ground_truth.classes)}
    label = [
        _label_of(v, label_of, label_of_name, f"{what}[{i}]")
        for i, v in enumerate(column(records, "category_id", None, what))
    ]
    score = float_array(column(records, "score", None, what), None, what, "score").tolist()
    box = box_array(column(records, "bbox", None, what), None, what)
    xyxy = np.concatenate([box[:, :2], box[:, :2] + box[:, 2:]], axis=1).tolist()
    return [(im, lb, sc, tuple(b)) for im, lb, sc, b in zip(image, label, score, xyxy, strict=True)]


def _image_of(value: object, images: Mapping[object, int], hint: Callable[[int], str], i: int) -> int:
    """The ground-truth image id that result ``i``'s ``image_id`` (an id, file name or file stem) names."""
    record = f"results[{i}]"
    if isinstance(value, str):
        if value in images:
            return images[value]
        raise DataError(
            f"image_id must be an integer (or a ground-truth image's file name or stem), got {value!r}",
            record=record,
        )
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise DataError(f"image_id must be an integer, got {value!r}", record=record)
    if int(value) not in images:
        raise DataError(f"image_id {int(value)} is not an image of the ground truth{hint(i)}", record=record)
    return images[int(value)]


def _label_of(
    value: object, label_of: Mapping[int, int], label_of_name: Mapping[str, int], record: str
) -> int:
    """The label of a result's ``category_id`` (a ground-truth category id or class name)."""
    if isinstance(value, str):
        if value in label_of_name:
            return label_of_name[value]
        raise DataError(f"category_id {value!r} is not a ground-truth class name", record=record)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise DataError(f"category_id must be an integer or a class name, got {value!r}", record=record)
    label = label_of.get(int(value))
    if label is None:
        raise DataError(f"category_id {int(value)} is not a category of the ground truth", record=record)
    return label


def _detections_from_set(ground_truth: AnnotationSet, detections: AnnotationSet) -> list[_Detection]:
    """Take the scored instances of a prediction set, mapping its classes to the ground truth's by name."""
    label_of_name = {name: i for i, name in enumerate(ground_truth.classes)}
    images = {im.id for im in ground_truth.images}
    out: list[_Detection] = []
    for im in detections.images:
        if im.id not in images:
            raise DataError(f"image id {im.id} is not in the ground truth", record=im.file_name)
        for k, inst in enumerate(im.instances):
            name = detections.classes[inst.label]
            if name not in label_of_name:
                raise DataError(f"class {name!r} is not a ground-truth class", record=f"{im.file_name}#{k}")
            if inst.score is None:
                raise DataError("detection has no score", record=f"{im.file_name}#{k}")
            out.append((im.id, label_of_name[name], float(inst.score), tuple(map(float, inst.box))))
    return out


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``xyxy`` box with each row of ``boxes`` (continuous coordinates, no +1)."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _class_gt(images: Sequence[ImageRecord], label: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per image: the boxes of class ``label`` and whether each is ignored (difficult or crowd)."""
    out = {}
    for im in images:
        objs = [o for o in im.instances if o.label == label]
        boxes = np.array([o.box for o in objs], dtype=np.float64).reshape(-1, 4)
        ignored = np.array([o.difficult or o.iscrowd for o in objs], dtype=bool)
        out[im.id] = (boxes, ignored)
    return out


def _match_class(
    gt: dict[int, tuple[np.ndarray, np.ndarray]], dets: list[_Detection], iou_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy VOC matching of one class's detections; returns TP and FP flags in rank order (detections
    on difficult objects are removed)."""
    scores = np.array([d[2] for d in dets], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")  # ties keep the input order, as the devkit's sort does
    matched = {image_id: np.zeros(len(boxes), dtype=bool) for image_id, (boxes, _) in gt.items()}
    tp = np.zeros(len(dets), dtype=bool)
    fp = np.zeros(len(dets), dtype=bool)
    for rank, i in enumerate(order):
        image_id, _, _, box = dets[i]
        boxes, ignored = gt[image_id]
        if len(boxes) == 0:
            fp[rank] = True
            continue
        ious = _iou_one_to_many(np.asarray(box), boxes)
        j = int(np.argmax(ious))
        if ious[j] > iou_threshold:
            if ignored[j]:
                continue  # neither TP nor FP
            if matched[image_id][j]:
                fp[rank] = True  # duplicate detection
            else:
                matched[image_id][j] = True
                tp[rank] = True
        else:
            fp[rank] = True
    keep = tp | fp
    return tp[keep], fp[keep]


def evaluate_voc(
    ground_truth: AnnotationSet,
    detections: AnnotationSet | Sequence[Mapping],
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
) -> VocResult:
    """Pascal VOC AP per class and its mean (protocol in the module docstring).

    ``detections`` is either an :class:`AnnotationSet` of scored instances (classes matched to the
    ground truth's by name, images by id) or a list of COCO results dicts ``{"image_id", "category_id",
    "bbox": [x, y, w, h], "score"}`` whose ``category_id`` is mapped through
    ``ground_truth.category_ids`` (a class name is accepted too) and whose ``image_id`` is an image id,
    file name or file stem. Classes without non-difficult ground truth get AP NaN and are left out of
    the mean. Malformed detections raise :class:`~segdet.errors.DataError`.
    """
    if isinstance(detections, AnnotationSet):
        dets = _detections_from_set(ground_truth, detections)
    else:
        dets = _detections_from_results(ground_truth, detections)

    by_label: dict[int, list[_Detection]] = {k: [] for k in range(len(ground_truth.classes))}
    for d in dets:
        by_label[d[1]].append(d)

    result = VocResult(
        ap={},
        map=math.nan,
        precision={},
        recall={},
        npos={},
        use_07_metric=use_07_metric,
        iou_threshold=iou_threshold,
        num_images=len(ground_truth.images),
        num_images_with_detections=len({d[0] for d in dets}),
    )
    for label, name in enumerate(ground_truth.classes):
        gt = _class_gt(ground_truth.images, label)
        npos = int(sum(int((~ignored).sum()) for _, ignored in gt.values()))
        tp, fp = _match_class(gt, by_label[label], iou_threshold)
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        recall = ctp / npos if npos > 0 else np.full(len(ctp), math.nan)
        precision = ctp / np.maximum(ctp + cfp, 1)
        result.npos[name] = npos
        result.num_detections[name] = len(by_label[label])
        result.recall[name] = recall
        result.precision[name] = precision
        result.ap[name] = voc_ap(recall, precision, use_07_metric) if npos > 0 else math.nan
    aps = np.array(list(result.ap.values()), dtype=np.float64)
    result.map = float(np.nanmean(aps)) if np.isfinite(aps).any() else math.nan
    return result

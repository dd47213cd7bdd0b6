"""Tests of segdet.metrics.voc_eval against a transcription of the Pascal VOC devkit (the Python port
of ``VOCevaldet.m`` / ``VOCap.m`` used by py-faster-rcnn and detectron) and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segdet.data.structures import AnnotationSet, ImageRecord, Instance
from segdet.errors import DataError
from segdet.metrics.voc_eval import _iou_one_to_many, evaluate_voc, voc_ap

# --------------------------------------------------------------------------------------------------
# Reference: the devkit's per-class loop, transcribed. Deviations, both deliberate:
#  * plus_one=False removes the "+ 1." of widths/heights (our boxes are continuous coordinates);
#  * the 11 thresholds are k/10 instead of np.arange(0., 1.1, 0.1) (see voc_ap's docstring).


def reference_voc_ap(rec, prec, use_07_metric):
    if use_07_metric:
        ap = 0.0
        for t in np.arange(11) / 10:
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
    else:
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return ap


def reference_voc_eval(
    gt_boxes, gt_difficult, det_image_ids, det_scores, det_boxes, ovthresh, use_07, plus_one=False
):
    """gt_boxes / gt_difficult: {image_id: array} for one class; detections of that class as arrays."""
    one = 1.0 if plus_one else 0.0
    class_recs = {}
    npos = 0
    for image_id in gt_boxes:
        difficult = np.array(gt_difficult[image_id]).astype(bool)
        det = [False] * len(gt_boxes[image_id])
        npos = npos + sum(~difficult)
        class_recs[image_id] = {"bbox": np.array(gt_boxes[image_id]), "difficult": difficult, "det": det}

    confidence = np.array(det_scores)
    BB = np.array(det_boxes).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence)
    BB = BB[sorted_ind, :]
    image_ids = [det_image_ids[x] for x in sorted_ind]

    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float).reshape(-1, 4)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + one, 0.0)
            ih = np.maximum(iymax - iymin + one, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + one) * (bb[3] - bb[1] + one)
                + (BBGT[:, 2] - BBGT[:, 0] + one) * (BBGT[:, 3] - BBGT[:, 1] + one)
                - inters
            )
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0

    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return reference_voc_ap(rec, prec, use_07)


# --------------------------------------------------------------------------------------------------


def random_case(seed: int, num_images: int = 6, num_classes: int = 3, integer: bool = False):
    """Ground truth with ~25% difficult objects and detections that are jittered copies of objects (some
    above, some below IoU 0.5, some duplicates) plus random boxes, with distinct random scores."""
    rng = np.random.default_rng(seed)
    images, results = [], []
    for image_id in range(1, num_images + 1):
        instances = []
        for _ in range(rng.integers(0, 6)):
            x1, y1 = rng.uniform(0, 80, 2)
            w, h = rng.uniform(5, 40, 2)
            box = (x1, y1, x1 + w, y1 + h)
            if integer:
                box = tuple(float(round(v)) for v in box)
            instances.append(
                Instance(box=box, label=int(rng.integers(num_classes)), difficult=rng.random() < 0.25)
            )
        images.append(
            ImageRecord(id=image_id, path=f"{image_id}.jpg", width=128, height=128, instances=instances)
        )
        for inst in instances:
            for _ in range(rng.integers(0, 3)):
                x1, y1, x2, y2 = inst.box
                w, h = x2 - x1, y2 - y1
                j = rng.normal(0, 0.2, 4) * [w, h, w, h]
                box = [x1 + j[0], y1 + j[1], x2 + j[2], y2 + j[3]]
                if integer:
                    box = [float(round(v)) for v in box]
                label = inst.label if rng.random() < 0.9 else int(rng.integers(num_classes))
                results.append((image_id, label, box))
        for _ in range(rng.integers(0, 3)):
            x1, y1 = rng.uniform(0, 100, 2)
            box = [x1, y1, x1 + rng.uniform(2, 30), y1 + rng.uniform(2, 30)]
            if integer:
                box = [float(round(v)) for v in box]
            results.append((image_id, int(rng.integers(num_classes)), box))
    scores = rng.permutation(len(results)) / max(len(results), 1) + 0.01  # distinct: no tie order issue
    gt = AnnotationSet(images=images, classes=[f"c{k}" for k in range(num_classes)])
    dets = [
        {
            "image_id": i,
            "category_id": gt.category_ids[lab],
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "score": float(s),
        }
        for (i, lab, b), s in zip(results, scores, strict=True)
    ]
    return gt, dets


def reference_for_class(
    gt: AnnotationSet, dets: list[dict], label: int, use_07: bool, plus_one=False, shift=0.0
):
    """Run the devkit transcription on one class. ``shift`` is added to x1, y1 of every box, turning
    our continuous boxes into the devkit's inclusive pixel indices when combined with plus_one."""
    gt_boxes, gt_difficult = {}, {}
    for im in gt.images:
        objs = [o for o in im.instances if o.label == label]
        gt_boxes[im.id] = [[o.box[0] + shift, o.box[1] + shift, o.box[2], o.box[3]] for o in objs]
        gt_difficult[im.id] = [o.difficult for o in objs]
    cat = gt.category_ids[label]
    mine = [d for d in dets if d["category_id"] == cat]
    boxes = [[x + shift, y + shift, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)]
    return reference_voc_eval(
        gt_boxes,
        gt_difficult,
        [d["image_id"] for d in mine],
        [d["score"] for d in mine],
        boxes,
        0.5,
        use_07,
        plus_one=plus_one,
    )


@pytest.mark.parametrize("use_07", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_random_cases_match_devkit_transcription(seed: int, use_07: bool) -> None:
    """Per-class AP equals the devkit loop (+1 removed) to 1e-12, for both metrics, with difficult
    objects, duplicates and near-threshold detections; mAP is the mean over classes with positives."""
    gt, dets = random_case(seed)
    result = evaluate_voc(gt, dets, use_07_metric=use_07)
    expected = []
    for label, name in enumerate(gt.classes):
        npos = sum(1 for im in gt.images for o in im.instances if o.label == label and not o.difficult)
        if npos == 0:
            assert math.isnan(result.ap[name])
            continue
        ref = reference_for_class(gt, dets, label, use_07)
        assert result.ap[name] == pytest.approx(ref, abs=1e-12), name
        expected.append(ref)
    assert result.map == pytest.approx(np.mean(expected), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_continuous_boxes_equal_devkit_plus_one_on_inclusive_pixels(seed: int) -> None:
    """The devkit's +1 on inclusive integer pixel boxes (xmin = x1 + 1, xmax = x2) gives the same AP
    as our continuous IoU on the converted boxes (to 1e-12)."""
    gt, dets = random_case(seed, integer=True)
    result = evaluate_voc(gt, dets)
    for label, name in enumerate(gt.classes):
        if not math.isnan(result.ap[name]):
            ref = reference_for_class(gt, dets, label, use_07=False, plus_one=True, shift=1.0)
            assert result.ap[name] == pytest.approx(ref, abs=1e-12), name


def test_annotation_set_detections_equal_coco_results() -> None:
    """Detections given as an AnnotationSet of scored instances give exactly the same result."""
    gt, dets = random_case(11)
    by_image = {im.id: [] for im in gt.images}
    for d in dets:
        x, y, w, h = d["bbox"]
        by_image[d["image_id"]].append(
            Instance(box=(x, y, x + w, y + h), label=d["category_id"] - 1, score=d["score"])
        )
    pred = AnnotationSet(
        images=[
            ImageRecord(id=i, path=f"{i}.jpg", width=128, height=128, instances=v)
            for i, v in by_image.items()
        ],
        classes=list(gt.classes),
    )
    a, b = evaluate_voc(gt, dets), evaluate_voc(gt, pred)
    assert a.ap == pytest.approx(b.ap, nan_ok=True)


def test_voc_ap_hand_computed() -> None:
    """npos = 4, ranked detections T F T T F: recall .25 .25 .5 .75 .75, precision 1 1/2 2/3 3/4 3/5.

    All-point: envelope 1 on (0, .25], 3/4 on (.25, .75], 0 after -> .25 + .5 * .75 = 0.625.
    11-point: thresholds 0, .1, .2 -> 1; .3 ... .7 -> 3/4; .8, .9, 1 -> 0 -> (3 + 5 * .75) / 11.
    """
    rec = np.array([0.25, 0.25, 0.5, 0.75, 0.75])
    prec = np.array([1, 1 / 2, 2 / 3, 3 / 4, 3 / 5])
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.625, abs=1e-15)
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(6.75 / 11, abs=1e-15)
    assert voc_ap([], [], use_07_metric=False) == 0.0
    assert voc_ap([], [], use_07_metric=True) == 0.0
    assert voc_ap([1.0], [1.0], use_07_metric=True) == pytest.approx(1.0)


def test_eleven_point_thresholds_are_exact_tenths() -> None:
    """A recall of exactly 3/10 reaches the 0.3 threshold: 4 thresholds (0, .1, .2, .3) at precision 1."""
    assert voc_ap([0.3], [1.0], use_07_metric=True) == pytest.approx(4 / 11, abs=1e-15)


def test_evaluate_voc_hand_computed() -> None:
    """One image; cat objects A (0,0,10,10), B (20,20,30,30) and a difficult C (40,40,50,50).
    Ranked detections: A exact (TP), A again (duplicate, FP), C (difficult: dropped), IoU exactly 0.5
    with B (not > 0.5: FP), IoU 0.9 with B (TP). npos 2 -> recall .5 .5 .5 1, precision 1 1/2 1/3 1/2.
    All-point AP = .5 * 1 + .5 * .5 = .75; 11-point = (6 * 1 + 5 * .5) / 11.
    'dog' has no ground truth: AP NaN and out of the mean, even with a detection."""
    inst = [
        Instance(box=(0, 0, 10, 10), label=0),
        Instance(box=(20, 20, 30, 30), label=0),
        Instance(box=(40, 40, 50, 50), label=0, difficult=True),
    ]
    gt = AnnotationSet(
        images=[ImageRecord(id=7, path="a.jpg", width=64, height=64, instances=inst)], classes=["cat", "dog"]
    )
    dets = [
        {"image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8},
        {"image_id": 7, "category_id": 1, "bbox": [40, 40, 10, 10], "score": 0.7},
        {"image_id": 7, "category_id": 1, "bbox": [20, 20, 10, 5], "score": 0.6},
        {"image_id": 7, "category_id": 1, "bbox": [20, 20, 10, 9], "score": 0.5},
        {"image_id": "a", "category_id": 2, "bbox": [1, 1, 5, 5], "score": 0.5},  # image named by stem
    ]
    r10 = evaluate_voc(gt, dets)
    r07 = evaluate_voc(gt, dets, use_07_metric=True)
    np.testing.assert_allclose(r10.recall["cat"], [0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(r10.precision["cat"], [1, 1 / 2, 1 / 3, 1 / 2])
    assert r10.ap["cat"] == pytest.approx(0.75)
    assert r07.ap["cat"] == pytest.approx(8.5 / 11)
    assert math.isnan(r10.ap["dog"]) and r10.map == pytest.approx(0.75)
    assert r10.npos == {"cat": 2, "dog": 0}
    assert r10.as_dict()["per_class"]["dog"] is None


def test_iou_continuous_coordinates() -> None:
    """IoU of (0,0,10,10) with (5,0,15,10) is 50 / 150 (no +1), and 0 for disjoint / degenerate boxes."""
    iou = _iou_one_to_many(
        np.array([0, 0, 10, 10.0]), np.array([[5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 3.0]])
    )
    np.testing.assert_allclose(iou, [1 / 3, 0, 0])


def _det(**changes) -> dict:
    return {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1, **changes}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_det(image_id=99), "image_id 99 is not an image of the ground truth"),
        (_det(category_id=42), "category_id 42 is not a category of the ground truth"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}, "missing key 'score'"),
        (_det(bbox=["a", 0, 1, 1]), "bbox must be 4 finite numbers"),
        (_det(bbox=[0, 0, 1], score=0.31), r"bbox must be 4 finite numbers \[x, y, w, h\], got \[0, 0, 1\]$"),
        (_det(bbox=None, score=0.31), "bbox must be 4 finite numbers .*got None$"),
        (_det(bbox=[0, 0, -1, 1]), "negative width or height"),
        (_det(score="0.109"), "score must be a finite number, got '0.109'"),
        (_det(image_id=[1]), r"image_id must be an integer, got \[1\]"),
        (_det(image_id="164"), "image_id must be an integer .*got '164'"),
        (_det(image_id=True), "image_id must be an integer, got True"),
        (_det(category_id={}), "category_id must be an integer or a class name"),
        (_det(score=float("nan")), "score must be a finite number, got nan"),
    ],
)
def test_malformed_detections_raise_data_error(bad: dict, message: str) -> None:
    """Malformed results name the record (``results[N]``, as ``metrics coco`` does) and the problem in a
    one-line DataError."""
    gt = AnnotationSet(images=[ImageRecord(id=1, path="a.jpg", width=8, height=8)], classes=["x"])
    with pytest.raises(DataError, match=message) as err:
        evaluate_voc(gt, [_det(), bad])
    assert err.value.record == "results[1]" and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "bad",
    [
        _det(score="0.109"),
        _det(bbox=[0, 0, -1, 1]),
        _det(bbox=[0, 0, 1]),
        _det(bbox=None),
        _det(score=float("inf")),
        _det(image_id=[1]),
        _det(image_id=99),
        _det(category_id=42),
        {"image_id": 1, "category_id": 1, "score": 1},
        _det(image_id=7, file_name="a.jpg"),
        _det(file_name="other.jpg"),
    ],
)
def test_voc_and_coco_refuse_the_same_records_with_the_same_message(bad: dict) -> None:
    """The VOC path applies the COCO detections reader's per-record checks, worded the same."""
    from segdet.metrics.coco_eval import evaluate_coco

    gt = AnnotationSet(images=[ImageRecord(id=1, path="a.jpg", width=8, height=8)], classes=["x"])
    coco_gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [],
    }
    with pytest.raises(DataError) as voc_err:
        evaluate_voc(gt, [_det(), bad])
    with pytest.raises(DataError) as coco_err:
        evaluate_coco(coco_gt, [_det(), bad])
    assert str(voc_err.value) == str(coco_err.value)
    assert voc_err.value.record == "results[1]"


def test_file_name_must_agree_with_the_ground_truth() -> None:
    """A detection's file_name must name the ground-truth image of its image_id (base names compared, as
    segdet predict writes them); a mismatch says how to get matching ids."""
    gt = AnnotationSet(
        images=[
            ImageRecord(id=7, path="imgs/a.jpg", file_name="sub/a.jpg", width=8, height=8),
            ImageRecord(id=9, path="imgs/b.jpg", file_name="sub/b.jpg", width=8, height=8),
        ],
        classes=["x"],
        category_ids=[1],
    )
    ok = [_det(image_id=7, file_name="a.jpg"), _det(image_id=9, file_name="sub/b.jpg"), _det(image_id=9)]
    assert evaluate_voc(gt, ok).ap == evaluate_voc(gt, [{**d, "file_name": None} for d in ok]).ap
    with pytest.raises(DataError) as err:
        evaluate_voc(gt, [*ok, _det(image_id=7, file_name="b.jpg")])
    message = str(err.value)
    assert err.value.record == "results[3]" and "\n" not in message
    assert "'b.jpg'" in message and "'sub/a.jpg'" in message
    assert "predict with --coco-gt GT.json numbers images as the ground truth does" in message
    with pytest.raises(DataError) as err:  # segdet predict without --coco-gt: ids 0, 1, ...
        evaluate_voc(gt, [_det(image_id=0, file_name="a.jpg")])
    message = str(err.value)
    assert "image_id 0 is not an image of the ground truth" in message
    assert "'a.jpg' is ground-truth image 7" in message and "--coco-gt GT.json" in message


def test_images_with_detections_are_counted() -> None:
    gt = AnnotationSet(
        images=[ImageRecord(id=k, path=f"{k}.jpg", width=8, height=8) for k in (1, 2, 3)], classes=["x"]
    )
    result = evaluate_voc(gt, [_det(), _det(image_id=3), _det(image_id=3)])
    assert (result.num_images, result.num_images_with_detections) == (3, 2)

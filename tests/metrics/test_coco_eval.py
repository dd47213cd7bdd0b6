"""COCO evaluation (:func:`segdet.metrics.coco_eval.evaluate_coco`) against pycocotools' ``COCOeval``.

Every parity test runs pycocotools on the same input (``coco_cases.reference_eval``) and requires the 12
numbers to agree to 1e-9 and ``precision``/``recall``/``scores`` to 1e-12 (in practice they are equal).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from coco_cases import make_case, reference_eval
from pycocotools import mask as mask_utils

from segdet.errors import ConfigError, DataError
from segdet.metrics.coco_eval import STAT_KEYS, evaluate_coco
from segdet.metrics.coco_match import box_iou


def assert_same_as_pycocotools(gt: dict, dt: list, iou_type: str, use_cats: bool = True):
    ref = reference_eval(gt, dt, iou_type, use_cats)
    ours = evaluate_coco(gt, dt, iou_type, use_cats=use_cats)
    np.testing.assert_allclose(ours.stats, np.asarray(ref.stats), rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.precision, ref.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.recall, ref.eval["recall"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.scores, ref.eval["scores"], rtol=0, atol=1e-12)
    return ours, ref


@pytest.mark.parametrize("seed", range(30))
def test_bbox_random_cases_match_pycocotools(seed):
    """Random cases with crowds, empty images, a category without gt, score ties, >100 dets per group,
    zero-size and tiny boxes: identical to pycocotools, with and without categories."""
    gt, dt = make_case(seed, "bbox")
    assert_same_as_pycocotools(gt, dt, "bbox")
    if seed % 5 == 0:
        assert_same_as_pycocotools(gt, dt, "bbox", use_cats=False)


@pytest.mark.parametrize("seed", range(4))
def test_segm_random_cases_match_pycocotools(seed):
    """Mask results (compressed RLE) against polygon / RLE / uncompressed-RLE crowd ground truth on 64 px
    images: identical to pycocotools."""
    gt, dt = make_case(seed, "segm")
    assert_same_as_pycocotools(gt, dt, "segm")


def test_segm_results_with_bbox_use_box_area_like_loadres():
    """loadRes decides on the first result: with a ``bbox`` present, segm evaluation uses w*h as the
    detection area (pycocotools' behaviour, reproduced)."""
    gt, dt = make_case(1, "segm")
    for d in dt:
        d["bbox"] = [float(v) for v in mask_utils.toBbox(d["segmentation"])]
        d["bbox"][2] += 3.0  # make the box area differ from the mask area
    assert_same_as_pycocotools(gt, dt, "segm")


def test_box_iou_matches_mask_iou_bit_for_bit():
    """Our vectorised box IoU equals ``pycocotools.mask.iou`` on boxes (crowd and non-crowd) to 1e-12,
    degenerate and disjoint boxes included."""
    rng = np.random.default_rng(0)
    d = np.round(rng.uniform(0, 50, (40, 4)), 2)
    g = np.round(rng.uniform(0, 50, (30, 4)), 2)
    d[:3, 2] = 0.0
    g[:2, 3] = 0.0
    crowd = rng.random(30) < 0.3
    ref = mask_utils.iou(d.tolist(), g.tolist(), crowd.astype(np.uint8).tolist())
    di, gi = np.meshgrid(np.arange(40), np.arange(30), indexing="ij")
    ours = box_iou(d[di.ravel()], g[gi.ravel()], crowd[gi.ravel()]).reshape(40, 30)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def _tiny_gt(anns: list) -> dict:
    return {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": anns,
    }


def test_hand_checked_perfect_and_crowd():
    """One gt found exactly, a second detection on a crowd region is ignored, a third is a false positive
    ranked last: AP = 1, AR = 1 (hand-computed), and pycocotools agrees."""
    gt = _tiny_gt(
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "area": 900, "iscrowd": 1},
        ]
    )
    dt = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [65, 65, 10, 10], "score": 0.8},  # inside the crowd
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.1},
    ]
    ours, _ = assert_same_as_pycocotools(gt, dt, "bbox")
    assert ours.stats[0] == pytest.approx(1.0)
    assert ours.stats[8] == pytest.approx(1.0)
    assert ours.per_class_ap["a"] == pytest.approx(1.0)
    assert math.isnan(ours.per_class_ap["b"])  # no gt: NaN (pycocotools' arrays hold -1)
    assert (ours.precision[:, :, 1] == -1).all()


def test_hand_checked_half_precision():
    """A false positive ranked above the only true positive: precision 1/2 at every recall point, so
    AP = 0.5 (hand-computed: tp/(tp+fp) = 1/2 after the second detection)."""
    gt = _tiny_gt(
        [{"id": 5, "image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0}]
    )
    dt = [
        {"image_id": 1, "category_id": 2, "bbox": [50, 50, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 20], "score": 0.5},
    ]
    ours, _ = assert_same_as_pycocotools(gt, dt, "bbox")
    assert ours.stats[0] == pytest.approx(0.5)
    assert ours.stats[6] == pytest.approx(0.0)  # AR@1: the top detection is the false positive


def test_empty_results_give_zero_like_cocoeval():
    """No detections (which pycocotools' loadRes cannot load): COCOeval on an empty results set gives 0 for
    every category with ground truth and -1 where there is none; we return the same."""
    gt, _ = make_case(3, "bbox")
    ours, _ = assert_same_as_pycocotools(gt, [], "bbox")
    assert set(ours.stats.tolist()) <= {0.0, -1.0}


def test_ground_truth_without_annotations():
    """No ground truth at all: every number is -1, as pycocotools."""
    gt = _tiny_gt([])
    dt = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.3}]
    ours, _ = assert_same_as_pycocotools(gt, dt, "bbox")
    assert (ours.stats == -1).all()


def test_gt_id_zero_counts_as_unmatched_like_pycocotools():
    """pycocotools stores matched gt *ids* and tests them for non-zero, so a perfect match on a gt whose
    id is 0 is a false positive; reproduced for parity."""
    gt = _tiny_gt(
        [{"id": 0, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0}]
    )
    dt = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.5}]
    ours, _ = assert_same_as_pycocotools(gt, dt, "bbox")
    assert ours.stats[0] == 0.0


def test_summary_and_dict_layout():
    """``summary()`` has pycocotools' 12 printed lines (layout checked on the first); ``as_dict`` keys."""
    gt, dt = make_case(0, "bbox")
    res = evaluate_coco(gt, dt)
    lines = res.summary().splitlines()
    assert len(lines) == 12
    assert (
        lines[0]
        == f" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = {res.stats[0]:0.3f}"
    )
    assert lines[6].startswith(" Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]")
    d = res.as_dict()
    assert list(d)[:12] == list(STAT_KEYS)
    assert set(d["per_class"]) == {"c7", "c3", "c12", "c1"}
    assert res.category_ids == [1, 3, 7, 12]


def test_custom_parameters_match_pycocotools():
    """Custom maxDets, IoU thresholds and area ranges give pycocotools' arrays with the same params."""
    import contextlib
    import copy
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, dt = make_case(7, "bbox")
    ranges = {"all": (0, 1e10), "small": (0, 400), "medium": (400, 4000), "large": (4000, 1e10)}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dt)), "bbox")
        ev.params.maxDets = [2, 5, 100]
        ev.params.iouThrs = np.array([0.3, 0.5, 0.75, 0.9])
        ev.params.areaRng = [list(v) for v in ranges.values()]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ours = evaluate_coco(gt, dt, max_dets=(2, 5, 100), iou_thrs=[0.3, 0.5, 0.75, 0.9], area_ranges=ranges)
    np.testing.assert_allclose(ours.precision, ev.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.recall, ev.eval["recall"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.stats, ev.stats, rtol=0, atol=1e-9)


def test_inputs_are_not_modified_and_paths_work(tmp_path):
    """``evaluate_coco`` leaves its dicts untouched (pycocotools' loadRes adds keys) and reads JSON paths."""
    gt, dt = make_case(2, "bbox")
    before = json.dumps([gt, dt])
    res = evaluate_coco(gt, dt)
    assert json.dumps([gt, dt]) == before
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dt))
    np.testing.assert_array_equal(
        evaluate_coco(tmp_path / "gt.json", str(tmp_path / "dt.json")).stats, res.stats
    )


GOOD_DET = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}


@pytest.mark.parametrize(
    ("dt", "message"),
    [
        ([{**GOOD_DET, "image_id": 99}], "image_id 99 is not an image"),
        ([{**GOOD_DET, "category_id": 42}], "category_id 42 is not a category"),
        ([GOOD_DET, {**GOOD_DET, "bbox": [0, float("nan"), 1, 1]}], "results[1]: bbox must be 4 finite"),
        ([GOOD_DET, {**GOOD_DET, "bbox": [0, 1, 1]}], "results[1]: bbox must be 4"),
        ([{**GOOD_DET, "score": "high"}], "score must be a finite number"),
        ([{**GOOD_DET, "score": float("nan")}], "score must be a finite number"),
        ([{k: v for k, v in GOOD_DET.items() if k != "score"}], "missing key 'score'"),
        ([{"image_id": 1, "category_id": 1, "score": 0.5}], "needs 'bbox' or 'segmentation'"),
        ({"not": "a list"}, "must be a JSON list"),
    ],
)
def test_bad_results_raise_data_error(dt, message):
    """Malformed results raise one-line DataErrors naming the record."""
    gt = _tiny_gt([{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25}])
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        evaluate_coco(gt, dt)
    assert "\n" not in str(e.value)


def test_bad_ground_truth_and_files_raise_data_error(tmp_path):
    """Missing files, invalid JSON, missing keys, duplicate ids and unknown references in the ground truth."""
    with pytest.raises(DataError, match="file not found"):
        evaluate_coco(tmp_path / "nope.json", [])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON"):
        evaluate_coco(tmp_path / "bad.json", [])
    with pytest.raises(DataError, match="missing top-level key 'categories'"):
        evaluate_coco({"images": [], "annotations": []}, [])
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0}
    with pytest.raises(DataError, match=r"annotations\[1\]: duplicate id 1"):
        evaluate_coco(_tiny_gt([ann, ann]), [])
    with pytest.raises(DataError, match="image_id 7 is not an image"):
        evaluate_coco(_tiny_gt([{**ann, "image_id": 7}]), [])
    with pytest.raises(DataError, match="missing key 'area'"):
        evaluate_coco(_tiny_gt([{k: v for k, v in ann.items() if k != "area"}]), [])
    with pytest.raises(DataError, match="missing key 'segmentation'"):
        evaluate_coco(_tiny_gt([ann]), [], "segm")
    with pytest.raises(DataError, match=r"annotations\[0\]: iscrowd must be 0 or 1"):
        evaluate_coco(_tiny_gt([{**ann, "iscrowd": "0"}]), [])
    with pytest.raises(ConfigError):
        evaluate_coco(_tiny_gt([ann]), [], "keypoints")

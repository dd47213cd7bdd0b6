"""COCO evaluation on the real COCO128 annotations (939 objects, 10 crowd RLEs, polygons) against
pycocotools' ``COCOeval``: 12 numbers to 1e-9, precision/recall/scores arrays to 1e-12. Skipped when
``../shared/data/coco128`` is absent."""

from __future__ import annotations

import json

import numpy as np
import pytest
from coco_cases import reference_eval
from pycocotools import mask as mask_utils

from segdet.metrics.coco_eval import evaluate_coco


@pytest.fixture
def coco128_gt(shared_dataset) -> dict:
    path = shared_dataset("coco128") / "annotations" / "instances.json"
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return json.loads(path.read_text())


def _compare(gt: dict, dt: list, iou_type: str):
    ref = reference_eval(gt, dt, iou_type)
    ours = evaluate_coco(gt, dt, iou_type)
    np.testing.assert_allclose(ours.stats, np.asarray(ref.stats), rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.precision, ref.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.recall, ref.eval["recall"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.scores, ref.eval["scores"], rtol=0, atol=1e-12)
    return ours


def _to_rle(ann: dict, img: dict) -> dict:
    h, w = img["height"], img["width"]
    s = ann["segmentation"]
    rle = (
        mask_utils.merge(mask_utils.frPyObjects(s, h, w))
        if isinstance(s, list)
        else mask_utils.frPyObjects(s, h, w)
    )
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_as_detections(coco128_gt, iou_type):
    """The non-crowd ground truth as detections (score 1): AP = 1 except where crowds/areas intervene, and
    exactly pycocotools' numbers; then with random scores."""
    images = {im["id"]: im for im in coco128_gt["images"]}
    dt = []
    for a in coco128_gt["annotations"]:
        if a["iscrowd"]:
            continue
        d = {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0}
        if iou_type == "bbox":
            d["bbox"] = list(a["bbox"])
        else:
            d["segmentation"] = _to_rle(a, images[a["image_id"]])
        dt.append(d)
    ours = _compare(coco128_gt, dt, iou_type)
    if iou_type == "bbox":
        assert ours.stats[0] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    for d in dt:
        d["score"] = float(rng.random())
    _compare(coco128_gt, dt, iou_type)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_jittered_detections(coco128_gt, iou_type):
    """Jittered boxes / shifted masks (1-3 per object, some with wrong classes) plus false positives with
    random scores: exactly pycocotools' numbers."""
    rng = np.random.default_rng(1)
    images = {im["id"]: im for im in coco128_gt["images"]}
    cat_ids = [c["id"] for c in coco128_gt["categories"]]
    dt = []
    for a in coco128_gt["annotations"]:
        img = images[a["image_id"]]
        for _ in range(int(rng.integers(1, 4))):
            cat = a["category_id"] if rng.random() < 0.9 else int(rng.choice(cat_ids))
            d = {"image_id": a["image_id"], "category_id": cat, "score": round(float(rng.random()), 2)}
            x, y, w, h = a["bbox"]
            s = float(rng.choice([0.02, 0.1, 0.3]))
            dx, dy = rng.normal(0, s * w), rng.normal(0, s * h)
            if iou_type == "bbox":
                d["bbox"] = [x + dx, y + dy, w * (1 + rng.normal(0, s)), h * (1 + rng.normal(0, s))]
            else:
                m = mask_utils.decode(_to_rle(a, img))
                m = np.roll(m, (round(dy), round(dx)), axis=(0, 1))
                rle = mask_utils.encode(np.asfortranarray(m))
                d["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            dt.append(d)
    for im in coco128_gt["images"][::4]:  # false positives
        h, w = im["height"], im["width"]
        x, y = float(rng.uniform(0, w - 50)), float(rng.uniform(0, h - 50))
        d = {"image_id": im["id"], "category_id": int(rng.choice(cat_ids)), "score": float(rng.random())}
        if iou_type == "bbox":
            d["bbox"] = [x, y, 40.0, 30.0]
        else:
            poly = [[x, y, x + 40, y, x + 40, y + 30, x, y + 30]]
            rle = mask_utils.merge(mask_utils.frPyObjects(poly, h, w))
            d["segmentation"] = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
        dt.append(d)
    ours = _compare(coco128_gt, dt, iou_type)
    assert 0.05 < ours.stats[0] < 0.95

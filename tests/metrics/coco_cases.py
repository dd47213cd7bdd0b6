"""Random COCO ground truth / results generators and the pycocotools reference run, for the COCO tests."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def reference_eval(gt: dict, dt: list, iou_type: str, use_cats: bool = True) -> COCOeval:
    """pycocotools' COCOeval on deep copies (pycocotools mutates its input); an empty results list is
    built as an empty COCO results object, since ``loadRes`` cannot take one."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        if dt:
            res = coco.loadRes(copy.deepcopy(dt))
        else:
            res = COCO()
            res.dataset = {"images": list(gt["images"]), "categories": gt["categories"], "annotations": []}
            res.createIndex()
        ev = COCOeval(coco, res, iou_type)
        ev.params.useCats = int(use_cats)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _box(rng: np.random.Generator, size: int) -> list[float]:
    """A box with a COCO-like spread of sizes (small, medium, large) inside a ``size`` image."""
    side = float(np.exp(rng.uniform(np.log(2), np.log(size * 0.9))))
    w = side * rng.uniform(0.5, 1.5)
    h = side * rng.uniform(0.5, 1.5)
    x = rng.uniform(0, max(size - w, 1))
    y = rng.uniform(0, max(size - h, 1))
    return [round(x, 2), round(y, 2), round(w, 2), round(h, 2)]


def _jitter(rng: np.random.Generator, b: list[float], amount: float) -> list[float]:
    x, y, w, h = b
    return [
        round(x + rng.normal(0, amount * max(w, 1)), 2),
        round(y + rng.normal(0, amount * max(h, 1)), 2),
        round(max(w * (1 + rng.normal(0, amount)), 0), 2),
        round(max(h * (1 + rng.normal(0, amount)), 0), 2),
    ]


def _mask_rle(rng: np.random.Generator, b: list[float], size: int) -> dict:
    """An elliptical or rectangular mask filling box ``b`` (clipped to the image), as compressed RLE."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    x, y, w, h = b
    if rng.random() < 0.5:
        m = (xx >= x) & (xx < x + w) & (yy >= y) & (yy < y + h)
    else:
        cx, cy = x + w / 2, y + h / 2
        m = ((xx - cx) / max(w / 2, 1e-3)) ** 2 + ((yy - cy) / max(h / 2, 1e-3)) ** 2 <= 1
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [size, size], "counts": rle["counts"].decode("ascii")}


def make_case(seed: int, iou_type: str = "bbox") -> tuple[dict, list]:
    """Random ground truth and results with every awkward case of COCO evaluation: crowd objects (also
    as uncompressed RLE), images without ground truth, images without detections, a category without
    ground truth, tied scores, more than 100 detections in one image and category, zero-size boxes,
    tiny boxes (small range), a gt whose area field disagrees with its box, unsorted ids."""
    rng = np.random.default_rng(seed)
    size = 64 if iou_type == "segm" else 400
    n_img = int(rng.integers(3, 9))
    image_ids = [int(i) for i in rng.choice(np.arange(1, 1000), n_img, replace=False)]
    cat_ids = [7, 3, 12, 1]  # unsorted; category 12 never has ground truth
    images = [{"id": i, "width": size, "height": size, "file_name": f"{i}.jpg"} for i in image_ids]
    categories = [{"id": c, "name": f"c{c}"} for c in cat_ids]
    anns, dets = [], []
    tie_scores = rng.random() < 0.5
    ann_id = int(rng.integers(1, 50))
    for k, img in enumerate(image_ids):
        n_gt = 0 if k == 0 else int(rng.integers(0, 8))  # image 0 has no ground truth
        gts = []
        for _ in range(n_gt):
            cat = int(rng.choice([7, 3, 1]))
            b = _box(rng, size)
            if rng.random() < 0.1:
                b[2 + int(rng.integers(0, 2))] = 0.0  # degenerate gt
            crowd = int(rng.random() < 0.15)
            area = b[2] * b[3] if rng.random() < 0.9 else float(rng.uniform(0, 200**2))
            ann = {
                "id": ann_id,
                "image_id": img,
                "category_id": cat,
                "bbox": b,
                "area": area,
                "iscrowd": crowd,
            }
            if iou_type == "segm":
                rle = _mask_rle(rng, b, size)
                if crowd:  # COCO stores crowds as uncompressed RLE
                    m = mask_utils.decode(rle)
                    flat = m.flatten(order="F")
                    change = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
                    ann["segmentation"] = {"size": [size, size], "counts": np.diff(np.r_[0, change]).tolist()}
                elif rng.random() < 0.5:
                    x, y, w, h = b
                    ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
                else:
                    ann["segmentation"] = rle
                ann["area"] = float(mask_utils.area(rle)) if rng.random() < 0.9 else area
            anns.append(ann)
            gts.append(ann)
            ann_id += int(rng.integers(1, 4))
        if k == 1:
            continue  # image 1 has no detections
        n_det = int(rng.integers(0, 25))
        if k == 2:
            n_det = 130  # more than maxDets in one image
        for j in range(n_det):
            if gts and rng.random() < 0.6:
                g = gts[int(rng.integers(len(gts)))]
                b = _jitter(rng, g["bbox"], float(rng.choice([0.02, 0.1, 0.3])))
                cat = g["category_id"] if rng.random() < 0.9 else int(rng.choice(cat_ids))
            else:
                b = _box(rng, size)
                cat = int(rng.choice(cat_ids))
            if k == 2 and j < 110:
                cat = 3  # > 100 detections in one (image, category) group
            if rng.random() < 0.05:
                b[2] = 0.0  # degenerate detection
            if rng.random() < 0.05:
                b = [b[0], b[1], round(float(rng.uniform(0.5, 4)), 2), round(float(rng.uniform(0.5, 4)), 2)]
            score = round(float(rng.random()), 1) if tie_scores else float(rng.random())
            det = {"image_id": img, "category_id": cat, "score": score}
            if iou_type == "segm":
                det["segmentation"] = _mask_rle(rng, b, size)
            else:
                det["bbox"] = b
            dets.append(det)
    order = rng.permutation(len(dets))
    return (
        {"images": images, "annotations": anns, "categories": categories},
        [dets[i] for i in order],
    )

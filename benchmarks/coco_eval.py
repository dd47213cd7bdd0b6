"""Benchmark COCO evaluation: pycocotools vs faster-coco-eval vs segdet, on a synthetic COCO-like set.

    python benchmarks/coco_eval.py --images 5000 --dets 100 --repeat 3 --iou-type both

The set: ``--images`` 640x480 images, 80 classes, Poisson(7) objects per image with COCO's mix of sizes
(about 41% small, 34% medium, 25% large), 1% crowd (uncompressed RLE); ``--dets`` detections per image
made of 1-3 jittered copies of every object (sometimes with a wrong class) plus false positives; ground
truth masks are polygons, result masks compressed RLE. Each library is timed from the in-memory dicts to
the 12 numbers (pycocotools / faster-coco-eval: ``COCO()`` index + ``loadRes`` + ``evaluate`` +
``accumulate`` + ``summarize``; segdet: ``evaluate_coco``), interleaved, median of ``--repeat`` runs.
Inputs are deep-copied outside the timed region because pycocotools mutates them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
import time

import numpy as np
from pycocotools import mask as mask_utils


def _polygon(rng: np.random.Generator, x: float, y: float, w: float, h: float, n: int = 16) -> list[float]:
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(0.7, 1.0, n)
    px = x + w / 2 + np.cos(ang) * r * w / 2
    py = y + h / 2 + np.sin(ang) * r * h / 2
    return np.round(np.stack([px, py], 1).ravel(), 2).tolist()


def make_dataset(n_images: int, dets_per_image: int, seed: int, masks: bool) -> tuple[dict, list]:
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    images = [
        {"id": i + 1, "width": width, "height": height, "file_name": f"{i + 1:012d}.jpg"}
        for i in range(n_images)
    ]
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, 91) if c % 9 != 0][:80]
    cat_ids = [c["id"] for c in categories]
    # COCO: ~41% of objects below 32^2 px, ~34% between 32^2 and 96^2, ~25% above
    side_edges = [(4, 32), (32, 96), (96, 400)]
    anns, dets = [], []
    for img in range(1, n_images + 1):
        objects = []
        for _ in range(int(rng.poisson(7))):
            lo, hi = side_edges[int(rng.choice(3, p=[0.41, 0.34, 0.25]))]
            side = rng.uniform(lo, hi)
            w, h = side * rng.uniform(0.6, 1.6), side * rng.uniform(0.6, 1.6)
            w, h = min(w, width - 1), min(h, height - 1)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            box = [round(x, 2), round(y, 2), round(w, 2), round(h, 2)]
            crowd = int(rng.random() < 0.01)
            ann = {
                "id": len(anns) + 1,
                "image_id": img,
                "category_id": int(rng.choice(cat_ids)),
                "bbox": box,
                "iscrowd": crowd,
                "area": round(w * h * 0.8, 2),
            }
            if masks:
                poly = _polygon(rng, *box)
                rle = mask_utils.merge(mask_utils.frPyObjects([poly], height, width))
                ann["area"] = float(mask_utils.area(rle))
                if crowd:
                    flat = mask_utils.decode(rle).flatten(order="F")
                    change = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
                    ann["segmentation"] = {
                        "size": [height, width],
                        "counts": np.diff(np.r_[0, change]).tolist(),
                    }
                else:
                    ann["segmentation"] = [poly]
            anns.append(ann)
            objects.append(ann)
        boxes = []
        for o in objects:
            for _ in range(int(rng.integers(1, 4))):
                x, y, w, h = o["bbox"]
                s = rng.choice([0.03, 0.1, 0.25])
                jit = [
                    x + rng.normal(0, s * w),
                    y + rng.normal(0, s * h),
                    w * (1 + rng.normal(0, s)),
                    h * (1 + rng.normal(0, s)),
                ]
                cat = o["category_id"] if rng.random() < 0.85 else int(rng.choice(cat_ids))
                boxes.append((jit, cat, float(rng.uniform(0.3, 1.0))))
        while len(boxes) < dets_per_image:
            side = np.exp(rng.uniform(np.log(6), np.log(300)))
            w, h = side * rng.uniform(0.6, 1.6), side * rng.uniform(0.6, 1.6)
            boxes.append(
                (
                    [rng.uniform(0, width - 5), rng.uniform(0, height - 5), w, h],
                    int(rng.choice(cat_ids)),
                    float(rng.uniform(0.01, 0.6)),
                )
            )
        for b, cat, score in boxes[:dets_per_image]:
            x, y = max(b[0], 0.0), max(b[1], 0.0)
            w, h = max(min(b[2], width - x), 1.0), max(min(b[3], height - y), 1.0)
            det = {"image_id": img, "category_id": cat, "score": round(score, 4)}
            if masks:
                rle = mask_utils.frPyObjects([_polygon(rng, x, y, w, h, 10)], height, width)[0]
                det["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            else:
                det["bbox"] = [round(x, 2), round(y, 2), round(w, 2), round(h, 2)]
            dets.append(det)
    return {"images": images, "annotations": anns, "categories": categories}, dets


def run_pycocotools(gt: dict, dt: list, iou_type: str) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dt), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def run_faster(gt: dict, dt: list, iou_type: str) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(gt, print_function=lambda *a, **k: None)
        ev = COCOeval_faster(coco, coco.loadRes(dt), iou_type, print_function=lambda *a, **k: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def run_segdet(gt: dict, dt: list, iou_type: str) -> np.ndarray:
    from segdet.metrics.coco_eval import evaluate_coco

    return evaluate_coco(gt, dt, iou_type).stats


RUNNERS = {"pycocotools": run_pycocotools, "faster-coco-eval": run_faster, "segdet": run_segdet}


def bench(iou_type: str, n_images: int, n_dets: int, repeat: int, seed: int, skip: set[str]) -> None:
    t0 = time.perf_counter()
    gt, dt = make_dataset(n_images, n_dets, seed, masks=iou_type == "segm")
    print(
        f"\n[{iou_type}] {n_images} images, {len(gt['annotations'])} objects, {len(dt)} detections "
        f"(built in {time.perf_counter() - t0:.1f} s)"
    )
    times: dict[str, list[float]] = {k: [] for k in RUNNERS if k not in skip}
    stats: dict[str, np.ndarray] = {}
    for _ in range(repeat):
        for name in times:  # interleaved, so machine noise hits every library alike
            g, d = copy.deepcopy(gt), copy.deepcopy(dt)
            t = time.perf_counter()
            stats[name] = RUNNERS[name](g, d, iou_type)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{'library':<18}{'median s':>10}{'segdet speed-up':>17}{'max |d stats| vs segdet':>26}")
    for name, t in med.items():
        speed = t / med["segdet"]
        diff = float(np.abs(stats[name] - stats["segdet"]).max())
        print(f"{name:<18}{t:>10.3f}{speed:>16.2f}x{diff:>26.2e}")
    print("segdet stats:", np.array2string(stats["segdet"], precision=4, max_line_width=200))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iou-type", choices=["bbox", "segm", "both"], default="both")
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["pycocotools", "faster-coco-eval"],
        help="libraries not to time (pycocotools takes minutes at 5,000 images)",
    )
    args = ap.parse_args()
    for iou_type in ["bbox", "segm"] if args.iou_type == "both" else [args.iou_type]:
        bench(iou_type, args.images, args.dets, args.repeat, args.seed, set(args.skip))


if __name__ == "__main__":
    main()

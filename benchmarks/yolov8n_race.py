"""The race against Ultralytics YOLOv8n (issue 13): CPU latency at 640 px, and box AP on held-out COCO128
images after the same training time from scratch, both scored by our COCO evaluator.

**Latency.** YOLOv8n is built from Ultralytics' ``yolov8n.yaml`` with random weights (nothing is
downloaded), BatchNorm fused (``DetectionModel.fuse()``, as its predictor does), and timed as "model
forward + its NMS": ``non_max_suppression(model(x), conf_thres=0.25, iou_thres=0.7, max_det=300)`` on a
``1 x 3 x 640 x 640`` tensor (its predictor's defaults). Each of our one-stage detectors in
``--candidates`` is built at the same 640 x 640 input (random weights), prepared by
``fuse_for_inference()`` and timed as ``model([image])``: our whole inference, normalisation and
post-processing included. The image is a real COCO128 image resized to 640 x 640. Timings are
interleaved (ours, theirs, theirs, ours, ...), medians of ``--repeats``, ``--threads`` torch threads
for both; the ratio ours / YOLOv8n of the fastest of ours is the number the target (<= 1.0) is about.
With random weights few boxes pass either model's threshold: NMS is cheap for both, as it is for
trained models at a 0.25 threshold.

**AP.** COCO128's images are split as ``segdet train`` splits them (``val_fraction`` 0.2, seed 0:
:func:`segdet.engine.data_splits.holdout`); both train from scratch on the same training images for the
same wall-clock budget (``--budget-minutes``), one after the other, each in its own process with
``OMP_NUM_THREADS = --threads``:

* YOLOv8n: ``YOLO("yolov8n.yaml").train(..., time=budget / 60 h, imgsz=640, pretrained=False)``, its
  own recipe (mosaic and the other augmentations, SGD/AdamW auto, its LR schedule fitted to the time),
  on the training images written as a YOLO dataset (boxes);
* ours: ``segdet train --ours-config train.max_minutes=budget`` (default
  ``configs/coco128_yolov1_small_race.yaml``: YOLO v1 on MobileNetV3-Small at 640 px, our fastest, the
  one the latency is about; ``configs/coco128_yolov1_race.yaml``: on MobileNetV3-Large).

Then both predict the held-out images (YOLOv8n with ``conf=0.001, iou=0.7, max_det=100``, its
validation settings; ours with its own) and :func:`segdet.engine.detection.coco_metrics` (our
evaluator, equal to pycocotools) scores both against the same ground truth.

Nothing is downloaded: ``YOLO_OFFLINE=1``, Ultralytics' settings in the output folder, ``plots=False``
(no fonts), ``amp=False`` (its AMP check fetches weights), no pretrained weights. Run from the project
root (Ultralytics from the ``bench`` extra)::

    python benchmarks/yolov8n_race.py --data ../shared/data/coco128 --budget-minutes 10 --threads 2
    python benchmarks/yolov8n_race.py --data ../shared/data/coco128 --skip-ap --candidates yolov1_mnv3s

(``--skip-ap``: the latency part only.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

# Ultralytics reads these at import time: no network, settings kept out of the home directory.
os.environ.setdefault("YOLO_OFFLINE", "1")

CANDIDATES = {
    # name -> (MODELS name, options at a 640 x 640 input)
    "yolov1_mnv3s": ("yolov1_mobilenet_v3_small", {}),
    "yolov1_mnv3": ("yolov1_mobilenet_v3_large", {}),
    "yolov1_r18": (
        "yolov1_resnet50",
        {"backbone": "resnet18", "head": "conv", "head_channels": 256, "grid_size": 20, "size": (640, 640)},
    ),
    "centernet_r18": ("centernet_resnet18", {"min_size": 640, "max_size": 640}),
    "ssdlite": ("ssdlite320_mobilenet_v3_large", {"size": (640, 640)}),
}


def _ultralytics(out: Path):
    os.environ.setdefault("YOLO_CONFIG_DIR", str(out / "ultralytics-settings"))
    import ultralytics
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False})  # no analytics
    return ultralytics


def _image(data: Path, size: int) -> torch.Tensor:
    from torchvision.io import read_image

    first = sorted((data / "images").iterdir())[0]
    image = read_image(str(first)).float().div_(255)[None]
    return torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)[0]


# ----------------------------------------------------------------------------------------- latency
def latency(args: argparse.Namespace) -> dict:
    """Median ms of YOLOv8n (forward + NMS) and of each candidate of ours, interleaved."""
    _ultralytics(args.out)
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.nms import non_max_suppression

    from segdet.models import build

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    theirs = DetectionModel("yolov8n.yaml", nc=80, verbose=False).eval()
    theirs.fuse()
    image = _image(args.data, args.size)
    x = image[None].contiguous()

    def run_theirs():
        return non_max_suppression(theirs(x), conf_thres=0.25, iou_thres=0.7, max_det=300)

    ours = {}
    for key in args.candidates:
        name, options = CANDIDATES[key]
        model = build(name, num_classes=80, **options).eval()
        ours[key] = model.fuse_for_inference()
    times: dict[str, list[float]] = {"yolov8n": [], **{k: [] for k in ours}}
    with torch.inference_mode():
        for fn in [run_theirs, *(lambda m=m: m([image]) for m in ours.values())]:
            fn()  # warm-up
        for r in range(args.repeats):
            order = [("yolov8n", run_theirs), *((k, lambda m=m: m([image])) for k, m in ours.items())]
            for key, fn in order if r % 2 == 0 else reversed(order):
                start = time.perf_counter()
                fn()
                times[key].append((time.perf_counter() - start) * 1e3)
    medians = {k: statistics.median(v) for k, v in times.items()}
    fastest = min(ours, key=lambda k: medians[k])
    return {"ms": medians, "fastest": fastest, "ratio": medians[fastest] / medians["yolov8n"]}


# ------------------------------------------------------------------------------------------- data
def split(args: argparse.Namespace):
    from segdet.data.formats import read_dataset
    from segdet.engine.data_splits import holdout

    dataset = read_dataset("coco", args.data / "annotations" / "instances.json", images=args.data / "images")
    return holdout(dataset, 0.2, 0)


def write_yolo(dataset, out: Path) -> Path:
    """``dataset`` as YOLO box rows (masks dropped: Ultralytics would take boxes from the polygons)."""
    from segdet.data.formats import write_dataset

    images = [
        dataclasses.replace(im, instances=[dataclasses.replace(o, mask=None) for o in im.instances])
        for im in dataset.images
    ]
    return write_dataset("yolo", dataclasses.replace(dataset, images=images), out)


# --------------------------------------------------------------------------------------- training
def train_yolov8n(args: argparse.Namespace, train, val) -> Path:
    root = args.out / "yolov8n-data"
    write_yolo(train, root / "train")
    write_yolo(val, root / "val")
    data = {
        "path": str(root.resolve()),
        "train": "train/images",
        "val": "val/images",
        "names": dict(enumerate(train.classes)),
    }
    (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    script = (
        "import os, sys; from ultralytics import YOLO; from ultralytics.utils import SETTINGS; "
        "SETTINGS.update({'sync': False}); "
        f"YOLO('yolov8n.yaml').train(data={str(root / 'data.yaml')!r}, epochs=1000, "
        f"time={args.budget_minutes / 60!r}, imgsz={args.size}, batch={args.batch}, workers=0, device='cpu', "
        "pretrained=False, amp=False, plots=False, val=False, seed=0, verbose=False, "
        f"project={str(args.out.resolve())!r}, name='yolov8n', exist_ok=True)"
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=_env(args))
    return args.out / "yolov8n" / "weights" / "last.pt"


def train_ours(args: argparse.Namespace) -> Path:
    config = yaml.safe_load(Path(args.ours_config).read_text())
    command = [
        sys.executable,
        "-m",
        "segdet",
        "train",
        str(args.ours_config),
        f"train.max_minutes={args.budget_minutes}",
        f"output_dir={args.out.resolve()}",
        f"data.train.path={(args.data / 'annotations' / 'instances.json').resolve()}",
        f"data.train.images={(args.data / 'images').resolve()}",
        "train.progress=false",
    ]
    subprocess.run(command, check=True, env=_env(args))
    return args.out / config["name"] / "last.safetensors"


def _env(args: argparse.Namespace) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env["YOLO_CONFIG_DIR"] = str((args.out / "ultralytics-settings").resolve())
    return env


# ------------------------------------------------------------------------------------- evaluation
def evaluate_yolov8n(weights: Path, val, category_ids: list[int], size: int) -> dict:
    from ultralytics import YOLO

    from segdet.data.formats.coco_write import to_coco_dict
    from segdet.engine.detection import coco_metrics

    if not weights.is_file():  # YOLO() would try to download a missing name
        raise SystemExit(f"{weights}: no YOLOv8n checkpoint (run without --skip-train first)")
    model = YOLO(str(weights))
    results = []
    for im in val.images:
        (pred,) = model.predict(str(im.path), imgsz=size, conf=0.001, iou=0.7, max_det=100, verbose=False)
        boxes = pred.boxes
        for (x1, y1, x2, y2), label, score in zip(
            boxes.xyxy.tolist(), boxes.cls.int().tolist(), boxes.conf.tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": int(im.id),
                    "category_id": int(category_ids[label]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    return coco_metrics(to_coco_dict(val), results, masks=False)


def evaluate_ours(checkpoint: Path, val, category_ids: list[int]) -> dict:
    from torchvision.io import ImageReadMode, read_image

    from segdet.data.formats.coco_write import to_coco_dict
    from segdet.engine.detection import coco_metrics, detections_to_coco
    from segdet.engine.inference import load_trained

    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint}: no checkpoint of ours (run without --skip-train first)")
    model = load_trained(checkpoint).model
    results = []
    with torch.inference_mode():
        for im in val.images:
            image = read_image(str(im.path), ImageReadMode.RGB).float().div_(255)
            (output,) = model([image])
            results += detections_to_coco(output, int(im.id), category_ids, masks=False)
    return coco_metrics(to_coco_dict(val), results, masks=False)


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/coco128"))
    parser.add_argument("--out", type=Path, default=Path("runs/yolov8n-race"))
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of both (training and latency)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--candidates", default=",".join(CANDIDATES), help=f"of {list(CANDIDATES)} (default: all)"
    )
    parser.add_argument("--budget-minutes", type=float, default=10.0, help="training time of each (minutes)")
    parser.add_argument("--batch", type=int, default=8, help="YOLOv8n's training batch (ours: its config's)")
    parser.add_argument("--ours-config", default="configs/coco128_yolov1_small_race.yaml")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-ap", action="store_true", help="latency only: no training, no evaluation")
    parser.add_argument(
        "--skip-train", action="store_true", help="evaluate the checkpoints of a previous run"
    )
    args = parser.parse_args()
    args.candidates = [c for c in args.candidates.split(",") if c]
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"load_average_start": os.getloadavg(), "threads": args.threads}

    if not args.skip_latency:
        lat = latency(args)
        report["latency"] = lat
        print(f"latency at {args.size} px, {args.threads} threads, median of {args.repeats} (ms):")
        for key, ms in lat["ms"].items():
            print(f"  {key:16s} {ms:8.1f}")
        print(f"  ours fastest: {lat['fastest']}, ratio ours / YOLOv8n = {lat['ratio']:.2f} (target <= 1.0)")
    if not args.skip_ap:
        report.update(race_ap(args))
    report["load_average_end"] = os.getloadavg()
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    start, end = report["load_average_start"], report["load_average_end"]
    print(f"load average (1, 5, 15 min) at start / end: {start} / {end}")


def race_ap(args: argparse.Namespace) -> dict:
    """Train both for the budget (unless ``--skip-train``), score both on the held-out images."""
    report: dict = {}
    train, val = split(args)
    category_ids = list(train.category_ids)
    config = yaml.safe_load(Path(args.ours_config).read_text())
    if args.skip_train:
        theirs_ckpt = args.out / "yolov8n" / "weights" / "last.pt"
        ours_ckpt = args.out / config["name"] / "last.safetensors"
    else:
        report["load_average_before_training"] = os.getloadavg()
        start = time.perf_counter()
        theirs_ckpt = train_yolov8n(args, train, val)
        report["yolov8n_train_s"] = time.perf_counter() - start
        start = time.perf_counter()
        ours_ckpt = train_ours(args)
        report["ours_train_s"] = time.perf_counter() - start
        report["load_average_after_training"] = os.getloadavg()
    _ultralytics(args.out)
    theirs = evaluate_yolov8n(theirs_ckpt, val, category_ids, args.size)
    ours = evaluate_ours(ours_ckpt, val, category_ids)
    report["ap"] = {"yolov8n": theirs, "ours": ours, "ours_model": config["model"]["name"]}
    print(
        f"box AP on {len(val.images)} held-out COCO128 images after {args.budget_minutes:g} min of training "
        f"each: YOLOv8n AP {theirs['AP']:.4f} AP50 {theirs['AP50']:.4f}; ours ({config['name']}) "
        f"AP {ours['AP']:.4f} AP50 {ours['AP50']:.4f} (target: ours >= YOLOv8n)"
    )
    return report


if __name__ == "__main__":
    main()

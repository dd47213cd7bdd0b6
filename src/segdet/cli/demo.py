"""``segdet demo``: a segmentation model and a detector that visibly work, trained on the CPU in minutes.

1. The data: the built-in synthetic shapes set at its *easy* setting (``data.synthetic_difficulty:
   easy``: 1-3 large shapes, wholly visible, coloured by class, on plain backgrounds) at 48 px, so that
   small models learn it in minutes on 2 cores; written as COCO, read back, checked and drawn.
2. A U-Net (16 channels at full resolution) trained for semantic segmentation, evaluated by the
   Trainer on held-out images (confusion matrix: mIoU, Dice, pixel accuracy).
3. A Faster R-CNN (ResNet-18 FPN, narrow heads, anchors scaled to the shapes) trained for detection,
   evaluated by the Trainer on the same held-out images (our COCO evaluator: box AP, AP50).
4. ``summary.png``: ground truth beside prediction for a few held-out images, with the metrics.

The held-out images are drawn with another seed (``train.seed + VAL_SEED_OFFSET``) and never seen in
training; no metric is computed on training images. The metrics reported are those of the final
weights (the Trainer's last evaluation), not of the best epoch. Both runs are ordinary Trainer runs of
configs a user could write (``runs/*/config.yaml`` in the output). ``benchmarks/demo.py`` measures the
whole demo's wall time and metrics at the defaults.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from segdet.cli.paths import add_overwrite, output_dir, path_arg

# What the demo is meant to show (benchmarks/demo.py checks them): mIoU and box AP50 on held-out images.
TARGETS = {"mIoU": 0.8, "AP50": 0.7}
# Training images the data part writes as COCO, checks and summarises (a sample: it shows the tools).
DATA_PART_IMAGES = 96
# Detections drawn in summary.png (the metrics use every detection, as COCO AP does).
SCORE_THRESH = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=path_arg, default=Path("segdet-demo"), help="output folder (absent or empty)"
    )
    add_overwrite(parser)
    parser.add_argument("--num-images", type=int, default=480, help="synthetic training images (480)")
    parser.add_argument("--val-images", type=int, default=48, help="held-out validation images (48)")
    parser.add_argument("--size", type=int, default=48, help="image side in pixels (48)")
    parser.add_argument("--seed", type=int, default=0, help="training seed; the held-out set uses another")
    parser.add_argument(
        "--difficulty", choices=("easy", "standard"), default="easy", help="shapes set difficulty (easy)"
    )
    parser.add_argument("--draw", type=int, default=4, help="held-out images in summary.png (4)")
    parser.add_argument(
        "--epochs", type=int, default=2, help="segmentation training epochs (0: data part only, no training)"
    )
    parser.add_argument(
        "--detector-epochs", type=int, default=3, help="detector training epochs (0: skip it)"
    )
    parser.add_argument(
        "--minutes", type=float, default=None, help="stop each training run after this many minutes (none)"
    )


def _data(args: argparse.Namespace) -> dict:
    return {
        "synthetic": args.num_images,
        "synthetic_val": args.val_images,
        "synthetic_size": args.size,
        "synthetic_difficulty": args.difficulty,
    }


def _train(args: argparse.Namespace, epochs: int, best_metric: str) -> dict:
    return {
        "epochs": epochs,
        "max_minutes": args.minutes,
        "seed": args.seed,
        "best_metric": best_metric,
        "log_every": 5,
    }


def segmentation_config(args: argparse.Namespace):
    """U-Net (Ronneberger et al. 2015) with 16 channels at full resolution (the shapes need few; the
    cheapest per image of our segmentation models), CE + Dice loss, AdamW with a cosine schedule."""
    from segdet.engine.config import from_dict

    return from_dict(
        {
            "task": "segmentation",
            "name": "unet_shapes",
            "output_dir": str(args.out / "runs"),
            "model": {"name": "unet", "base_channels": 16},
            "data": {**_data(args), "size": args.size, "scale_range": [0.8, 1.25], "batch_size": 16},
            "loss": {"name": "ce_dice"},
            "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0001},
            "schedule": {"name": "cosine", "warmup_steps": 10},
            "train": _train(args, args.epochs, "mIoU"),
        }
    )


def detection_config(args: argparse.Namespace):
    """Faster R-CNN (Ren et al. 2015) on a ResNet-18 FPN with narrow heads at the images' own size,
    anchors of 8-128 px (one size per level), few sampled anchors and RoIs: of the detectors tried, the
    one that reached box AP50 >= 0.7 on held-out images soonest here (CenterNet: 0.03 after the same
    steps; its heatmap needs far longer schedules)."""
    from segdet.engine.config import from_dict

    return from_dict(
        {
            "task": "detection",
            "name": "fasterrcnn_shapes",
            "output_dir": str(args.out / "runs"),
            "model": {
                "name": "fasterrcnn_resnet50_fpn",
                "backbone": "resnet18",
                "fpn_channels": 64,
                "representation_size": 256,
                "min_size": args.size,
                "max_size": args.size,
                "anchor_sizes": [[8], [16], [32], [64], [128]],
                "rpn_batch_size_per_image": 64,
                "box_batch_size_per_image": 32,
                "rpn_pre_nms_top_n_train": 200,
                "rpn_post_nms_top_n_train": 100,
                "rpn_pre_nms_top_n_test": 200,
                "rpn_post_nms_top_n_test": 100,
            },
            "data": {**_data(args), "batch_size": 16, "hflip": 0.5},
            "optim": {"name": "adamw", "lr": 0.002, "weight_decay": 0.0001},
            "schedule": {"name": "cosine", "warmup_steps": 10},
            "train": {**_train(args, args.detector_epochs, "AP"), "clip_grad_norm": 10.0},
        }
    )


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out: Path = output_dir(args.out, overwrite=args.overwrite)
    args.out = out
    if not _data_part(args, out):
        return 1
    if args.epochs <= 0:
        print(f"done in {time.perf_counter() - start:.1f} s; everything is under {out.resolve()}")
        return 0

    from segdet.engine.detection import DetectionTask
    from segdet.engine.segmentation import SegmentationTask

    seg_cfg = segmentation_config(args)
    print(
        f"[3/5] training a U-Net for {args.epochs} epochs on {args.num_images} images, "
        f"evaluating on {args.val_images} held-out images ..."
    )
    seg, seg_task = _fit(seg_cfg, SegmentationTask, args)
    print(
        f"      held-out: mIoU {seg['mIoU']:.3f} (target >= {TARGETS['mIoU']}), "
        f"mean Dice {seg['mDice']:.3f}, pixel accuracy {seg['pixel_acc']:.3f}"
    )
    results = {"segmentation": seg}
    det_cfg = det_task = None
    if args.detector_epochs > 0:
        det_cfg = detection_config(args)
        print(
            f"[4/5] training a Faster R-CNN (ResNet-18 FPN) for {args.detector_epochs} epochs on the same "
            "images ..."
        )
        det, det_task = _fit(det_cfg, DetectionTask, args)
        print(
            f"      held-out (COCO): box AP50 {det['AP50']:.3f} (target >= {TARGETS['AP50']}), "
            f"AP {det['AP']:.3f}, AP75 {det['AP75']:.3f}"
        )
        results["detection"] = det
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["targets"] = TARGETS
    metrics_file = out / "metrics.json"
    metrics_file.write_text(json.dumps(results, indent=2))
    summary = _summary(seg_task, det_task, results, args)
    print(f"[5/5] drew {min(args.draw, args.val_images)} held-out images, truth beside prediction")
    print(f"done in {time.perf_counter() - start:.1f} s; everything is under {out.resolve()}")
    print(f"  summary (truth | prediction, with the metrics): {summary.resolve()}")
    for cfg in (seg_cfg, det_cfg):
        if cfg is not None:
            print(f"  loss and metric curves of {cfg.name}: {(cfg.run_dir / 'plots').resolve()}")
    print(f"  metrics: {metrics_file.resolve()}")
    return 0


def _data_part(args: argparse.Namespace, out: Path) -> bool:
    """The first training images as a user's files: written as COCO, read back strictly, checked, drawn
    (the runs draw their own copies of the whole set: ``data.synthetic``)."""
    from segdet.data import shapes
    from segdet.data.check import check_dataset
    from segdet.data.formats import read_dataset
    from segdet.data.render import draw_record
    from segdet.data.stats import dataset_stats

    options = shapes.DIFFICULTIES[args.difficulty]
    coco_json = shapes.write(
        out / "coco",
        "coco",
        args.num_images,
        seed=args.seed,
        size=args.size,
        **options,  # type: ignore[arg-type]
    )
    dataset = read_dataset("coco", coco_json, strict=True)
    problems = check_dataset(dataset)
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        print(f"      {p}")
    print(
        f"[1/5] generated the first {len(dataset.images)} of the {args.num_images} training images "
        f"({args.difficulty} shapes, {args.size} px), wrote them as COCO ({coco_json}), read them back "
        f"and checked every file: {len(errors)} errors, {len(problems) - len(errors)} warnings"
    )
    for line in dataset_stats(dataset).lines():
        print(f"      {line}")
    drawn = out / "annotations"
    drawn_count = min(args.draw, len(dataset.images))
    for i in range(drawn_count):
        draw_record(dataset, i, drawn / f"{Path(dataset.images[i].file_name).stem}.png")
    print(f"[2/5] drew the annotations of {drawn_count} training images into {drawn}")
    return not errors


def _fit(cfg, task_class, args: argparse.Namespace):
    """One ordinary Trainer run: its last evaluation on the held-out images, and its task."""
    from segdet.engine.run_folder import claim_run_dir
    from segdet.engine.trainer import Trainer

    claim_run_dir(cfg, overwrite=args.overwrite)
    task = task_class(cfg)
    summary = Trainer(cfg, task).fit()
    return {k: v for k, v in summary["last_metrics"].items() if "/" not in k}, task


def _summary(seg_task, det_task, results: dict, args: argparse.Namespace) -> Path:
    """Draw ``summary.png``: the runs' final checkpoints on the first held-out images of their tasks."""
    import torch

    from segdet.cli import demo_figure
    from segdet.data.io import load_image
    from segdet.engine.inference import load_trained

    seg_model = load_trained(seg_task.cfg.run_dir / "last.safetensors")
    seg_val = seg_task.val_dataset()
    det_model = det_val = None
    if det_task is not None:
        det_model = load_trained(det_task.cfg.run_dir / "last.safetensors")
        det_val = det_task.val_dataset()
    rows = []
    none = torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64), torch.zeros((0,))
    for i in range(min(args.draw, len(seg_val))):
        image, target = seg_val[i]
        with torch.no_grad():
            semantic = seg_model.model(image.unsqueeze(0)).argmax(1)[0]
        truth, pred = none[:2], none
        if det_val is not None:
            det_image, det_target = det_val[i]
            with torch.no_grad():
                found = det_model.model([det_image.as_subclass(torch.Tensor)])[0]
            keep = found["scores"] >= SCORE_THRESH
            truth = det_target["boxes"].as_subclass(torch.Tensor), det_target["labels"]
            pred = found["boxes"][keep], found["labels"][keep], found["scores"][keep]
        rows.append(
            demo_figure.Row(
                load_image(seg_task.val_ann.images[i].path), target["semantic"], semantic, *truth, *pred
            )
        )
    seg = results["segmentation"]
    lines = [
        f"U-Net, {args.epochs} epochs: mIoU {seg['mIoU']:.3f} "
        f"(target >= {TARGETS['mIoU']}), mean Dice {seg['mDice']:.3f}, pixel accuracy {seg['pixel_acc']:.3f}"
    ]
    if "detection" in results:
        det = results["detection"]
        lines.append(
            f"Faster R-CNN (ResNet-18 FPN), {args.detector_epochs} epochs: box AP50 {det['AP50']:.3f} "
            f"(target >= {TARGETS['AP50']}), AP {det['AP']:.3f}; boxes drawn at score >= {SCORE_THRESH}"
        )
    lines.append(
        f"Metrics on all {args.val_images} held-out images (another seed, never trained on); "
        f"{args.num_images} training images of {args.size} px; whole demo {results['seconds']:.0f} s."
    )
    figure = demo_figure.Figure(
        title="segdet demo: synthetic shapes, held-out images",
        lines=lines,
        semantic_classes=seg_task.val_ann.semantic_classes,
        classes=det_model.classes if det_model is not None else seg_model.classes,
        ignore_index=seg_task.ignore_index,
    )
    path = args.out / "summary.png"
    demo_figure.render(rows, figure).save(path)
    return path

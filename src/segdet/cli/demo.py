"""``segdet demo``: the main jobs end to end on the built-in synthetic shapes set, on the CPU.

1. generate the shapes set, write it as a COCO dataset, read it back and check every file;
2. train a small semantic segmentation model (U-Net on a ResNet-18 encoder) for a few minutes, evaluate
   it on held-out images (mIoU, Dice, pixel accuracy) and draw its predictions;
3. train a small instance segmentation model (Mask R-CNN on a ResNet-18 FPN) for a few minutes, evaluate
   it on held-out images (COCO box and mask AP) and draw its detections.
Everything (data, checkpoints, metrics, curves, pictures) goes under ``--out``. At the defaults the whole
demo takes about 8-9 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from segdet.cli.paths import add_overwrite, output_dir, path_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=path_arg, default=Path("segdet-demo"), help="output folder (absent or empty)"
    )
    add_overwrite(parser)
    parser.add_argument("--num-images", type=int, default=96, help="synthetic training images")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="generator and training seed")
    parser.add_argument("--draw", type=int, default=8, help="how many images to draw")
    parser.add_argument(
        "--epochs", type=int, default=15, help="segmentation training epochs (0: data part only, no training)"
    )
    parser.add_argument("--minutes", type=float, default=4.0, help="segmentation training budget in minutes")
    parser.add_argument(
        "--instance-epochs", type=int, default=6, help="Mask R-CNN training epochs (0: skip that run)"
    )
    parser.add_argument(
        "--instance-minutes", type=float, default=3.5, help="Mask R-CNN training budget in minutes"
    )


def demo_config(args: argparse.Namespace):
    """The demo's training run, as a config a user could write in YAML (see configs/shapes_unet.yaml)."""
    from segdet.engine.config import from_dict

    return from_dict(
        {
            "task": "segmentation",
            "name": "unet_shapes",
            "output_dir": str(args.out / "runs"),
            "model": {
                "name": "unet_backbone",
                "backbone": "resnet18",
                "decoder_channels": [128, 64, 32, 16, 8],
            },
            "data": {
                "synthetic": args.num_images,
                "synthetic_size": args.size,
                "size": args.size,
                "scale_range": [0.75, 1.25],
                "batch_size": 8,
            },
            "loss": {"name": "ce_dice"},
            "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0001},
            "schedule": {"name": "cosine", "warmup_steps": 10},
            "train": {
                "epochs": args.epochs,
                "max_minutes": args.minutes,
                "seed": args.seed,
                "best_metric": "mIoU",
                "log_every": 5,
            },
        }
    )


def instance_config(args: argparse.Namespace):
    """The demo's instance segmentation run (see configs/shapes_maskrcnn.yaml): Mask R-CNN on a
    ResNet-18 FPN at the images' own size, anchors scaled to the shapes (``8 * size / 64`` px on P2)."""
    from segdet.engine.config import from_dict

    base = 8 * args.size / 64
    return from_dict(
        {
            "task": "instance",
            "name": "maskrcnn_shapes",
            "output_dir": str(args.out / "runs"),
            "model": {
                "name": "maskrcnn_resnet50_fpn",
                "backbone": "resnet18",
                "min_size": args.size,
                "max_size": args.size,
                "anchor_sizes": [[round(base * 2**k)] for k in range(5)],
                "rpn_batch_size_per_image": 64,
                "box_batch_size_per_image": 64,
                "rpn_pre_nms_top_n_train": 300,
                "rpn_post_nms_top_n_train": 150,
                "rpn_pre_nms_top_n_test": 300,
                "rpn_post_nms_top_n_test": 150,
            },
            "data": {"synthetic": args.num_images, "synthetic_size": args.size, "batch_size": 4},
            "optim": {"name": "adamw", "lr": 0.001, "weight_decay": 0.0001},
            "schedule": {"name": "cosine", "warmup_steps": 20},
            "train": {
                "epochs": args.instance_epochs,
                "max_minutes": args.instance_minutes,
                "seed": args.seed,
                "best_metric": "AP",
                "clip_grad_norm": 10.0,
                "log_every": 5,
            },
        }
    )


def run(args: argparse.Namespace) -> int:
    from segdet.data import shapes
    from segdet.data.check import check_dataset
    from segdet.data.formats import read_dataset, write_dataset
    from segdet.data.render import draw_record
    from segdet.data.stats import dataset_stats

    start = time.perf_counter()
    out: Path = output_dir(args.out, overwrite=args.overwrite)
    generated = shapes.generate(out / "shapes", args.num_images, seed=args.seed, size=args.size)
    print(
        f"[1/7] generated {len(generated.images)} images with {generated.num_instances} objects "
        f"in {out / 'shapes'}"
    )

    coco_json = write_dataset("coco", generated, out / "coco")
    dataset = read_dataset("coco", coco_json, strict=True)
    problems = check_dataset(dataset)
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        print(f"      {p}")
    print(
        f"[2/7] wrote the set as COCO ({coco_json}), read it back and checked every file: "
        f"{len(errors)} errors, {len(problems) - len(errors)} warnings"
    )
    for line in dataset_stats(dataset).lines():
        print(f"      {line}")
    drawn = out / "annotations"
    for i in range(min(args.draw, len(dataset.images))):
        draw_record(dataset, i, drawn / f"{Path(dataset.images[i].file_name).stem}.png")
    print(f"[3/7] drew the annotations of {min(args.draw, len(dataset.images))} images into {drawn}")
    if errors:
        return 1
    if args.epochs <= 0:
        print(f"done in {time.perf_counter() - start:.1f} s; everything is under {out.resolve()}")
        return 0

    from segdet.engine.run_folder import claim_run_dir
    from segdet.engine.tasks import build_task
    from segdet.engine.trainer import Trainer

    cfg = demo_config(args)
    claim_run_dir(cfg, overwrite=args.overwrite)
    print(
        f"[4/7] training {cfg.model.name} ({cfg.model.kwargs['backbone']}) for up to {args.epochs} epochs "
        f"/ {args.minutes:g} minutes on synthetic shapes ..."
    )
    summary = Trainer(cfg, build_task(cfg)).fit()
    metrics = summary["last_metrics"]
    print(
        f"      validation: mIoU {metrics['mIoU']:.3f}, mean Dice {metrics['mDice']:.3f}, "
        f"pixel accuracy {metrics['pixel_acc']:.3f} (best mIoU {summary['best']:.3f})"
    )

    predictions = _predict(cfg.run_dir, args.draw)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"[5/7] predictions drawn into {predictions}")
    print(
        f"      checkpoints: {cfg.run_dir / 'best.safetensors'}, curves: {cfg.run_dir / 'plots'}, "
        f"metrics: {out / 'metrics.json'}, TensorBoard: {cfg.run_dir / 'tensorboard'}"
    )
    if args.instance_epochs > 0:
        _instance_run(args)
    print(f"done in {time.perf_counter() - start:.1f} s; everything is under {out.resolve()}")
    return 0


def _instance_run(args: argparse.Namespace) -> None:
    from segdet.engine.run_folder import claim_run_dir
    from segdet.engine.tasks import build_task
    from segdet.engine.trainer import Trainer

    cfg = instance_config(args)
    claim_run_dir(cfg, overwrite=args.overwrite)
    print(
        f"[6/7] training Mask R-CNN ({cfg.model.kwargs['backbone']} FPN) for up to {args.instance_epochs} "
        f"epochs / {args.instance_minutes:g} minutes on synthetic shapes ..."
    )
    summary = Trainer(cfg, build_task(cfg)).fit()
    metrics = summary["last_metrics"]
    print(
        f"      validation (COCO): box AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}; "
        f"mask AP {metrics['mask_AP']:.3f}, AP50 {metrics['mask_AP50']:.3f}"
    )
    (args.out / "instance_metrics.json").write_text(json.dumps(metrics, indent=2))
    drawn = _draw_detections(cfg.run_dir, args.draw)
    print(f"[7/7] detections (score >= 0.5) drawn beside the ground truth into {drawn}")
    metrics_file = args.out / "instance_metrics.json"
    print(f"      checkpoints: {cfg.run_dir / 'best.safetensors'}, metrics: {metrics_file}")


def _draw_detections(run_dir: Path, count: int, score_thresh: float = 0.5) -> Path:
    """The best checkpoint's detections on validation images (right), beside the ground truth (left)."""
    import torch

    from segdet.data.io import load_image
    from segdet.engine.inference import load_trained
    from segdet.engine.tasks import build_task
    from segdet.ops.draw import draw_detections, save_png

    trained = load_trained(run_dir / "best.safetensors")
    task = build_task(trained.config)
    dataset = task.val_dataset()
    out = run_dir / "predictions"
    for i in range(min(count, len(dataset))):
        image, target = dataset[i]
        record = task.val_ann.images[i]
        picture = load_image(record.path)
        with torch.no_grad():
            pred = trained.model([image.as_subclass(torch.Tensor)])[0]
        keep = pred["scores"] >= score_thresh
        truth = draw_detections(picture, target["boxes"], target["labels"], class_names=trained.classes)
        found = draw_detections(
            picture,
            pred["boxes"][keep],
            pred["labels"][keep],
            pred["scores"][keep],
            masks=pred["masks"][keep],
            class_names=trained.classes,
        )
        save_png(torch.cat([truth, found], dim=2), out / f"{Path(record.path).stem}.png")
    return out


def _predict(run_dir: Path, count: int) -> Path:
    """Overlay the best checkpoint's predictions on validation images, beside their ground truth."""
    import torch

    from segdet.engine.inference import load_trained
    from segdet.engine.tasks import build_task
    from segdet.ops.draw import overlay_semantic, save_png

    trained = load_trained(run_dir / "best.safetensors")
    task = build_task(trained.config)
    dataset = task.val_dataset()
    out = run_dir / "predictions"
    n = len(trained.classes)
    for i in range(min(count, len(dataset))):
        image, target = dataset[i]
        with torch.no_grad():
            pred = trained.model(image.unsqueeze(0)).argmax(1)[0]
        raw = (task.val_ann.images[i].path, target["semantic"])
        from segdet.data.io import load_image

        picture = load_image(raw[0])
        side_by_side = torch.cat(
            [
                overlay_semantic(picture, raw[1], n, task.ignore_index),
                overlay_semantic(picture, pred, n, 255),
            ],
            dim=2,
        )
        save_png(side_by_side, out / f"{Path(raw[0]).stem}.png")
    return out

"""``segdet demo``: the main job end to end on the built-in synthetic shapes set, on the CPU.

1. generate the shapes set, write it as a COCO dataset, read it back and check every file;
2. train a small semantic segmentation model (U-Net on a ResNet-18 encoder) for a few minutes;
3. evaluate it on held-out images (mIoU, Dice, pixel accuracy) and draw its predictions.
Everything (data, checkpoints, metrics, curves, pictures) goes under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("segdet-demo"), help="output folder")
    parser.add_argument("--num-images", type=int, default=96, help="synthetic training images")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="generator and training seed")
    parser.add_argument("--draw", type=int, default=8, help="how many images to draw")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (0: data part only)")
    parser.add_argument("--minutes", type=float, default=4.0, help="training time budget in minutes")


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


def run(args: argparse.Namespace) -> int:
    from segdet.data import shapes
    from segdet.data.check import check_dataset
    from segdet.data.formats import read_dataset, write_dataset
    from segdet.data.render import draw_record
    from segdet.data.stats import dataset_stats

    start = time.perf_counter()
    out: Path = args.out
    generated = shapes.generate(out / "shapes", args.num_images, seed=args.seed, size=args.size)
    print(
        f"[1/5] generated {len(generated.images)} images with {generated.num_instances} objects "
        f"in {out / 'shapes'}"
    )

    coco_json = write_dataset("coco", generated, out / "coco")
    dataset = read_dataset("coco", coco_json, strict=True)
    problems = check_dataset(dataset)
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        print(f"      {p}")
    print(
        f"[2/5] wrote the set as COCO ({coco_json}), read it back and checked every file: "
        f"{len(errors)} errors, {len(problems) - len(errors)} warnings"
    )
    for line in dataset_stats(dataset).lines():
        print(f"      {line}")
    drawn = out / "annotations"
    for i in range(min(args.draw, len(dataset.images))):
        draw_record(dataset, i, drawn / f"{Path(dataset.images[i].file_name).stem}.png")
    print(f"[3/5] drew the annotations of {min(args.draw, len(dataset.images))} images into {drawn}")
    if errors:
        return 1
    if args.epochs <= 0:
        print(f"done in {time.perf_counter() - start:.1f} s; everything is under {out.resolve()}")
        return 0

    from segdet.engine.segmentation import SegmentationTask
    from segdet.engine.trainer import Trainer

    cfg = demo_config(args)
    print(
        f"[4/5] training {cfg.model.name} ({cfg.model.kwargs['backbone']}) for up to {args.epochs} epochs "
        f"/ {args.minutes:g} minutes on synthetic shapes ..."
    )
    summary = Trainer(cfg, SegmentationTask(cfg)).fit()
    metrics = summary["last_metrics"]
    print(
        f"      validation: mIoU {metrics['mIoU']:.3f}, mean Dice {metrics['mDice']:.3f}, "
        f"pixel accuracy {metrics['pixel_acc']:.3f} (best mIoU {summary['best']:.3f})"
    )

    predictions = _predict(cfg.run_dir, args.draw)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"[5/5] predictions drawn into {predictions}")
    print(
        f"      checkpoints: {cfg.run_dir / 'best.safetensors'}, curves: {cfg.run_dir / 'plots'}, "
        f"metrics: {out / 'metrics.json'}, TensorBoard: {cfg.run_dir / 'tensorboard'}"
    )
    print(f"done in {time.perf_counter() - start:.1f} s; everything is under {out.resolve()}")
    return 0


def _predict(run_dir: Path, count: int) -> Path:
    """Overlay the best checkpoint's predictions on validation images, beside their ground truth."""
    import torch

    from segdet.engine.inference import load_trained
    from segdet.engine.segmentation import SegmentationTask
    from segdet.ops.draw import overlay_semantic, save_png

    trained = load_trained(run_dir / "best.safetensors")
    task = SegmentationTask(trained.config)
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

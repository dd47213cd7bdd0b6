"""``segdet eval CHECKPOINT [--data PATH]``: evaluate a trained model on a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from segdet.data.formats import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a .safetensors checkpoint written by segdet train")
    parser.add_argument("--data", help="dataset to evaluate on (default: the run's validation split)")
    parser.add_argument("--format", choices=list(FORMATS), help="format of --data (default: the run's)")
    parser.add_argument("--images", help="image folder, overriding the layout's")
    parser.add_argument("--labels", help="label folder, overriding the layout's")
    parser.add_argument("--split", help="split name")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, help="write the metrics to this JSON file")


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from segdet.engine.config import DataSplit
    from segdet.engine.inference import load_trained
    from segdet.engine.trainer import select_device
    from segdet.errors import ConfigError

    device = select_device(args.device)
    trained = load_trained(args.checkpoint, device)
    cfg = trained.config
    if args.data:
        cfg.data.format = args.format or cfg.data.format
        cfg.data.val = DataSplit(path=args.data, images=args.images, labels=args.labels, split=args.split)
        cfg.data.synthetic = 0
    if cfg.task != "segmentation":
        raise ConfigError(f"task {cfg.task!r}: evaluation is not available yet")
    from segdet.engine.segmentation import SegmentationTask, load_split

    if args.data:
        cfg.data.train = cfg.data.val  # the task needs a training split to learn the class list from
        cfg.data.val_fraction = 0.0
    task = SegmentationTask(cfg)
    if args.data:
        task.val_ann = load_split(cfg, "val")
    dataset = task.val_dataset()
    if dataset is None:
        raise ConfigError("no evaluation data: give --data PATH")
    loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=task.val_collate)
    metrics = task.evaluate(trained.model, loader, device)
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"{k:<{width}}  {v:.4f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(metrics, indent=2))
    return 0

"""``segdet eval CHECKPOINT [--data PATH]``: evaluate a trained model on a dataset.

Segmentation checkpoints report mIoU, Dice and accuracies; detection checkpoints COCO box AP (and mask
AP for instance segmentation), computed by our COCO evaluator.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from segdet.cli import inference_options
from segdet.data.formats import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a .safetensors checkpoint written by segdet train")
    parser.add_argument("--data", help="dataset to evaluate on (default: the run's validation split)")
    parser.add_argument("--format", choices=list(FORMATS), help="format of --data (default: the run's)")
    parser.add_argument("--images", help="image folder, overriding the layout's")
    parser.add_argument("--labels", help="label folder, overriding the layout's")
    parser.add_argument("--split", help="split name")
    parser.add_argument("--batch-size", type=int, default=1)
    inference_options.add_arguments(parser)
    parser.add_argument("--out", type=Path, help="write the metrics to this JSON file")


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from segdet.engine.config import DataSplit
    from segdet.errors import ConfigError

    trained, device = inference_options.load(args)
    cfg = trained.config
    if args.data:
        cfg.data.format = args.format or cfg.data.format
        cfg.data.val = DataSplit(path=args.data, images=args.images, labels=args.labels, split=args.split)
        cfg.data.synthetic = 0
    task = _detection_task(cfg, trained) if cfg.task != "segmentation" else _segmentation_task(cfg, args)
    dataset = task.val_dataset()
    if dataset is None:
        raise ConfigError("no evaluation data: give --data PATH")
    loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=task.val_collate)
    start = time.perf_counter()
    metrics = task.evaluate(trained.model, loader, device)
    seconds = time.perf_counter() - start
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"{k:<{width}}  {v:.4f}")
    print(inference_options.timing(len(dataset), seconds, device, "evaluated"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(metrics, indent=2))
    return 0


def _segmentation_task(cfg, args: argparse.Namespace):
    from segdet.engine.data_splits import load_split
    from segdet.engine.segmentation import SegmentationTask

    if args.data:
        cfg.data.train = cfg.data.val  # the task needs a training split to learn the class list from
        cfg.data.val_fraction = 0.0
    task = SegmentationTask(cfg)
    if args.data:
        task.val_ann = load_split(cfg, "val")
    return task


def _detection_task(cfg, trained):
    """The run's validation split (or ``--data``) as a detection task whose classes must be the
    checkpoint's: a label index means the same class in both."""
    from segdet.engine.data_splits import load_split, train_val_splits
    from segdet.engine.detection import DetectionTask
    from segdet.errors import ConfigError

    val = load_split(cfg, "val") if cfg.data.val is not None and cfg.data.val.path else None
    if val is None:
        _, val = train_val_splits(cfg)  # the run's own held-out or synthetic validation images
    if val is None:
        raise ConfigError("no evaluation data: the run had no validation split; give --data PATH")
    if list(val.classes) != list(trained.classes):
        raise ConfigError(
            f"the evaluation set's classes {val.classes} are not the checkpoint's {trained.classes}"
        )
    return DetectionTask(cfg, splits=(val, val))

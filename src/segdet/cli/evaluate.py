"""``segdet eval CHECKPOINT [--data PATH]``: evaluate a trained model on a dataset.

Segmentation checkpoints report mIoU, Dice and accuracies; detection checkpoints COCO box AP (and mask
AP for instance segmentation), computed by our COCO evaluator. ``segdet rcnn``'s ``rcnn.safetensors`` is
a detection checkpoint like the others: without ``--data`` it is evaluated on the run's held-out
images, which gives the AP of its ``metrics.json``.

``--data`` is read in the format its layout shows (``--format`` says it instead; the run's format where
the layout says nothing) and must have the checkpoint's classes, else nothing is evaluated. ``--format``,
``--images``, ``--labels`` and ``--split`` describe ``--data``: without it they are refused. Undefined
scores (NaN: a class absent from both truth and prediction) are ``null`` in the ``--out`` JSON file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from segdet.cli import inference_options
from segdet.cli.metrics import _json_safe
from segdet.cli.paths import add_overwrite, output_file, path_arg
from segdet.data.formats import FORMATS
from segdet.engine.atomic import write_text_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        type=path_arg,
        help="a .safetensors checkpoint: segdet train's (RUN/best.safetensors, last.safetensors) or "
        "segdet rcnn's (OUT/rcnn.safetensors: R-CNN's network, SVMs and box regressors)",
    )
    parser.add_argument(
        "--data", type=path_arg, help="dataset to evaluate on (default: the run's validation split)"
    )
    parser.add_argument(
        "--format",
        choices=list(FORMATS),
        help="format of --data (default: recognised from its layout, as `segdet data check` does; the run's "
        "format where the layout says nothing)",
    )
    parser.add_argument("--images", type=path_arg, help="image folder, overriding the layout's")
    parser.add_argument("--labels", type=path_arg, help="label folder, overriding the layout's")
    parser.add_argument("--split", help="split name")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="images per batch (default: the run's data.val_batch_size, else data.batch_size, as its "
        "validation ran: a detector pads a batch's images to one size, which moves its detections a "
        "little, so only the same batches give the metrics the training logged)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="evaluate without the records and images that cannot be read (counted at the end); by "
        "default any of them stops the evaluation: metrics over a set that silently lost images are wrong",
    )
    inference_options.add_arguments(parser)
    parser.add_argument("--out", type=path_arg, help="write the metrics to this JSON file")
    add_overwrite(parser, "the --out file")


SKIP_BAD_HINT = "metrics over a set that lost records or images would be wrong (--skip-bad leaves them out)"


def evaluation_format(data: Path, given: str | None, run_format: str) -> str:
    """The format ``--data`` is read in: ``--format`` when given, else the one its layout shows
    (:func:`segdet.data.formats.detect_format`: a COCO JSON, a VOC, Penn-Fudan, YOLO or mask folder),
    else the run's (a layout no rule recognises, e.g. ``--images`` / ``--labels`` elsewhere)."""
    from segdet.data.formats import detect_format
    from segdet.errors import DataError

    if given:
        return given
    try:
        return detect_format(data)
    except DataError:
        return run_format


def run(args: argparse.Namespace) -> int:
    import sys

    from torch.utils.data import DataLoader

    from segdet.engine.config import DataSplit
    from segdet.engine.tasks import evaluation_task
    from segdet.errors import ConfigError, DataError

    # read only with --data: without it they would be ignored, and the run's split evaluated as if obeyed
    inference_options.refuse_without(
        {"--format": args.format, "--images": args.images, "--labels": args.labels, "--split": args.split},
        "--data",
        args.data is not None,
        "without it the run's validation split is evaluated, read as the run reads it",
    )
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out:
        output_file(args.out, overwrite=args.overwrite, sources=[args.checkpoint, args.data])
    trained, device = inference_options.load(args)
    cfg = trained.config
    cfg.data.strict = False  # bad records and images are counted here, and refused unless --skip-bad
    # The metrics' classes are the model's outputs, however many the evaluation set lists (a checkpoint may
    # list an ignore class that the set leaves out: segdet.engine.segmentation.same_semantic_classes).
    cfg.model.num_classes = cfg.model.num_classes or len(trained.classes)
    if args.data:
        cfg.data.format = evaluation_format(args.data, args.format, cfg.data.format)
        cfg.data.val = DataSplit(
            path=str(args.data),
            images=None if args.images is None else str(args.images),
            labels=None if args.labels is None else str(args.labels),
            split=args.split,
        )
        cfg.data.synthetic = 0
    task = evaluation_task(cfg, trained.classes, data_given=bool(args.data))
    errors = task.val_ann.errors if task.val_ann is not None else []
    if errors and not args.skip_bad:
        first = errors[0]
        more = f" (and {len(errors) - 1} more records)" if len(errors) > 1 else ""
        raise DataError(f"{first.message}{more}; {SKIP_BAD_HINT}", first.file, first.record)
    dataset = task.val_dataset()
    if dataset is None:
        raise ConfigError("no evaluation data: give --data PATH")
    dataset.strict = not args.skip_bad
    batch_size = args.batch_size or cfg.data.validation_batch_size  # as the run's validation batched
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=task.val_collate)
    start = time.perf_counter()
    try:
        metrics = task.evaluate(trained.model, loader, device)
    except DataError as e:  # an image that cannot be read (strict dataset)
        raise DataError(f"{e.problem}; {SKIP_BAD_HINT}", e.file, e.record) from None
    seconds = time.perf_counter() - start
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"{k:<{width}}  {v:.4f}")
    skipped = len(dataset.unreadable())
    print(inference_options.timing(len(dataset) - skipped, seconds, device, "evaluated"))
    if errors or skipped:
        print(
            f"segdet: --skip-bad: {len(errors)} records could not be read and {skipped} images could not be "
            f"decoded; the metrics are over the other {len(dataset) - skipped} images "
            "(`segdet data check` lists them)",
            file=sys.stderr,
        )
    if args.out:
        # undefined scores (a class absent from both truth and prediction) are NaN: null in JSON
        write_text_atomic(args.out, json.dumps(_json_safe(metrics), indent=2, allow_nan=False) + "\n")
    return 0

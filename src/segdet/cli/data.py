"""``segdet data``: check, describe, draw and convert datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from segdet.data.formats import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def dataset_args(p: argparse.ArgumentParser, path_name: str = "path") -> None:
        p.add_argument(
            path_name, type=Path, help="dataset: the JSON file for coco, the root folder otherwise"
        )
        p.add_argument(
            "--format",
            "--from",
            dest="format",
            choices=list(FORMATS),
            help="annotation format (default: recognised from the layout)",
        )
        p.add_argument("--images", type=Path, help="image folder, overriding the layout's")
        p.add_argument("--labels", type=Path, help="label folder, overriding the layout's")
        p.add_argument("--split", help="split name (VOC ImageSets, YOLO / CamVid split folders)")

    p = sub.add_parser("check", help="read a whole dataset and report every problem with file and record")
    dataset_args(p)
    p.add_argument("--quick", action="store_true", help="read image headers only instead of decoding images")
    p.add_argument(
        "--max-lines", type=int, default=200, help="print at most this many problems (all counted)"
    )

    p = sub.add_parser("stats", help="images, objects per class, COCO size classes, empty images")
    dataset_args(p)

    p = sub.add_parser("show", help="draw the annotations on the images into PNG files")
    dataset_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--num", type=int, default=16, help="how many images to draw (0: all)")

    p = sub.add_parser("convert", help="convert a dataset to another format")
    dataset_args(p, "src")
    p.add_argument("--to", required=True, choices=list(FORMATS), help="output format")
    p.add_argument("--out", type=Path, required=True, help="output folder")


def _read(args: argparse.Namespace, path: Path):
    from segdet.data.formats import detect_format, read_dataset

    fmt = args.format or detect_format(path)
    options = {k: getattr(args, k) for k in ("images", "labels", "split") if getattr(args, k) is not None}
    return fmt, read_dataset(fmt, path, **options)


def run(args: argparse.Namespace) -> int:
    return {"check": _check, "stats": _stats, "show": _show, "convert": _convert}[args.data_command](args)


def _check(args: argparse.Namespace) -> int:
    from segdet.data.check import check_dataset

    fmt, dataset = _read(args, args.path)
    problems = check_dataset(dataset, decode=not args.quick)
    for p in problems[: args.max_lines]:
        print(p)
    if len(problems) > args.max_lines:
        print(f"... and {len(problems) - args.max_lines} more problems")
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    print(_summary(fmt, args.path, dataset))
    print(f"{errors} errors, {warnings} warnings")
    return 1 if errors else 0


def _summary(fmt: str, path: Path, dataset) -> str:
    line = (
        f"{fmt} dataset {path}: {len(dataset.images)} images, {dataset.num_instances} objects, "
        f"{len(dataset.classes)} classes"
    )
    if any(im.semantic is not None for im in dataset.images):
        n = len(dataset.semantic_classes)
        line += f"; semantic masks: {n} classes (values 0..{n - 1}), ignore value {dataset.ignore_index}"
    return line


def _stats(args: argparse.Namespace) -> int:
    from segdet.data.stats import dataset_stats

    fmt, dataset = _read(args, args.path)
    print(_summary(fmt, args.path, dataset))
    for line in dataset_stats(dataset).lines():
        print(line)
    if dataset.problems:
        print(f"({len(dataset.problems)} problems while reading: run `segdet data check` to list them)")
    return 0


def _show(args: argparse.Namespace) -> int:
    from segdet.data.render import draw_record

    _, dataset = _read(args, args.path)
    args.out.mkdir(parents=True, exist_ok=True)
    count = len(dataset.images) if args.num <= 0 else min(args.num, len(dataset.images))
    for i in range(count):
        draw_record(dataset, i, args.out / f"{Path(dataset.images[i].file_name).stem}.png")
    print(f"drew {count} images into {args.out}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from segdet.data.formats import write_dataset

    _, dataset = _read(args, args.src)
    errors = len(dataset.errors)
    if errors:
        print(f"{errors} records could not be read and are left out (run `segdet data check` to list them)")
    out = write_dataset(args.to, dataset, args.out)
    print(f"wrote {len(dataset.images)} images, {dataset.num_instances} objects as {args.to} to {out}")
    return 0

"""``segdet data``: check, describe, draw and convert datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from segdet.cli.paths import add_overwrite, dataset_sources, output_dir, path_arg
from segdet.data.formats import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def dataset_args(p: argparse.ArgumentParser, path_name: str = "path") -> None:
        p.add_argument(
            path_name,
            type=path_arg,
            help="dataset: the JSON file for coco, the root folder otherwise (for yolo, data.yaml works too)",
        )
        p.add_argument(
            "--format",
            "--from",
            dest="format",
            choices=list(FORMATS),
            help="annotation format (default: recognised from the layout)",
        )
        p.add_argument("--images", type=path_arg, help="image folder, overriding the layout's")
        p.add_argument("--labels", type=path_arg, help="label folder, overriding the layout's")
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
    p.add_argument("--out", type=path_arg, required=True, help="output folder (absent or empty)")
    p.add_argument("--num", type=int, default=16, help="how many images to draw (0: all)")
    add_overwrite(p)

    p = sub.add_parser(
        "convert",
        help="convert a dataset to another format",
        description="Convert a dataset to another format. What the output format cannot hold is left out "
        "and said in one line per kind (crowd regions in voc / yolo / pennfudan, semantic masks in coco / "
        "yolo / pennfudan, objects in masks); a conversion that would lose every label is refused. YOLO "
        "keeps only the class names: from YOLO, COCO category ids are 1..K in data.yaml's order, and "
        "COCO's own ids are not kept through it.",
    )
    dataset_args(p, "src")
    p.add_argument("--to", required=True, choices=list(FORMATS), help="output format")
    p.add_argument(
        "--out", type=path_arg, required=True, help="output folder (absent or empty; never the source's)"
    )
    p.add_argument(
        "--link",
        action="store_true",
        help="hard-link the images instead of copying them (no extra space, but the output's images ARE "
        "the source's: editing one edits the other)",
    )
    add_overwrite(p)


def _read(args: argparse.Namespace, path: Path):
    from segdet.data.formats import detect_format, read_dataset
    from segdet.errors import DataError

    if not path.exists():
        raise DataError("no such file or folder", path)
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
        errors = len(dataset.errors)
        warnings = len(dataset.warnings)
        line = f"reading found {errors} errors, {warnings} warnings: `segdet data check` lists them"
        if errors:
            line += "; the records with errors are left out of these counts"
        print(line)
    return 0


def _show(args: argparse.Namespace) -> int:
    """Draw the first ``--num`` images; an unreadable one is reported and skipped (exit status 1)."""
    import sys

    from segdet.data.formats.layout import output_stems
    from segdet.data.render import draw_record
    from segdet.errors import DataError

    _, dataset = _read(args, args.path)
    sources = dataset_sources(dataset, args.path, args.images, args.labels)
    output_dir(args.out, overwrite=args.overwrite, sources=sources)
    count = len(dataset.images) if args.num <= 0 else min(args.num, len(dataset.images))
    skipped = 0
    for i, stem in zip(range(count), output_stems(dataset.images), strict=False):
        try:
            draw_record(dataset, i, args.out / f"{stem}.png")
        except DataError as e:
            skipped += 1
            print(f"segdet: skipped: {e}", file=sys.stderr)
    print(f"drew {count - skipped} images into {args.out}")
    if skipped:
        print(f"segdet: {skipped} of {count} images could not be drawn (listed above)", file=sys.stderr)
    return 1 if skipped else 0


def _convert(args: argparse.Namespace) -> int:
    from segdet.data.formats import check_writable, write_dataset
    from segdet.data.formats.report import WriteReport

    _, dataset = _read(args, args.src)
    check_writable(args.to, dataset)  # refused before the output folder is made
    sources = dataset_sources(dataset, args.src, args.images, args.labels)
    output_dir(args.out, overwrite=args.overwrite, sources=sources)
    errors = len(dataset.errors)
    if errors:
        print(f"{errors} records could not be read and are left out (run `segdet data check` to list them)")
    report = WriteReport()
    out = write_dataset(args.to, dataset, args.out, link_images=args.link, report=report)
    how = "hard-linked where the file system allows" if args.link else "copied"
    print(f"wrote {len(dataset.images)} images ({how}), {report.objects} objects as {args.to} to {out}")
    for line in report.lines():
        print(line)
    return 0

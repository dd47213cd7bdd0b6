"""``segdet proposals DATASET``: selective-search proposals of a dataset, written to the proposal cache
(the one R-CNN and Fast R-CNN read, :mod:`segdet.models.detection.proposals.cache`), and their recall
at IoU 0.5 and 0.7 (and AR) against the number of proposals kept, with the seconds per image.

A second run over the same images and settings reads the cache and computes nothing.
"""

from __future__ import annotations

import argparse
import json

from segdet.cli.paths import add_overwrite, output_file, path_arg
from segdet.data.formats import FORMATS
from segdet.models.detection.proposals.dataset import DEFAULT_COUNTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", type=path_arg, help="dataset: the JSON file for coco, the root folder otherwise"
    )
    parser.add_argument("--format", choices=list(FORMATS), help="annotation format (default: recognised)")
    parser.add_argument("--images", type=path_arg, help="image folder, overriding the layout's")
    parser.add_argument("--labels", type=path_arg, help="label folder, overriding the layout's")
    parser.add_argument("--split", help="split name (VOC ImageSets, YOLO / CamVid split folders)")
    parser.add_argument("--mode", choices=["fast", "quality"], default="fast", help="selective search mode")
    parser.add_argument(
        "--cache",
        type=path_arg,
        help="the proposal cache's root (default: $SEGDET_CACHE_DIR/proposals or ~/.cache/segdet/proposals)",
    )
    parser.add_argument("--max-side", type=int, default=500, help="longer image side searched at most")
    parser.add_argument("--min-side", type=int, default=128, help="shorter image side searched at least")
    parser.add_argument("--num", type=int, default=0, help="only the first NUM images (0: all)")
    parser.add_argument(
        "--counts",
        type=int,
        nargs="+",
        default=list(DEFAULT_COUNTS),
        help="report recall for the top N proposals, for each N given",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=path_arg, help="also write the report to this JSON file")
    add_overwrite(parser, "the --out file")


def run(args: argparse.Namespace) -> int:
    from segdet.cli.paths import dataset_sources
    from segdet.data.formats import detect_format, read_dataset
    from segdet.data.paths import is_within
    from segdet.errors import ConfigError
    from segdet.models.detection.proposals import SelectiveSearchProposals, SelectiveSearchSettings
    from segdet.models.detection.proposals.cache import default_cache_dir
    from segdet.models.detection.proposals.dataset import dataset_proposals, recall_table

    if args.num < 0 or any(n < 1 for n in args.counts):
        raise ConfigError("--num must be >= 0 and every --counts value >= 1")
    try:
        settings = SelectiveSearchSettings(mode=args.mode, max_side=args.max_side, min_side=args.min_side)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    fmt = args.format or detect_format(args.path)
    options = {k: getattr(args, k) for k in ("images", "labels", "split") if getattr(args, k) is not None}
    dataset = read_dataset(fmt, args.path, **options)
    cache_root = args.cache if args.cache is not None else default_cache_dir()
    for folder in dataset_sources(dataset, args.path, args.images, args.labels):
        if is_within(cache_root, folder):
            raise ConfigError(f"{cache_root}: the proposal cache must not lie inside the dataset ({folder})")
    if args.out:
        output_file(args.out, overwrite=args.overwrite, sources=[args.path])
    source = SelectiveSearchProposals(settings, cache_root)
    found = dataset_proposals(dataset, source, limit=args.num or None, progress=not args.no_progress)
    report = {"dataset": str(args.path), "settings": settings.as_dict(), "cache": str(source.cache.folder)}
    report.update(recall_table(found, sorted(set(args.counts))))
    for path, problem in found.failed:
        print(f"segdet: skipped: {path}: {problem}")
    _print(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 1 if found.failed else 0


def _print(report: dict) -> None:
    print(
        f"{report['images']} images, {report['objects']} objects; "
        f"selective search {report['settings']['mode']}, "
        f"{report['mean_boxes_per_image']:.0f} boxes per image; cache {report['cache']} "
        f"({report['computed']} computed now)"
    )
    print(
        f"seconds per image: {report['search_seconds_per_image']:.3f} (search, as measured when computed), "
        f"{report['wall_seconds_per_image']:.3f} (this run)"
    )
    print(f"{'proposals':>9} {'recall@0.5':>10} {'recall@0.7':>10} {'AR':>6}")
    for i, n in enumerate(report["counts"]):
        r5, r7, ar = report["recall@0.5"][i], report["recall@0.7"][i], report["AR"][i]
        print(f"{n:>9} {r5:>10.3f} {r7:>10.3f} {ar:>6.3f}")

"""``segdet demo``: the main job on the built-in synthetic shapes set.

Today it runs the data half of the pipeline end to end: generate the shapes set, write it as a COCO
dataset, read it back, check every file, print its statistics and draw its annotations. Training,
evaluation and prediction join it as the engine lands.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("segdet-demo"), help="output folder")
    parser.add_argument("--num-images", type=int, default=64, help="synthetic images to generate")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--draw", type=int, default=8, help="how many images to draw")


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
        f"[1/4] generated {len(generated.images)} images with {generated.num_instances} objects "
        f"in {out / 'shapes'}"
    )

    coco_json = write_dataset("coco", generated, out / "coco")
    dataset = read_dataset("coco", coco_json, strict=True)
    print(f"[2/4] wrote and read back the COCO dataset {coco_json}")

    problems = check_dataset(dataset)
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        print(f"      {p}")
    print(f"[3/4] checked every file: {len(errors)} errors, {len(problems) - len(errors)} warnings")
    for line in dataset_stats(dataset).lines():
        print(f"      {line}")

    drawn = out / "drawn"
    for i in range(min(args.draw, len(dataset.images))):
        draw_record(dataset, i, drawn / f"{Path(dataset.images[i].file_name).stem}.png")
    print(f"[4/4] drew annotations of {min(args.draw, len(dataset.images))} images into {drawn}")
    print(f"done in {time.perf_counter() - start:.1f} s; everything is under {out.resolve()}")
    return 1 if errors else 0

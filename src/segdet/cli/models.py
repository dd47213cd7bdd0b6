"""``segdet models``: list the models of :data:`segdet.models.MODELS` with their size and cost."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=512, help="square input side for the FLOP count (512)")
    parser.add_argument("--num-classes", type=int, default=21, help="number of classes (21, Pascal VOC)")


def run(args: argparse.Namespace) -> int:
    from segdet.models import MODELS, model_options, model_summary

    rows = []
    for name in MODELS:
        params, gflops = model_summary(name, args.size, num_classes=args.num_classes)
        backbone = model_options(name).get("backbone", "-")
        rows.append((name, str(backbone), f"{params / 1e6:.1f}M", f"{gflops:.1f}"))
    header = ("model", "backbone (default)", "params", f"GFLOPs @{args.size}")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print("GFLOPs: multiply-adds count 2, counted by torch.utils.flop_counter on a batch of one.")
    print("Detectors are counted at that processed size with random weights: their heads' share depends")
    print("on how many proposals and detections an image yields.")
    return 0

"""``segdet models``: list the models of :data:`segdet.models.MODELS` with their size and cost."""

from __future__ import annotations

import argparse

from segdet.errors import SegdetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="models to list (default: all)")
    parser.add_argument("--size", type=int, default=512, help="square input side for the FLOP count (512)")
    parser.add_argument("--num-classes", type=int, default=21, help="number of classes (21, Pascal VOC)")


def run(args: argparse.Namespace) -> int:
    from segdet.models import MODELS, model_options
    from segdet.models.flops import model_cost

    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        raise SegdetError(f"unknown model {', '.join(unknown)}; available: {', '.join(MODELS)}")
    if args.size < 16:
        raise SegdetError(f"--size must be at least 16 pixels, got {args.size}")
    rows = []
    for name in args.names or MODELS:
        cost = model_cost(name, args.size, num_classes=args.num_classes)
        backbone = model_options(name).get("backbone", "-")
        rois = "-" if cost.proposals is None else f"{cost.proposals}/{cost.detections or '-'}"
        rows.append((name, str(backbone), f"{cost.params / 1e6:.1f}M", f"{cost.gflops:.1f}", rois))
    header = ("model", "backbone (default)", "params", f"GFLOPs @{args.size}", "RoIs box/mask")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print("GFLOPs: multiply-adds count 2, counted by torch.utils.flop_counter on a batch of one image")
    print("processed at that size. Two-stage detectors (Faster / Mask R-CNN) are counted with their box")
    print("head on a fixed number of proposals and their mask head on a fixed number of detections (RoIs")
    print("box/mask): the most they keep, rpn_post_nms_top_n_test and box_detections_per_img (1000 and 100")
    print("at the defaults). R-CNN (rcnn_resnet_c4, trained by segdet rcnn) runs its CNN once per warped")
    print("proposal: counted on its test-time proposals (2000). See segdet.models.flops.")
    return 0

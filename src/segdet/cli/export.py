"""``segdet export CHECKPOINT [--out FILE.onnx|FILE.pt2] [--size H W]``: a trained segmentation model as
an ONNX file or a ``torch.export`` program that runs without segdet (:mod:`segdet.engine.export`: the
graph's inputs and outputs, the sizes it takes, and the check of the written file against PyTorch).

Detection checkpoints are refused with the reason: their post-processing (top-k above a threshold, NMS,
a cap per image) yields data-dependent sizes that neither exporter traces yet.
"""

from __future__ import annotations

import argparse

from segdet.cli.paths import add_overwrite, output_file, path_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=path_arg, help="a segmentation run's .safetensors checkpoint")
    parser.add_argument(
        "--out",
        type=path_arg,
        help="the file to write; its suffix chooses the format: .onnx (ONNX Runtime, TensorRT, ...) or .pt2 "
        "(torch.export.load) (default: the checkpoint's name with .onnx)",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="a graph for exactly this image size (default: any batch and any H, W that are multiples of 32)",
    )
    add_overwrite(parser, "the --out file")


def run(args: argparse.Namespace) -> int:
    from segdet.engine.export import export_format, export_segmenter, require_onnx
    from segdet.engine.inference import load_trained
    from segdet.errors import SegdetError

    out = args.out or args.checkpoint.with_suffix(".onnx")
    if export_format(out) == "onnx":
        require_onnx()  # before the model is loaded
    if args.size is not None and min(args.size) < 1:
        raise SegdetError(f"--size must be positive, got {args.size[0]} {args.size[1]}")
    output_file(out, overwrite=args.overwrite, sources=[args.checkpoint])
    trained = load_trained(args.checkpoint, "cpu")  # the EMA weights where the run kept them, as eval
    if trained.task != "segmentation":
        raise SegdetError(
            f"{args.checkpoint}: segdet export takes segmentation checkpoints; this one is {trained.task!r}, "
            "whose post-processing (top-k, NMS, a cap per image) has data-dependent sizes the exporters "
            "cannot trace yet"
        )
    exported = export_segmenter(trained.model, out, None if args.size is None else tuple(args.size))
    shape = (
        f"N x 3 x {exported.size[0]} x {exported.size[1]}"
        if exported.size
        else f"N x 3 x H x W, H and W multiples of {exported.divisor}"
    )
    print(f"wrote {out} ({exported.format}): {len(trained.classes)} classes {trained.classes}")
    print(f"  input  images: float32 {shape}, RGB in [0, 1] (normalised inside)")
    print("  output logits: float32 N x K x H x W; labels: int64 N x H x W (argmax)")
    for check in exported.checks:
        print(
            f"  checked on {'x'.join(map(str, check.shape))}: largest logit difference "
            f"{check.max_logit_difference:.2e} against PyTorch, {100 * check.equal_labels:.3f} % equal labels"
        )
    return 0

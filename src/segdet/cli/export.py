"""``segdet export CHECKPOINT [--out FILE.onnx|FILE.pt2] [--size H W] [--image PATH]``: a trained model as
an ONNX file or a ``torch.export`` program that runs without segdet (:mod:`segdet.engine.export`: the
graphs' inputs and outputs, the sizes they take, which detectors, and the check of the written file
against PyTorch).
"""

from __future__ import annotations

import argparse

from segdet.cli.paths import add_overwrite, output_file, path_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=path_arg, help="a .safetensors checkpoint of segdet train")
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
        help="the image size the graph takes (default: segmentation any batch and any H, W that are "
        "multiples of 32; detectors one image of any H, W from 32 to 8192)",
    )
    parser.add_argument(
        "--image",
        type=path_arg,
        help="detectors: an image to trace and check the export on (resized to --size if given; default: "
        "a random smooth image, on which a trained detector may find nothing to compare)",
    )
    add_overwrite(parser, "the --out file")


def run(args: argparse.Namespace) -> int:
    from segdet.cli.inference_options import refuse_detector_options
    from segdet.engine import export
    from segdet.engine.inference import load_trained
    from segdet.errors import SegdetError

    out = args.out or args.checkpoint.with_suffix(".onnx")
    if export.export_format(out) == "onnx":
        export.require_onnx()  # before the model is loaded
    if args.size is not None and min(args.size) < 1:
        raise SegdetError(f"--size must be positive, got {args.size[0]} {args.size[1]}")
    trained = load_trained(args.checkpoint, "cpu")  # the EMA weights where the run kept them, as eval
    refuse_detector_options({"--image": args.image}, args.checkpoint, trained.task)
    output_file(out, overwrite=args.overwrite, sources=[args.checkpoint, args.image])
    size = None if args.size is None else (args.size[0], args.size[1])
    if trained.task == "segmentation":
        exported = export.export_segmenter(trained.model, out, size)
        batch, outputs = "N", "logits float32 N x K x H x W, labels int64 N x H x W (argmax)"
    else:
        problem = export.detector_export_problem(trained.model, trained.config.model.name)
        if problem:
            raise SegdetError(f"{args.checkpoint}: {problem}")
        image = None
        if args.image is not None:
            from segdet.data.io import load_image

            image = load_image(args.image).float() / 255
        exported = export.export_detector(trained.model, out, size, image)
        size = exported.size  # by default any, or the model's own input size (export_detector)
        batch = "1"
        outputs = "boxes float32 D x 4 (xyxy pixels), scores float32 D, labels int64 D (the classes' index)"
        masks = export.DetectionGraph(trained.model).masks
        if masks == "box":
            outputs += ", masks float32 D x 1 x m x m (probabilities inside each box, not pasted)"
        elif masks == "image":
            image_size = f"{size[0]} x {size[1]}" if size else "H x W"
            outputs += f", masks float32 D x 1 x {image_size} (probabilities in the image)"
    if size:
        sides = f"{size[0]} x {size[1]}"
    elif trained.task == "segmentation":
        sides = f"H x W, H and W multiples of {exported.divisor}"
    else:
        low, high = export.DETECTION_SIDES
        sides = f"H x W, any H and W from {low} to {high}"
    classes = f"{len(trained.classes)} class{'' if len(trained.classes) == 1 else 'es'}"
    print(f"wrote {out} ({exported.format}): {classes} {trained.classes}")
    print(f"  input  images: float32 {batch} x 3 x {sides}, RGB in [0, 1] (normalised inside)")
    print(f"  output {outputs}")
    if trained.task == "segmentation" and not size:
        # A runtime refuses other sides with a shape error from deep inside the graph (a Concat).
        print(
            f"  other sizes: pad the image (e.g. zeros at the bottom and right) to multiples of "
            f"{exported.divisor} and crop the outputs, or export one size with --size H W"
        )
    for check in exported.checks:
        print(f"  checked against PyTorch {check.summary}")
    if exported.format == "pt2" and trained.task != "segmentation":
        # The program calls segdet's NMS operator, which only exists once segdet.ops is imported.
        print("  load it after `import segdet.ops` (the graph holds segdet's NMS operator)")
    return 0

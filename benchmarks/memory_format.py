"""Inference time of folded models in NCHW, channels-last and (detectors) on NNPACK's NCHW kernels, in
one run, next to what ``prepare_for_inference`` chooses by default (:mod:`segdet.models.memory_format`).

Each model (random weights, 3 classes, batch 1 of one random ``size x size`` image) is built once per
variant with BatchNorm folded; variants are timed interleaved (each in turn, ``--repeats`` rounds,
the median) on ``--threads`` threads. Printed: milliseconds per variant, channels-last over NCHW,
and the default's layout. Run::

    python benchmarks/memory_format.py                     # every model with depthwise convolutions
    python benchmarks/memory_format.py efficientdet_d0 unet_backbone:efficientnet_b0
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segdet.engine.inference import prepare_for_inference
from segdet.engine.perf import tune_malloc
from segdet.models import build
from segdet.models.detection.detector import Detector
from segdet.models.fuse import fold_batchnorm
from segdet.ops.nnpack_conv import NNPACKConv2d

# name[:backbone] and the input side; the default set: every built-in model with grouped convolutions,
# and two dense ones for comparison.
MODELS = {
    "efficientdet_d0": 512,
    "ssdlite320_mobilenet_v3_large": 320,
    "yolov1_mobilenet_v3_large": 448,
    "yolov1_mobilenet_v3_small": 448,
    "fasterrcnn_mobilenet_v3_large_fpn": 800,
    "unet_backbone:mobilenet_v3_large": 512,
    "unet_backbone:efficientnet_b0": 512,
    "deeplabv3plus:mobilenet_v3_large": 512,
    "deeplabv3plus-separable:resnet50": 512,
    "unet_backbone:resnet34": 512,
    "retinanet_resnet50_fpn": 512,
}


def _build(spec: str) -> torch.nn.Module:
    name, _, backbone = spec.partition(":")
    options = {"backbone": backbone} if backbone else {}
    if name.endswith("-separable"):
        name, options["separable"] = name.removesuffix("-separable"), True
    torch.manual_seed(0)
    return build(name, 3, **options).eval()


def _variants(spec: str) -> dict[str, torch.nn.Module]:
    """Folded copies: NCHW, channels-last, NNPACK (detectors) and the default."""
    out = {}
    for key in ("nchw", "channels_last", "nnpack", "default"):
        model = _build(spec)
        if key == "default":
            out[key] = prepare_for_inference(model)
        elif isinstance(model, Detector):
            out[key] = model.fuse_for_inference(channels_last=key == "channels_last", nnpack=key == "nnpack")
        elif key != "nnpack":
            fold_batchnorm(model)
            if key == "channels_last":
                model.to(memory_format=torch.channels_last)
            out[key] = model
    return out


def _layout(model: torch.nn.Module) -> str:
    if any(isinstance(m, NNPACKConv2d) for m in model.modules()):
        return "nnpack"
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.dim() == 4)
    return "channels_last" if conv.weight.is_contiguous(memory_format=torch.channels_last) else "nchw"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="name[:backbone] (default: the table in this file)")
    parser.add_argument("--size", type=int, help="input side (default: each model's in the table)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tune_malloc()
    torch.set_num_threads(args.threads)
    for spec in args.models or list(MODELS):
        size = args.size or MODELS.get(spec, 512)
        variants = _variants(spec)
        detector = isinstance(variants["nchw"], Detector)
        image = torch.rand(3, size, size)
        times: dict[str, list[float]] = {key: [] for key in variants}
        with torch.no_grad():
            for _ in range(args.repeats + 1):  # the first round warms up
                for key, model in variants.items():
                    if detector:
                        inputs = [image]
                    else:
                        fmt = (
                            torch.channels_last
                            if _layout(model) == "channels_last"
                            else torch.contiguous_format
                        )
                        inputs = image[None].contiguous(memory_format=fmt)
                    start = time.perf_counter()
                    model(inputs)
                    times[key].append(time.perf_counter() - start)
        ms = {key: 1000 * statistics.median(t[1:]) for key, t in times.items()}
        cells = "  ".join(f"{key} {value:7.1f}" for key, value in ms.items())
        ratio = ms["channels_last"] / ms["nchw"]
        print(
            f"{spec:38s} {size:4d}px  {cells}  ms; channels-last/NCHW {ratio:.2f}; "
            f"default: {_layout(variants['default'])}",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Speed of an exported model (``segdet export``) against the same model in PyTorch, in one run: ONNX
Runtime (CPU) on the ``.onnx`` file and ``torch.export.load`` of the ``.pt2`` program, against PyTorch
eager as ``segdet predict`` runs it (BatchNorm folded, :func:`prepare_for_inference`) and unfused.

Each exported file is written by :mod:`segdet.engine.export` (so it passed its own check against
PyTorch): a segmentation model for dynamic sizes, a detector for ``--size``. Timed interleaved (each
variant in turn, ``--repeats`` rounds, the median) on a batch of ``--batch`` random ``H x W`` images
(``--size H W``, default CamVid's 720 x 960; a detector: one image), on ``--threads`` threads for PyTorch
and ONNX Runtime alike. The model: a checkpoint (``--checkpoint``) or a built segmentation model with
random weights (``--model``, ``--backbone``, ``--num-classes``). Ratios are to eager folded (< 1: faster
than what ``segdet predict`` runs). Run::

    python benchmarks/export.py --model unet_backbone --backbone resnet34 --repeats 5
    python benchmarks/export.py --checkpoint RUN/last.safetensors --size 512 512   # e.g. a detector
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from segdet.engine.export import DetectionGraph, SegmentationGraph, export_detector, export_segmenter
from segdet.engine.inference import load_trained, prepare_for_inference
from segdet.engine.perf import tune_malloc
from segdet.models import build
from segdet.models.detection.detector import Detector


def _model(args: argparse.Namespace) -> torch.nn.Module:
    if args.checkpoint:
        return load_trained(args.checkpoint).model
    options = {"backbone": args.backbone} if args.backbone else {}
    return build(args.model, args.num_classes, **options).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--model", default="unet_backbone")
    parser.add_argument("--backbone", default="resnet34")
    parser.add_argument("--num-classes", type=int, default=11)
    parser.add_argument("--size", type=int, nargs=2, default=[720, 960], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tune_malloc()
    torch.set_num_threads(args.threads)
    import onnxruntime

    model = _model(args)
    detector = isinstance(model, Detector)
    graph = DetectionGraph if detector else SegmentationGraph
    plain = graph(model).eval()
    folded = graph(prepare_for_inference(copy.deepcopy(model), fuse=True, device_type="cpu")).eval()
    size = tuple(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file, pt2_file = Path(tmp) / "model.onnx", Path(tmp) / "model.pt2"
        start = time.perf_counter()
        for path in (onnx_file, pt2_file):
            export_detector(model, path, size) if detector else export_segmenter(model, path)
            if path == onnx_file:
                onnx_seconds = time.perf_counter() - start
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        # ONNX Runtime's threads spin after each run by default: they would take the cores from the
        # PyTorch variant timed after it (the eager model measured 1.5x slower so).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        program = torch.export.load(pt2_file).module()

    batch = 1 if detector else args.batch
    images = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    variants: dict[str, Callable[[], object]] = {
        "PyTorch eager, folded (segdet predict)": lambda: folded(images),
        "PyTorch eager, unfused": lambda: plain(images),
        "torch.export program (.pt2)": lambda: program(images),
        "ONNX Runtime (.onnx)": lambda: session.run(None, {"images": images.numpy()}),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for run in variants.values():  # warm-up
            run()
        for _ in range(args.repeats):
            for name, run in variants.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times[next(iter(variants))])
    print(
        f"{args.checkpoint or f'{args.model} ({args.backbone})'}, batch {batch} x {args.size[0]} x "
        f"{args.size[1]}, {args.threads} threads, median of {args.repeats}; "
        f"ONNX export took {onnx_seconds:.1f} s"
    )
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:40s} {median * 1000:8.1f} ms   ratio {median / base:.2f}")


if __name__ == "__main__":
    main()

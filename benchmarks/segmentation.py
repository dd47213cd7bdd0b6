"""Speed of our U-Net (ResNet-34 encoder) and DeepLabv3+ (ResNet-50, output stride 16) against
segmentation_models_pytorch's ``Unet`` and ``DeepLabV3Plus`` with the same encoders, in one run.

Timed for each pair, interleaved (ours, theirs, theirs, ours, ...) so that load changes on a shared
machine hit both alike, the median of ``--repeats``:

* inference: ``model(x)`` in eval mode under ``torch.inference_mode``, at each batch size of
  ``--infer-batches`` (``1``; e.g. ``1,8``);
* a training step: forward, cross-entropy, backward and an SGD step in train mode, batch
  ``--train-batch`` (4); where ``segdet train`` trains on NNPACK and the Winograd weight gradient by
  default (``train.nnpack``: float32 NCHW on AVX2 CPUs, not on Zen 4), also ours that way (row "nnpack");
* with ``--bf16``, each also under bf16 autocast on both sides (loss in float32); with ``--fused``, ours
  also as ``segdet eval`` runs it (:func:`prepare_for_inference` for the device and precision);

at ``--size`` x ``--size`` (512) with ``--num-classes`` (21), on ``--threads`` CPU threads (2) or CUDA.
Both sides are built with random weights (``encoder_weights=None``) and configured alike: smp's
DeepLabV3Plus gets our atrous rates (6, 12, 18) and our separable setting (``--separable``, smp's
default). Our DeepLabv3+ is timed twice: with the paper's two 3x3 decoder convolutions after the
concatenation (our default, "2c") and with one ("1c", ``decoder_convs=1``), the count smp's decoder
has there. Architectural differences that remain are printed with the table.

Requires ``pip install segmentation-models-pytorch`` (the ``bench`` extra). Run:
``python benchmarks/segmentation.py --repeats 5``; on a GPU (CUDA-synchronised timing):
``python benchmarks/segmentation.py --device cuda --infer-batches 1,8 --bf16 --fused --repeats 10``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from segdet.engine.config import TrainConfig
from segdet.engine.devices import training_uses_nnpack
from segdet.engine.inference import prepare_for_inference
from segdet.engine.perf import tune_malloc
from segdet.models import build
from segdet.ops.nnpack_conv import use_nnpack


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inference_fn(model: nn.Module, x: torch.Tensor, bf16: bool = False) -> Callable[[], None]:
    model.eval()

    def step() -> None:
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            model(x)

    return step


def _train_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool = False) -> Callable[[], None]:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        opt.step()

    return step


def time_interleaved(
    fns: list[Callable[[], None]], repeats: int, warmup: int, device: torch.device
) -> list[float]:
    """Median seconds of each function, run in alternating order ``repeats`` times after ``warmup`` rounds."""
    times: list[list[float]] = [[] for _ in fns]
    for r in range(warmup + repeats):
        # A B, B A, A B, ...: neither side always runs right after the other's allocations.
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            _sync(device)
            t = time.perf_counter()
            fns[i]()
            _sync(device)
            if r >= warmup:
                times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def _time_row(
    name: str, mode: str, fns: list[Callable[[], None]], args: argparse.Namespace, device: torch.device
) -> None:
    """Time ``[ours, theirs]`` interleaved and print one table row."""
    t_ours, t_theirs = time_interleaved(fns, args.repeats, args.warmup, device)
    print(
        f"{name:28} {mode:>12} {t_ours * 1e3:9.1f} {t_theirs * 1e3:9.1f} {t_ours / t_theirs:9.3f}", flush=True
    )


def make_pairs(num_classes: int, separable: bool) -> list[tuple[str, nn.Module, nn.Module]]:
    import segmentation_models_pytorch as smp

    return [
        (
            "U-Net ResNet-34",
            build("unet_backbone", num_classes, backbone="resnet34"),
            smp.Unet("resnet34", encoder_weights=None, classes=num_classes),
        ),
    ] + [
        (
            f"DeepLabv3+ ResNet-50 OS16 {decoder_convs}c",
            build(
                "deeplabv3plus",
                num_classes,
                backbone="resnet50",
                output_stride=16,
                separable=separable,
                decoder_convs=decoder_convs,
            ),
            smp.DeepLabV3Plus(
                "resnet50",
                encoder_weights=None,
                encoder_output_stride=16,
                classes=num_classes,
                decoder_atrous_rates=(6, 12, 18),
                decoder_aspp_separable=separable,
            ),
        )
        # 2 decoder convs: the paper's decoder (ours by default); 1: as many as smp's after the concatenation.
        for decoder_convs in (2, 1)
    ]


def time_inference(
    name: str,
    ours: nn.Module,
    theirs: nn.Module,
    args,
    device: torch.device,
    memory_format: torch.memory_format,
) -> None:
    """Inference rows of one pair at every ``--infer-batches`` size (and bf16 with ``--bf16``); with
    ``--fused`` also ours as ``segdet eval`` / ``predict`` run it."""
    precisions = [False, True] if args.bf16 else [False]
    for b in args.infer_batches:
        x = torch.randn(b, 3, args.size, args.size, device=device).to(memory_format=memory_format)
        for low in precisions:
            tag = "bf16" if low else "fp32"
            if args.fused:
                # As segdet eval / predict run it: BatchNorm folded, the layout chosen for the device.
                fused = prepare_for_inference(
                    copy.deepcopy(ours), device_type=device.type, precision=tag if low else "fp32"
                )
                fns = [_inference_fn(fused, x), _inference_fn(theirs, x, low)]
                _time_row(name, f"fused b{b} {tag}", fns, args, device)
            fns = [_inference_fn(ours, x, low), _inference_fn(theirs, x, low)]
            _time_row(name, f"infer b{b} {tag}", fns, args, device)


def time_training(
    name: str,
    ours: nn.Module,
    theirs: nn.Module,
    args,
    device: torch.device,
    memory_format: torch.memory_format,
) -> None:
    """Training-step rows of one pair at ``--train-batch`` (and bf16 with ``--bf16``); ours on NNPACK too
    where ``segdet train`` chooses it."""
    precisions = [False, True] if args.bf16 else [False]
    b = args.train_batch
    x = torch.randn(b, 3, args.size, args.size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, args.num_classes, (b, args.size, args.size), device=device)
    for low in precisions:
        fns = [_train_fn(ours, x, y, low), _train_fn(theirs, x, y, low)]
        _time_row(name, f"train b{b} {'bf16' if low else 'fp32'}", fns, args, device)
    if not args.channels_last and training_uses_nnpack(TrainConfig(), device, ours):
        # as segdet train runs it here: the wide 3x3 convolutions on NNPACK and Winograd kernels
        fast = copy.deepcopy(ours)
        use_nnpack(fast, training=True)
        fns = [_train_fn(fast, x, y), _train_fn(theirs, x, y)]
        _time_row(name, f"train b{b} nnpack", fns, args, device)
        del fast


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--infer-batches", default="1", type=lambda v: [int(x) for x in v.split(",")], help="e.g. 1,8"
    )
    parser.add_argument("--bf16", action="store_true", help="also time both sides under bf16 autocast")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", action="store_true", help="channels_last models and inputs (both)")
    parser.add_argument(
        "--separable",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="depthwise-separable 3x3 convs in DeepLabv3+ (both sides; smp's default)",
    )
    parser.add_argument("--only", choices=["unet", "deeplab"], help="time one pair only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-train", action="store_true", help="time inference only")
    parser.add_argument("--no-tune-malloc", action="store_true")
    parser.add_argument(
        "--fused",
        action="store_true",
        help="also time our model as segdet eval/predict run it (prepare_for_inference: BatchNorm folded)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    # glibc's malloc tuned as segdet's CLI tunes it (both models profit; --no-tune-malloc to compare).
    tuned = False if args.no_tune_malloc else tune_malloc()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    pairs = make_pairs(args.num_classes, args.separable)
    if args.only:
        pairs = [p for p in pairs if p[0].lower().replace("-", "").startswith(args.only)]

    print(
        f"torch {torch.__version__}, {args.threads} threads, device {device}, size {args.size}, "
        f"channels_last {args.channels_last}, median of {args.repeats}, malloc tuned {tuned}"
    )
    print(f"{'model':28} {'mode':>12} {'ours ms':>9} {'smp ms':>9} {'ours/smp':>9}")
    for name, ours, theirs in pairs:
        ours = ours.to(device, memory_format=memory_format)
        theirs = theirs.to(device, memory_format=memory_format)
        n_ours = sum(p.numel() for p in ours.parameters())
        n_theirs = sum(p.numel() for p in theirs.parameters())
        time_inference(name, ours, theirs, args, device, memory_format)
        if not args.skip_train:
            time_training(name, ours, theirs, args, device, memory_format)
        print(f"{'':28} {'params':>12} {n_ours / 1e6:8.2f}M {n_theirs / 1e6:8.2f}M {n_ours / n_theirs:9.3f}")
    print(
        "Remaining differences: smp's DeepLabV3Plus decoder has one 3x3 conv after the concatenation and"
        " one after ASPP (at 1/16 resolution);\nours follows the paper: two 3x3 convs after the"
        " concatenation (row 2c; row 1c: decoder_convs=1), none after ASPP; our image-pooling branch has"
        " no BatchNorm."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Speed of our detectors against torchvision's, same weights, one run: Faster R-CNN and Mask R-CNN
(ResNet-50 FPN), RetinaNet (ResNet-50 FPN), SSD300 (VGG-16) and SSDLite320 (MobileNetV3-Large).

What is compared, for each model (``--models faster,mask,retinanet,ssd300,ssdlite``):

* **torchvision**: ``fasterrcnn_resnet50_fpn`` / ``maskrcnn_resnet50_fpn`` / ``retinanet_resnet50_fpn``
  built with ``weights=None, weights_backbone=None`` and ``min_size = max_size = --size`` (so a
  ``size x size`` input is processed at that size; SSD300 and SSDLite resize to their fixed 300 / 320),
  then set up as torchvision sets itself up for fine-tuning from an ImageNet backbone: for the ResNets
  the backbone's BatchNorms become ``torchvision.ops.misc.FrozenBatchNorm2d`` and ``conv1`` / ``layer1``
  are frozen (``trainable_backbone_layers = 3``); SSD300's ``conv1`` block is frozen (4 trainable
  stages); SSDLite trains everything. The weights are torchvision's seeded random initialisation,
  except: the BatchNorm statistics are *calibrated* (running means and variances accumulated over a
  few synthetic images, so activations keep realistic magnitudes through the network) and the
  classifier's logits are spread (scaled to a fixed standard deviation) so that each image gives
  its ``detections_per_img`` detections, as a trained model does -- random logits would leave every
  score under the threshold and skip the whole post-processing (and mask branch). RetinaNet's
  background logit (class 0, never a positive in torchvision's training; our RetinaNet has no such
  class) is set to -100, as a trained model's stays low.
* **ours**: :func:`segdet.models.detection.convert.from_torchvision` of that model: the same weights,
  frozen layers and settings. Inference is timed three times: after ``fuse_for_inference()`` (frozen
  BatchNorms folded into the convolutions, weights and batches in ``channels_last``, and on AVX2 CPUs and
  Zen 4 the wide 3x3 convolutions on NNPACK's Winograd / FFT kernels, :mod:`segdet.ops.nnpack_conv`:
  detections equal up to float rounding), the same without NNPACK ("oneDNN only"), and as converted
  (the same arithmetic as torchvision: bit-identical detections); RoIAlign runs on every thread
  (:mod:`segdet.ops.roi_align`) in all three. Training runs the unfused converted model in train mode.

Timed, interleaved (ours, theirs, theirs, ours, ...) so that load changes on the shared machine hit both
alike, medians of ``--repeats``:

* inference, batch 1: ``model([image])`` in eval mode under ``torch.inference_mode`` (the same
  synthetic *shapes* image); the outputs of both are compared in the same run (max |Δ| of boxes,
  scores and masks, labels shifted by our 0-based convention);
* a training step, batch ``--train-batch`` (2): forward with the synthetic targets (boxes, labels,
  masks), sum of the losses, backward, SGD step; both seeded alike before each step.
  ``--train-channels-last`` adds our step with channels-last weights (``train.channels_last: true``,
  which the SSDLite configs set) against torchvision's as it runs by default. Where ``segdet train``
  trains on NNPACK and the Winograd weight gradient by default (``train.nnpack``: float32 on AVX2 CPUs and
  Zen 4),
  the row "plain kernels" is our model on oneDNN alone (torchvision's arithmetic) and the row
  "segdet train: train.nnpack" our step as ``segdet train`` runs it, after a line with its loss and
  gradients against the plain kernels' on the same batch, beside the plain kernels' own change on one
  thread instead of two (the yardstick for float rounding). ``--skip-infer`` times the steps only.
* with ``--bf16``: our fused model as ``prepare_for_inference`` sets bf16 up (folded, channels-last,
  no NNPACK) under ``torch.autocast("cpu", dtype=torch.bfloat16)``, its speed
  against ours and torchvision's float32, and its accuracy: the R50-FPN models here are untrained, so
  a small model of the same kind (ResNet-18 FPN, narrow heads) is *trained* on synthetic shapes
  (``--ap-steps`` on ``--ap-train-images``) and its COCO AP on ``--ap-images`` held-out shapes images is
  measured against their true ground truth in float32 and in bf16
  (:func:`detection_bf16.bf16_ap_change`).

On CUDA (``--device cuda``) every timing starts and ends on a synchronised device; inference is timed
at every batch size of ``--infer-batches`` (e.g. ``1,8``), our fused model as ``segdet eval`` runs it there
(folded, NCHW) and folded + channels-last beside it; with ``--bf16`` both sides run under bf16 autocast
(inference and the training step), and the bf16 AP check (CPU only) is skipped.

glibc's malloc is tuned at start-up (:func:`segdet.engine.perf.tune_malloc`, both models profit;
``--no-tune-malloc`` to compare). Run: ``python benchmarks/detection.py --size 800 --repeats 5 --bf16``, or
``python benchmarks/detection.py --models retinanet,ssd300,ssdlite``; on a GPU: ``python
benchmarks/detection.py --device cuda --infer-batches 1,8 --train-batch 4 --bf16 --repeats 10 --warmup 3``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from segdet.engine.config import TrainConfig
from segdet.engine.devices import training_uses_nnpack
from segdet.engine.perf import tune_malloc
from segdet.models.detection.convert import from_torchvision
from segdet.ops.nnpack_conv import NNPACKConv2d, use_nnpack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from detection_bf16 import bf16_ap_line
from detection_pairs import (
    KINDS,
    build_pair,
    describe_difference,
    output_difference,
    synthetic_batch,
)


# ----------------------------------------------------------------------------------------- timing
def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_interleaved(fns: list[Callable[[], object]], repeats: int, warmup: int) -> list[float]:
    """Median seconds of each function, run A B, B A, ... ``repeats`` times after ``warmup`` rounds; on
    CUDA each call is timed from a synchronised device to a synchronised device."""
    times: list[list[float]] = [[] for _ in fns]
    for r in range(warmup + repeats):
        order = list(range(len(fns))) if r % 2 == 0 else list(reversed(range(len(fns))))
        for i in order:
            _sync()
            t = time.perf_counter()
            fns[i]()
            _sync()
            if r >= warmup:
                times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def _device_type(images: list[Tensor]) -> str:
    return images[0].device.type


def infer_fn(model: nn.Module, images: list[Tensor], autocast: bool = False) -> Callable[[], list[dict]]:
    """Inference on ``images`` (bf16 autocast on their device with ``autocast``)."""
    device_type = _device_type(images)

    def step() -> list[dict]:
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            return model(images)

    return step


def train_fn(
    model: nn.Module, images: list[Tensor], targets: list[dict], seed: int, autocast: bool = False
) -> Callable[[], None]:
    """One SGD step on ``images`` (bf16 autocast with ``autocast``; the loss read back only at the end)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-5, momentum=0.9)
    device_type = _device_type(images)

    def step() -> None:
        torch.manual_seed(seed)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            losses = model(images, targets)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    return step


# ---------------------------------------------------------------------------------------- checks
def count_nnpack(model: nn.Module) -> int:
    return sum(isinstance(m, NNPACKConv2d) for m in model.modules())


# ------------------------------------------------------------------------------------------- main
def inference_rows(kind: str, ours: nn.Module, theirs: nn.Module, images: list[Tensor], args) -> list:
    """Inference rows of one model: outputs compared, then timed at every ``--infer-batches`` size."""
    name = KINDS[kind][1]
    masks = kind == "mask"
    cpu = images[0].device.type == "cpu"

    def converted() -> nn.Module:
        return from_torchvision(theirs).to(images[0].device)

    variants = {"fused": converted().fuse_for_inference()}
    if cpu:
        # by default NNPACK's 3x3 convolutions on AVX2 CPUs and Zen 4; "oneDNN only": folded, without NNPACK
        variants["fused, oneDNN only"] = converted().fuse_for_inference(nnpack=False)
    else:
        # CUDA's default is folded + NCHW; channels-last is timed beside it
        variants["fused, channels-last"] = converted().fuse_for_inference(channels_last=True)
    variants["unfused, identical"] = ours
    reference = infer_fn(theirs, images[:1])()
    diffs = "; ".join(
        f"{label} {describe_difference(output_difference(infer_fn(m, images[:1])(), reference), masks)}"
        for label, m in variants.items()
    )
    nnpack = count_nnpack(variants["fused"])
    print(f"{name}: {len(reference[0]['boxes'])} detections, {nnpack} convs on NNPACK; ours vs tv: {diffs}")
    rows = []
    for b in args.infer_batches:
        batch = images[:b]
        fns = [infer_fn(m, batch) for m in variants.values()] + [infer_fn(theirs, batch)]
        *t_ours, t_theirs = time_interleaved(fns, args.repeats, args.warmup)
        for label, t in zip(variants, t_ours, strict=True):
            rows.append((name, f"inference b{b} fp32 (ours {label})", t, t_theirs))
        if args.bf16:
            # As prepare_for_inference sets bf16 up: folded, channels-last, no NNPACK (autocast's convs).
            low = converted().fuse_for_inference(channels_last=True, nnpack=False)
            fns = [infer_fn(low, batch, autocast=True), infer_fn(theirs, batch, autocast=True)]
            fns.append(infer_fn(variants["fused"], batch))
            t_low, t_tv_low, t_fp32 = time_interleaved(fns, args.repeats, args.warmup)
            rows.append((name, f"inference b{b} bf16 (both autocast)", t_low, t_tv_low))
            rows.append((name, f"inference b{b} bf16 (ours) vs ours fp32", t_low, t_fp32))
    return rows


def gradients(model: nn.Module, images: list[Tensor], targets: list[dict], seed: int) -> tuple[float, Tensor]:
    """(loss, every parameter's gradient flattened into one vector) of one forward/backward pass."""
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    loss = sum(model(images, targets).values())
    loss.backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None]
    return loss.item(), torch.cat(grads)


def fast_training_row(name, ours, theirs, images, targets, tv_targets, args) -> tuple:
    """Our training step as ``segdet train`` runs it on this CPU (``train.nnpack``: NNPACK forward and
    input gradient, Winograd weight gradient) against torchvision's, and how far its loss and gradients
    are from the plain kernels' (the same arithmetic as torchvision's) on the same batch."""
    fast = copy.deepcopy(ours)
    replaced = use_nnpack(fast, training=True)
    loss_plain, grad_plain = gradients(ours, images, targets, args.seed)
    loss_fast, grad_fast = gradients(fast, images, targets, args.seed)
    # the yardstick: the plain kernels' own change when oneDNN sums in another order (one thread)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loss_one, grad_one = gradients(ours, images, targets, args.seed)
    torch.set_num_threads(threads)

    def change(loss: float, grad: Tensor) -> str:
        relative = float((grad.double() - grad_plain.double()).norm() / grad_plain.double().norm())
        loss_change = abs(loss - loss_plain) / abs(loss_plain)
        return f"loss relative {loss_change:.1e}, gradients |Δ|/|g| {relative:.1e}"

    print(
        f"{name}: train.nnpack ({replaced} convolutions) against the plain kernels on the same batch: "
        f"{change(loss_fast, grad_fast)}; plain kernels on 1 thread against 2: {change(loss_one, grad_one)} "
        "(a ReLU whose input changes sign by rounding moves a whole gradient value)"
    )
    ours.zero_grad(set_to_none=True)
    fast.zero_grad(set_to_none=True)
    step_fast = train_fn(fast, images, targets, args.seed)
    step_theirs = train_fn(theirs, images, tv_targets, args.seed)
    t_fast, t_theirs = time_interleaved([step_fast, step_theirs], args.repeats, args.warmup)
    return name, f"train step b{len(images)} fp32 (segdet train: train.nnpack)", t_fast, t_theirs


def training_rows(
    name: str, ours: nn.Module, theirs: nn.Module, images: list[Tensor], targets: list[dict], args
) -> list:
    """Training-step rows of one model on the first ``--train-batch`` images: float32 (and bf16 with
    ``--bf16``), our NNPACK step where it is chosen, and our channels-last step with
    ``--train-channels-last``."""
    device = images[0].device
    rows = []
    b = args.train_batch
    ours.train()
    theirs.train()
    tv_targets = [dict(t, labels=t["labels"] + 1) for t in targets[:b]]
    for low in (False, True) if args.bf16 else (False,):
        step_ours = train_fn(ours, images[:b], targets[:b], args.seed, autocast=low)
        step_theirs = train_fn(theirs, images[:b], tv_targets, args.seed, autocast=low)
        t_ours, t_theirs = time_interleaved([step_ours, step_theirs], args.repeats, args.warmup)
        plain = " (plain kernels)" if not low and training_uses_nnpack(TrainConfig(), device, ours) else ""
        rows.append((name, f"train step b{b} {'bf16' if low else 'fp32'}{plain}", t_ours, t_theirs))
    if training_uses_nnpack(TrainConfig(), device, ours):
        rows.append(fast_training_row(name, ours, theirs, images[:b], targets[:b], tv_targets, args))
    if args.train_channels_last:
        # what ``train.channels_last: true`` does: the weights (and so the activations) NHWC
        ours_cl = copy.deepcopy(ours).to(memory_format=torch.channels_last)
        step_ours = train_fn(ours_cl, images[:b], targets[:b], args.seed)
        step_theirs = train_fn(theirs, images[:b], tv_targets, args.seed)
        t_ours, t_theirs = time_interleaved([step_ours, step_theirs], args.repeats, args.warmup)
        rows.append((name, f"train step b{b} fp32, ours channels-last", t_ours, t_theirs))
        del ours_cl
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (CUDA-synchronised timing)")
    parser.add_argument("--models", default="faster,mask", help=f"comma-separated, of: {', '.join(KINDS)}")
    parser.add_argument(
        "--infer-batches", default="1", type=lambda v: [int(x) for x in v.split(",")], help="e.g. 1,8"
    )
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast (inference, training)")
    parser.add_argument("--ap-steps", type=int, default=300, help="training steps of the bf16 AP model")
    parser.add_argument("--ap-train-images", type=int, default=32, help="its training images")
    parser.add_argument("--ap-images", type=int, default=32, help="held-out images of the bf16 AP check")
    parser.add_argument("--ap-size", type=int, default=128, help="image size of the bf16 AP check")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-infer", action="store_true", help="time the training steps only")
    parser.add_argument(
        "--train-channels-last",
        action="store_true",
        help="also time our training step with channels-last weights (train.channels_last: true)",
    )
    parser.add_argument("--no-tune-malloc", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    tuned = False if args.no_tune_malloc else tune_malloc()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, device {device}, {args.threads} threads, size {args.size}, median of "
        f"{args.repeats}, CPU capability {torch.backends.cpu.get_cpu_capability()}, malloc tuned {tuned}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    if device.type == "cuda":
        tf32 = torch.backends.cudnn.allow_tf32
        print(f"{torch.cuda.get_device_name(device)}, cuDNN TF32 convolutions {tf32} (PyTorch's default)")
    rows = []
    for kind in args.models.split(","):
        if kind not in KINDS:
            parser.error(f"unknown model {kind!r}; choose from {', '.join(KINDS)}")
        ours, theirs = build_pair(kind, args.size, args.seed)
        ours, theirs = ours.to(device), theirs.to(device)
        n = max(args.train_batch, *args.infer_batches)
        images, targets = synthetic_batch(n, args.size, args.seed)
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        name = KINDS[kind][1]
        if not args.skip_infer:
            rows += inference_rows(kind, ours, theirs, images, args)
        if args.bf16 and device.type == "cpu" and kind in ("faster", "mask"):
            print(bf16_ap_line(kind, name, args))
        if not args.skip_train:
            rows += training_rows(name, ours, theirs, images, targets, args)
        del ours, theirs

    print(f"\n{'model':22} {'mode':48} {'A ms':>9} {'B ms':>9} {'A/B':>6}")
    for name, mode, a, b in rows:
        print(f"{name:22} {mode:48} {a * 1e3:9.1f} {b * 1e3:9.1f} {a / b:6.2f}")
    print("SSD300 / SSDLite process every image at their fixed 300 / 320 px, whatever --size is.")
    print("A = ours unless stated, B = torchvision unless stated; load average now", os.getloadavg()[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Why fused R-CNN inference on CUDA disagreed with torchvision: float rounding, measured.

On an H200 our Faster / Mask R-CNN R50-FPN with BatchNorm folded gave 100 detections per image of which
none had a torchvision counterpart (same class, IoU > 0.99), while the unfused model matched. Both run
cuDNN's float32 convolutions, which PyTorch computes on TF32 tensor cores by default
(``torch.backends.cudnn.allow_tf32``): each operand is rounded to 10 mantissa bits (relative error up
to 2⁻¹¹ ≈ 4.9e-4) and the products are summed in float32. The unfused model feeds cuDNN the same numbers
as torchvision and gets the same roundings; folding changes the weights by ~1e-7 relative, TF32 rounds
them to other values, and the difference (~5e-4 per convolution instead of float32's ~1e-7) is carried
through 50+ layers of an *untrained* network, whose random detections are near-ties of score and box.

This script measures that, on the model ``benchmarks/detection.py`` builds (seeded random weights,
calibrated BatchNorm, spread logits), for each comparison the number of our detections without a
torchvision counterpart (same class, every coordinate within 1 px) and the max |Δ| of boxes / scores /
masks over the paired ones (``detection.output_difference``):

* ``--device cpu``: TF32 is *emulated* (:func:`emulate_tf32`: every convolution's input and weight
  rounded to TF32 as the tensor cores round them, round-to-nearest on 10 mantissa bits, then float32
  arithmetic). Rows: ours unfused / fused vs torchvision in float32; torchvision with emulated TF32 vs
  itself in float32 (rounding alone, no fusion); ours fused vs torchvision, both with emulated TF32
  (what the GPU run saw).
* ``--device cuda``: the real thing, with ``allow_tf32`` off and on.

Run: ``python benchmarks/fused_agreement.py --device cpu --size 512``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from detection_pairs import build_pair, describe_difference, output_difference, synthetic_batch

from segdet.ops.nnpack_conv import NNPACKConv2d


def round_to_tf32(x: Tensor) -> Tensor:
    """``x`` (float32) rounded to TF32's 10 mantissa bits, to nearest (ties away from zero), as the
    tensor cores' conversion (``cvt.rna.tf32.f32``) does: add half of the 13 dropped bits' unit to the bit
    pattern, then clear them (the sign is a separate bit, so this rounds magnitudes for either sign)."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).view_as(x)


@torch.no_grad()
def emulate_tf32(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose convolutions (and transposed convolutions) compute in TF32 as cuDNN
    does with ``allow_tf32``: weights rounded once, inputs rounded by a pre-hook at every call."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and not isinstance(m, NNPACKConv2d):
            m.weight.copy_(round_to_tf32(m.weight))
            m.register_forward_pre_hook(lambda module, args: (round_to_tf32(args[0]), *args[1:]))
    return model


@contextlib.contextmanager
def cudnn_tf32(enabled: bool):
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def run(model: nn.Module, images: list[Tensor], tf32: bool | None = None) -> list[dict]:
    with torch.inference_mode(), cudnn_tf32(tf32) if tf32 is not None else contextlib.nullcontext():
        return model(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--models", default="faster,mask")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    images, _ = synthetic_batch(args.images, args.size, args.seed)
    images = [im.to(device) for im in images]
    print(f"torch {torch.__version__}, device {device}, {args.images} images of {args.size} px")
    for kind in args.models.split(","):
        ours, theirs = build_pair(kind, args.size, args.seed)
        ours, theirs = ours.to(device), theirs.to(device)
        fused = copy.deepcopy(ours).fuse_for_inference(nnpack=False)
        masks = kind == "mask"
        name = f"{kind} R-CNN R50-FPN"

        def report(label: str, a: list[dict], b: list[dict], name: str = name, masks: bool = masks) -> None:
            print(f"{name}: {label}: {describe_difference(output_difference(a, b), masks)}")

        if device.type == "cpu":
            reference = run(theirs, images)
            report("ours unfused vs torchvision, float32", run(ours, images), reference)
            report("ours fused vs torchvision, float32", run(fused, images), reference)
            tv_tf32 = run(emulate_tf32(theirs), images)
            # torchvision against itself: same class, its labels are 1..K; shift so the pairing matches
            shifted = [dict(d, labels=d["labels"] - 1) for d in tv_tf32]
            report("torchvision emulated TF32 vs torchvision float32 (rounding alone)", shifted, reference)
            both = "vs torchvision, both emulated TF32"
            report(f"ours unfused {both}", run(emulate_tf32(ours), images), tv_tf32)
            report(f"ours fused {both}", run(emulate_tf32(fused), images), tv_tf32)
        else:
            reference = run(theirs, images, tf32=False)
            report("ours unfused vs torchvision, TF32 off", run(ours, images, tf32=False), reference)
            report("ours fused vs torchvision, TF32 off", run(fused, images, tf32=False), reference)
            tv_tf32 = run(theirs, images, tf32=True)
            shifted = [dict(d, labels=d["labels"] - 1) for d in tv_tf32]
            report("torchvision TF32 vs torchvision TF32 off (rounding alone)", shifted, reference)
            report("ours unfused vs torchvision, TF32 on", run(ours, images, tf32=True), tv_tf32)
            report("ours fused vs torchvision, TF32 on", run(fused, images, tf32=True), tv_tf32)
        del ours, theirs, fused
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

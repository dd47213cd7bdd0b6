"""Benchmark RoI max pooling: torchvision.ops.roi_pool against segdet.ops.roi_pool, side by side.

    python benchmarks/roi_pool.py --repeat 5                 # CPU, torch's default threads
    python benchmarks/roi_pool.py --threads 1 --repeat 5     # one thread for both
    python benchmarks/roi_pool.py --no-native                # segdet's pure-torch path
    python benchmarks/roi_pool.py --device cuda              # on a GPU, if there is one

Cases (7 x 7 bins unless said; RoIs drawn with a fixed seed, centres uniform over the image, sides
log-uniform in the given range of image pixels, aspect ratios in [1/2, 2], clipped to the image):

* ``rpn``: 1000 RoIs, sides 32-512 px, on a 1 x 256 x 200 x 200 map at scale 1/4 (an 800-px image):
  the PERF-NOTES kernel case, with proposals of an RPN's range of sizes;
* ``fast-rcnn``: 2000 RoIs on 2 images (1000 each, sides 20-600 px, selective search's range) on the
  2 x 512 x 38 x 63 conv5 map (scale 1/16) of two 600 x 1000 images: Fast R-CNN's test-time pooling;
* ``small``: 64 RoIs, sides 16-256 px, on a 1 x 64 x 32 x 32 map at scale 1/16 (a 512-px image);
* ``small-rois``: 1000 RoIs, sides 16-112 px, on the ``rpn`` map: the FPN-P2-sized RoIs (4-28 map
  cells), our worst case (torchvision's cost grows with the bins' area, ours far less);
* ``fast-rcnn-relu``: ``fast-rcnn`` on a map of ReLU outputs (half zeros), as a detector's conv5 is:
  segdet pools maps without negative values with float keys that need no decoding.

The maps hold standard normal values (``fast-rcnn-relu``: their ReLU).

Each side is timed on the same inputs, interleaved (A B A B ...), after one untimed warm-up run each;
the table gives medians of ``--repeat`` runs: the forward pass of a map that requires grad (so both
compute the arg-max), the backward pass (one upstream gradient), their sum, and the forward pass
under ``torch.no_grad()`` (inference). Outputs and gradients are checked equal (``torch.equal``)
before timing. Each case's mean bin area and the path segdet takes are printed with it: its C++ kernel
(``csrc/roi_pool.cpp``, built on first use), or, without a compiler or with ``--no-native``
(``SEGDET_NATIVE=0``), the pure-torch sparse table, which hands calls with tiny bins to torchvision's
kernel.

glibc's malloc is tuned at start-up as ``segdet``'s commands do (:func:`segdet.engine.perf.tune_malloc`:
freed memory is kept, so the outputs of repeated calls are not page-faulted in anew; both sides
profit); ``--no-tune-malloc`` to compare.

The machine may be shared: the load average is printed before and after. On an oversubscribed
machine OpenMP's default spin-waiting makes every parallel torch operation wait for a descheduled
worker thread (milliseconds each; torchvision's kernel is single-threaded and does not notice): time
with ``OMP_WAIT_POLICY=PASSIVE`` or ``--threads 1`` there.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision

from segdet.engine.perf import tune_malloc
from segdet.ops import native, roi_pool
from segdet.ops.roi_pool import roi_bins


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, int, int, int]  # N, C, H, W of the map
    rois_per_image: int
    sides: tuple[float, float]  # RoI side range, image pixels
    spatial_scale: float
    output_size: int = 7
    relu: bool = False  # a map of ReLU outputs (what a detector pools), else standard normal values


CASES = [
    Case("rpn", (1, 256, 200, 200), 1000, (32, 512), 1 / 4),
    Case("fast-rcnn", (2, 512, 38, 63), 1000, (20, 600), 1 / 16),
    Case("small", (1, 64, 32, 32), 64, (16, 256), 1 / 16),
    Case("small-rois", (1, 256, 200, 200), 1000, (16, 112), 1 / 4),
    Case("fast-rcnn-relu", (2, 512, 38, 63), 1000, (20, 600), 1 / 16, relu=True),
]


def make_rois(case: Case, seed: int = 0) -> torch.Tensor:
    """``[N * rois_per_image, 5]`` RoIs grouped by image (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = case.shape
    height, width = h / case.spatial_scale, w / case.spatial_scale
    k = case.rois_per_image
    rows = []
    for image in range(n):
        lo, hi = math.log(case.sides[0]), math.log(case.sides[1])
        side = torch.exp(lo + torch.rand(k, generator=g) * (hi - lo))
        aspect = torch.exp((torch.rand(k, generator=g) * 2 - 1) * math.log(2))
        bw, bh = side * aspect.sqrt(), side / aspect.sqrt()
        cx, cy = torch.rand(k, generator=g) * width, torch.rand(k, generator=g) * height
        box = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)
        box = box.clamp(min=0).minimum(torch.tensor([width, height, width, height]))
        rows.append(torch.cat([torch.full((k, 1), float(image)), box], dim=1))
    return torch.cat(rows)


def describe(case: Case, device: torch.device) -> str:
    """Mean bin area (cells) and segdet's path for the case."""
    rois = make_rois(case)
    top, bottom, left, right = roi_bins(rois, case.spatial_scale, (case.output_size,) * 2, *case.shape[2:])
    area = ((bottom - top).clamp(min=0).sum(1) * (right - left).clamp(min=0).sum(1)).sum()
    mean = float(area) / (rois.shape[0] * case.output_size**2)
    n, c, h, w = case.shape
    with torch.no_grad():
        features = torch.zeros(case.shape)
        calls = _count_torchvision_calls(
            lambda: roi_pool(features, rois, case.output_size, case.spatial_scale)
        )
    if calls or device.type != "cpu":
        path = "torchvision's kernel"
    else:
        path = "C++ kernel" if native.library("roi_pool") is not None else "sparse table"
    return f"{case.name}: {rois.shape[0]} RoIs on {n}x{c}x{h}x{w}, mean bin {mean:.1f} cells -> {path}"


def _count_torchvision_calls(fn: Callable[[], object]) -> int:
    module = sys.modules["segdet.ops.roi_pool"]
    original, calls = module.tv_roi_pool, []

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    module.tv_roi_pool = counting
    try:
        fn()
    finally:
        module.tv_roi_pool = original
    return len(calls)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def bench_case(case: Case, repeat: int, device: torch.device) -> dict[str, dict[str, float]]:
    """Median seconds of ``fwd``, ``bwd``, ``fwd+bwd`` and ``infer`` for ``tv`` and ``ours``."""
    g = torch.Generator().manual_seed(1)
    features = torch.randn(case.shape, generator=g)
    features = (features.relu() if case.relu else features).to(device).requires_grad_(True)
    rois = make_rois(case).to(device)
    size, scale = case.output_size, case.spatial_scale
    ops = {"tv": torchvision.ops.roi_pool, "ours": roi_pool}

    outs = {name: op(features, rois, size, scale) for name, op in ops.items()}
    upstream = torch.randn(outs["tv"].shape, generator=g).to(device)
    grads = {name: torch.autograd.grad(out, features, upstream)[0] for name, out in outs.items()}
    if not (torch.equal(outs["tv"], outs["ours"]) and torch.equal(grads["tv"], grads["ours"])):
        raise SystemExit(f"{case.name}: segdet's roi_pool differs from torchvision's")
    del outs, grads

    times: dict[str, dict[str, list[float]]] = {n: {"fwd": [], "bwd": [], "infer": []} for n in ops}
    for rep in range(repeat + 1):  # the first round warms up (allocator, caches) and is dropped
        for name, op in ops.items():
            holder: dict[str, torch.Tensor] = {}

            def forward(op=op, holder=holder) -> None:
                holder["out"] = op(features, rois, size, scale)

            def backward(holder=holder) -> None:
                torch.autograd.grad(holder["out"], features, upstream)

            def infer(op=op) -> None:
                with torch.no_grad():
                    op(features, rois, size, scale)

            fwd, bwd, inf = _time(forward, device), _time(backward, device), _time(infer, device)
            if rep > 0:
                times[name]["fwd"].append(fwd)
                times[name]["bwd"].append(bwd)
                times[name]["infer"].append(inf)
    result = {}
    for name, t in times.items():
        total = [f + b for f, b in zip(t["fwd"], t["bwd"], strict=True)]
        result[name] = {k: statistics.median(v) for k, v in [*t.items(), ("fwd+bwd", total)]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per side (medians)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma-separated case names")
    parser.add_argument("--no-tune-malloc", action="store_true", help="leave glibc's malloc as it is")
    parser.add_argument(
        "--no-native", action="store_true", help="segdet's pure-torch path, not its C++ kernel"
    )
    args = parser.parse_args()
    if args.no_native:
        os.environ["SEGDET_NATIVE"] = "0"
    tuned = False if args.no_tune_malloc else tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    chosen = [c for c in CASES if c.name in args.cases.split(",")]
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, device {device}, "
        f"threads {torch.get_num_threads()}, malloc tuned {tuned}, load average {os.getloadavg()[0]:.2f}"
    )
    if device.type == "cuda":
        print("(on CUDA segdet's roi_pool calls torchvision's kernel: the ratio measures the wrapper)")
    header = f"{'case':<11} {'pass':<8} {'torchvision ms':>15} {'segdet ms':>10} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for case in chosen:
        print(describe(case, device))
        result = bench_case(case, args.repeat, device)
        for key in ("fwd", "bwd", "fwd+bwd", "infer"):
            tv, ours = result["tv"][key], result["ours"][key]
            print(f"{case.name:<11} {key:<8} {tv * 1e3:>15.1f} {ours * 1e3:>10.1f} {ours / tv:>6.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

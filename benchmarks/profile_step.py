"""Where a detector's training step spends its time, in float32 and under bf16 autocast, ours beside
torchvision's (same weights, same batch): to find out why our bf16 step is slower than our float32 one
on a GPU while torchvision's is faster.

For each of (ours, torchvision) x (fp32, bf16): ``--warmup`` steps, then ``--steps`` steps under
``torch.profiler`` (CPU and CUDA activities); printed: the median step time (CUDA-synchronised, outside
the profiler) and the ``--top`` operators by self device time (CPU time on the CPU), so that an operator
that grows under bf16 (casts, layout copies, float32 fallbacks) shows up by name.

Run on a GPU: ``python benchmarks/profile_step.py --device cuda --model faster --batch 4``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from detection import train_fn
from detection_pairs import build_pair, synthetic_batch


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="faster", choices=["faster", "mask"])
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    ours, theirs = build_pair(args.model, args.size, args.seed)
    images, targets = synthetic_batch(args.batch, args.size, args.seed)
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    tv_targets = [dict(t, labels=t["labels"] + 1) for t in targets]
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for side, model, tgts in (("ours", ours, targets), ("torchvision", theirs, tv_targets)):
        model.to(device).train()
        for bf16 in (False, True):
            step = train_fn(model, images, tgts, args.seed, autocast=bf16)
            for _ in range(args.warmup):
                step()
            times = []
            for _ in range(args.steps):
                _sync()
                t = time.perf_counter()
                step()
                _sync()
                times.append(time.perf_counter() - t)
            with profile(activities=activities) as prof:
                for _ in range(args.steps):
                    step()
                _sync()
            tag = "bf16" if bf16 else "fp32"
            print(
                f"\n=== {side} {args.model} R-CNN train step b{args.batch} {tag}: "
                f"median {statistics.median(times) * 1e3:.1f} ms ==="
            )
            print(prof.key_averages().table(sort_by=sort, row_limit=args.top, max_name_column_width=60))
        model.cpu()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

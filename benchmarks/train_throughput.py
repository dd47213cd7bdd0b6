"""Does the input pipeline keep up with the model? Trainer throughput on real data against the model alone.

For one training config (and ``key=value`` overrides, as ``segdet train`` takes them):

* **(a) model-bound**: :meth:`segdet.engine.trainer.Trainer.train_step` (forward, backward, optimiser step,
  exactly what the trainer does per step) on ``--preload`` batches taken from the run's own loader and
  kept on the device, cycled; no data loading at all.
* **(b) the trainer**: :meth:`Trainer._train_epoch` on the real dataset, data loading, host-to-device
  copies, logging and all (no evaluation), for ``--epochs`` epochs; the last epoch is reported, the first
  one (workers starting, caches filling) is printed too.

Printed: seconds per step of each and **(b)/(a)**: 1.0 means the data pipeline costs nothing; the target
is <= 1.15. (a) is timed before and after (b) and averaged, so that the machine's load changes hit both.
On CUDA every timing ends with ``torch.cuda.synchronize()``.

Run (from the project root, with ``../shared/data``)::

    python benchmarks/train_throughput.py configs/pennfudan_maskrcnn.yaml train.device=cpu
    python benchmarks/train_throughput.py configs/camvid_unet.yaml data.workers=6 train.device=cuda \\
        train.amp=bf16
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

import torch

from segdet.engine.config import load_config
from segdet.engine.perf import tune_malloc
from segdet.engine.tasks import build_task
from segdet.engine.trainer import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_bound(trainer: Trainer, batches: list, steps: int, warmup: int) -> float:
    """Seconds per :meth:`Trainer.train_step` on the preloaded ``batches``, after ``warmup`` steps."""
    for i in range(warmup):
        trainer.train_step(batches[i % len(batches)])
    _sync(trainer.device)
    start = time.perf_counter()
    for i in range(steps):
        trainer.train_step(batches[i % len(batches)])
    _sync(trainer.device)
    return (time.perf_counter() - start) / steps


def trainer_epochs(trainer: Trainer, epochs: int) -> list[tuple[int, float]]:
    """``(steps, seconds)`` of each of ``epochs`` epochs of the trainer's own loop."""
    out = []
    for epoch in range(epochs):
        before = trainer.state.step
        trainer.state.position = 0  # a whole epoch each time (fit() resets it so after an epoch)
        _sync(trainer.device)
        start = time.perf_counter()
        trainer._train_epoch(epoch)
        _sync(trainer.device)
        out.append((trainer.state.step - before, time.perf_counter() - start))
    return out


def profile_steps(trainer: Trainer, batches: list, steps: int, top: int = 25) -> None:
    """The ``top`` operators of ``steps`` model-bound steps by self time on the device (CPU: on the CPU),
    and the host's total: where a step's time goes when the data pipeline is out of the picture."""
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            trainer.train_step(batches[i % len(batches)])
        _sync(trainer.device)
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=top, max_name_column_width=60))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--steps", type=int, default=10, help="(a): timed steps each time")
    parser.add_argument("--warmup", type=int, default=2, help="(a): untimed steps first")
    parser.add_argument("--preload", type=int, default=4, help="(a): batches kept on the device")
    parser.add_argument("--epochs", type=int, default=2, help="(b): epochs; the last is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--profile", type=int, default=0, help="also profile this many (a) steps")
    args = parser.parse_args(argv)

    tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [*args.overrides, f"output_dir={tmp}", "train.progress=false"])
        trainer = Trainer(cfg, build_task(cfg))
        # at most --preload batches: a small dataset may have fewer in an epoch
        loader = itertools.islice(trainer.train_loader, args.preload)
        batches = [trainer.task.to_device(batch, trainer.device) for batch in loader]
        del loader
        a1 = model_bound(trainer, batches, args.steps, args.warmup)
        epochs = trainer_epochs(trainer, args.epochs)
        a2 = model_bound(trainer, batches, args.steps, 0)
        if args.profile:
            profile_steps(trainer, batches, args.profile)
    a = (a1 + a2) / 2
    steps, seconds = epochs[-1]
    b = seconds / steps
    load = os.getloadavg()[0]
    print(
        f"{args.config} {' '.join(args.overrides)}: device {trainer.device}, batch {cfg.data.batch_size}, "
        f"workers {cfg.data.workers}, cache {cfg.data.cache}, amp {cfg.train.amp}, "
        f"torch threads {torch.get_num_threads()}, load average {load:.2f}"
    )
    print(f"(a) model-bound: {a * 1e3:.1f} ms/step ({a1 * 1e3:.1f} before, {a2 * 1e3:.1f} after (b))")
    first_steps, first_seconds = epochs[0]
    print(
        f"(b) trainer: {b * 1e3:.1f} ms/step over the last epoch ({steps} steps); first epoch "
        f"{first_seconds / first_steps * 1e3:.1f} ms/step"
    )
    print(f"(b)/(a) = {b / a:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

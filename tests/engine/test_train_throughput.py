"""``benchmarks/train_throughput.py``, which the GPU checks run once on the device machine: it must work
for more than one epoch. Reference: the smoke config's loader, 8 synthetic images at batch 4 = 2 steps an
epoch; every timed epoch must run its 2 steps (the second epoch once ran none: the trainer's position
inside the epoch was left at the end); of the 4 batches preloaded by default, the 2 there are."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _benchmark():
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks/train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_epoch_runs_all_its_steps(capsys, monkeypatch):
    bench = _benchmark()
    seen: list[list[tuple[int, float]]] = []
    trainer_epochs = bench.trainer_epochs
    monkeypatch.setattr(bench, "trainer_epochs", lambda t, n: seen.append(trainer_epochs(t, n)) or seen[-1])
    config = str(ROOT / "configs/smoke_unet.yaml")
    assert bench.main([config, "train.device=cpu", "--epochs", "3", "--steps", "2", "--warmup", "1"]) == 0
    assert [steps for steps, _ in seen[0]] == [2, 2, 2]
    ratio = re.search(r"\(b\)/\(a\) = (\d+\.\d+)", capsys.readouterr().out)
    assert ratio and float(ratio.group(1)) > 0

"""The trainer end to end on tiny synthetic runs: exact resume after SIGKILL, DDP (2 gloo processes)
equal to one process with the same global batch, the NaN guard, logs and checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from segdet.engine.checkpoint import load_checkpoint
from segdet.engine.config import load_config
from segdet.engine.tasks import build_task
from segdet.models.memory_format import nnpack_pays

TINY = {
    "task": "segmentation",
    "model": {"name": "unet", "base_channels": 4, "norm": False},
    "data": {
        "synthetic": 8,
        "synthetic_size": 32,
        "size": 32,
        "scale_range": [1.0, 1.0],
        "hflip": 0.0,
        "batch_size": 4,
    },
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine", "warmup_steps": 2},
    # The CPU, also where a GPU is present: exact resume and DDP over gloo are CPU properties (CUDA paths
    # are in test_cuda.py).
    "train": {
        "epochs": 3,
        "seed": 1,
        "deterministic": True,
        "progress": False,
        "log_every": 1,
        "device": "cpu",
    },
}


def write_config(tmp_path: Path, name: str, **changes) -> Path:
    cfg = json.loads(json.dumps(TINY))
    for section, values in changes.items():
        if isinstance(values, dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    cfg["name"], cfg["output_dir"] = name, str(tmp_path / "runs")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def segdet_started(*args: str) -> subprocess.Popen:
    """``segdet *args`` started in the background (one thread, stderr captured): a reference run beside
    the run under test, whose results do not depend on it; the suite's wall time drops by one process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "segdet", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def segdet(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "segdet", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        **kwargs,
    )


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.safetensors")["model"]


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    """Reference: the same config run without interruption. Tolerance: exact (torch.equal)."""
    whole = segdet_started("train", str(write_config(tmp_path, "whole")))
    run_dir = tmp_path / "runs" / "killed"
    cfg = write_config(tmp_path, "killed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "segdet", "train", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (run_dir / "last.safetensors").exists():  # killed at some moment after the first epoch
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(run_dir / "last.safetensors")["epoch"]
    assert 1 <= killed_at <= 3
    resumed = segdet("train", str(cfg), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    finished(whole)
    a, b = final_weights(tmp_path / "runs" / "whole"), final_weights(run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the resumed run's log continues the killed one's: every epoch's validation is there
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["epoch"] for r in records if r["split"] == "val"} >= {3}


def test_ddp_two_processes_equal_one(tmp_path):
    """2 gloo processes x batch 2 == 1 process x batch 4 (same global batches, gradients averaged by
    DDP). Reference: the single-process run; tolerance 1e-5 (summation order differs)."""
    # 5 validation images: the processes' shares (3 and 2) differ, so each image must be scored once
    data = {**TINY["data"], "synthetic_val": 5}
    one = segdet_started("train", str(write_config(tmp_path, "one", train={"epochs": 2}, data=data)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29531",
            "-m",
            "segdet",
            "train",
            str(write_config(tmp_path, "two", train={"epochs": 2}, data=data)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    finished(one)
    a, b = final_weights(tmp_path / "runs" / "one"), final_weights(tmp_path / "runs" / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    # validation metrics were reduced over both processes: the same numbers as one process
    va = json.loads((tmp_path / "runs" / "one" / "summary.json").read_text())["last_metrics"]
    vb = json.loads((tmp_path / "runs" / "two" / "summary.json").read_text())["last_metrics"]
    for key in ("mIoU", "pixel_acc", "fwIoU"):  # weights agree to 1e-5: no prediction flips
        assert va[key] == pytest.approx(vb[key], abs=1e-6), key


DDP_BUFFERS = """
import json, sys
import torch, torch.distributed as dist
from segdet.engine.config import load_config
from segdet.engine.tasks import build_task
from segdet.engine.trainer import Trainer

cfg = load_config(sys.argv[1])
task = build_task(cfg)
seen = []
def evaluate(model, loader, device):  # what the task evaluates with: the model's buffers
    seen.append(torch.cat([b.detach().flatten().double() for b in model.buffers()]))
    return {"mIoU": 0.0}
task.evaluate = evaluate
trainer = Trainer(cfg, task)
if trainer.dist.rank == 1:  # as after a last training step on this process's own batch
    for b in trainer.model.buffers():
        b.add_(1)
saved = torch.cat([b.detach().flatten().double() for b in trainer.model.buffers()])
trainer.evaluate()
parts = [None, None]
dist.all_gather_object(parts, (saved, seen[0]))
if trainer.dist.rank == 0:
    (rank0, _), (_, evaluated1) = parts
    json.dump({"differed": not torch.equal(parts[0][0], parts[1][0]),
               "same": torch.equal(rank0, evaluated1)}, open(sys.argv[2], "w"))
"""


def test_ddp_validation_scores_rank_0s_statistics(tmp_path):
    """With BatchNorm, each DDP process ends an epoch with its own running statistics (DDP copies rank
    0's only at each training forward), and rank 0's are the ones its checkpoint saves: every process
    must evaluate with rank 0's buffers, so the logged metrics (and ``best``) are the saved model's.
    Reference: rank 0's buffers, exactly (rank 1's are made to differ first)."""
    cfg = write_config(tmp_path, "bn", model={**TINY["model"], "norm": True})
    script, result = tmp_path / "buffers.py", tmp_path / "result.json"
    script.write_text(DDP_BUFFERS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
    ]
    run = subprocess.run(
        [*command, str(script), str(cfg), str(result)], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(result.read_text()) == {"differed": True, "same": True}


def test_outputs_of_a_run(tmp_path):
    from segdet.cli.main import main

    cfg = write_config(tmp_path, "out", train={"epochs": 2, "ema_decay": 0.9})
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / "out"
    for name in (
        "config.yaml",
        "last.safetensors",
        "best.safetensors",
        "metrics.jsonl",
        "metrics.csv",
        "summary.json",
        "plots/loss.png",
        "plots/mIoU.png",
    ):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # resolved and saved: a dense model trains channels-last where NNPACK does not train it faster
    # (a U-Net: on AVX2 CPUs it does)
    model = build_task(load_config(cfg)).build_model()
    expected = str(not nnpack_pays(model)).lower()
    assert f"channels_last: {expected}" in (run / "config.yaml").read_text()
    ckpt = load_checkpoint(run / "last.safetensors")
    assert ckpt["ema"] is not None and ckpt["epoch"] == 2
    assert ckpt["classes"][0] == "background"
    # best: the weights (and EMA) with what inference needs, not the optimiser's state (resume: last)
    best = load_checkpoint(run / "best.safetensors")
    assert {"optimizer", "scheduler", "scaler", "rng"}.isdisjoint(best) and {"optimizer", "rng"} <= set(ckpt)
    assert best["ema"] is not None and best["classes"] == ckpt["classes"] and best["config"] == ckpt["config"]


def test_nan_loss_is_reported_not_trained_on(tmp_path, capsys):
    """A learning rate that blows the loss up: the run stops with a one-line error naming the step and
    the batch's image ids, and the last checkpoint still holds finite weights."""
    from segdet.cli.main import main

    cfg = write_config(tmp_path, "nan", optim={"lr": 1e12}, train={"epochs": 3})
    code = main(["train", str(cfg)])
    err = capsys.readouterr().err
    assert code == 1
    assert "loss became" in err and "at step" in err and "images [" in err
    last = tmp_path / "runs" / "nan" / "last.safetensors"
    if last.exists():
        assert all(
            torch.isfinite(v).all() for v in load_checkpoint(last)["model"].values() if v.is_floating_point()
        )

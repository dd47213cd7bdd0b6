"""``train.checkpoint_every``: a run killed (SIGKILL) inside an epoch and resumed with ``--resume`` goes on
at the next batch and ends with the weights of a run that was never interrupted.

Reference: the same config run without interruption. Tolerance: exact (torch.equal), on the CPU: the
sampler's order and every sample's augmentation are functions of (seed, epoch, index), and the
checkpoint holds the position inside the epoch and every RNG state. Two set-ups: a U-Net with random
scale / flip augmentation loaded by 2 worker processes, and a Mask R-CNN at torch's default thread
count, whose RoIAlign splits the RoIs over the threads (segdet.ops.roi_align)."""

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

SEGMENTATION = {
    "task": "segmentation",
    "model": {"name": "unet", "base_channels": 4},
    "data": {
        "synthetic": 16,  # 4 steps per epoch
        "synthetic_size": 32,
        "size": 32,
        "scale_range": [0.75, 1.25],
        "hflip": 0.5,
        "batch_size": 4,
        "workers": 2,
    },
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine", "warmup_steps": 2},
}

DETECTION = {
    "task": "instance",
    "model": {
        "name": "maskrcnn_resnet50_fpn",
        "backbone": "resnet18",
        "fpn_channels": 32,
        "representation_size": 64,
        "mask_channels": 16,
        "min_size": 48,
        "max_size": 48,
        "anchor_sizes": [[6], [12], [24], [48], [96]],
        "rpn_batch_size_per_image": 32,
        "box_batch_size_per_image": 64,  # 128 RoIs a batch: pooled on 2 threads
        "rpn_post_nms_top_n_train": 64,
        "rpn_post_nms_top_n_test": 32,
        "box_detections_per_img": 20,
    },
    "data": {"synthetic": 8, "synthetic_size": 48, "batch_size": 2},  # 4 steps per epoch
    "optim": {"name": "adamw", "lr": 0.0005},
}

TRAIN = {
    "epochs": 1,
    "seed": 3,
    "deterministic": True,
    "progress": False,
    "log_every": 1,
    "device": "cpu",
    "checkpoint_every": 1,
}


def _config(tmp_path: Path, name: str, base: dict) -> Path:
    cfg = {**base, "name": name, "output_dir": str(tmp_path / "runs"), "train": TRAIN}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(cfg: Path, env: dict, *extra: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "segdet", "train", str(cfg), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("base", "threads"), [(SEGMENTATION, "1"), (DETECTION, None)], ids=["unet-workers", "maskrcnn-threads"]
)
def test_killed_inside_an_epoch_resumes_at_the_next_batch(tmp_path, base, threads):
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    # The reference run shares the cores with the run under test: OpenMP threads that sleep instead of
    # spinning while they wait keep two 2-thread processes on 2 cores from stalling each other (26 s ->
    # 20 s here); it changes no result, only how idle threads wait.
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    if threads:
        env["OMP_NUM_THREADS"] = threads
    # The uninterrupted reference runs beside the killed run: the results do not depend on it (each run
    # has its own thread count and workers), and the suite's wall time drops by one process start.
    whole = subprocess.Popen(
        [sys.executable, "-m", "segdet", "train", str(_config(tmp_path, "whole", base))],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    cfg = _config(tmp_path, "killed", base)
    run = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "segdet", "train", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    # The first checkpoint is written after step 1, inside epoch 1: kill the run right then.
    while not (run / "last.safetensors").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = load_checkpoint(run / "last.safetensors")
    assert 1 <= killed["step"] < 4, killed["step"]  # killed before the end (4 steps in all)

    _train(cfg, env, "--resume")
    _, whole_err = whole.communicate(timeout=900)
    assert whole.returncode == 0, whole_err[-3000:]
    a = load_checkpoint(tmp_path / "runs" / "whole" / "last.safetensors")
    b = load_checkpoint(run / "last.safetensors")
    assert (b["epoch"], b["position"], b["step"]) == (1, 0, 4)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # each training step is logged once, although the killed run had logged some beyond its checkpoint
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 5))

"""Faster R-CNN and Mask R-CNN (ours, via ``segdet.models.build``, ResNet-18 FPN, random init) overfit four
synthetic shapes images within a fixed number of steps, measured with our COCO evaluator on the same
images through :class:`segdet.engine.detection.DetectionTask` (the trainer's evaluation path).

Reference: the ground truth itself (``segdet.metrics.coco_eval``, equal to pycocotools' COCOeval).
Bound: box AP50 >= 0.9, and mask AP50 >= 0.9 for Mask R-CNN, after ``STEPS`` AdamW steps. The bound is
the issue's and is not loosened to pass. A model that trains (losses, targets, label shift, box coding,
mask targets) reaches AP50 = 1.0 here; a wrong label offset, box decoding or mask paste keeps it near 0.
"""

from __future__ import annotations

import pytest
import torch
from small_detector import SMALL
from torch.utils.data import DataLoader

from segdet.data import shapes
from segdet.data.collate import collate_detection
from segdet.engine.config import from_dict
from segdet.engine.detection import DetectionTask
from segdet.engine.schedule import build_scheduler
from segdet.engine.trainer import build_optimizer

STEPS = 50


def overfit(tmp_path, task: str, model: str) -> dict[str, float]:
    torch.manual_seed(0)
    images = shapes.generate(tmp_path / "shapes", 4, seed=0, size=64)
    cfg = from_dict(
        {
            "task": task,
            "output_dir": str(tmp_path / "runs"),
            "model": {"name": model, **SMALL},
            "data": {"batch_size": 4, "hflip": 0.0},
            "optim": {"name": "adamw", "lr": 0.001, "weight_decay": 0.0},
            "schedule": {"name": "cosine", "warmup_steps": 10},
        }
    )
    det = DetectionTask(cfg, splits=(images, images))  # evaluated on the images it trains on
    net = det.build_model()
    optimizer = build_optimizer(net, cfg)
    scheduler = build_scheduler(optimizer, STEPS, cfg.schedule)
    train = det.train_dataset()
    batch = det.to_device(collate_detection([train[i] for i in range(len(train))]), torch.device("cpu"))
    net.train()
    for _ in range(STEPS):
        loss, parts = det.loss(net, batch)
        assert torch.isfinite(loss), parts
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    net.eval()
    loader = DataLoader(det.val_dataset(), batch_size=4, collate_fn=det.val_collate)
    with torch.no_grad():
        return det.evaluate(net, loader, torch.device("cpu"))


@pytest.mark.slow
def test_faster_rcnn_overfits_shapes(tmp_path):
    metrics = overfit(tmp_path, "detection", "fasterrcnn_resnet50_fpn")
    assert metrics["AP50"] >= 0.9, metrics


@pytest.mark.slow
def test_mask_rcnn_overfits_shapes(trained_detector, tmp_path):
    """The same set-up, trained once for the session (``tests/engine/conftest.py``: 50 steps on the 4
    images it is evaluated on), evaluated by ``segdet eval`` on the model as trained (no folding)."""
    import json

    from segdet.cli.main import main

    out = tmp_path / "metrics.json"
    argv = ["eval", str(trained_detector), "--device", "cpu", "--no-fuse", "--no-nnpack", "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads(out.read_text())
    assert metrics["AP50"] >= 0.9, metrics
    assert metrics["mask_AP50"] >= 0.9, metrics

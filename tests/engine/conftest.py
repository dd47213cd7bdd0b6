"""Trained checkpoints shared by the engine tests (built once per session, only by the tests that ask)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from small_detector import SMALL
from torch import nn

from segdet.data.collate import collate_detection, collate_segmentation
from segdet.data.dataset import SegDetDataset
from segdet.engine.checkpoint import save_checkpoint
from segdet.engine.config import from_dict, to_dict
from segdet.engine.optimizer import build_optimizer
from segdet.engine.schedule import build_scheduler

# The convergence tests' small Mask R-CNN (small_detector.py).
DETECTOR = {"name": "maskrcnn_resnet50_fpn", **SMALL}
SEGMENTER = {"name": "unet_backbone", "backbone": "resnet18", "decoder_channels": [64, 32, 32, 16, 16]}


def _fit(model: nn.Module, cfg, steps: int, loss_fn) -> None:
    torch.manual_seed(0)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, steps, cfg.schedule)
    model.train()
    for _ in range(steps):
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()


def _save(path: Path, model: nn.Module, cfg, task) -> Path:
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "config": to_dict(cfg),
            "classes": list(task.classes),
            "category_ids": list(getattr(task, "category_ids", None) or []) or None,
            "epoch": 1,
            "task": cfg.task,
        },
    )
    return path


def _config(root: Path, task: str, model: dict, size: int) -> object:
    return from_dict(
        {
            "task": task,
            "name": "trained",
            "output_dir": str(root / "runs"),
            "model": model,
            "data": {"synthetic": 16, "synthetic_size": size},  # 4 validation images
            "optim": {"name": "adamw", "lr": 0.001, "weight_decay": 0.0},
            "schedule": {"name": "cosine", "warmup_steps": 10},
        }
    )


@pytest.fixture(scope="session")
def trained_detector(tmp_path_factory) -> Path:
    """A Mask R-CNN checkpoint trained on the run's 4 validation images (the ones ``segdet eval``
    scores), 50 AdamW steps of the full batch (the convergence test's set-up)."""
    from segdet.data import transforms as T
    from segdet.engine.detection import DetectionTask

    root = tmp_path_factory.mktemp("detector")
    cfg = _config(root, "instance", DETECTOR, 64)
    task = DetectionTask(cfg)
    samples = SegDetDataset(task.val_ann, T.detection_eval(None), masks=True)
    batch = task.to_device(collate_detection([samples[i] for i in range(len(samples))]), torch.device("cpu"))
    model = task.build_model()
    _fit(model, cfg, 50, lambda: task.loss(model, batch)[0])
    return _save(root / "detector.safetensors", model, cfg, task)


@pytest.fixture(scope="session")
def trained_segmenter(tmp_path_factory) -> Path:
    """A U-Net (ResNet-18) checkpoint trained on the run's 4 validation images (whole images, the
    evaluation preset's normalisation), 120 AdamW steps of the full batch."""
    from segdet.engine.segmentation import SegmentationTask

    root = tmp_path_factory.mktemp("segmenter")
    cfg = _config(root, "segmentation", SEGMENTER, 64)
    cfg.optim.lr = 0.002
    task = SegmentationTask(cfg)
    images, labels = collate_segmentation([task.val_dataset()[i] for i in range(len(task.val_ann.images))])
    model = task.build_model()
    _fit(model, cfg, 120, lambda: task.criterion(model(images), labels))
    return _save(root / "segmenter.safetensors", model, cfg, task)

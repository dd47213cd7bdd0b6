"""The task table (:mod:`segdet.engine.tasks`): every configurable task has a row, the commands get
their task from it, and a detector's training data go through the one detection preset
(:func:`segdet.data.transforms.detection_train`)."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch

from segdet.engine.config import Config, from_dict
from segdet.engine.detection import DetectionTask
from segdet.engine.segmentation import SegmentationTask
from segdet.engine.tasks import TASKS, build_task, evaluation_task, task_class
from segdet.errors import ConfigError


def _cfg(tmp_path, task: str, **data) -> Config:
    model = "unet" if task == "segmentation" else "fasterrcnn_resnet50_fpn"
    return from_dict(
        {
            "task": task,
            "output_dir": str(tmp_path),
            "model": {"name": model},
            "data": {"synthetic": 4, "synthetic_size": 48, **data},
        }
    )


def test_every_configurable_task_has_a_row():
    """The config's ``task`` values are exactly the table's keys."""
    allowed = typing.get_args(typing.get_type_hints(Config)["task"])
    assert set(allowed) == set(TASKS)
    with pytest.raises(ConfigError, match="unknown task 'panoptic'; known: segmentation, detection"):
        task_class("panoptic")


@pytest.mark.parametrize(
    ("task", "cls"),
    [("segmentation", SegmentationTask), ("detection", DetectionTask), ("instance", DetectionTask)],
)
def test_build_task(tmp_path, task, cls):
    built = build_task(_cfg(tmp_path, task))
    assert type(built) is cls and len(built.train_ann.images) == 4
    assert getattr(built, "masks", task == "instance") == (task == "instance")


def test_evaluation_task_uses_the_validation_split_and_checks_a_detectors_classes(tmp_path):
    cfg = _cfg(tmp_path, "detection")
    task = evaluation_task(cfg, ["circle", "rectangle", "triangle", "ellipse"], data_given=False)
    assert task.train_ann is task.val_ann and len(task.val_ann.images) == 4  # the synthetic val set
    with pytest.raises(ConfigError, match="are not the checkpoint's"):
        evaluation_task(cfg, ["person"], data_given=False)


def test_detection_training_samples_only_flip(tmp_path):
    """``segdet train``'s detection pipeline keeps the image's size (the model resizes) and, with
    ``data.hflip: 1``, mirrors image and boxes exactly (``x -> W - x``)."""
    task = build_task(_cfg(tmp_path, "instance", hflip=1.0))
    train = task.train_dataset()
    image, target = train[0]
    record = task.train_ann.images[0]
    assert image.dtype == torch.float32 and tuple(image.shape[-2:]) == (record.height, record.width)
    boxes = torch.tensor([inst.box for inst in record.instances], dtype=torch.float32)
    mirrored = torch.stack([48 - boxes[:, 2], boxes[:, 1], 48 - boxes[:, 0], boxes[:, 3]], dim=1)
    assert torch.allclose(target["boxes"].as_subclass(torch.Tensor), mirrored)
    assert target["masks"].shape[0] == len(record.instances)


class _HalfExtraClass(torch.nn.Module):
    """Predicts class 0 on the left half and the model's last class (one the set never scores) on the
    right half."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], self.num_classes, *x.shape[-2:])
        half = x.shape[-1] // 2
        logits[:, 0, :, :half] = 1
        logits[:, -1, :, half:] = 1
        return logits


def test_segmentation_means_average_over_the_sets_classes_only(tmp_path):
    """A model with an output the set never scores (here one class past the set's list, as a model
    trained with an ``Unlabelled`` class has): its pixels are errors of the true class, but its own
    IoU (0) is no class of the set, so mIoU / mDice are the means of the per-class scores reported,
    as mmsegmentation averages over the dataset's classes only."""
    from torch.utils.data import DataLoader

    cfg = _cfg(tmp_path, "segmentation")
    task = SegmentationTask(cfg)
    task.num_classes = len(task.classes) + 1
    loader = DataLoader(task.val_dataset(), batch_size=2, collate_fn=task.val_collate)
    out = task.evaluate(_HalfExtraClass(task.num_classes), loader, torch.device("cpu"))
    per_class = [out[f"IoU/{name}"] for name in task.classes]
    expected = float(np.nanmean(per_class))
    assert out["mIoU"] == pytest.approx(expected, abs=1e-12)
    assert 0 < out["mIoU"] < 1 and out["pixel_acc"] < 1

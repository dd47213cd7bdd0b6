"""The one place that knows the tasks: ``cfg.task`` -> the class that plugs it into training,
evaluation and prediction.

* ``segmentation``: :class:`~segdet.engine.segmentation.SegmentationTask`; per image a label map
  (``H x W`` class indices);
* ``detection``: :class:`~segdet.engine.detection.DetectionTask`; boxes, labels and scores;
* ``instance``: :class:`~segdet.engine.detection.DetectionTask`; boxes, labels, scores and masks.

A task class holds what differs between tasks (its data pipeline, loss, evaluation, and
``infer``: one image in, one prediction out); ``segdet train``, ``eval``, ``predict`` and ``demo`` ask
this table for it instead of each testing the task's name. A new task is one row here and one class.
"""

from __future__ import annotations

from segdet.engine.config import Config
from segdet.engine.detection import DetectionTask
from segdet.engine.segmentation import SegmentationTask, same_semantic_classes
from segdet.errors import ConfigError

#: ``cfg.task`` -> its task class.
TASKS: dict[str, type[SegmentationTask] | type[DetectionTask]] = {
    "segmentation": SegmentationTask,
    "detection": DetectionTask,
    "instance": DetectionTask,
}


def task_class(name: str) -> type[SegmentationTask] | type[DetectionTask]:
    """The class of the task called ``name`` (a :class:`ConfigError` naming the known ones otherwise)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"task: unknown task {name!r}; known: {', '.join(TASKS)}") from None


def build_task(cfg: Config, *, splits=None) -> SegmentationTask | DetectionTask:
    """The task of ``cfg`` on its data (``splits``: ``(train, val)`` annotation sets instead)."""
    return task_class(cfg.task)(cfg, splits=splits)


def evaluation_task(cfg: Config, classes: list[str], *, data_given: bool) -> SegmentationTask | DetectionTask:
    """The task that evaluates a trained model of ``classes`` on the run's validation split (its
    held-out or synthetic images) or, with ``data_given``, on the set ``cfg.data.val`` names. The evaluation
    set must have the checkpoint's classes (a label index means the same class in both): a detector's the
    same list, a segmentation model's the same semantic classes up to the ignore class
    (:func:`~segdet.engine.segmentation.same_semantic_classes`)."""
    from segdet.engine.data_splits import load_split, train_val_splits

    # not reported by the readers: segdet eval refuses a set that lost records, naming the first
    val = load_split(cfg, "val", report=False) if data_given else train_val_splits(cfg, report=False)[1]
    if val is None:
        raise ConfigError("no evaluation data: the run had no validation split; give --data PATH")
    cls = task_class(cfg.task)
    if cls is DetectionTask and list(val.classes) != list(classes):
        raise ConfigError(
            f"{val.source}: the evaluation set's classes {val.classes} are not the checkpoint's {classes}"
        )
    if cls is SegmentationTask and not same_semantic_classes(classes, val.semantic_classes, val.ignore_index):
        raise ConfigError(
            f"{val.source}: the evaluation set's classes {val.semantic_classes} are not the checkpoint's "
            f"{classes} (label value {val.ignore_index} ignored)"
        )
    # The set also stands in as the training split: a task learns its class list from there.
    return cls(cfg, splits=(val, val))

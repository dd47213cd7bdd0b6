"""Drawing a dataset's annotations on its images (``segdet data show`` and the demo)."""

from __future__ import annotations

from pathlib import Path

import torch

from segdet.data.dataset import SegDetDataset
from segdet.data.structures import AnnotationSet
from segdet.ops.draw import draw_detections, overlay_semantic, save_png


def draw_record(dataset: AnnotationSet, index: int, out: Path) -> Path:
    """Draw one image's semantic mask (if any), instance masks and boxes with class names into ``out``."""
    record = dataset.images[index]
    has_masks = any(o.mask is not None for o in record.instances)
    view = SegDetDataset(
        dataset, masks=has_masks, semantic=record.semantic is not None, include_crowd=True, strict=True
    )
    image, target = view.load(index)
    canvas = (image * 255).round().to(torch.uint8)
    if record.semantic is not None:
        canvas = overlay_semantic(
            canvas, target["semantic"], len(dataset.semantic_classes), dataset.ignore_index, alpha=0.5
        )
    if len(target["labels"]):
        canvas = draw_detections(
            canvas,
            target["boxes"],
            labels=target["labels"],
            masks=target["masks"].bool() if has_masks else None,
            class_names=dataset.classes,
        )
    save_png(canvas, out)
    return out

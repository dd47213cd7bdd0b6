"""Summary statistics of a dataset: what ``segdet data stats`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from segdet.data.masks import read_label_png
from segdet.data.structures import AnnotationSet

# COCO's size classes (Lin et al. 2014): small < 32², medium < 96², large otherwise, by object area.
SMALL_AREA = 32**2
MEDIUM_AREA = 96**2


@dataclass
class DatasetStats:
    images: int
    objects: int
    crowd: int
    difficult: int
    images_without_objects: int
    objects_per_class: dict[str, int]
    sizes: dict[str, int]  # "small" / "medium" / "large" counts
    pixels_per_class: dict[str, int] = field(default_factory=dict)  # semantic masks, when present
    ignored_pixels: int = 0

    def lines(self) -> list[str]:
        out = [
            f"images: {self.images} ({self.images_without_objects} without objects)",
            f"objects: {self.objects} ({self.crowd} crowd, {self.difficult} difficult)",
            "object sizes (COCO areas): " + ", ".join(f"{k} {v}" for k, v in self.sizes.items()),
        ]
        if self.objects:
            out.append("objects per class:")
            width = max(len(c) for c in self.objects_per_class)
            out += [f"  {c:<{width}}  {n}" for c, n in self.objects_per_class.items()]
        if self.pixels_per_class:
            total = sum(self.pixels_per_class.values()) + self.ignored_pixels
            out.append("pixels per class (semantic masks):")
            width = max(len(c) for c in self.pixels_per_class)
            for c, n in self.pixels_per_class.items():
                out.append(f"  {c:<{width}}  {n:>12}  {100 * n / max(total, 1):6.2f}%")
            out.append(
                f"  {'(ignore)':<{width}}  {self.ignored_pixels:>12}  "
                f"{100 * self.ignored_pixels / max(total, 1):6.2f}%"
            )
        return out


def dataset_stats(dataset: AnnotationSet, *, semantic: bool = True) -> DatasetStats:
    """Count images, objects per class, COCO size classes and (optionally) semantic pixels per class.

    An object's area is the source's own (COCO's ``area``) when known, else its box area.
    """
    counts = np.zeros(len(dataset.classes), dtype=np.int64)
    sizes = {"small": 0, "medium": 0, "large": 0}
    crowd = difficult = empty = 0
    for im in dataset.images:
        if not im.instances:
            empty += 1
        for o in im.instances:
            counts[o.label] += 1
            crowd += o.iscrowd
            difficult += o.difficult
            x1, y1, x2, y2 = o.box
            area = o.area if o.area is not None else (x2 - x1) * (y2 - y1)
            sizes["small" if area < SMALL_AREA else "medium" if area < MEDIUM_AREA else "large"] += 1
    stats = DatasetStats(
        images=len(dataset.images),
        objects=int(counts.sum()),
        crowd=crowd,
        difficult=difficult,
        images_without_objects=empty,
        objects_per_class={c: int(n) for c, n in zip(dataset.classes, counts, strict=True)},
        sizes=sizes,
    )
    if semantic and any(im.semantic is not None for im in dataset.images):
        n = len(dataset.semantic_classes)
        pixels = np.zeros(n, dtype=np.int64)
        for im in dataset.images:
            if im.semantic is None:
                continue
            sem = im.semantic if isinstance(im.semantic, np.ndarray) else read_label_png(im.semantic)
            values = sem[(sem >= 0) & (sem < n)]
            pixels += np.bincount(values.ravel(), minlength=n)[:n]
            stats.ignored_pixels += int((sem == dataset.ignore_index).sum())
        stats.pixels_per_class = {c: int(p) for c, p in zip(dataset.semantic_classes, pixels, strict=True)}
    return stats

"""One in-memory form for every dataset format.

A dataset is an :class:`AnnotationSet`: the class list and, per image, an :class:`ImageRecord` with its
objects (:class:`Instance`) and an optional semantic mask. Readers of every format produce it, writers of
every format consume it, the checker and the torch ``Dataset`` wrapper work on it.

Coordinate convention (the COCO / torchvision one): boxes are ``(x1, y1, x2, y2)`` in absolute,
continuous pixel coordinates, where pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``. A mask whose
leftmost pixel column is 10 and rightmost is 19 therefore has ``x1 = 10, x2 = 20``. Formats with
1-based inclusive pixel indices (Pascal VOC, Penn-Fudan) are converted on reading
(``x1 = xmin - 1, x2 = xmax``) and back on writing.

Labels are contiguous: ``label`` indexes ``AnnotationSet.classes`` (0..K-1). The source format's own id
(e.g. COCO's ``category_id``) is kept in ``AnnotationSet.category_ids[label]`` so results can be written
back in the original id space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class InstancePNG:
    """A lazy reference to one object in an instance-id PNG (Penn-Fudan ``PedMasks``, VOC
    ``SegmentationObject``): the object's pixels are those equal to ``value``."""

    path: Path
    value: int


# An instance mask in any of the forms formats store it in:
#   list[list[float]]  COCO polygons, each a flat [x0, y0, x1, y1, ...] in absolute pixels
#   dict               COCO RLE, {"size": [h, w], "counts": str | list[int]}
#   np.ndarray         H x W bitmap (bool or 0/1)
#   InstancePNG        pixels of one value in a PNG, decoded on demand
Mask = list | dict | np.ndarray | InstancePNG


@dataclass
class Instance:
    """One object: a box, a class and optionally a mask."""

    box: Box
    label: int
    mask: Mask | None = None
    iscrowd: bool = False
    difficult: bool = False
    id: int | None = None
    score: float | None = None  # set for predictions, None for ground truth
    area: float | None = None  # the source's own area (COCO's polygon area); None: computed when needed


@dataclass
class ImageRecord:
    """One image: where it is, its size, its objects and its optional semantic mask.

    ``file_name`` is the image's name relative to the dataset's image folder (what annotation files
    store); ``path`` is where it is on disk. ``semantic`` is a label PNG path or an H x W integer array
    whose values index ``AnnotationSet.semantic_classes`` (``ignore_index`` excluded).
    """

    id: int
    path: Path
    width: int
    height: int
    instances: list[Instance] = field(default_factory=list)
    semantic: Path | np.ndarray | None = None
    file_name: str = ""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.file_name:
            self.file_name = self.path.name


Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, located by file and record.

    Errors make a record unusable (it is dropped, or refused when loading is strict); warnings are
    repaired on loading (e.g. a box clipped to the image) and reported.
    """

    severity: Severity
    file: str
    record: str
    message: str

    def __str__(self) -> str:
        where = ": ".join(p for p in (self.file, self.record) if p)
        return f"{self.severity}: {where}: {self.message}" if where else f"{self.severity}: {self.message}"


@dataclass
class AnnotationSet:
    """A whole dataset in memory: its images, their annotations and the class list.

    ``classes[label]`` names object class ``label``; ``category_ids[label]`` is that class's id in the
    source format (COCO's category id; ``label + 1`` by default, as COCO writers expect ids >= 1).
    ``semantic_classes[v]`` names value ``v`` of the semantic masks; by default it is
    ``["background", *classes]`` (value ``label + 1`` is class ``label``), the VOC convention.
    ``problems`` holds what the reader found wrong (records with errors are not in ``images``).
    """

    images: list[ImageRecord]
    classes: list[str]
    category_ids: list[int] | None = None
    semantic_classes: list[str] | None = None
    ignore_index: int = 255
    problems: list[Problem] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        if self.category_ids is None:
            self.category_ids = list(range(1, len(self.classes) + 1))
        if len(self.category_ids) != len(self.classes):
            raise ValueError("category_ids must have one id per class")
        if self.semantic_classes is None:
            self.semantic_classes = ["background", *self.classes]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def num_instances(self) -> int:
        return sum(len(im.instances) for im in self.images)

    def label_of_category(self) -> dict[int, int]:
        """Maps a source category id to its contiguous label."""
        return {cid: i for i, cid in enumerate(self.category_ids)}

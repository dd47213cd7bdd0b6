"""Proposals of a whole annotated dataset, computed once (or read from the cache) with a progress bar,
and their recall against the dataset's objects (what ``segdet proposals`` reports).

Images are decoded exactly as the training and evaluation pipelines decode them
(:func:`segdet.data.io.load_image`), so an entry written here is the one a detector looks up for the
same image (:mod:`.source`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from segdet.data.io import load_image
from segdet.data.structures import AnnotationSet
from segdet.errors import DataError
from segdet.models.detection.proposals.recall import proposal_recall
from segdet.models.detection.proposals.source import SelectiveSearchProposals, keep_proposals

DEFAULT_COUNTS = (10, 50, 100, 300, 1000, 2000)


@dataclass
class DatasetProposals:
    """Per readable image its boxes (all of them, best first) and its objects (crowd left out), the
    seconds its search took (when it was computed) and whether it came from the cache; the unreadable
    images as ``(path, problem)``."""

    boxes: list[np.ndarray] = field(default_factory=list)
    objects: list[np.ndarray] = field(default_factory=list)
    search_seconds: list[float] = field(default_factory=list)
    cached: list[bool] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    wall_seconds: float = 0.0


def dataset_proposals(
    annotations: AnnotationSet,
    source: SelectiveSearchProposals,
    *,
    limit: int | None = None,
    progress: bool = True,
) -> DatasetProposals:
    """Look up (or compute and cache) the proposals of the first ``limit`` images (all: ``None``)."""
    from segdet.engine.logs import Progress

    records = annotations.images[:limit] if limit is not None else annotations.images
    bar = Progress(len(records), f"selective search ({source.settings.mode})", enabled=progress, every=1)
    out = DatasetProposals()
    start = time.perf_counter()
    for i, record in enumerate(records, 1):
        try:
            pixels = load_image(record.path).permute(1, 2, 0).numpy()
        except DataError as e:
            out.failed.append((str(record.path), str(e)))
            continue
        entry, hit = source.lookup(pixels)
        out.boxes.append(keep_proposals(entry.boxes, len(entry.boxes), source.min_size))
        out.objects.append(
            np.asarray([inst.box for inst in record.instances if not inst.iscrowd], dtype=np.float64).reshape(
                -1, 4
            )
        )
        out.search_seconds.append(entry.seconds)
        out.cached.append(hit)
        bar.update(i, boxes=len(entry.boxes))
    bar.close()
    out.wall_seconds = time.perf_counter() - start
    return out


def recall_table(found: DatasetProposals, counts: Sequence[int] = DEFAULT_COUNTS) -> dict:
    """Recall at IoU 0.5 / 0.7 and AR for the top ``N`` of ``counts``, the number of boxes per image and
    the seconds per image (see :func:`~.recall.proposal_recall`)."""
    recall = proposal_recall(found.objects, found.boxes, counts)
    n = max(len(found.boxes), 1)
    return {
        "images": len(found.boxes),
        "objects": int(sum(len(o) for o in found.objects)),
        "unreadable": len(found.failed),
        "counts": list(counts),
        **recall,
        "mean_boxes_per_image": float(np.mean([len(b) for b in found.boxes])) if found.boxes else 0.0,
        "search_seconds_per_image": float(np.sum(found.search_seconds) / n),
        "wall_seconds_per_image": found.wall_seconds / n,
        "computed": int(sum(not c for c in found.cached)),
    }

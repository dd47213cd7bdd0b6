"""Record-level checks shared by every reader, so a bad box reads the same whatever its format.

A reader collects :class:`~segdet.data.structures.Problem` s in a :class:`ProblemLog` while it parses;
records with errors are left out, records with warnings are repaired (boxes clipped to the image).
At the end :meth:`ProblemLog.finish` either attaches the problems to the dataset or, when loading is
strict, refuses it with one :class:`~segdet.errors.DataError` naming the first error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from segdet.data.structures import AnnotationSet, Box, Problem
from segdet.errors import DataError

logger = logging.getLogger("segdet.data")

# A box may stick out of the image by this many pixels (rounding in annotation tools) before we warn.
OUTSIDE_TOLERANCE = 1.0


class ProblemLog:
    """Collects problems while a dataset is read."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def error(self, file: object, record: str, message: str) -> None:
        self.problems.append(Problem("error", str(file), record, message))

    def warning(self, file: object, record: str, message: str) -> None:
        self.problems.append(Problem("warning", str(file), record, message))

    def finish(self, dataset: AnnotationSet, strict: bool) -> AnnotationSet:
        """Attach the problems to ``dataset``; with ``strict`` raise on the first error.

        Problems are logged once here (a summary line per problem at WARNING level), so that loading a
        dataset for training reports every skipped record exactly once.
        """
        dataset.problems.extend(self.problems)
        errors = [p for p in self.problems if p.severity == "error"]
        if strict and errors:
            first = errors[0]
            more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
            raise DataError(first.message + more, first.file, first.record)
        for p in self.problems:
            logger.warning("%s", p)
        return dataset


def check_box(
    box: Sequence[float], width: int | None, height: int | None, log: ProblemLog, file: object, record: str
) -> Box | None:
    """Validate an ``xyxy`` box against its image size.

    Returns the box (clipped to the image when it sticks out, with a warning), or ``None`` after
    logging an error when it is unusable: non-finite coordinates, non-positive width or height, or
    nothing left inside the image.
    """
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        log.error(file, record, f"box {list(box)!r} is not four numbers")
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        log.error(file, record, f"box has non-finite coordinates {[x1, y1, x2, y2]}")
        return None
    if x2 <= x1 or y2 <= y1:
        log.error(file, record, f"box {_fmt((x1, y1, x2, y2))} has non-positive width or height")
        return None
    if width is None or height is None:
        return (x1, y1, x2, y2)
    t = OUTSIDE_TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        cx1, cy1 = max(x1, 0.0), max(y1, 0.0)
        cx2, cy2 = min(x2, float(width)), min(y2, float(height))
        if cx2 <= cx1 or cy2 <= cy1:
            log.error(file, record, f"box {_fmt((x1, y1, x2, y2))} lies outside the {width}x{height} image")
            return None
        log.warning(
            file, record, f"box {_fmt((x1, y1, x2, y2))} extends outside the {width}x{height} image; clipped"
        )
        return (cx1, cy1, cx2, cy2)
    return (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))


def check_label(label: object, num_classes: int, log: ProblemLog, file: object, record: str) -> int | None:
    """Validate a contiguous class label (an int in ``[0, num_classes)``)."""
    if isinstance(label, bool) or not isinstance(label, int):
        log.error(file, record, f"class {label!r} is not an integer")
        return None
    if not 0 <= label < num_classes:
        log.error(file, record, f"class {label} is outside the class list (0..{num_classes - 1})")
        return None
    return label


def check_unique_id(value: object, seen: set, log: ProblemLog, file: object, record: str, what: str) -> bool:
    """Report a duplicate id; returns True when ``value`` is new."""
    if value in seen:
        log.error(file, record, f"duplicate {what} id {value!r}")
        return False
    seen.add(value)
    return True


def _fmt(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"

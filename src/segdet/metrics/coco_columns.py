"""Columns of COCO JSON records as validated numpy arrays, for :mod:`segdet.metrics.coco_data`.

Fast path: a column is pulled out with a list comprehension and converted with numpy in one go; only when
that fails is it walked record by record, to name the first bad record (``what[i]``) in the
:class:`DataError`. ``file`` is the JSON file's name (None for in-memory input), ``what`` the list's name
("images", "annotations", "results", ...) and ``key`` the field's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from segdet.errors import DataError


def column(records: list, key: str, file: str | None, what: str) -> list:
    """``[r[key] for r in records]``, or a DataError naming the first record without ``key``."""
    try:
        return [r[key] for r in records]
    except (KeyError, TypeError, IndexError):
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise DataError(f"expected an object, got {type(r).__name__}", file, f"{what}[{i}]") from None
            if key not in r:
                raise DataError(f"missing key {key!r}", file, f"{what}[{i}]") from None
        raise


def _bad_number(v: object) -> bool:
    """Whether ``v`` is not a finite number (:func:`_numeric_types`)."""
    return not _numeric_types({type(v)}) or not np.isfinite(v)


def _numeric_types(types: set) -> bool:
    """Python/numpy ints and floats, not bools (nor strings, which numpy would silently parse)."""
    return all(t is not bool and issubclass(t, (int, float, np.integer, np.floating)) for t in types)


def int_array(values: list, file: str | None, what: str, key: str) -> np.ndarray:
    """(N,) int64 from a list of integers; DataError naming the first non-integer (bools included)."""
    try:
        arr = np.asarray(values) if values else np.zeros(0, np.int64)
        ok = arr.ndim == 1 and arr.dtype.kind in "iu"
    except (ValueError, TypeError, OverflowError):  # ragged lists such as [1, [1]]
        ok = False
    if not ok:
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise DataError(f"{key} must be an integer, got {v!r}", file, f"{what}[{i}]")
        raise DataError(f"{key} values out of the int64 range", file, what)
    return arr.astype(np.int64, copy=False)


def float_array(values: list, file: str | None, what: str, key: str) -> np.ndarray:
    """(N,) float64 from a list of numbers; DataError naming the first that is not a finite number."""
    ok = _numeric_types(set(map(type, values)))
    if ok:
        arr = np.fromiter(values, dtype=np.float64, count=len(values))
        ok = bool(np.isfinite(arr).all())
    if not ok:
        for i, v in enumerate(values):
            if _bad_number(v):
                raise DataError(f"{key} must be a finite number, got {v!r}", file, f"{what}[{i}]")
    return arr


def box_array(boxes: list, file: str | None, what: str) -> np.ndarray:
    """(N, 4) float64 from a list of ``[x, y, w, h]`` lists; DataError on the first malformed box."""
    n = len(boxes)
    try:
        lengths = np.fromiter(map(len, boxes), dtype=np.int64, count=n)
        ok = bool((lengths == 4).all()) and _numeric_types(
            set(map(type, itertools.chain.from_iterable(boxes)))
        )
        if ok:
            flat = np.fromiter(itertools.chain.from_iterable(boxes), dtype=np.float64, count=4 * n)
            ok = bool(np.isfinite(flat).all())
    except (TypeError, ValueError):
        ok = False
    if not ok:
        for i, b in enumerate(boxes):
            if not isinstance(b, (list, tuple)) or len(b) != 4 or any(_bad_number(v) for v in b):
                raise DataError(
                    f"bbox must be 4 finite numbers [x, y, w, h], got {b!r}", file, f"{what}[{i}]"
                )
    flat = flat.reshape(n, 4)
    negative = np.flatnonzero((flat[:, 2] < 0) | (flat[:, 3] < 0))
    if len(negative):  # pycocotools would take it, with a negative area, and match it to nothing
        i = int(negative[0])
        raise DataError(f"bbox {boxes[i]!r} has a negative width or height", file, f"{what}[{i}]")
    return flat


def index_of(
    ids: np.ndarray,
    table: np.ndarray,
    file: str | None,
    what: str,
    key: str,
    hint: Callable[[int], str] | None = None,
) -> np.ndarray:
    """Positions of ``ids`` in the sorted ``table``; DataError naming the first id not in it (with
    ``hint(i)`` appended, if given, for record ``i``)."""
    pos = np.searchsorted(table, ids)
    pos_c = np.minimum(pos, max(len(table) - 1, 0))
    bad = (pos >= len(table)) | (table[pos_c] != ids) if len(table) else np.ones(len(ids), bool)
    if bad.any():
        i = int(np.argmax(bad))
        target = "an image" if key == "image_id" else "a category"
        extra = hint(i) if hint else ""
        raise DataError(
            f"{key} {int(ids[i])} is not {target} of the ground truth{extra}", file, f"{what}[{i}]"
        )
    return pos


def unique_sorted(ids: np.ndarray, file: str | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Sort order of ``ids``; DataError on a duplicate."""
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    dup = np.flatnonzero(s[1:] == s[:-1])
    if len(dup):
        i = int(order[dup[0] + 1])
        raise DataError(f"duplicate id {int(ids[i])}", file, f"{what}[{i}]")
    return s, order


def record_list(data: object, key: str, file: str | None) -> list:
    """The list ``data[key]`` of a top-level JSON object; DataError if it is missing or not a list."""
    if key not in data:
        raise DataError(f"missing top-level key {key!r}", file)
    if not isinstance(data[key], list):
        raise DataError(f"{key!r} must be a list", file)
    return data[key]


def index_column(
    records: list,
    key: str,
    table: np.ndarray,
    file: str | None,
    what: str,
    hint: Callable[[int], str] | None = None,
) -> np.ndarray:
    """(N,) positions in the sorted id ``table`` of the integer ids ``records[i][key]``; DataError naming
    the first record without the key, with a non-integer id or with an id not in ``table``."""
    ids = int_array(column(records, key, file, what), file, what, key)
    return index_of(ids, table, file, what, key, hint)


#: How to get detections whose image ids are the ground truth's (``segdet predict`` numbers images 0, 1, ...
#: in its read order unless it is given the ground truth).
PREDICT_HINT = "predict with --coco-gt GT.json numbers images as the ground truth does"


def base_name(name: str) -> str:
    """The last component of a file name written with ``/`` or ``\\`` separators."""
    return name.replace("\\", "/").rsplit("/", 1)[-1]


def check_file_names(
    records: list,
    image_pos: Sequence[int],
    gt_names: Sequence[str | None],
    file: str | None,
    what: str,
) -> None:
    """Where a detection record carries a string ``file_name`` and the ground truth has a file name for its
    image (``gt_names[image_pos[i]]``), the two must name the same file: equal base names (``segdet
    predict`` writes the image's base name; the ground truth may store it under a folder). DataError
    naming the first record that disagrees. A check only: pycocotools ignores ``file_name``."""
    gt_base = [base_name(n) if isinstance(n, str) else None for n in gt_names]  # once per image
    for i, r in enumerate(records):
        name = r.get("file_name")
        if not isinstance(name, str):
            continue
        expected = gt_names[image_pos[i]]
        if gt_base[image_pos[i]] is not None and base_name(name) != gt_base[image_pos[i]]:
            raise DataError(
                f"file_name {name!r} is not the ground truth's {expected!r} for image_id "
                f"{r['image_id']!r} ({PREDICT_HINT})",
                file,
                f"{what}[{i}]",
            )


def file_name_hint(records: list, ids_by_name: Mapping[str, object]) -> Callable[[int], str]:
    """``hint(i)`` for :func:`index_of`: when record ``i``'s image_id is unknown but its ``file_name``
    (base name) is a ground-truth image's, say which and how to get matching ids."""

    def hint(i: int) -> str:
        name = records[i].get("file_name") if isinstance(records[i], dict) else None
        if isinstance(name, str) and base_name(name) in ids_by_name:
            return (
                f"; its file_name {name!r} is ground-truth image {ids_by_name[base_name(name)]!r} "
                f"({PREDICT_HINT})"
            )
        return ""

    return hint


def ids_by_base_name(ids: Sequence[object], names: Sequence[str | None]) -> dict[str, object]:
    """``{base name: id}`` of the ground-truth images that have a file name (the first id per name)."""
    out: dict[str, object] = {}
    for image_id, name in zip(ids, names, strict=True):
        if isinstance(name, str):
            out.setdefault(base_name(name), image_id)
    return out

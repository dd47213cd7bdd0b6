"""File-level checks of a dataset, after its reader has checked the records.

The reader reports what is wrong inside annotation files (malformed lines, impossible boxes, unknown
classes, duplicate ids); :func:`check_files` adds what needs the files themselves: images that are
missing, unreadable, above the pixel limit (:func:`segdet.data.io.max_image_pixels`) or of another size
than annotated, and label / instance-mask images whose size or values do not fit; images in a mode that
loading converts (16-bit or float grey, CMYK: :data:`segdet.data.io.MODE_NOTES`) and images with an EXIF
orientation tag, which segdet does not apply (:mod:`segdet.data.io`), are warnings. It never stops at the
first problem.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segdet.data.io import EXIF_ORIENTATIONS, MODE_NOTES, exif_orientation, open_image
from segdet.data.masks import read_label_png
from segdet.data.structures import AnnotationSet, ImageRecord, InstancePNG, Problem
from segdet.errors import DataError


def check_dataset(dataset: AnnotationSet, *, decode: bool = True, workers: int = 2) -> list[Problem]:
    """Every problem of ``dataset``: the reader's, then those found in its files.

    Args:
        decode: decode every image completely (finds truncated files); otherwise read headers only.
        workers: threads decoding files (Pillow and zlib release the GIL while decoding).
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = pool.map(lambda r: _check_image(r, dataset, decode), dataset.images)
        file_problems = [p for problems in found for p in problems]
    return [*dataset.problems, *file_problems, *_duplicate_files(dataset)]


def _check_image(record: ImageRecord, dataset: AnnotationSet, decode: bool) -> list[Problem]:
    problems: list[Problem] = []
    where = f"image id={record.id}"
    try:
        with open_image(record.path) as im:
            (w, h), mode = im.size, im.mode
            if decode:
                im.load()
            orientation = exif_orientation(im)
    except DataError as e:
        return [Problem("error", str(record.path), where, e.problem)]
    if mode in MODE_NOTES:
        problems.append(Problem("warning", str(record.path), where, MODE_NOTES[mode]))
    if (w, h) != (record.width, record.height):
        problem = f"image is {w}x{h} but its annotation says {record.width}x{record.height}"
        if orientation >= 5 and (h, w) == (record.width, record.height):
            problem += (
                f": its EXIF orientation {orientation} ({EXIF_ORIENTATIONS[orientation]}) shows it as "
                f"{h}x{w}, the size annotated, and segdet uses the pixels as stored; re-save the image "
                "upright (PIL.ImageOps.exif_transpose)"
            )
        problems.append(Problem("error", str(record.path), where, problem))
        return problems
    if orientation != 1:
        problems.append(
            Problem(
                "warning",
                str(record.path),
                where,
                f"EXIF orientation {orientation} ({EXIF_ORIENTATIONS[orientation]} to view) is not applied: "
                "segdet uses the pixels as stored, as pycocotools and torchvision do; annotations drawn on "
                "the upright view will not fit (then re-save the image upright: PIL.ImageOps.exif_transpose)",
            )
        )
    problems += _check_semantic(record, dataset)
    problems += _check_instance_pngs(record)
    return problems


def _check_semantic(record: ImageRecord, dataset: AnnotationSet) -> list[Problem]:
    if record.semantic is None:
        return []
    file = str(record.semantic) if isinstance(record.semantic, Path) else str(record.path)
    where = f"image id={record.id} label mask"
    try:
        sem = record.semantic if isinstance(record.semantic, np.ndarray) else read_label_png(record.semantic)
    except DataError as e:
        return [Problem("error", file, where, e.problem)]
    if sem.shape != (record.height, record.width):
        return [
            Problem(
                "error",
                file,
                where,
                f"label mask is {sem.shape[1]}x{sem.shape[0]}, image is {record.width}x{record.height}",
            )
        ]
    n = len(dataset.semantic_classes)
    values = np.unique(sem)
    bad = values[((values < 0) | (values >= n)) & (values != dataset.ignore_index)]
    if len(bad):
        shown = ", ".join(str(v) for v in bad[:8])
        return [
            Problem(
                "error",
                file,
                where,
                f"label values {shown} are outside the {n} classes (ignore value {dataset.ignore_index})",
            )
        ]
    return []


def _check_instance_pngs(record: ImageRecord) -> list[Problem]:
    by_file: dict[Path, list[int]] = defaultdict(list)
    for inst in record.instances:
        if isinstance(inst.mask, InstancePNG):
            by_file[inst.mask.path].append(inst.mask.value)
    problems = []
    for path, wanted in by_file.items():
        where = f"image id={record.id} instance mask"
        try:
            ids = read_label_png(path)
        except DataError as e:
            problems.append(Problem("error", str(path), where, e.problem))
            continue
        if ids.shape != (record.height, record.width):
            problems.append(
                Problem(
                    "error",
                    str(path),
                    where,
                    f"mask is {ids.shape[1]}x{ids.shape[0]}, image is {record.width}x{record.height}",
                )
            )
            continue
        missing = sorted(set(wanted) - set(np.unique(ids).tolist()))
        if missing:
            problems.append(Problem("error", str(path), where, f"instance values {missing} have no pixels"))
    return problems


def _duplicate_files(dataset: AnnotationSet) -> list[Problem]:
    seen: dict[Path, int] = {}
    problems = []
    for r in dataset.images:
        if r.path in seen:
            problems.append(
                Problem(
                    "warning",
                    str(r.path),
                    f"image id={r.id}",
                    f"the same file is also image id={seen[r.path]}",
                )
            )
        else:
            seen[r.path] = r.id
    return problems

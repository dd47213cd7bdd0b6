"""COCO object detection / instance segmentation JSON (https://cocodataset.org/#format-data).

Layout read and written (that of ``coco128``)::

    root/annotations/instances.json   {"images": [...], "annotations": [...], "categories": [...]}
    root/images/<file_name>

Conversions: categories sorted by id become the contiguous labels (``AnnotationSet.category_ids`` keeps
the ids); ``bbox = [x, y, w, h]`` becomes ``(x, y, x + w, y + h)``; polygons and RLE are kept as they are
in ``Instance.mask``; ``iscrowd``, ``area`` and the annotation ``id`` are kept. Images without
annotations are kept (background images). Records with problems are reported and dropped, see
:mod:`segdet.data.validate`.

Writing (:func:`write`, :func:`to_coco_dict`, and the *results* format of predictions,
:func:`results_to_coco`) lives in :mod:`segdet.data.formats.coco_write` and is re-exported here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from segdet.data.dataset import SegDetDataset
from segdet.data.formats.coco_checks import (
    as_floats,
    as_size,
    clip_polygons,
    is_int,
    polygon_problem,
    rle_problem,
)
from segdet.data.formats.coco_write import results_to_coco, to_coco_dict, write, write_results
from segdet.data.paths import confined
from segdet.data.structures import AnnotationSet, ImageRecord, Instance
from segdet.data.validate import ProblemLog, check_box, check_unique_id
from segdet.errors import DataError

# --------------------------------------------------------------------------------------------- reading


def read(
    path: str | Path, *, images: str | Path | None = None, labels: object = None, strict: bool = False
) -> AnnotationSet:
    """Read a COCO JSON file (or a folder holding ``annotations/<one>.json``).

    Args:
        path: the JSON file, or a dataset folder with exactly one JSON file in ``annotations/``.
        images: the image folder; by default ``images/`` beside the ``annotations/`` folder holding the
            JSON, else ``images/`` beside the JSON, else the JSON's own folder.
        labels: unused (the JSON holds the labels); accepted for the common reader signature.
        strict: raise :class:`DataError` on the first bad record instead of dropping it.

    Raises:
        DataError: the file cannot be read, is not JSON, or its top level is not a COCO dataset; with
            ``strict``, any bad record.
    """
    json_path = find_json(Path(path))
    data = _load_json(json_path)
    image_dir = Path(images) if images is not None else default_image_dir(json_path)
    log = ProblemLog()
    file = json_path

    classes, category_ids = _read_categories(data["categories"], log, file)
    records, bad_images = _read_images(data["images"], image_dir, log, file)
    ctx = _Context(
        file=file,
        log=log,
        records=records,
        bad_images=bad_images,
        label_of={cid: i for i, cid in enumerate(category_ids)},
        bad_categories=set(_all_category_ids(data["categories"])) - set(category_ids),
    )
    for k, entry in enumerate(data.get("annotations") or []):
        _read_annotation(k, entry, ctx)

    dataset = AnnotationSet(
        images=list(records.values()), classes=classes, category_ids=category_ids, source=str(json_path)
    )
    return log.finish(dataset, strict)


def find_json(path: Path) -> Path:
    """The JSON file ``path`` names: itself, or the single ``annotations/*.json`` of a folder."""
    if path.is_dir():
        found = sorted((path / "annotations").glob("*.json"))
        if len(found) != 1:
            what = (
                "no JSON file"
                if not found
                else f"{len(found)} JSON files ({', '.join(p.name for p in found)})"
            )
            raise DataError(f"{what} in annotations/; pass the JSON file itself", path)
        return found[0]
    if not path.exists():
        raise DataError("file not found", path)
    return path


def default_image_dir(json_path: Path) -> Path:
    """``images/`` beside the ``annotations/`` folder holding the JSON, else ``images/`` beside the JSON,
    else the JSON's folder (the first of these that exists; the first when none does)."""
    parent = json_path.parent
    if parent.name == "annotations" and (parent.parent / "images").is_dir():
        return parent.parent / "images"
    if (parent / "images").is_dir():
        return parent / "images"
    # Neither exists: in the usual layout, point at where the images are expected (clearer errors later).
    return parent.parent / "images" if parent.name == "annotations" else parent


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})", path) from None
    except (ValueError, RecursionError) as e:  # not UTF-8/16/32 text; nesting too deep
        raise DataError(f"not valid JSON: {type(e).__name__}: {e}", path) from None
    except OSError as e:
        raise DataError(f"cannot read file ({e.strerror or e})", path) from None
    if not isinstance(data, dict):
        raise DataError(f"top level is a JSON {type(data).__name__}, not a COCO dataset object", path)
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"top level has no '{key}' list; not a COCO dataset", path)
    if data.get("annotations") is not None and not isinstance(data["annotations"], list):
        raise DataError("top level 'annotations' is not a list", path)
    return data


def _all_category_ids(entries: list) -> list:
    return [e.get("id") for e in entries if isinstance(e, dict) and is_int(e.get("id"))]


def _entry_id(entry: object, k: int, kind: str, plural: str, seen: set, log: ProblemLog, file: Path):
    """The id of ``entries[k]`` (an image, category or annotation object) and its record name
    ``"<kind> id=<id>"``, or ``None`` after reporting a non-object, a missing / non-integer id or a
    duplicate id."""
    record = f"{plural}[{k}]"
    if not isinstance(entry, dict):
        log.error(file, record, f"{kind} is not a JSON object")
        return None
    value = entry.get("id")
    if not is_int(value):
        log.error(file, record, f"{kind} 'id' {value!r} is missing or not an integer")
        return None
    record = f"{kind} id={value}"
    if not check_unique_id(value, seen, log, file, record, kind):
        return None
    return value, record


def _read_categories(entries: list, log: ProblemLog, file: Path) -> tuple[list[str], list[int]]:
    """Valid categories sorted by id: ``(names, ids)``."""
    found: list[tuple[int, str]] = []
    seen: set = set()
    for k, entry in enumerate(entries):
        found_id = _entry_id(entry, k, "category", "categories", seen, log, file)
        if found_id is None:
            continue
        cid, record = found_id
        name = entry.get("name")
        if not isinstance(name, str):
            log.error(file, record, f"category 'name' {name!r} is missing or not a string")
            continue
        found.append((cid, name))
    found.sort()
    return [n for _, n in found], [c for c, _ in found]


def _read_images(
    entries: list, image_dir: Path, log: ProblemLog, file: Path
) -> tuple[dict[int, ImageRecord], set]:
    """Valid image records by id, and the ids of images dropped for errors (their annotations are
    dropped silently: the image's own error explains them)."""
    records: dict[int, ImageRecord] = {}
    bad: set = set()
    seen: set = set()
    for k, entry in enumerate(entries):
        found_id = _entry_id(entry, k, "image", "images", seen, log, file)
        if found_id is None:
            continue
        iid, record = found_id
        name = entry.get("file_name")
        width, height = as_size(entry.get("width")), as_size(entry.get("height"))
        problem = None
        if not isinstance(name, str) or not name:
            problem = f"image 'file_name' {name!r} is missing or not a string"
        elif width is None or height is None:
            problem = (
                f"image size {entry.get('width')!r}x{entry.get('height')!r} is not two positive integers"
            )
        if problem is None:
            try:
                path = confined(image_dir, name, what="image 'file_name'")
            except DataError as e:
                problem = e.problem
        if problem is not None:
            log.error(file, record, problem)
            bad.add(iid)
            continue
        records[iid] = ImageRecord(iid, path, width, height, file_name=name)
    return records, bad


@dataclass
class _Context:
    """What annotations are checked against while one file is read."""

    file: Path
    log: ProblemLog
    records: dict[int, ImageRecord]  # valid images by id
    bad_images: set  # ids of images dropped for errors: their annotations go silently
    label_of: dict[int, int]  # valid category id -> contiguous label
    bad_categories: set  # ids of categories dropped for errors
    annotation_ids: set = field(default_factory=set)


def _read_annotation(k: int, entry: object, ctx: _Context) -> None:
    """Validate one annotation and append it to its image, or report why it is dropped."""
    log, file, records, label_of = ctx.log, ctx.file, ctx.records, ctx.label_of
    found_id = _entry_id(entry, k, "annotation", "annotations", ctx.annotation_ids, log, file)
    if found_id is None:
        return
    aid, record = found_id
    image_id, category_id = entry.get("image_id"), entry.get("category_id")
    if (is_int(image_id) and image_id in ctx.bad_images) or (
        is_int(category_id) and category_id in ctx.bad_categories
    ):
        return  # already reported with the image / category
    if not is_int(image_id) or image_id not in records:
        log.error(file, record, f"'image_id' {image_id!r} is not the id of an image in the file")
        return
    if not is_int(category_id) or category_id not in label_of:
        log.error(file, record, f"'category_id' {category_id!r} is outside the class list")
        return
    image = records[image_id]
    xywh = as_floats(entry.get("bbox"), 4)
    if xywh is None:
        log.error(file, record, f"'bbox' {entry.get('bbox')!r} is not four numbers [x, y, w, h]")
        return
    x, y, w, h = xywh
    box = check_box((x, y, x + w, y + h), image.width, image.height, log, file, record)
    if box is None:
        return
    crowd = entry.get("iscrowd", 0)
    if crowd not in (0, 1) or type(crowd) not in (int, bool):
        log.error(file, record, f"'iscrowd' {crowd!r} is not 0 or 1")
        return
    area = entry.get("area")
    if area is not None and (as_floats([area], 1) is None or not 0 <= float(area) < math.inf):
        log.error(file, record, f"'area' {area!r} is not a non-negative number")
        return
    seg = entry.get("segmentation")
    if isinstance(seg, list) and seg:
        problem = polygon_problem(seg)
        if problem is None:
            seg, outside = clip_polygons(seg, image.width, image.height)
            if outside:
                log.warning(
                    file, record, f"polygon extends outside the {image.width}x{image.height} image; clipped"
                )
    elif isinstance(seg, dict):
        problem = rle_problem(seg, image.height, image.width)
    elif seg is None or seg == []:
        problem, seg = None, None  # a detection-only annotation
    else:
        problem = f"'segmentation' is a {type(seg).__name__}, neither polygons nor RLE"
    if problem is not None:
        log.error(file, record, problem)
        return
    image.instances.append(
        Instance(
            box=box,
            label=label_of[category_id],
            mask=seg,
            iscrowd=bool(crowd),
            id=aid,
            area=None if area is None else float(area),
        )
    )


# --------------------------------------------------------------------------------------------- dataset


class CocoDetection(SegDetDataset):
    """A COCO JSON file as a torch ``Dataset`` (samples as in :class:`SegDetDataset`).

    Labels are contiguous (categories sorted by id); ``self.annotations.category_ids`` maps them back.
    """

    def __init__(
        self,
        ann_file: str | Path,
        images: str | Path | None = None,
        transforms: Callable | None = None,
        *,
        masks: bool = False,
        include_crowd: bool = False,
        strict: bool = False,
    ) -> None:
        super().__init__(
            read(ann_file, images=images, strict=strict),
            transforms,
            masks=masks,
            include_crowd=include_crowd,
            strict=strict,
        )


__all__ = [
    "CocoDetection",
    "default_image_dir",
    "find_json",
    "read",
    "results_to_coco",
    "to_coco_dict",
    "write",
    "write_results",
]

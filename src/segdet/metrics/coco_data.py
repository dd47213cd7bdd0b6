"""Reading COCO ground truth and detection results into flat arrays for :mod:`segdet.metrics.coco_eval`.

The semantics are pycocotools' (``COCO.loadRes`` and ``COCOeval._prepare``), so the evaluator sees the
same numbers:

* a ground-truth object is an *ignore region* iff ``iscrowd`` is true (pycocotools overwrites any
  ``ignore`` field with ``iscrowd``, so that field has no effect there and none here);
* ground-truth areas come from the ``area`` field, never from the box or mask;
* results follow ``loadRes``: which kind of results they are is decided by the **first** record. If it
  has a non-empty ``bbox``, every result's area is ``w * h`` of its box, even for ``segm`` evaluation
  (detectron2 drops ``bbox`` from mask results for that reason). Otherwise the results are mask results:
  area = ``mask.area(rle)`` and, where ``bbox`` is missing, bbox = ``mask.toBbox(rle)``;
* polygons and uncompressed RLE are converted as ``COCO.annToRLE`` does (``frPyObjects`` + ``merge``).

Differences, all on input that pycocotools would crash on, hang on or silently mis-evaluate: results on
unknown images *or categories*, duplicate ids, NaN/inf numbers, boxes of negative width or height, RLE
sizes that differ from the image size, RLE strings that are malformed or whose runs do not cover exactly
``h * w`` pixels (``mask.iou`` loops forever on those), and ``segm`` evaluation of results without
``segmentation`` raise :class:`DataError`, ground truth and results alike; mask results given as polygons
are converted instead of crashing ``loadRes``.

Fast path: columns are pulled out with list comprehensions and converted with numpy in one go; only when
that fails is the input walked record by record, to name the first bad record in the error (the column
checks live in :mod:`segdet.metrics.coco_columns`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from segdet.errors import DataError
from segdet.metrics.coco_columns import (
    box_array,
    check_file_names,
    column,
    file_name_hint,
    float_array,
    ids_by_base_name,
    index_column,
    int_array,
    record_list,
    unique_sorted,
)


@dataclass(frozen=True)
class CocoGroundTruth:
    """Ground truth as arrays; ``N`` objects, ``I`` images, ``K`` categories (both sorted by id)."""

    file: str | None
    image_ids: np.ndarray  # (I,) int64, sorted ascending (pycocotools' imgIds order)
    category_ids: np.ndarray  # (K,) int64, sorted ascending
    category_names: tuple[str, ...]
    image: np.ndarray  # (N,) index into image_ids
    category: np.ndarray  # (N,) index into category_ids
    area: np.ndarray  # (N,) float64, the 'area' field
    crowd: np.ndarray  # (N,) bool, iscrowd
    nonzero_id: np.ndarray  # (N,) bool, id != 0 (pycocotools treats a match to gt id 0 as no match)
    box: np.ndarray | None  # (N, 4) float64 xywh, bbox evaluation only
    rles: list[dict] | None  # compressed RLEs, segm evaluation only
    heights: np.ndarray | None  # (I,) image heights, segm only
    widths: np.ndarray | None
    file_names: tuple[str | None, ...] = ()  # (I,) each image's file_name (None where absent), id order


@dataclass(frozen=True)
class CocoDetections:
    """Detection results as arrays, in the order of the results list."""

    image: np.ndarray  # (D,) index into CocoGroundTruth.image_ids
    category: np.ndarray  # (D,) index into CocoGroundTruth.category_ids
    score: np.ndarray  # (D,) float64
    area: np.ndarray  # (D,) float64, loadRes' area
    box: np.ndarray | None  # (D, 4) float64 xywh, bbox evaluation only
    rles: list[dict] | None  # compressed RLEs, segm evaluation only


def load_json(source: object, what: str) -> tuple[object, str | None]:
    """Return ``(parsed JSON, file name)`` for a path, or ``(source, None)`` for an in-memory object."""
    if not isinstance(source, (str, PathLike)):
        return source, None
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} file not found", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} file ({e})", path) from None
    try:
        return json.loads(text), str(path)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", path) from None


def _to_rle(segm: object, h: int, w: int, file: str | None, record: str) -> dict:
    """``COCO.annToRLE``: polygons -> merged RLE, uncompressed RLE -> compressed, compressed kept."""
    try:
        if isinstance(segm, list):
            if not segm:
                raise DataError("empty segmentation", file, record)
            return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
        if isinstance(segm, dict) and "counts" in segm and "size" in segm:
            if [int(v) for v in segm["size"]] != [h, w]:
                raise DataError(f"RLE size {segm['size']} is not the image size [{h}, {w}]", file, record)
            if isinstance(segm["counts"], list):
                return mask_utils.frPyObjects(segm, h, w)
            if not isinstance(segm["counts"], (str, bytes)):
                raise DataError("RLE counts must be a string or a list", file, record)
            return segm
    except DataError:
        raise
    except Exception as e:  # pycocotools raises bare Exception / TypeError / ValueError on bad input
        raise DataError(f"cannot convert segmentation to RLE ({e})", file, record) from None
    raise DataError("segmentation must be polygons or an RLE {size, counts}", file, record)


def _rles(segms: list, img: np.ndarray, gt: CocoGroundTruth, file: str | None, what: str) -> list[dict]:
    """Compressed RLEs of ``segms`` (one per record, on image ``img``), each checked to cover exactly its
    image: pycocotools decodes whatever it is given and loops forever in ``mask.iou`` on runs that do not
    add up to ``h * w`` (:func:`_check_totals`)."""
    if gt.heights is None:  # bbox evaluation of mask results on images without sizes: RLE only
        for i, s in enumerate(segms):
            if not (isinstance(s, dict) and isinstance(s.get("counts"), (str, bytes)) and "size" in s):
                raise DataError(
                    "polygon/uncompressed masks need the image height and width", file, f"{what}[{i}]"
                )
        for i, s in enumerate(segms):
            size = s["size"]
            if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int for v in size)):
                raise DataError(f"RLE size {size!r} is not [height, width]", file, f"{what}[{i}]")
        pixels = np.array([s["size"][0] * s["size"][1] for s in segms], dtype=np.int64)
        return _check_totals(segms, pixels, file, what)
    rles = _rles_of_images(segms, img, gt, file, what)
    return _check_totals(rles, gt.heights[img] * gt.widths[img], file, what)


def _check_totals(rles: list[dict], pixels: np.ndarray, file: str | None, what: str) -> list[dict]:
    """``rles`` after checking that each compressed string decodes (:func:`rle_totals`) to runs that
    cover exactly ``pixels[i]`` pixels; DataError naming the first that does not."""
    from segdet.data.formats.coco_checks import rle_totals

    valid, total = rle_totals([r["counts"] for r in rles])
    bad = np.flatnonzero(~valid | (total != pixels))
    if len(bad):
        i = int(bad[0])
        problem = (
            "RLE 'counts' is not a valid compressed RLE string"
            if not valid[i]
            else f"RLE runs cover {int(total[i])} pixels, the image has {int(pixels[i])}"
        )
        raise DataError(problem, file, f"{what}[{i}]")
    return rles


def _rles_of_images(
    segms: list, img: np.ndarray, gt: CocoGroundTruth, file: str | None, what: str
) -> list[dict]:
    try:  # fast path: all compressed RLEs of their image's size
        sizes = np.array([s["size"] for s in segms], dtype=np.int64).reshape(len(segms), 2)
        fast = {type(s["counts"]) for s in segms} <= {str, bytes} and bool(
            (sizes[:, 0] == gt.heights[img]).all() and (sizes[:, 1] == gt.widths[img]).all()
        )
    except (TypeError, KeyError, ValueError, IndexError):
        fast = False
    if fast:
        return list(segms)
    hs, ws = gt.heights.tolist(), gt.widths.tolist()
    out = []
    for i, (s, k) in enumerate(zip(segms, img.tolist(), strict=True)):
        if (
            isinstance(s, dict)
            and isinstance(s.get("counts"), (str, bytes))
            and s.get("size") == [hs[k], ws[k]]
        ):
            out.append(s)  # the common case, compressed RLE of the right size: no conversion
        else:
            out.append(_to_rle(s, hs[k], ws[k], file, f"{what}[{i}]"))
    return out


def rle_areas(rles: list[dict]) -> np.ndarray:
    """``mask.area`` of many RLEs. Called in chunks of 255: pycocotools 2.0.x (with numpy 2) builds a
    ``uint8`` array from the count and overflows for longer lists."""
    chunks = [mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)]
    return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros(0)


def read_ground_truth(source: dict | str | PathLike, iou_type: str) -> CocoGroundTruth:
    """Read a COCO ground-truth dict or JSON file (``images``, ``annotations``, ``categories``)."""
    data, file = load_json(source, "ground-truth")
    if not isinstance(data, dict):
        raise DataError("ground truth must be a JSON object with images, annotations, categories", file)
    images, anns, cats = (record_list(data, k, file) for k in ("images", "annotations", "categories"))

    image_ids, img_order = unique_sorted(
        int_array(column(images, "id", file, "images"), file, "images", "id"), file, "images"
    )
    category_ids, names = _categories(cats, file)
    heights, widths = _image_sizes(images, img_order, iou_type, file)

    ids = int_array(column(anns, "id", file, "annotations"), file, "annotations", "id")
    unique_sorted(ids, file, "annotations")
    image = index_column(anns, "image_id", image_ids, file, "annotations")
    category = index_column(anns, "category_id", category_ids, file, "annotations")
    area = float_array(column(anns, "area", file, "annotations"), file, "annotations", "area")
    crowd = _crowd_flags(anns, file)
    gt = CocoGroundTruth(
        file,
        image_ids,
        category_ids,
        names,
        image,
        category,
        area,
        crowd,
        ids != 0,
        None,
        None,
        heights,
        widths,
        _file_names(images, img_order),
    )
    return _with_shapes(gt, anns, iou_type)


def _file_names(images: list, img_order: np.ndarray) -> tuple[str | None, ...]:
    """Each image's ``file_name`` (None where it is absent or not a string), in id order."""
    names = [im.get("file_name") for im in images]
    return tuple(names[i] if isinstance(names[i], str) else None for i in img_order.tolist())


def _categories(cats: list, file: str | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """``category_ids`` (K,), sorted, and their names (the id where a record has no ``name``), from the
    ``categories`` records ``cats``; DataError on a bad or duplicate id."""
    cat_ids_raw = int_array(column(cats, "id", file, "categories"), file, "categories", "id")
    category_ids, cat_order = unique_sorted(cat_ids_raw, file, "categories")
    names = [str(cats[i].get("name", cats[i]["id"])) for i in cat_order.tolist()]
    return category_ids, tuple(names)


def _image_sizes(
    images: list, img_order: np.ndarray, iou_type: str, file: str | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``heights`` and ``widths`` (I,) of the ``images`` records, in id order (``img_order`` (I,), the
    sort order of their ids). Needed for ``segm``; otherwise None unless every image has both."""
    if not (
        iou_type == "segm" or all(isinstance(im, dict) and "height" in im and "width" in im for im in images)
    ):
        return None, None
    heights = int_array(column(images, "height", file, "images"), file, "images", "height")[img_order]
    widths = int_array(column(images, "width", file, "images"), file, "images", "width")[img_order]
    return heights, widths


def _crowd_flags(anns: list, file: str | None) -> np.ndarray:
    """(N,) bool ``iscrowd`` of the annotation records ``anns``; DataError naming the first that is not
    an integer."""
    crowd_raw = [a.get("iscrowd", 0) for a in anns]  # pycocotools needs the key; absent = not crowd
    if not all(issubclass(t, (int, np.integer, np.bool_)) for t in set(map(type, crowd_raw))):
        i = next(i for i, c in enumerate(crowd_raw) if not isinstance(c, (int, np.integer, np.bool_)))
        raise DataError(f"iscrowd must be 0 or 1, got {crowd_raw[i]!r}", file, f"annotations[{i}]")
    return np.asarray(crowd_raw, dtype=np.int64).astype(bool) if anns else np.zeros(0, bool)


def _with_shapes(gt: CocoGroundTruth, anns: list, iou_type: str) -> CocoGroundTruth:
    """``gt`` with the shapes of its annotation records ``anns``: the boxes (N, 4) for ``bbox``, the
    checked compressed RLEs (N) for ``segm``."""
    file = gt.file
    if iou_type == "bbox":
        return replace(gt, box=box_array(column(anns, "bbox", file, "annotations"), file, "annotations"))
    # the RLEs are decoded against the images' sizes, which the partial ground truth already carries
    return replace(
        gt, rles=_rles(column(anns, "segmentation", file, "annotations"), gt.image, gt, file, "annotations")
    )


def read_detections(source: list | str | PathLike, gt: CocoGroundTruth, iou_type: str) -> CocoDetections:
    """Read a COCO results list or JSON file with ``loadRes`` semantics (see the module docstring).

    An empty list is allowed (pycocotools' loadRes fails on it) and means "no detections": every
    category with ground truth gets precision and recall 0.
    """
    data, file = load_json(source, "results")
    if not isinstance(data, list):
        raise DataError("results must be a JSON list of detections", file)
    what = "results"
    n = len(data)
    names = gt.file_names or (None,) * len(gt.image_ids)
    hint = file_name_hint(data, ids_by_base_name(gt.image_ids.tolist(), names))
    image = index_column(data, "image_id", gt.image_ids, file, what, hint)
    check_file_names(data, image.tolist(), names, file, what)
    category = index_column(data, "category_id", gt.category_ids, file, what)
    score = float_array(column(data, "score", file, what), file, what, "score")
    if n == 0:
        empty_box = np.zeros((0, 4)) if iou_type == "bbox" else None
        return CocoDetections(
            image, category, score, np.zeros(0), empty_box, [] if iou_type == "segm" else None
        )

    box_results = "bbox" in data[0] and data[0]["bbox"] != []  # loadRes decides on the first record
    if not box_results and "segmentation" not in data[0]:
        raise DataError("a result needs 'bbox' or 'segmentation'", file, f"{what}[0]")
    box = rles = None
    if box_results:
        box = box_array(column(data, "bbox", file, what), file, what)
        area = box[:, 2] * box[:, 3]
        if iou_type == "segm":
            rles = _rles(column(data, "segmentation", file, what), image, gt, file, what)
    else:
        rles = _rles(column(data, "segmentation", file, what), image, gt, file, what)
        area = rle_areas(rles)
        if iou_type == "bbox":
            from_masks = mask_utils.toBbox(rles)
            given = [(i, r["bbox"]) for i, r in enumerate(data) if "bbox" in r]
            if given:
                rows = box_array([b for _, b in given], file, what)
                from_masks[[i for i, _ in given]] = rows
            box = from_masks
            rles = None
    return CocoDetections(image, category, score, area, box, rles)

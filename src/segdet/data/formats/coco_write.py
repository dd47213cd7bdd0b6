"""Writing COCO JSON: the ground-truth dataset format and the results (predictions) format.

Specs: https://cocodataset.org/#format-data (datasets) and https://cocodataset.org/#format-results
(results, what ``COCO.loadRes`` takes). Re-exported by :mod:`segdet.data.formats.coco`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pycocotools import mask as mask_utils

from segdet.data.formats.image_files import place_image
from segdet.data.formats.report import WriteReport
from segdet.data.masks import mask_to_rle, read_label_png
from segdet.data.paths import confined
from segdet.data.structures import AnnotationSet, ImageRecord, Instance, InstancePNG, Mask
from segdet.errors import DataError


def to_coco_dict(dataset: AnnotationSet) -> dict:
    """The COCO ground-truth dict of ``dataset``.

    Masks: polygons stay polygons, RLE stays RLE (``counts`` compressed to a string), bitmaps and
    instance-PNG masks become compressed RLE. ``area`` is the instance's own if set, else the mask's
    pixel area (pycocotools ``area``), else the box's. Annotation ids are kept where they are unique,
    others get new ones.
    """
    used = [o.id for im in dataset.images for o in im.instances if o.id is not None]
    next_id = max(used, default=0) + 1
    seen: set = set()
    images, annotations = [], []
    for im in dataset.images:
        images.append({"id": im.id, "file_name": im.file_name, "width": im.width, "height": im.height})
        pngs: dict = {}  # instance-id PNGs decoded once per image
        for o in im.instances:
            if o.id is None or o.id in seen:
                aid, next_id = next_id, next_id + 1
            else:
                aid = o.id
            seen.add(aid)
            ann = _annotation(dataset, im, o, aid, pngs)
            annotations.append(ann)
    categories = [
        {"id": cid, "name": name} for cid, name in zip(dataset.category_ids, dataset.classes, strict=True)
    ]
    return {
        "info": {"description": f"written by segdet from {dataset.source}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _annotation(dataset: AnnotationSet, im: ImageRecord, o: Instance, aid: int, pngs: dict) -> dict:
    record = f"image id={im.id}"
    if not 0 <= o.label < len(dataset.classes):
        raise DataError(f"label {o.label} is outside the class list", dataset.source, record)
    x1, y1, x2, y2 = (float(v) for v in o.box)
    ann = {
        "id": int(aid),
        "image_id": im.id,
        "category_id": int(dataset.category_ids[o.label]),
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "iscrowd": int(bool(o.iscrowd)),
    }
    area = (x2 - x1) * (y2 - y1)
    if o.mask is not None:
        seg = _segmentation(o.mask, im, pngs, dataset.source)
        ann["segmentation"] = seg
        area = float(mask_utils.area(_as_rle(seg, im, dataset.source)))
    ann["area"] = float(o.area) if o.area is not None else area
    return ann


def _segmentation(mask: Mask, im: ImageRecord, pngs: dict, source: str) -> list | dict:
    try:
        if isinstance(mask, list):
            return [[float(v) for v in p] for p in mask]
        if isinstance(mask, InstancePNG):
            if mask.path not in pngs:
                pngs[mask.path] = read_label_png(mask.path)
            mask = pngs[mask.path] == mask.value
        return mask_to_rle(mask, im.height, im.width)
    except DataError as e:
        raise DataError(e.problem, e.file or source, f"image id={im.id}") from None


def _as_rle(seg: list | dict, im: ImageRecord, source: str) -> dict:
    if isinstance(seg, dict):
        return seg
    try:
        return mask_to_rle(seg, im.height, im.width)
    except DataError as e:
        raise DataError(e.problem, e.file or source, f"image id={im.id}") from None


def write(
    dataset: AnnotationSet,
    out: str | Path,
    *,
    copy_images: bool = True,
    link_images: bool = False,
    json_name: str = "instances.json",
    report: WriteReport | None = None,
) -> Path:
    """Write ``out/annotations/<json_name>`` and (with ``copy_images``) ``out/images/<file_name>``: copies,
    or hard links with ``link_images``. A ``file_name`` leading outside ``images/`` is refused. Returns the
    JSON path, which :func:`read` takes back. Every object is written (counted in ``report``)."""
    out = Path(out)
    data = to_coco_dict(dataset)
    if report is not None:
        report.objects += len(data["annotations"])
    if copy_images:
        for im in dataset.images:
            dst = confined(out / "images", im.file_name, what="image file name", record=f"image id={im.id}")
            place_image(im.path, dst, link=link_images)
    json_path = out / "annotations" / json_name
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data))
    return json_path


def results_to_coco(dataset: AnnotationSet) -> list[dict]:
    """Predictions in COCO's *results* format (what ``COCO.loadRes`` and the evaluators take).

    One entry per instance: ``image_id``, ``category_id`` (the dataset's original ids), ``bbox`` as
    ``[x, y, w, h]``, ``score`` (1.0 where an instance has none, e.g. ground truth used as a sanity
    check), and ``segmentation`` as compressed RLE when the instance has a mask (bitmaps must already be
    thresholded).
    """
    results = []
    for im in dataset.images:
        pngs: dict = {}
        for o in im.instances:
            x1, y1, x2, y2 = (float(v) for v in o.box)
            entry = {
                "image_id": im.id,
                "category_id": int(dataset.category_ids[o.label]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": 1.0 if o.score is None else float(o.score),
            }
            if o.mask is not None:
                seg = _segmentation(o.mask, im, pngs, dataset.source)
                entry["segmentation"] = _as_rle(seg, im, dataset.source)
            results.append(entry)
    return results


def write_results(dataset: AnnotationSet, path: str | Path) -> Path:
    """Write :func:`results_to_coco` of ``dataset`` to the JSON file ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results_to_coco(dataset)))
    return path

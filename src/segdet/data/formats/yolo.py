"""YOLO (Ultralytics / Darknet) text labels (https://docs.ultralytics.com/datasets/detect/,
https://docs.ultralytics.com/datasets/segment/).

Layout::

    root/data.yaml            names: {0: person, 1: bicycle, ...} (or a list); path, train, val keys
      or root/classes.txt     one class name per line (the LabelImg / Darknet form)
    root/images/[<split>/]<name>.jpg
    root/labels/[<split>/]<name>.txt

One row per object, coordinates normalised by the image width and height:

* ``cls cx cy w h`` - a box (centre and size);
* ``cls x1 y1 x2 y2 x3 y3 ...`` - a polygon of at least 3 points (segmentation); its box is its
  bounding box, and it is kept as a COCO-style absolute polygon ``[[x1, y1, x2, y2, ...]]``;
* ``cls cx cy w h px1 py1 [v1] ...`` - a pose row, when ``data.yaml`` has ``kpt_shape: [K, 2 or 3]``
  (https://docs.ultralytics.com/datasets/pose/): its box is read and its ``K x 2`` or ``K x 3`` keypoint
  values are left out, with one warning (segdet has no keypoint model). Without ``kpt_shape`` such a row
  cannot be told from a polygon, as in Ultralytics.

An image without a label file is a background image; a label file without an image is reported (a
warning) and ignored. The label folder of an image folder is found as Ultralytics does: the last
``images`` component of its path replaced by ``labels``. ``data.yaml``'s split folders stay inside the
dataset; Roboflow's ``train: ../train/images`` is read as ``train/images``, as Ultralytics reads it.

Writing (:func:`write`, :func:`image_rows`) lives in :mod:`segdet.data.formats.yolo_write` and is
re-exported here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from segdet.data.dataset import SegDetDataset
from segdet.data.formats.yolo_write import image_rows, write
from segdet.data.io import image_size
from segdet.data.paths import confined
from segdet.data.structures import AnnotationSet, ImageRecord, Instance
from segdet.data.validate import ProblemLog, check_box, check_label
from segdet.errors import DataError

__all__ = [
    "CONFIG_NAMES",
    "IMAGE_SUFFIXES",
    "YoloDetection",
    "image_rows",
    "label_dir_for",
    "parse_row",
    "read",
    "read_config",
    "write",
]

# Image suffixes Ultralytics reads (``IMG_FORMATS``), lower case.
IMAGE_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm"}
CONFIG_NAMES = ("data.yaml", "data.yml", "classes.txt")

# --------------------------------------------------------------------------------------------- reading


def read(
    path: str | Path,
    *,
    images: str | Path | None = None,
    labels: str | Path | None = None,
    strict: bool = False,
    split: str | None = None,
) -> AnnotationSet:
    """Read a YOLO dataset.

    Args:
        path: the dataset root (holding ``data.yaml`` or ``classes.txt``), or that file itself.
        images: the image folder; by default the folder ``data.yaml``'s ``split`` key names when
            ``split`` is given (else ``images/<split>``), and ``images/`` otherwise (split folders
            below it are read too).
        labels: the label folder; by default the image folder with its last ``images`` replaced by
            ``labels``.
        strict: raise :class:`DataError` on the first bad row or image instead of dropping it.
        split: ``"train"``, ``"val"``, ... (see ``images``).

    Raises:
        DataError: no or a malformed ``data.yaml`` / ``classes.txt``, a missing image or label folder;
            with ``strict``, any bad row or unreadable image.
    """
    root, config = read_config(Path(path))
    classes = config["names"]
    image_dir, label_dir = _folders(root, config, images, labels, split)
    log = ProblemLog()
    keypoints = _keypoint_values(config.get("kpt_shape"), root)
    if keypoints:
        log.warning(
            root,
            "data.yaml",
            f"kpt_shape {config['kpt_shape']}: a pose dataset; each row's box is read, its {keypoints} "
            "keypoint values are left out (segdet has no keypoint model)",
        )

    image_files = sorted(
        p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    rels = [p.relative_to(image_dir) for p in image_files]
    ids = _image_ids(rels)
    records = []
    for img, rel, iid in zip(image_files, rels, ids, strict=True):
        try:
            width, height = image_size(img)
        except DataError as e:
            log.error(img, "", e.problem)
            continue
        record = ImageRecord(iid, img, width, height, file_name=rel.as_posix())
        label_file = label_dir / rel.with_suffix(".txt")
        if label_file.is_file() and not _read_label_file(label_file, record, len(classes), keypoints, log):
            continue
        records.append(record)

    stems = {rel.with_suffix("").as_posix() for rel in rels}
    for txt in sorted(label_dir.rglob("*.txt")):
        rel = txt.relative_to(label_dir)
        if rel.with_suffix("").as_posix() not in stems and rel.name not in CONFIG_NAMES:
            log.warning(
                txt,
                "",
                f"label file has no image '{rel.with_suffix('').as_posix()}.*' in {image_dir}; ignored",
            )

    dataset = AnnotationSet(images=records, classes=classes, source=str(root))
    return log.finish(dataset, strict)


def read_config(path: Path) -> tuple[Path, dict]:
    """The dataset root and its configuration (``data.yaml`` keys, with ``names`` as a list of class
    names in label order); ``classes.txt`` gives ``{"names": [...]}``."""
    if path.is_dir():
        found = [path / n for n in CONFIG_NAMES if (path / n).is_file()]
        if not found:
            raise DataError("no data.yaml or classes.txt with the class names", path)
        path = found[0]
    elif not path.is_file():
        raise DataError("file or folder not found", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read file ({e})", path) from None
    if path.suffix == ".txt":
        return path.parent, {"names": _names_from_lines(text, path)}
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise DataError(f"not valid YAML: {getattr(e, 'problem', None) or e}{where}", path) from None
    except RecursionError:
        raise DataError("not valid YAML: nesting too deep", path) from None
    except (ValueError, KeyError, TypeError, OverflowError) as e:
        # PyYAML's constructors let these through for malformed tagged scalars (a 13th month, an
        # "!!int 0x_", a "!!bool maybe"), so they are part of "not valid YAML" too.
        raise DataError(f"not valid YAML: {type(e).__name__}: {e}", path) from None
    if not isinstance(config, dict):
        raise DataError("top level is not a mapping of keys (names, path, train, val)", path)
    config = dict(config)
    config["names"] = _names_from_yaml(config.get("names"), config.get("nc"), path)
    return path.parent, config


def _names_from_lines(text: str, path: Path) -> list[str]:
    lines = [line.strip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    for n, name in enumerate(lines, 1):
        if not name:
            raise DataError(
                "blank class name (class ids are line numbers, so blank lines are ambiguous)",
                path,
                f"line {n}",
            )
    if not lines:
        raise DataError("no class names", path)
    return lines


def _class_id(key: object) -> object:
    """A ``names`` key as a class id: an int, or a string of decimal digits as its int; else as it is."""
    return int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else key


def _names_from_yaml(names: object, nc: object, path: Path) -> list[str]:
    """``names`` as a list: a list of names, or a dict ``{id: name}`` with ids exactly ``0..K-1``."""
    if isinstance(names, dict):
        # Ultralytics' check_class_names takes int(key): quoted ids ('0': person) name class 0 too
        names = (
            {_class_id(k): v for k, v in names.items()}
            if len(set(map(_class_id, names))) == len(names)
            else names
        )
        keys = list(names)
        if not all(type(k) is int for k in keys) or sorted(keys) != list(range(len(keys))):
            raise DataError(f"'names' keys must be the class ids 0..{len(keys) - 1}, got {keys[:10]!r}", path)
        names = [names[k] for k in range(len(keys))]
    if not isinstance(names, list) or not names:
        raise DataError("'names' is missing or not a non-empty list or {id: name} mapping", path)
    if not all(type(n) in (str, int, float) for n in names):
        raise DataError("'names' holds values that are not class names", path)
    if nc is not None and nc != len(names):
        raise DataError(f"'nc' is {nc!r} but 'names' has {len(names)} classes", path)
    return [str(n) for n in names]


def _folders(
    root: Path, config: dict, images: str | Path | None, labels: str | Path | None, split: str | None
) -> tuple[Path, Path]:
    if images is not None:
        image_dir = Path(images)
    elif split is not None:
        entry = config.get(split)
        if entry is None:
            image_dir = root / "images" / split
        elif isinstance(entry, str) and not entry.endswith(".txt"):
            base = _base(root, config)
            if entry.startswith("../") and (base / entry[3:]).is_dir():
                # Roboflow's exports say "train: ../train/images" for root/train/images; Ultralytics
                # reads them by dropping the "../" (check_det_dataset), and so do we, inside the dataset.
                entry = entry[3:]
            image_dir = confined(base, entry, what=f"data.yaml '{split}' folder", file=root)
        else:
            raise DataError(f"'{split}' is {entry!r}; only a single image folder is supported", root)
    else:
        image_dir = root / "images"
    if not image_dir.is_dir():
        raise DataError("image folder not found", image_dir)
    label_dir = Path(labels) if labels is not None else label_dir_for(image_dir)
    if not label_dir.is_dir():
        raise DataError("label folder not found", label_dir)
    return image_dir, label_dir


def _base(root: Path, config: dict) -> Path:
    """The folder ``data.yaml``'s split entries are relative to: its ``path`` key (relative to the
    YAML's folder) when that exists, else the YAML's folder (``path`` often names the author's disk).
    A ``path`` outside the YAML's folder is refused: the reader would list and read whatever is there."""
    p = config.get("path")
    if not isinstance(p, str) or not p or os.path.abspath(root / p) == os.path.abspath(root):
        return root  # absent, or the YAML's own folder (".", or its absolute path)
    base = confined(root, p, what="data.yaml 'path'", file=root)
    return base if base.is_dir() else root


def label_dir_for(image_dir: Path) -> Path:
    """Ultralytics' rule: the last ``images`` component of the path replaced by ``labels`` (the image
    folder itself when there is none: labels beside the images)."""
    parts = list(image_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return image_dir


def _image_ids(rels: list[Path]) -> list[int]:
    """Image ids: the file stems when they are all distinct integers (COCO-style names such as
    ``000000000009.jpg`` keep their COCO id), else positions in sorted order."""
    stems = [r.stem for r in rels]
    if stems and all(s.isdigit() and s.isascii() for s in stems):
        ids = [int(s) for s in stems]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(len(rels)))


def _keypoint_values(kpt_shape: object, root: Path) -> int:
    """The number of keypoint values after a pose row's box, ``K * D`` for ``kpt_shape: [K, D]`` (D = 2:
    x y; 3: x y visibility); 0 for a dataset without keypoints."""
    if kpt_shape is None:
        return 0
    if (
        not isinstance(kpt_shape, list)
        or len(kpt_shape) != 2
        or not all(type(v) is int for v in kpt_shape)
        or kpt_shape[0] < 1
        or kpt_shape[1] not in (2, 3)
    ):
        raise DataError(f"'kpt_shape' must be [K, 2] or [K, 3] with K >= 1, got {kpt_shape!r}", root)
    return kpt_shape[0] * kpt_shape[1]


def _read_label_file(
    path: Path, record: ImageRecord, num_classes: int, keypoints: int, log: ProblemLog
) -> bool:
    """Append the valid rows of ``path`` to ``record`` (pose rows: ``keypoints`` values after the box);
    False when the file cannot be read at all."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        log.error(path, "", f"cannot read label file ({e})")
        return False
    for n, line in enumerate(text.split("\n"), 1):
        inst = parse_row(line, record.width, record.height, num_classes, log, path, f"line {n}", keypoints)
        if inst is not None:
            record.instances.append(inst)
    return True


def parse_row(
    line: str,
    width: int,
    height: int,
    num_classes: int,
    log: ProblemLog,
    file: object,
    record: str,
    keypoints: int = 0,
) -> Instance | None:
    """One label row as an :class:`Instance` (None for a blank line or, after logging, a bad row).
    ``keypoints``: a pose dataset's number of keypoint values after each row's box (left out).

    Box row: ``x1 = (cx - w/2) * W``, ``x2 = (cx + w/2) * W`` (same for y with H). Polygon row: points
    ``(x_i * W, y_i * H)``, box = their bounding box; points are clipped to the image along with the box.
    """
    tokens = line.split()
    if not tokens:
        return None
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        log.error(file, record, f"value {bad[:20]!r} is not a number")
        return None
    if not all(math.isfinite(v) for v in values):
        log.error(file, record, "row has non-finite values")
        return None
    n = len(values) - 1
    if keypoints:
        if n != 4 + keypoints:
            log.error(
                file,
                record,
                f"expected {5 + keypoints} values (class cx cy w h and the {keypoints} keypoint values "
                f"kpt_shape says), got {len(values)}",
            )
            return None
        values, n = values[:5], 4
    if n != 4 and (n < 6 or n % 2):
        log.error(
            file,
            record,
            f"expected 5 values (class cx cy w h) or a class and at least 3 x y points, got {len(values)}",
        )
        return None
    if not values[0].is_integer():
        log.error(file, record, f"class {tokens[0][:20]!r} is not an integer")
        return None
    label = check_label(int(values[0]), num_classes, log, file, record)
    if label is None:
        return None
    if n == 4:
        cx, cy, w, h = values[1:]
        raw = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        box = check_box(raw, width, height, log, file, record)
        return None if box is None else Instance(box=box, label=label)
    points = np.asarray(values[1:], dtype=np.float64).reshape(-1, 2) * (width, height)
    raw = (*points.min(axis=0), *points.max(axis=0))
    box = check_box(raw, width, height, log, file, record)
    if box is None:
        return None
    points = np.clip(points, 0.0, (width, height))
    return Instance(box=box, label=label, mask=[points.ravel().tolist()])


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------- dataset


class YoloDetection(SegDetDataset):
    """A YOLO dataset as a torch ``Dataset`` (samples as in :class:`SegDetDataset`)."""

    def __init__(
        self,
        root: str | Path,
        images: str | Path | None = None,
        transforms: Callable | None = None,
        *,
        labels: str | Path | None = None,
        split: str | None = None,
        masks: bool = False,
        strict: bool = False,
    ) -> None:
        annotations = read(root, images=images, labels=labels, strict=strict, split=split)
        super().__init__(annotations, transforms, masks=masks, strict=strict)

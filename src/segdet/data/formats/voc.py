"""Pascal VOC: one XML file of boxes per image, plus optional palette-PNG masks.

Layout of a VOC root (the VOC2007 / VOC2012 devkit's)::

    Annotations/<id>.xml              filename, size, objects (name, bndbox, difficult)
    JPEGImages/<id>.jpg               the images (other extensions, e.g. .png, are accepted)
    ImageSets/Main/<split>.txt        ids of a detection split, one per line
    ImageSets/Segmentation/<split>.txt  ids of a segmentation split
    SegmentationClass/<id>.png        palette PNG, value c = class c - 1, 0 = background, 255 = void
    SegmentationObject/<id>.png       palette PNG, value k = the k-th <object> of the XML, 255 = void
    classes.txt                       (not VOC's own) the class list when it is not the 20 VOC classes
    segmentation_classes.txt          (not VOC's own) names of the SegmentationClass values, line i =
                                      value i, when they are not "background" + the classes (a mask
                                      folder's classes written as VOC: value 0 is a class)

Boxes in the XML are 1-based inclusive pixel indices; they are read as continuous ``xyxy``
(``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``, see :mod:`segdet.data.structures`) and written
back rounded to integers (:func:`segdet.data.formats.voc_write.voc_box`). ``truncated`` and ``pose``
are not kept; ``difficult`` is.

The VOC devkit (VOCdevkit/devkit_doc.pdf, section "Segmentation") defines the instance masks: pixel
value ``k`` of ``SegmentationObject/<id>.png`` belongs to the ``k``-th object of ``<id>.xml``. Object
``k`` therefore gets ``InstancePNG(SegmentationObject/<id>.png, k)``; the PNG is not decoded on reading.
An ``<object>`` that says ``<segmented>0</segmented>`` (not VOC's own element: segdet's writer marks so an
object that has no pixel in the PNG, e.g. one entirely covered by later objects) gets no mask, and value
``k`` is not expected in the PNG; ``segdet data check`` reports any other object without pixels.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from segdet.data.dataset import SegDetDataset
from segdet.data.formats.layout import find_image, read_classes_txt, read_text
from segdet.data.formats.voc_write import SEGMENTATION_CLASSES, write
from segdet.data.io import image_size
from segdet.data.paths import confined
from segdet.data.structures import AnnotationSet, ImageRecord, Instance, InstancePNG
from segdet.data.validate import ProblemLog, check_box
from segdet.errors import DataError

__all__ = ["VOC_CLASSES", "VOCDetection", "VOCSegmentation", "read", "write"]

# The 20 VOC classes in the devkit's order (label 0 = aeroplane; mask value = label + 1).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

IGNORE_INDEX = 255  # VOC's "void" value: object borders and unlabelled pixels in the masks


def read(
    path: Path,
    *,
    images: Path | None = None,
    labels: Path | None = None,
    strict: bool = False,
    split: str | None = None,
    image_set: str | None = None,
) -> AnnotationSet:
    """Read a VOC root (or a ``VOCdevkit`` folder holding exactly one ``VOC*`` root).

    Args:
        images: the image folder (default ``<root>/JPEGImages``).
        labels: the XML folder (default ``<root>/Annotations``).
        split: None reads every XML of the annotation folder; a name reads the ids listed in
            ``ImageSets/Main/<split>.txt``, or in ``ImageSets/Segmentation/<split>.txt`` when only that
            exists. Ids listed without an XML but with a ``SegmentationClass`` PNG are kept without
            objects (segmentation-only images).
        image_set: ``"Main"`` or ``"Segmentation"``: which ``ImageSets`` list ``split`` names (default:
            Main when it exists).
        strict: raise :class:`DataError` on the first error instead of dropping the record.
    """
    root = _find_root(Path(path), labels_given=labels is not None)
    log = ProblemLog()
    classes_file = root / "classes.txt"
    classes = read_classes_txt(classes_file, log) if classes_file.is_file() else list(VOC_CLASSES)
    label_of: dict[str, int] = {}
    for i, name in enumerate(classes):
        label_of.setdefault(name, i)
    ann_dir = Path(labels) if labels is not None else root / "Annotations"
    img_dir = Path(images) if images is not None else root / "JPEGImages"
    folders = _Folders(root, ann_dir, img_dir)

    records: list[ImageRecord] = []
    for number, (stem, where) in enumerate(_image_ids(root, ann_dir, split, image_set, log), start=1):
        record = _read_one(stem, number, where, folders, label_of, log)
        if record is not None:
            records.append(record)
    semantic_file = root / SEGMENTATION_CLASSES
    semantic_classes = (
        read_classes_txt(semantic_file, log) if semantic_file.is_file() else ["background", *classes]
    )
    dataset = AnnotationSet(
        records,
        classes,
        semantic_classes=semantic_classes,
        ignore_index=IGNORE_INDEX,
        source=str(root),
    )
    return log.finish(dataset, strict)


class _Folders:
    def __init__(self, root: Path, annotations: Path, images: Path) -> None:
        self.annotations = annotations
        self.images = images
        self.semantic = root / "SegmentationClass"
        self.objects = root / "SegmentationObject"


def _find_root(path: Path, labels_given: bool = False) -> Path:
    if not path.is_dir():
        raise DataError("VOC root folder not found", path)
    if labels_given or (path / "Annotations").is_dir() or (path / "SegmentationClass").is_dir():
        return path
    inner = [p for p in sorted(path.glob("VOC*")) if (p / "Annotations").is_dir()]
    if len(inner) == 1:  # a VOCdevkit folder
        return inner[0]
    raise DataError("not a VOC root: no Annotations/ or SegmentationClass/ folder", path)


def _image_ids(
    root: Path, ann_dir: Path, split: str | None, image_set: str | None, log: ProblemLog
) -> list[tuple[str, str]]:
    """``(id, where it was listed)`` for every image to read, in order."""
    if split is None:
        # Every XML, and every SegmentationClass PNG without one (segmentation-only images).
        stems = {p.stem: str(p) for p in sorted((root / "SegmentationClass").glob("*.png"))}
        if ann_dir.is_dir():
            stems.update({p.stem: str(p) for p in sorted(ann_dir.glob("*.xml"))})
        elif not stems:
            raise DataError("annotation folder not found", ann_dir)
        return sorted(stems.items())
    sets = [image_set] if image_set else ["Main", "Segmentation"]
    candidates = [root / "ImageSets" / s / f"{split}.txt" for s in sets]
    split_file = next((p for p in candidates if p.is_file()), None)
    if split_file is None:
        raise DataError(f"split {split!r} not found (looked for {', '.join(map(str, candidates))})", root)
    text = read_text(split_file)
    ids: list[tuple[str, str]] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        stem = fields[0]  # class-specific lists add a "1" / "-1" column after the id
        if not stem.isprintable() or "/" in stem or "\\" in stem:
            log.error(split_file, f"line {n}", f"image id {stem!r} is not a file name")
        elif stem in seen:
            log.warning(split_file, f"line {n}", f"image id {stem!r} listed twice; kept once")
        else:
            seen.add(stem)
            ids.append((stem, f"{split_file}:{n}"))
    return ids


def _read_one(
    stem: str, number: int, where: str, folders: _Folders, label_of: dict[str, int], log: ProblemLog
) -> ImageRecord | None:
    xml_path = folders.annotations / f"{stem}.xml"
    semantic = folders.semantic / f"{stem}.png"
    semantic = semantic if semantic.is_file() else None
    if xml_path.is_file():
        return _read_xml(xml_path, stem, number, folders, label_of, semantic, log)
    if semantic is None:
        file, _, line = where.rpartition(":")
        log.error(file or where, f"line {line}", f"image {stem!r} has no {xml_path.name} and no mask")
        return None
    # Segmentation-only image: no objects, its size from the label PNG's header.
    image = find_image(folders.images, stem)
    if image is None:
        log.error(folders.images / f"{stem}.jpg", f"image {stem}", "image file not found")
        return None
    try:
        width, height = image_size(semantic)
    except DataError as e:
        log.error(semantic, f"image {stem}", e.problem)
        return None
    return ImageRecord(number, image, width, height, [], semantic, _relative(image, folders.images))


def _read_xml(
    xml_path: Path,
    stem: str,
    number: int,
    folders: _Folders,
    label_of: dict[str, int],
    semantic: Path | None,
    log: ProblemLog,
) -> ImageRecord | None:
    try:
        tree = ET.parse(xml_path)  # expat >= 2.4 refuses entity-expansion bombs; no external entities
    except ET.ParseError as e:
        line = e.position[0] if getattr(e, "position", None) else 0
        log.error(xml_path, f"line {line}", f"malformed XML ({e})")
        return None
    except (OSError, ValueError, LookupError) as e:  # LookupError: an unknown declared encoding
        log.error(xml_path, "", f"cannot read ({e})")
        return None
    root = tree.getroot()
    if root.tag != "annotation":
        log.error(xml_path, "line 1", f"root element is <{root.tag}>, expected <annotation>")
        return None

    try:
        image = _image_path(root, stem, folders.images)
    except DataError as e:
        log.error(xml_path, "filename", e.problem)
        return None
    if isinstance(image, str):
        log.error(folders.images / image, "filename", "image file not found")
        return None
    size = _xml_size(root, xml_path, log)
    if size is None:
        try:
            size = image_size(image)
        except DataError as e:
            log.error(image, "size", f"no usable <size> in the XML and {e.problem}")
            return None
    width, height = size

    instance_png = folders.objects / f"{stem}.png"
    instance_png = instance_png if instance_png.is_file() else None
    instances = []
    for k, element in enumerate(root.findall("object"), start=1):
        obj = _read_object(element, k, xml_path, width, height, label_of, log)
        if obj is not None:
            # VOC devkit: value k of SegmentationObject is the k-th <object>, dropped ones included;
            # an object marked <segmented>0</segmented> has no value.
            segmented = _flag(element, "segmented", xml_path, f"object {k}", log, default=True)
            obj.mask = InstancePNG(instance_png, k) if instance_png is not None and segmented else None
            instances.append(obj)
    return ImageRecord(number, image, width, height, instances, semantic, _relative(image, folders.images))


def _image_path(root: ET.Element, stem: str, img_dir: Path) -> Path | str:
    """The image named by ``<filename>`` (or found by the XML's stem); the name looked for when absent.
    A ``<filename>`` leading outside the image folder is a :class:`DataError`."""
    filename = _text(root, "filename")
    candidate = confined(img_dir, filename, what="<filename>") if filename else None
    try:
        if candidate is not None and candidate.is_file():
            return candidate
        found = find_image(img_dir, stem)
    except (OSError, ValueError):  # a file name with a NUL byte or too long for the file system
        found = None
    return found if found is not None else (filename or f"{stem}.jpg")


def _xml_size(root: ET.Element, xml_path: Path, log: ProblemLog) -> tuple[int, int] | None:
    if root.find("size") is None:
        return None
    values = []
    for key in ("width", "height"):
        text = _text(root, f"size/{key}")
        try:
            value = float(text)
        except (TypeError, ValueError):
            log.warning(xml_path, f"size/{key}", f"{text!r} is not a number; size read from the image")
            return None
        if not (math.isfinite(value) and value > 0 and value == int(value)):
            log.warning(
                xml_path, f"size/{key}", f"{text!r} is not a positive integer; size read from the image"
            )
            return None
        values.append(int(value))
    return values[0], values[1]


def _read_object(
    element: ET.Element,
    k: int,
    xml_path: Path,
    width: int,
    height: int,
    label_of: dict[str, int],
    log: ProblemLog,
) -> Instance | None:
    record = f"object {k}"
    name = _text(element, "name")
    if not name:
        log.error(xml_path, record, "object has no <name>")
        return None
    if name not in label_of:
        log.error(xml_path, record, f"unknown class {name!r}")
        return None
    if element.find("bndbox") is None:
        log.error(xml_path, record, "object has no <bndbox>")
        return None
    coords = []
    for key in ("xmin", "ymin", "xmax", "ymax"):
        text = _text(element, f"bndbox/{key}")
        if text is None:
            log.error(xml_path, record, f"bndbox has no <{key}>")
            return None
        try:
            coords.append(float(text))
        except ValueError:
            log.error(xml_path, record, f"bndbox <{key}> {text!r} is not a number")
            return None
    xmin, ymin, xmax, ymax = coords
    box = check_box((xmin - 1, ymin - 1, xmax, ymax), width, height, log, xml_path, record)
    if box is None:
        return None
    return Instance(box, label_of[name], difficult=_flag(element, "difficult", xml_path, record, log))


def _flag(
    element: ET.Element, key: str, xml_path: Path, record: str, log: ProblemLog, default: bool = False
) -> bool:
    """``<key>`` of ``element`` as a 0 / 1 flag; ``default`` when absent, empty or neither (a warning)."""
    text = _text(element, key)
    if text is None or text == "":
        return default
    if text.lower() in ("1", "true"):
        return True
    if text.lower() in ("0", "false"):
        return False
    log.warning(xml_path, record, f"<{key}> {text!r} is not 0 or 1; read as {int(default)}")
    return default


def _text(element: ET.Element, path: str) -> str | None:
    found = element.find(path)
    if found is None:
        return None
    return (found.text or "").strip()


def _relative(image: Path, folder: Path) -> str:
    try:
        return image.relative_to(folder).as_posix()
    except ValueError:
        return image.name


class VOCDetection(SegDetDataset):
    """VOC boxes (and instance masks with ``masks=True``) as a torch Dataset; arguments as :func:`read`,
    the rest as :class:`~segdet.data.dataset.SegDetDataset`."""

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        images: Path | None = None,
        labels: Path | None = None,
        transforms=None,
        strict: bool = False,
        masks: bool = False,
        include_crowd: bool = False,
    ) -> None:
        annotations = read(Path(root), images=images, labels=labels, strict=strict, split=split)
        super().__init__(annotations, transforms, masks=masks, include_crowd=include_crowd, strict=strict)


class VOCSegmentation(SegDetDataset):
    """VOC semantic segmentation: the images of ``ImageSets/Segmentation/<split>.txt`` (every image with a
    ``SegmentationClass`` mask when ``split`` is None), samples with ``target["semantic"]``."""

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        images: Path | None = None,
        labels: Path | None = None,
        transforms=None,
        strict: bool = False,
        masks: bool = False,
    ) -> None:
        root = _find_root(Path(root))
        has_list = split is not None and (root / "ImageSets" / "Segmentation" / f"{split}.txt").is_file()
        annotations = read(
            root,
            images=images,
            labels=labels,
            strict=strict,
            split=split,
            image_set="Segmentation" if has_list else None,
        )
        annotations.images = [r for r in annotations.images if r.semantic is not None]
        super().__init__(annotations, transforms, masks=masks, semantic=True, strict=strict)

"""Fuzzing the VOC, mask-folder and Penn-Fudan readers: whatever the bytes, only DataError escapes.

Reference: the readers' contract (segdet.data.formats): a reader returns an AnnotationSet (problems
listed) or raises segdet.errors.DataError; any other exception is a bug. Hypothesis, 100 examples each.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from segdet.data.formats import masks, pennfudan, voc
from segdet.data.palette import write_label_png
from segdet.data.structures import AnnotationSet
from segdet.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VOC_XML = (FIXTURES / "voc" / "Annotations" / "img1.xml").read_text()
PED_TEXT = (FIXTURES / "pennfudan" / "Annotation" / "Ped1.txt").read_text()

# Text that looks like the formats' own: their keywords, digits, brackets and quotes.
TOKENS = st.sampled_from(
    ["<object>", "</object>", "<name>", "</name>", "<bndbox>", "</bndbox>", "<xmin>", "</xmin>", "<size>",
     "<width>", "</width>", "dog", "nan", "inf", "-1e309", "1e400", "99999999999999999999", "0", "1", "-",
     "(", ")", '"', ":", " x ", "\n", "Bounding box for object 1", "Objects with ground truth : ",
     "(Xmin, Ymin) - (Xmax, Ymax) : ", "Image size (X x Y x C) : ", "{", "}", "&", "&amp;", "\x00", "é"]
)  # fmt: skip
LOOKALIKE = st.lists(TOKENS, max_size=40).map("".join)
ODD_VALUES = ["dog", "nan", "inf", "1e400", "-5", "0", "3.5", "", " ", "x", "99999999999"]


def _image(path: Path, width: int = 16, height: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(path)


def _read_only_data_error(read, *args, **kwargs) -> None:
    for strict in (False, True):
        try:
            result = read(*args, strict=strict, **kwargs)
        except DataError as e:
            assert str(e) and "\n" not in str(e)  # one line naming file, record and problem
        else:
            assert isinstance(result, AnnotationSet)


def _voc_root(tmp: Path, xml: bytes, classes: bytes | None = None, split: bytes | None = None) -> Path:
    root = tmp / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "x.xml").write_bytes(xml)
    _image(root / "JPEGImages" / "x.jpg")
    if classes is not None:
        (root / "classes.txt").write_bytes(classes)
    if split is not None:
        (root / "ImageSets" / "Main").mkdir(parents=True)
        (root / "ImageSets" / "Main" / "s.txt").write_bytes(split)
    return root


@FUZZ
@given(st.binary(max_size=400))
def test_voc_random_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        _read_only_data_error(voc.read, _voc_root(Path(tmp), data))


@FUZZ
@given(st.integers(0, len(VOC_XML)), LOOKALIKE)
def test_voc_truncated_and_spliced_xml(cut: int, junk: str):
    """The fixture XML cut anywhere, with format-like junk spliced in."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = (VOC_XML[:cut] + junk + VOC_XML[cut:]).encode("utf-8", "surrogatepass")
        _read_only_data_error(voc.read, _voc_root(Path(tmp), xml))
        _read_only_data_error(voc.read, _voc_root(Path(tmp) / "t", VOC_XML[:cut].encode()))


@FUZZ
@given(st.lists(st.sampled_from(ODD_VALUES), min_size=8, max_size=8))
def test_voc_field_values(values: list[str]):
    """Well-formed XML with odd field values: sizes, coordinates, difficult flags."""
    w, h, x1, y1, x2, y2, difficult, name = values
    xml = (
        f"<annotation><filename>x.jpg</filename><size><width>{w}</width><height>{h}</height></size>"
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object></annotation>"
    )
    with tempfile.TemporaryDirectory() as tmp:
        _read_only_data_error(voc.read, _voc_root(Path(tmp), xml.encode()))


@FUZZ
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_voc_garbage_classes_and_split(classes: bytes, split: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        root = _voc_root(Path(tmp), VOC_XML.encode(), classes=classes, split=split)
        _read_only_data_error(voc.read, root)
        _read_only_data_error(voc.read, root, split="s")


@FUZZ
@given(st.one_of(st.binary(max_size=200), LOOKALIKE.map(lambda s: s.encode("utf-8", "surrogatepass"))),
       st.binary(max_size=300))  # fmt: skip
def test_masks_garbage_classes_and_label(classes: bytes, label: bytes):
    """Garbage classes.txt; a label file of random bytes is reported by check_label_file, not raised."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _image(root / "images" / "a.png")
        (root / "labels").mkdir()
        (root / "labels" / "a.png").write_bytes(label)
        (root / "classes.txt").write_bytes(classes)
        _read_only_data_error(masks.read, root)
        problems = masks.check_label_file(root / "labels" / "a.png", 16, 12, 3, 255)
        assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)


def _ped_root(tmp: Path, text: bytes, mask: bytes | None = None, classes: bytes | None = None) -> Path:
    root = tmp / "ped"
    _image(root / "PNGImages" / "Ped1.png", 64, 48)
    if mask is None:
        ids = np.zeros((48, 64), dtype=np.int64)
        ids[9:40, 4:20] = 1
        ids[2:45, 30:60] = 2
        write_label_png(root / "PedMasks" / "Ped1_mask.png", ids)
    else:
        (root / "PedMasks").mkdir(parents=True)
        (root / "PedMasks" / "Ped1_mask.png").write_bytes(mask)
    (root / "Annotation").mkdir()
    (root / "Annotation" / "Ped1.txt").write_bytes(text)
    if classes is not None:
        (root / "classes.txt").write_bytes(classes)
    return root


@FUZZ
@given(st.integers(0, len(PED_TEXT)), LOOKALIKE, st.booleans())
def test_pennfudan_garbage_annotation(cut: int, junk: str, with_classes: bool):
    """The fixture annotation cut and spliced with format-like junk, with or without a classes.txt."""
    with tempfile.TemporaryDirectory() as tmp:
        text = (PED_TEXT[:cut] + junk + PED_TEXT[cut:]).encode("utf-8", "surrogatepass")
        root = _ped_root(Path(tmp), text, classes=b"pedestrian\ncar\n" if with_classes else None)
        _read_only_data_error(pennfudan.read, root)


@FUZZ
@given(st.binary(max_size=300), st.binary(max_size=100), st.binary(max_size=100))
def test_pennfudan_random_bytes(text: bytes, mask: bytes, classes: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        _read_only_data_error(pennfudan.read, _ped_root(Path(tmp), text, mask=mask, classes=classes))
        shutil.rmtree(Path(tmp) / "ped")
        _read_only_data_error(pennfudan.read, _ped_root(Path(tmp), text, classes=classes))

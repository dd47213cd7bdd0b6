"""Fuzzing the COCO and YOLO readers with hypothesis: whatever the bytes, ``read`` either succeeds or
raises :class:`DataError` (any other exception escaping is a bug). When it succeeds, what it returns is
usable: boxes are finite and inside their images, and every mask decodes with pycocotools at the image's
size (so nothing unchecked reaches pycocotools' C code)."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from segdet.data.formats import coco, yolo
from segdet.data.masks import mask_to_bitmap
from segdet.data.structures import AnnotationSet
from segdet.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
COCO_JSON = FIXTURES / "coco" / "annotations" / "instances.json"
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=12,
)


def check_usable(ds: AnnotationSet) -> None:
    for im in ds.images:
        for o in im.instances:
            x1, y1, x2, y2 = o.box
            assert all(math.isfinite(v) for v in o.box)
            assert 0 <= x1 < x2 <= im.width and 0 <= y1 < y2 <= im.height
            assert 0 <= o.label < len(ds.classes)
            if o.mask is not None:
                assert mask_to_bitmap(o.mask, im.height, im.width).shape == (im.height, im.width)


def read_coco_text(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.json"
        path.write_bytes(data)
        try:
            ds = coco.read(path)
        except DataError:
            return
        check_usable(ds)
        coco.to_coco_dict(ds)  # what was read can be written back


@SETTINGS
@given(st.binary(max_size=200))
def test_coco_random_bytes(data):
    read_coco_text(data)


@SETTINGS
@given(st.integers(min_value=0, max_value=len(COCO_JSON.read_bytes())))
def test_coco_truncated(n):
    read_coco_text(COCO_JSON.read_bytes()[:n])


def paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path into a JSON value."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


@SETTINGS
@given(st.data())
def test_coco_wrong_types(data):
    """Replace 1-3 random places of the valid fixture (a value, a list element, a whole record) with
    random JSON values of any type."""
    doc = json.loads(COCO_JSON.read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(paths(doc)[1:]))
        node = doc
        try:
            for key in where[:-1]:
                node = node[key]
            node[where[-1]] = data.draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement changed the structure
    read_coco_text(json.dumps(doc).encode())


# ------------------------------------------------------------------------------------------------- YOLO

tokens = st.sampled_from(
    [
        "0",
        "1",
        "2",
        "-1",
        "0.5",
        "0.25",
        "1.0",
        "1.5",
        "2",
        "nan",
        "inf",
        "-inf",
        "1e309",
        "x",
        "0x1",
        "",
        "1_0",
    ]
) | st.floats(min_value=-2, max_value=3).map(lambda v: f"{v:.4f}")
lines = st.lists(tokens, max_size=12).map(" ".join)


def yolo_root(tmp: Path) -> Path:
    root = tmp / "ds"
    shutil.copytree(FIXTURES / "yolo", root)
    (root / "images").mkdir()
    Image.new("RGB", (50, 40)).save(root / "images" / "img1.png")
    return root


@SETTINGS
@given(st.lists(lines, max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_yolo_random_lines(rows, newline):
    with tempfile.TemporaryDirectory() as tmp:
        root = yolo_root(Path(tmp))
        (root / "labels" / "img1.txt").write_text(newline.join(rows))
        try:
            ds = yolo.read(root)
        except DataError:
            return
        check_usable(ds)
        yolo.write(ds, Path(tmp) / "out")  # what was read can be written back


@SETTINGS
@given(st.binary(max_size=120), st.binary(max_size=120))
def test_yolo_random_bytes(config, label):
    """Random bytes as data.yaml and as a label file."""
    with tempfile.TemporaryDirectory() as tmp:
        root = yolo_root(Path(tmp))
        (root / "data.yaml").write_bytes(config)
        (root / "labels" / "img1.txt").write_bytes(label)
        try:
            ds = yolo.read(root)
        except DataError:
            return
        check_usable(ds)


@SETTINGS
@given(json_values, json_values)
def test_yolo_data_yaml_wrong_types(names, nc):
    """data.yaml with a ``names`` and ``nc`` of any type (JSON is valid YAML)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = yolo_root(Path(tmp))
        (root / "data.yaml").write_text(json.dumps({"names": names, "nc": nc, "path": names}))
        try:
            ds = yolo.read(root)
        except DataError:
            return
        check_usable(ds)

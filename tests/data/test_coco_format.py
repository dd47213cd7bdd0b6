"""Tests of the COCO JSON reader and writer.

References: hand-computed values of a hand-written fixture, pycocotools' own ``COCO`` API (which reads
what we write, decodes masks and evaluates results), and COCO128 read through pycocotools.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segdet.data.formats import coco
from segdet.data.formats.coco_checks import decode_rle_string
from segdet.data.masks import bitmap_box, mask_to_bitmap
from segdet.data.structures import AnnotationSet, ImageRecord, Instance, InstancePNG
from segdet.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "coco"


def write_png(path: Path, w: int, h: int, mode: str = "RGB", value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (w, h), value).save(path)
    return path


# ------------------------------------------------------------------------------------ hand-written fixture


def test_fixture_exact_values(tmp_path):
    """The hand-written fixture gives the values computed by hand from the COCO spec."""
    root = tmp_path / "ds"
    shutil.copytree(FIXTURES, root)
    ds = coco.read(root)  # a folder holding annotations/<one>.json
    assert ds.problems == []
    assert ds.source == str(root / "annotations" / "instances.json")
    # categories sorted by id: 2 (dog) -> label 0, 5 (cat) -> label 1
    assert ds.classes == ["dog", "cat"]
    assert ds.category_ids == [2, 5]
    assert [im.id for im in ds.images] == [1, 2, 3]
    a, b, c = ds.images
    assert (a.width, a.height, a.file_name, a.path) == (40, 30, "a.png", root / "images" / "a.png")
    assert b.instances == []  # background image kept
    poly, crowd = a.instances
    assert poly == Instance(
        box=(2.0, 3.0, 12.0, 8.0), label=1, mask=[[2, 3, 12, 3, 12, 8, 2, 8]], iscrowd=False, id=10, area=50.0
    )
    assert crowd.box == (20.0, 10.0, 24.0, 14.0) and crowd.label == 0 and crowd.iscrowd and crowd.id == 11
    assert crowd.mask == {"size": [30, 40], "counts": [610, 4, 26, 4, 26, 4, 26, 4, 496]}
    expected = np.zeros((30, 40), dtype=bool)
    expected[10:14, 20:24] = True
    np.testing.assert_array_equal(mask_to_bitmap(crowd.mask, 30, 40), expected)
    (rle,) = c.instances
    assert rle.area is None and rle.box == (0.0, 0.0, 12.0, 8.0)
    assert bitmap_box(mask_to_bitmap(rle.mask, 32, 32)) == rle.box


def test_image_folder_defaults_and_override(tmp_path):
    """images/ beside annotations/; else images/ beside the JSON; else the JSON's folder; images= wins."""
    src = FIXTURES / "annotations" / "instances.json"
    (tmp_path / "flat").mkdir()
    flat = shutil.copy(src, tmp_path / "flat" / "x.json")
    assert coco.read(flat).images[0].path == tmp_path / "flat" / "a.png"
    (tmp_path / "flat" / "images").mkdir()
    assert coco.read(flat).images[0].path == tmp_path / "flat" / "images" / "a.png"
    assert coco.read(flat, images=tmp_path / "elsewhere").images[0].path == tmp_path / "elsewhere" / "a.png"


def test_folder_with_no_or_several_json(tmp_path):
    (tmp_path / "annotations").mkdir()
    with pytest.raises(DataError, match="no JSON file"):
        coco.read(tmp_path)
    for name in ("a.json", "b.json"):
        shutil.copy(FIXTURES / "annotations" / "instances.json", tmp_path / "annotations" / name)
    with pytest.raises(DataError, match="2 JSON files"):
        coco.read(tmp_path)


# ------------------------------------------------------------------------------------------ planted errors


def planted() -> tuple[dict, dict[str, str]]:
    """A COCO dict with one of each problem, and {record: expected message part} for each error."""
    good_poly = [[1, 1, 9, 1, 9, 9, 1, 9]]
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 20, "height": 20},
            {"id": 1, "file_name": "dup.png", "width": 20, "height": 20},  # duplicate id
            "not an object",
            {"file_name": "noid.png", "width": 20, "height": 20},  # missing id
            {"id": 4, "file_name": "neg.png", "width": -3, "height": 20},  # bad size
            {"id": 5, "width": 20, "height": 20},  # missing file_name
            {"id": 6, "file_name": "b.png", "width": 20, "height": 20},
        ],
        "categories": [
            {"id": 1, "name": "a"},
            {"id": 1, "name": "again"},  # duplicate id
            {"id": 3},  # missing name
            {"id": 2, "name": "b"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8], "segmentation": good_poly},
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8]},  # duplicate id
            {"image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8]},  # missing id
            {"id": 3, "image_id": 99, "category_id": 1, "bbox": [1, 1, 8, 8]},  # unknown image
            {"id": 4, "image_id": 1, "category_id": 7, "bbox": [1, 1, 8, 8]},  # unknown category
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 8, 8]},
            {"id": 6, "image_id": 1, "category_id": 1, "bbox": [1, 1, float("inf"), 8]},
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 8]},  # zero width
            {"id": 8, "image_id": 1, "category_id": 1, "bbox": [30, 30, 5, 5]},  # outside the image
            {"id": 9, "image_id": 1, "category_id": 1, "bbox": "1 1 8 8"},  # ill-typed
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 1, 8, 8],
                "segmentation": [[1, 1, 9, 1, 9]],
            },
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8], "segmentation": [[1, 1, 9, 1]]},
            {
                "id": 12,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 1, 8, 8],
                "segmentation": [[1, 1, float("nan"), 1, 9, 9]],
            },
            {
                "id": 13,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 1, 8, 8],
                "segmentation": {"size": [10, 20], "counts": [200]},  # image is 20x20
            },
            {
                "id": 14,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 1, 8, 8],
                "segmentation": {"size": [20, 20], "counts": [100, 5]},  # runs do not cover the image
            },
            {"id": 15, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8], "iscrowd": 2},
            {"id": 16, "image_id": 6, "category_id": 2, "bbox": [15, 15, 10, 10]},  # partly outside: warning
            {"id": 17, "image_id": 4, "category_id": 1, "bbox": [1, 1, 8, 8]},  # on a dropped image: silent
            {
                "id": 18,
                "image_id": 1,
                "category_id": 3,
                "bbox": [1, 1, 8, 8],
            },  # on a dropped category: silent
            {"id": 19, "image_id": 6, "category_id": 1, "bbox": [1, 1, 8, 8], "area": "big"},
            {
                "id": 20,
                "image_id": 6,
                "category_id": 1,
                "bbox": [1, 1, 8, 8],
                "segmentation": {"size": [20, 20], "counts": "0h"},  # a number cut off after 'h'
            },
            {"id": 21, "image_id": 6, "category_id": 1, "bbox": [1, 1, 8, 8], "segmentation": "polygon"},
        ],
    }
    errors = {
        "image id=1": "duplicate image id 1",
        "images[2]": "not a JSON object",
        "images[3]": "'id' None is missing",
        "image id=4": "not two positive integers",
        "image id=5": "'file_name'",
        "category id=1": "duplicate category id 1",
        "category id=3": "'name'",
        "annotation id=1": "duplicate annotation id 1",
        "annotations[2]": "'id' None is missing",
        "annotation id=3": "not the id of an image",
        "annotation id=4": "outside the class list",
        "annotation id=5": "non-finite",
        "annotation id=6": "non-finite",
        "annotation id=7": "non-positive width or height",
        "annotation id=8": "lies outside the 20x20 image",
        "annotation id=9": "is not four numbers",
        "annotation id=10": "odd number of coordinates",
        "annotation id=11": "at least 3 are needed",
        "annotation id=12": "non-finite coordinates",
        "annotation id=13": "mask size mismatch",
        "annotation id=14": "RLE runs cover 105 pixels",
        "annotation id=15": "'iscrowd' 2 is not 0 or 1",
        "annotation id=19": "'area' 'big'",
        "annotation id=20": "not a valid compressed RLE string",
        "annotation id=21": "neither polygons nor RLE",
    }
    return data, errors


def test_planted_errors_each_reported_once(tmp_path):
    """Every planted problem is reported exactly once with the JSON path and its record; the good
    records (image 1 with annotation 1, image 6 with the clipped box 16) are kept."""
    data, errors = planted()
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    ds = coco.read(path)
    got = {(p.record, p.severity): p for p in ds.problems}
    assert len(got) == len(ds.problems)  # no record reported twice
    for p in ds.problems:
        assert p.file == str(path)
    assert {p.record for p in ds.errors} == set(errors)
    for record, message in errors.items():
        assert message in got[(record, "error")].message, record
    assert [(w.record, "clipped" in w.message) for w in ds.warnings] == [("annotation id=16", True)]
    assert ds.classes == ["a", "b"] and ds.category_ids == [1, 2]
    assert [im.id for im in ds.images] == [1, 6]
    assert [o.id for o in ds.images[0].instances] == [1]
    (clipped,) = ds.images[1].instances
    assert clipped.box == (15.0, 15.0, 20.0, 20.0)

    with pytest.raises(DataError) as info:
        coco.read(path, strict=True)
    assert str(path) in str(info.value) and "more errors" in str(info.value)


def test_polygon_outside_image_is_clipped_with_warning(tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 10, 10],
                "segmentation": [[0, 0, 1e300, 0, 5, 5]],
            }
        ],
    }
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    ds = coco.read(path)
    assert [w.record for w in ds.warnings] == ["annotation id=1"]
    assert ds.images[0].instances[0].mask == [[0.0, 0.0, 10.0, 0.0, 5.0, 5.0]]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"images": [', r"not valid JSON: .*\(line 1, column 13\)"),
        ("\n\n  nope", r"line 3, column 3"),
        ("[1, 2]", "not a COCO dataset object"),
        ('{"images": [], "annotations": []}', "no 'categories' list"),
        ('{"images": {}, "categories": []}', "no 'images' list"),
        ('{"images": [], "categories": [], "annotations": 3}', "'annotations' is not a list"),
    ],
)
def test_unreadable_files_raise_data_error(tmp_path, text, match):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as info:
        coco.read(path)
    assert info.value.file == str(path)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        coco.read(tmp_path / "none.json")
    path = tmp_path / "bin.json"
    path.write_bytes(b"\xff\xfe\x00\xd8garbage")
    with pytest.raises(DataError, match="not valid JSON"):
        coco.read(path)


def test_rle_string_decoder_matches_pycocotools():
    """``decode_rle_string`` (used to check RLE before pycocotools decodes it) gives the run lengths of
    pycocotools' compressed strings: those counted from the column-major bitmap, for random masks."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 40, size=2)
        bitmap = rng.random((h, w)) < rng.uniform(0.05, 0.95)
        if rng.random() < 0.5:  # long runs, so that multi-character numbers and deltas occur
            bitmap = np.sort(bitmap, axis=0)
        flat = bitmap.T.ravel()  # column-major, as COCO RLE
        edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        if flat[0]:
            runs = [0, *runs]  # RLE starts with a run of zeros
        counts = mask_utils.encode(np.asfortranarray(bitmap.astype(np.uint8)))["counts"].decode()
        assert decode_rle_string(counts) == runs
    assert decode_rle_string("0h") is None  # cut off
    assert decode_rle_string("0\x7f") is None  # outside the alphabet


# ------------------------------------------------------------------------------------------- round trip


def build_dataset(root: Path) -> AnnotationSet:
    """Three tiny PNG images with every mask form, a crowd object, a box-only object, a background image."""
    yy, xx = np.mgrid[:48, :64]
    disc = (xx - 20.5) ** 2 + (yy - 24.2) ** 2 <= 9.5**2
    rect = np.zeros((48, 64), dtype=bool)
    rect[5:17, 40:60] = True
    ids = np.zeros((48, 64), dtype=np.uint8)
    ids[30:40, 45:55] = 7
    Image.fromarray(ids).save(root / "inst.png")
    rle = mask_utils.encode(np.asfortranarray(rect.astype(np.uint8)))
    images = [
        ImageRecord(
            3,
            write_png(root / "src" / "one.png", 64, 48),
            64,
            48,
            instances=[
                Instance(bitmap_box(disc), 0, mask=disc, id=7),
                Instance(
                    bitmap_box(rect),
                    2,
                    mask={"size": [48, 64], "counts": rle["counts"].decode()},
                    iscrowd=True,
                ),
                Instance((45.0, 30.0, 55.0, 40.0), 1, mask=InstancePNG(root / "inst.png", 7)),
            ],
        ),
        ImageRecord(
            8,
            write_png(root / "src" / "sub" / "two.png", 32, 24),
            32,
            24,
            file_name="sub/two.png",
            instances=[
                Instance((1.5, 2.25, 10.75, 20.0), 1, id=7),  # box only; duplicate id is renumbered
                Instance((2.0, 2.0, 12.0, 10.0), 0, mask=[[2, 2, 12, 2, 12, 10, 2, 10]], area=80.0),
            ],
        ),
        ImageRecord(9, write_png(root / "src" / "empty.png", 16, 16), 16, 16),
    ]
    return AnnotationSet(images, ["a", "b", "c"], category_ids=[1, 3, 90], source="built in test")


def test_round_trip_and_pycocotools_reads_it(tmp_path):
    """write -> read gives the same objects (boxes exact, masks decoded identically), and pycocotools'
    ``COCO`` reads the file with the same masks (``annToMask``) and areas."""
    ds = build_dataset(tmp_path)
    json_path = coco.write(ds, tmp_path / "out")
    assert json_path == tmp_path / "out" / "annotations" / "instances.json"
    assert (tmp_path / "out" / "images" / "sub" / "two.png").read_bytes() == ds.images[1].path.read_bytes()
    back = coco.read(json_path)
    assert back.problems == []
    assert back.classes == ds.classes and back.category_ids == ds.category_ids
    assert [im.id for im in back.images] == [3, 8, 9]
    assert [im.path for im in back.images][1] == tmp_path / "out" / "images" / "sub" / "two.png"
    api = COCO(str(json_path))
    ids = set()
    for im, im2 in zip(ds.images, back.images, strict=True):
        assert (im.width, im.height, im.file_name) == (im2.width, im2.height, im2.file_name)
        assert len(im.instances) == len(im2.instances)
        for o, o2 in zip(im.instances, im2.instances, strict=True):
            assert (o.box, o.label, o.iscrowd) == (o2.box, o2.label, o2.iscrowd)
            ids.add(o2.id)
            if o.mask is None:
                assert o2.mask is None
                continue
            want = mask_to_bitmap(o.mask, im.height, im.width)
            np.testing.assert_array_equal(mask_to_bitmap(o2.mask, im.height, im.width), want)
            np.testing.assert_array_equal(api.annToMask(api.anns[o2.id]).astype(bool), want)
            assert o2.area == (o.area if o.area is not None else want.sum())
            if isinstance(o.mask, list):
                assert o2.mask == o.mask  # polygons stay polygons
            else:
                assert isinstance(o2.mask["counts"], str)  # RLE, compressed
    assert len(ids) == 5  # unique annotation ids
    assert ds.images[0].instances[0].id == 7 and back.images[0].instances[0].id == 7


def test_results_evaluate_to_ap_one(tmp_path):
    """Ground truth written as results (score 1) evaluates to AP = 1 for boxes and masks with
    pycocotools' COCOeval: ids, xywh boxes and RLE masks are in the layout it expects."""
    ds = build_dataset(tmp_path)
    gt = COCO(str(coco.write(ds, tmp_path / "out")))
    results = coco.results_to_coco(ds)
    non_crowd = [o for im in ds.images for o in im.instances if not o.iscrowd]
    assert len(results) == len(non_crowd) + 1
    x1, y1, x2, y2 = ds.images[0].instances[0].box
    assert {k: results[0][k] for k in ("image_id", "category_id", "bbox", "score")} == {
        "image_id": 3,
        "category_id": 1,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "score": 1.0,
    }
    path = coco.write_results(ds, tmp_path / "res" / "results.json")
    preds = [r for r in json.loads(path.read_text()) if "segmentation" in r]
    assert all(isinstance(r["segmentation"]["counts"], str) for r in preds)
    for iou_type, res in (("bbox", results), ("segm", preds)):
        dt = gt.loadRes(res)
        ev = COCOeval(gt, dt, iou_type)
        if iou_type == "segm":  # pycocotools needs a mask on every ground-truth object of the images
            ev.params.imgIds = [3]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert math.isclose(ev.stats[0], 1.0), iou_type


def test_coco_detection_sample(tmp_path):
    """The Dataset yields torchvision-style targets whose masks equal the decoded annotations."""
    ds = build_dataset(tmp_path)
    json_path = coco.write(ds, tmp_path / "out")
    data = coco.CocoDetection(json_path, masks=True)
    image, target = data[0]
    assert image.shape == (3, 48, 64)
    assert target["labels"].tolist() == [0, 1]  # crowd left out
    np.testing.assert_array_equal(target["masks"][0].numpy().astype(bool), ds.images[0].instances[0].mask)
    assert len(coco.CocoDetection(json_path, include_crowd=True)[0][1]["labels"]) == 3


# -------------------------------------------------------------------------------------------- real data


def test_coco128(shared_dataset):
    """COCO128: 128 images, 939 objects, 80 classes, 10 crowd, no problems; per image the same
    annotations as pycocotools' index, and the masks of a sample decode as ``annToMask`` does."""
    root = shared_dataset("coco128")  # ../shared/data beside the checkout; skipped without it
    ds = coco.read(root / "annotations" / "instances.json")
    assert ds.problems == []
    assert (len(ds.images), ds.num_instances, len(ds.classes)) == (128, 939, 80)
    assert sum(o.iscrowd for im in ds.images for o in im.instances) == 10
    assert ds.images[0].path.parent == root / "images"
    api = COCO(str(root / "annotations" / "instances.json"))
    label_of = ds.label_of_category()
    for im in ds.images:
        anns = api.imgToAnns.get(im.id, [])
        assert [o.id for o in im.instances] == [a["id"] for a in anns]
        for o, a in zip(im.instances, anns, strict=True):
            assert o.label == label_of[a["category_id"]]
            x, y, w, h = a["bbox"]
            assert o.box == pytest.approx((x, y, min(x + w, im.width), min(y + h, im.height)))
    for im in ds.images[:5]:
        for o in im.instances:
            want = api.annToMask(api.anns[o.id]).astype(bool)
            np.testing.assert_array_equal(mask_to_bitmap(o.mask, im.height, im.width), want)

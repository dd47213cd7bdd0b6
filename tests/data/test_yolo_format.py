"""Tests of the YOLO txt reader and writer.

References: hand-computed values of a hand-written fixture (Ultralytics' documented layout),
pycocotools' rasteriser for polygon rows, and COCO128's COCO JSON for the same images.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from segdet.data.formats import coco, yolo
from segdet.data.masks import bitmap_box, mask_to_bitmap
from segdet.data.structures import AnnotationSet, ImageRecord, Instance, InstancePNG
from segdet.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "yolo"


def write_png(path: Path, w: int, h: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h)).save(path)
    return path


def fixture_copy(tmp_path: Path) -> Path:
    """The fixture folder with its (generated) images: img1.png 50x40 with labels, img2.png 20x20 without."""
    root = tmp_path / "ds"
    shutil.copytree(FIXTURES, root)
    write_png(root / "images" / "img1.png", 50, 40)
    write_png(root / "images" / "img2.png", 20, 20)
    return root


def test_fixture_exact_values(tmp_path):
    """Box row ``0 0.5 0.5 0.2 0.25`` on 50x40 -> (20, 15, 30, 25); polygon row -> absolute points
    (5, 4) (15, 4) (15, 20) (5, 20) and their box; the image without a label file is kept empty."""
    root = fixture_copy(tmp_path)
    ds = yolo.read(root)
    assert ds.problems == []
    assert ds.classes == ["cat", "dog"]
    assert [im.file_name for im in ds.images] == ["img1.png", "img2.png"]
    a, b = ds.images
    assert (a.width, a.height, a.path) == (50, 40, root / "images" / "img1.png")
    assert b.instances == []
    box, poly = a.instances
    assert box.label == 0 and box.mask is None
    assert box.box == pytest.approx((20, 15, 30, 25), abs=1e-9)
    assert poly.label == 1
    assert poly.box == pytest.approx((5, 4, 15, 20), abs=1e-9)
    np.testing.assert_allclose(poly.mask, [[5, 4, 15, 4, 15, 20, 5, 20]], atol=1e-9)
    assert yolo.read(root / "data.yaml").num_instances == 2  # the YAML file itself works too


def test_classes_txt_and_names_list(tmp_path):
    root = fixture_copy(tmp_path)
    (root / "data.yaml").unlink()
    (root / "classes.txt").write_text("cat\ndog\n\n")
    assert yolo.read(root).classes == ["cat", "dog"]
    (root / "classes.txt").unlink()
    (root / "data.yaml").write_text("names: [cat, dog]\nnc: 2\n")
    assert yolo.read(root).classes == ["cat", "dog"]
    (root / "data.yaml").write_text("names: {'1': dog, '0': cat}\n")  # quoted ids, as Ultralytics reads them
    assert yolo.read(root).classes == ["cat", "dog"]
    (root / "data.yaml").write_text("names: {'0': cat, 0: dog}\n")  # the same id twice
    with pytest.raises(DataError, match=r"class ids 0\.\.1"):
        yolo.read(root)


def test_split_folders(tmp_path):
    """``split=`` picks images/<split> + labels/<split>, or the folder data.yaml names for the split."""
    root = tmp_path / "ds"
    for split in ("train", "val"):
        write_png(root / "images" / split / f"{split}.png", 10, 10)
        (root / "labels" / split).mkdir(parents=True)
        (root / "labels" / split / f"{split}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("names: {0: a}\n")
    assert [im.file_name for im in yolo.read(root, split="val").images] == ["val.png"]
    assert [im.file_name for im in yolo.read(root).images] == ["train/train.png", "val/val.png"]
    (root / "data.yaml").write_text("path: .\ntrain: images/val\nnames: {0: a}\n")
    assert [im.file_name for im in yolo.read(root, split="train").images] == ["val.png"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("names: [a, b\n", r"not valid YAML.*line 2"),
        ("- a\n- b\n", "not a mapping"),
        ("nc: 2\n", "'names' is missing"),
        ("names: {0: a, 2: b}\n", "class ids 0..1"),
        ("names: [a, b]\nnc: 3\n", "'nc' is 3"),
        ("names: [[a]]\n", "not class names"),
        ("names: [a]\ndate: 2001-13-01\n", "not valid YAML: ValueError"),
        ("names: [a]\nok: !!bool maybe\n", "not valid YAML: KeyError"),
    ],
)
def test_malformed_data_yaml(tmp_path, text, match):
    root = fixture_copy(tmp_path)
    (root / "data.yaml").write_text(text)
    with pytest.raises(DataError, match=match) as info:
        yolo.read(root)
    assert info.value.file == str(root / "data.yaml")


def test_missing_config_and_folders(tmp_path):
    with pytest.raises(DataError, match=r"no data\.yaml or classes\.txt"):
        yolo.read(tmp_path)
    (tmp_path / "classes.txt").write_text("a\n")
    with pytest.raises(DataError, match="image folder not found"):
        yolo.read(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="label folder not found"):
        yolo.read(tmp_path)


PLANTED = {
    1: ("0 0.5 0.5 0.2 0.2", None),  # good box
    2: ("", None),  # blank: ignored
    3: ("0 0.5 0.5 0.2", "expected 5 values"),
    4: ("0 a 0.5 0.2 0.2", "'a' is not a number"),
    5: ("0 nan 0.5 0.2 0.2", "non-finite"),
    6: ("0 0.5 inf 0.2 0.2", "non-finite"),
    7: ("1.5 0.5 0.5 0.2 0.2", "class '1.5' is not an integer"),
    8: ("7 0.5 0.5 0.2 0.2", "outside the class list"),
    9: ("0 0.5 0.5 0 0.2", "non-positive width or height"),
    10: ("0 1.0 0.5 0.4 0.2", "clipped"),  # warning: sticks out on the right
    11: ("0 2.0 2.0 0.2 0.2", "lies outside"),
    12: ("1 0.1 0.1 0.3 0.1 0.3 0.5 0.1 0.5", None),  # good polygon
    13: ("1 0.1 0.1 0.3 0.1 0.3", "expected 5 values"),  # 2-point polygon + a stray value
    14: ("   ", None),
}


def test_planted_errors_each_reported_once(tmp_path):
    """Each planted row problem is reported once with the label file and ``line N``; an unreadable
    image is an error for that image; an orphan label file is one warning; good rows are kept."""
    root = fixture_copy(tmp_path)
    label = root / "labels" / "img1.txt"
    label.write_text("\n".join(row for row, _ in PLANTED.values()) + "\n")
    (root / "images" / "broken.png").write_bytes(b"not a png")
    (root / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    ds = yolo.read(root)
    by_record = {(p.file, p.record): p for p in ds.problems}
    assert len(by_record) == len(ds.problems)
    for n, (_, message) in PLANTED.items():
        if message is None:
            assert (str(label), f"line {n}") not in by_record
        else:
            p = by_record[(str(label), f"line {n}")]
            assert message in p.message
            assert p.severity == ("warning" if n == 10 else "error")
    assert by_record[(str(root / "images" / "broken.png"), "")].severity == "error"
    assert by_record[(str(root / "labels" / "orphan.txt"), "")].severity == "warning"
    assert len(ds.errors) == 10 and len(ds.warnings) == 2
    img1 = next(im for im in ds.images if im.file_name == "img1.png")
    assert [o.label for o in img1.instances] == [0, 0, 1]
    assert img1.instances[1].box == pytest.approx((40, 16, 50, 24))  # clipped at x = 50
    assert [im.file_name for im in ds.images] == ["img1.png", "img2.png"]
    with pytest.raises(DataError) as info:
        yolo.read(root, strict=True)
    assert str(root) in str(info.value)


def test_pose_rows_are_read_as_boxes_with_one_warning(tmp_path):
    """Ultralytics' pose rows (https://docs.ultralytics.com/datasets/pose/), ``kpt_shape: [2, 3]``: class,
    box, then 2 x (x y visibility). The box is read as a box row's (50 x 40 image: (20, 15, 30, 25)),
    the keypoints are left out with one warning for the dataset; a row of the wrong length is an error
    naming the expected count. Without ``kpt_shape`` the same 11 values would be a polygon of 5 points."""
    root = fixture_copy(tmp_path)
    (root / "data.yaml").write_text("names: [cat, dog]\nkpt_shape: [2, 3]\n")
    (root / "labels" / "img1.txt").write_text(
        "0 0.5 0.5 0.2 0.25 0.45 0.45 2 0.55 0.5 1\n1 0.5 0.5 0.2 0.25 0.1 0.1 2\n"
    )
    ds = yolo.read(root)
    (box,) = ds.images[0].instances
    assert box.label == 0 and box.mask is None
    assert box.box == pytest.approx((20, 15, 30, 25), abs=1e-9)
    (warning,) = ds.warnings
    assert "kpt_shape [2, 3]: a pose dataset" in warning.message and "6 keypoint values" in warning.message
    (error,) = ds.errors
    assert error.record == "line 2" and "expected 11 values" in error.message
    (root / "data.yaml").write_text("names: [cat, dog]\nkpt_shape: [17, 4]\n")
    with pytest.raises(DataError, match=r"'kpt_shape' must be \[K, 2\] or \[K, 3\]"):
        yolo.read(root)


# ------------------------------------------------------------------------------------------- round trip


def build_dataset(root: Path) -> AnnotationSet:
    """Tiny PNG images with bitmap (rectangle, disc, two-part), RLE, instance-PNG, polygon, box-only and
    crowd objects."""
    yy, xx = np.mgrid[:48, :64]
    disc = (xx - 20.5) ** 2 + (yy - 24.2) ** 2 <= 9.5**2
    rect = np.zeros((48, 64), dtype=bool)
    rect[5:17, 40:60] = True
    two = np.zeros((48, 64), dtype=bool)
    two[30:40, 2:10] = True
    two[42:47, 20:30] = True
    ids = np.zeros((48, 64), dtype=np.uint8)
    ids[30:44, 45:63] = 3
    Image.fromarray(ids).save(root / "inst.png")
    rle = mask_utils.encode(np.asfortranarray(rect.astype(np.uint8)))
    rle = {"size": [48, 64], "counts": rle["counts"].decode()}
    one = [
        Instance(bitmap_box(disc), 0, mask=disc),
        Instance(bitmap_box(rect), 2, mask=rle),
        Instance(bitmap_box(two), 1, mask=two),
        Instance((45.0, 30.0, 63.0, 44.0), 1, mask=InstancePNG(root / "inst.png", 3)),
        Instance((1.0, 1.0, 60.0, 40.0), 0, mask=rect, iscrowd=True),
    ]
    other = [
        Instance((1.5, 2.25, 10.75, 20.0), 1),
        Instance((2.0, 2.0, 12.0, 10.0), 0, mask=[[2, 2, 12, 2, 12, 10, 2, 10], [20, 20, 30, 20, 25, 30]]),
    ]
    images = [
        ImageRecord(0, write_png(root / "src" / "one.png", 64, 48), 64, 48, instances=one),
        ImageRecord(1, write_png(root / "src" / "two.png", 40, 32), 40, 32, instances=other),
        ImageRecord(2, write_png(root / "src" / "three.png", 16, 16), 16, 16),
    ]
    return AnnotationSet(images, ["a", "b", "c"], source="built in test")


def test_round_trip(tmp_path, caplog):
    """write -> read: same objects per image (crowd skipped with a warning), same labels, boxes equal to
    1e-6 of the image size (6 decimals), polygon boxes equal to the masks' tight boxes, masks decoded by
    pycocotools with IoU >= 0.95 (exact for these hole-free masks); a COCO-polygon mask keeps its
    polygon, so its box is the polygon's."""
    ds = build_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="segdet.data"):
        out = yolo.write(ds, tmp_path / "out")
    assert any("crowd" in r.getMessage() for r in caplog.records)
    config = yaml.safe_load((out / "data.yaml").read_text())
    assert config == {"path": ".", "train": "images", "val": "images", "names": {0: "a", 1: "b", 2: "c"}}
    row = (out / "labels" / "two.txt").read_text().splitlines()[0]
    assert row == "1 0.153125 0.347656 0.231250 0.554688"  # hand-computed, 6 decimals
    back = yolo.read(out)
    assert back.problems == [] and back.classes == ds.classes
    assert [im.file_name for im in back.images] == ["one.png", "three.png", "two.png"]
    by_name = {im.file_name: im for im in back.images}
    for im in ds.images:
        im2 = by_name[im.file_name]
        tol = 1e-6 * max(im.width, im.height)
        kept = [o for o in im.instances if not o.iscrowd]
        assert [o.label for o in im2.instances] == [o.label for o in kept]
        for o, o2 in zip(kept, im2.instances, strict=True):
            if o.mask is None:
                assert o2.mask is None
                assert o2.box == pytest.approx(o.box, abs=tol)
                continue
            want = mask_to_bitmap(o.mask, im.height, im.width)
            got = mask_to_bitmap(o2.mask, im.height, im.width)
            assert (got & want).sum() / (got | want).sum() >= 0.95
            np.testing.assert_array_equal(got, want)
            if isinstance(o.mask, list):  # COCO polygons are written as they are: their own box
                pts = np.concatenate([np.reshape(p, (-1, 2)) for p in o.mask])
                assert o2.box == pytest.approx((*pts.min(0), *pts.max(0)), abs=tol)
            else:  # traced on pixel corners: the mask's tight box
                assert o2.box == pytest.approx(bitmap_box(want), abs=tol)


def test_yolo_detection_sample(tmp_path):
    root = fixture_copy(tmp_path)
    data = yolo.YoloDetection(root, masks=True)
    image, target = data[0]
    assert image.shape == (3, 40, 50)
    assert target["labels"].tolist() == [0, 1]
    assert target["masks"][1].sum() == 10 * 16  # the polygon (5, 4)-(15, 20) covers 10 x 16 pixels


# -------------------------------------------------------------------------------------------- real data


def test_coco128(shared_dataset):
    """COCO128 in YOLO form: 128 images, 929 objects, 80 classes, one warning per orphan label file
    (000000000656, 000000000659), no errors; its boxes are the COCO JSON's non-crowd boxes to within the
    rounding of both files (COCO: 2 decimals, YOLO: 6 normalised decimals)."""
    root = shared_dataset("coco128")  # ../shared/data beside the checkout; skipped without it
    ds = yolo.read(root)
    assert ds.errors == []
    assert sorted(Path(w.file).name for w in ds.warnings) == ["000000000656.txt", "000000000659.txt"]
    assert (len(ds.images), ds.num_instances, len(ds.classes)) == (128, 929, 80)
    ref = {im.id: im for im in coco.read(root / "annotations" / "instances.json").images}
    assert set(ref) == {im.id for im in ds.images}  # ids are the numeric file stems
    for im in ds.images:
        want = [(o.label, o.box) for o in ref[im.id].instances if not o.iscrowd]
        assert len(im.instances) == len(want)
        for o in im.instances:  # match each YOLO box to the closest remaining COCO box of its class
            dist = [
                float(np.abs(np.subtract(o.box, box)).max()) if lab == o.label else np.inf
                for lab, box in want
            ]
            k = int(np.argmin(dist))
            assert dist[k] <= 0.01, (im.id, o.box)
            want.pop(k)

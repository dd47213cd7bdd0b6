"""Mask-folder semantic segmentation format (segdet.data.formats.masks).

References: the fixture tests/data/fixtures/masks/classes.txt and label arrays generated here (expected
values by hand: the ignore-named class is the ignore value and not a class); the real CamVid set's
documented layout (367 images, 11 classes, Unlabelled = 11). Label comparisons are exact.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdet.data.formats import masks
from segdet.data.masks import read_label_png
from segdet.data.palette import write_label_png, write_palette_png
from segdet.data.structures import AnnotationSet, ImageRecord
from segdet.errors import DataError

FIXTURE = Path(__file__).parent / "fixtures" / "masks"


def _image(path: Path, width: int = 40, height: int = 30, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _label(seed: int, num: int = 3, ignore: int = 3, width: int = 40, height: int = 30) -> np.ndarray:
    values = np.random.default_rng(seed).integers(0, num, (height, width))
    values[0, :5] = ignore
    return values


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "set"
    shutil.copytree(FIXTURE, root)
    for i, stem in enumerate(["a", "b"]):
        _image(root / "images" / f"{stem}.jpg", seed=i)
        write_label_png(root / "labels" / f"{stem}.png", _label(i))
    return root


def test_read_images_labels_layout(folder: Path):
    """classes.txt 'background, road, car, void': void (last line) is the ignore value 3 and not a
    class; images paired with labels by stem; sizes from the image headers."""
    ds = masks.read(folder)
    assert ds.problems == []
    assert ds.semantic_classes == ["background", "road", "car"] and ds.classes == ds.semantic_classes
    assert ds.ignore_index == 3
    assert [(r.file_name, r.semantic, r.width, r.height) for r in ds.images] == [
        ("a.jpg", folder / "labels" / "a.png", 40, 30),
        ("b.jpg", folder / "labels" / "b.png", 40, 30),
    ]
    assert all(r.instances == [] for r in ds.images)


def test_camvid_layout_and_split(tmp_path: Path):
    """<split>/ + <split>annot/ is found on its own (train by default, val with split='val')."""
    root = tmp_path / "camvid"
    (root / "classes.txt").parent.mkdir(parents=True)
    (root / "classes.txt").write_text("Sky\nRoad\nUnlabelled\n")
    for split, stems in (("train", ["t1", "t2"]), ("val", ["v1"])):
        for stem in stems:
            _image(root / split / f"{stem}.png")
            write_label_png(root / f"{split}annot" / f"{stem}.png", _label(0, 2, 2))
    train = masks.read(root)
    assert [r.file_name for r in train.images] == ["t1.png", "t2.png"]
    assert train.semantic_classes == ["Sky", "Road"] and train.ignore_index == 2
    assert [r.file_name for r in masks.read(root, split="val").images] == ["v1.png"]


def test_explicit_ignore_index_and_overrides(folder: Path):
    """ignore_index= turns the name rule off (void stays a class unless it is the ignore value's line);
    images= / labels= override the folders."""
    ds = masks.read(folder, ignore_index=255)
    assert ds.semantic_classes == ["background", "road", "car", "void"] and ds.ignore_index == 255
    ds = masks.read(folder, ignore_index=3)
    assert ds.semantic_classes == ["background", "road", "car"]
    (folder / "images").rename(folder / "rgb")
    (folder / "labels").rename(folder / "gt")
    ds = masks.read(folder, images=Path("rgb"), labels=folder / "gt")
    assert len(ds.images) == 2 and ds.images[0].path == folder / "rgb" / "a.jpg"


def test_ignore_class_in_the_middle(folder: Path):
    """An ignore name that is not the last line keeps its name (values must not shift) but is the
    ignore value, with a warning at its line."""
    (folder / "classes.txt").write_text("void\nroad\ncar\n")
    ds = masks.read(folder)
    assert ds.semantic_classes == ["void", "road", "car"] and ds.ignore_index == 0
    assert [(p.severity, p.record) for p in ds.problems] == [("warning", "line 1")]


def test_pairing_problems(folder: Path):
    """An image without a label is an error naming the image (dropped); a label without an image is a
    warning naming the label; strict raises on the error."""
    _image(folder / "images" / "c.png")
    write_label_png(folder / "labels" / "orphan.png", _label(3))
    ds = masks.read(folder)
    assert [r.file_name for r in ds.images] == ["a.jpg", "b.jpg"]
    assert [(p.severity, p.file, p.record) for p in ds.problems] == [
        ("error", str(folder / "images" / "c.png"), "image c"),
        ("warning", str(folder / "labels" / "orphan.png"), "label orphan"),
    ]
    with pytest.raises(DataError, match=r"c.png: image c: no label file c.png"):
        masks.read(folder, strict=True)


def test_missing_layout_and_classes(tmp_path: Path, folder: Path):
    """No recognisable layout, or no classes.txt, raises DataError naming the folder / file."""
    with pytest.raises(DataError, match="no mask-folder layout"):
        masks.read(tmp_path)
    (folder / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"classes\.txt not found"):
        masks.read(folder)
    assert masks.read(folder, classes=["a", "b", "c"]).semantic_classes == ["a", "b", "c"]


def test_check_label_file(tmp_path: Path):
    """check_label_file lists a size mismatch and values outside the classes other than ignore; a
    palette PNG is read as its indices; a good file gives []."""
    good = tmp_path / "good.png"
    write_palette_png(good, _label(0, 3, 255))
    assert masks.check_label_file(good, 40, 30, 3, 255) == []
    problems = masks.check_label_file(good, 41, 30, 2, 255)
    assert problems == [
        "label is 40x30, image is 41x30",
        "label values 2 are outside the 2 classes (0..1) and not the ignore value 255",
    ]
    rgb = tmp_path / "rgb.png"
    _image(rgb)
    assert "mode RGB" in masks.check_label_file(rgb, 40, 30, 3, 255)[0]
    assert "cannot read" in masks.check_label_file(tmp_path / "none.png", 40, 30, 3, 255)[0]


def test_round_trip_keeps_masks_and_ignore(tmp_path: Path):
    """write -> read: semantic_classes, ignore_index (written as a last 'Unlabelled' line when it is
    the value after the classes) and every label value are kept exactly; 16-bit values too."""
    _image(tmp_path / "src" / "p.png")
    _image(tmp_path / "src" / "q.jpg", seed=1)
    sem = _label(5, 3, 3)
    images = [ImageRecord(1, tmp_path / "src" / "p.png", 40, 30, semantic=sem),
              ImageRecord(2, tmp_path / "src" / "q.jpg", 40, 30)]  # fmt: skip
    ds = AnnotationSet(images, ["x", "y", "z"], semantic_classes=["x", "y", "z"], ignore_index=3)
    root = masks.write(ds, tmp_path / "out")
    assert (root / "classes.txt").read_text().splitlines() == ["x", "y", "z", "Unlabelled"]
    back = masks.read(root)
    assert back.problems == [] and back.semantic_classes == ["x", "y", "z"] and back.ignore_index == 3
    assert np.array_equal(read_label_png(back.images[0].semantic), sem)
    assert Image.open(back.images[0].semantic).mode == "L"
    assert np.all(read_label_png(back.images[1].semantic) == 3)  # no mask: all ignore

    wide = sem.copy()
    wide[1, 1] = 300
    ds = AnnotationSet(images[:1], ["x"], semantic_classes=[f"c{i}" for i in range(301)])
    ds.images[0].semantic = wide
    back = masks.read(masks.write(ds, tmp_path / "out16"))
    assert back.ignore_index == 255 and len(back.semantic_classes) == 301
    assert np.array_equal(read_label_png(back.images[0].semantic), wide)


def test_mask_folder_dataset(folder: Path):
    """MaskFolder samples carry target['semantic'] equal to the label PNG's values."""
    data = masks.MaskFolder(folder)
    image, target = data[1]
    assert tuple(image.shape) == (3, 30, 40)
    assert np.array_equal(target["semantic"].numpy(), _label(1))


def test_real_camvid(shared_dataset):
    """The real CamVid training split: 367 images, 11 classes, Unlabelled = ignore value 11."""
    root = shared_dataset("camvid")
    ds = masks.read(root, strict=True)
    assert len(ds.images) == 367
    assert ds.semantic_classes == ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol",
                                   "Fence", "Car", "Pedestrian", "Bicyclist"]  # fmt: skip
    assert ds.ignore_index == 11
    first = ds.images[0]
    assert (first.width, first.height) == (480, 360)
    assert masks.check_label_file(first.semantic, 480, 360, 11, 11) == []


def test_real_camvid_round_trip(shared_dataset, tmp_path: Path):
    """Three CamVid images written and read back: classes, ignore 11 and label values identical."""
    ds = masks.read(shared_dataset("camvid"))
    ds.images = ds.images[:3]
    back = masks.read(masks.write(ds, tmp_path / "out"))
    assert back.semantic_classes == ds.semantic_classes and back.ignore_index == 11
    for a, b in zip(ds.images, back.images, strict=True):
        assert np.array_equal(read_label_png(a.semantic), read_label_png(b.semantic))

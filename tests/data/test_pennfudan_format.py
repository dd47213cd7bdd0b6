"""Penn-Fudan / instance-id PNG format (segdet.data.formats.pennfudan).

References: the hand-written annotation file tests/data/fixtures/pennfudan/Annotation/Ped1.txt and the
mask generated here (boxes computed by hand: pixel columns 4..19 -> x1 = 4, x2 = 20, i.e. 1-based
(5, 20)); the real Penn-Fudan set (120 images, 300 pedestrians, counted from its annotation files).
Comparisons are exact.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdet.data.formats import pennfudan
from segdet.data.masks import read_label_png
from segdet.data.palette import write_label_png
from segdet.data.structures import AnnotationSet, ImageRecord, Instance, InstancePNG
from segdet.errors import DataError

FIXTURE = Path(__file__).parent / "fixtures" / "pennfudan"


def _image(path: Path, width: int = 64, height: int = 48, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _ped1_mask() -> np.ndarray:
    ids = np.zeros((48, 64), dtype=np.int64)
    ids[9:40, 4:20] = 1  # 1-based (5, 10) - (20, 40)
    ids[2:45, 30:60] = 2  # 1-based (31, 3) - (60, 45)
    ids[20:30, 40:50] = 0  # a hole: the box stays the outline's
    return ids


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "PennFudanPed"
    shutil.copytree(FIXTURE, root)
    _image(root / "PNGImages" / "Ped1.png")
    write_label_png(root / "PedMasks" / "Ped1_mask.png", _ped1_mask())
    _image(root / "PNGImages" / "Ped2.png", 32, 24, seed=1)
    ped2 = np.zeros((24, 32), dtype=np.int64)
    ped2[3:7, 10:12] = 1
    write_label_png(root / "PedMasks" / "Ped2_mask.png", ped2)  # no annotation file: allowed
    return root


def test_read_fixture(root: Path):
    """One object per mask value, box from the mask's pixels, InstancePNG(mask, value), class
    pedestrian; the annotation agrees, so no problem is reported."""
    ds = pennfudan.read(root)
    assert ds.problems == [] and ds.classes == ["pedestrian"]
    ped1, ped2 = ds.images
    assert (ped1.width, ped1.height, ped1.file_name) == (64, 48, "Ped1.png")
    assert [o.box for o in ped1.instances] == [(4.0, 9.0, 20.0, 40.0), (30.0, 2.0, 60.0, 45.0)]
    mask = root / "PedMasks" / "Ped1_mask.png"
    assert [o.mask for o in ped1.instances] == [InstancePNG(mask, 1), InstancePNG(mask, 2)]
    assert [o.label for o in ped1.instances] == [0, 0]
    assert [o.box for o in ped2.instances] == [(10.0, 3.0, 12.0, 7.0)]


def test_dataset_masks(root: Path):
    """PennFudan samples: masks[k] == (mask == k + 1), boxes as read."""
    data = pennfudan.PennFudan(root)
    _, target = data[0]
    ids = _ped1_mask()
    assert np.array_equal(target["masks"].numpy(), np.stack([ids == 1, ids == 2]).astype(np.uint8))
    assert target["boxes"].tolist() == [[4.0, 9.0, 20.0, 40.0], [30.0, 2.0, 60.0, 45.0]]


def test_cross_check_warnings(root: Path):
    """A box 3 px off and a wrong object count are warnings at their annotation lines; the mask
    still defines the objects."""
    path = root / "Annotation" / "Ped1.txt"
    text = path.read_text().replace("(5, 10) - (20, 40)", "(5, 10) - (23, 40)")
    path.write_text(text.replace("ground truth : 2", "ground truth : 3"))
    ds = pennfudan.read(root, strict=True)  # warnings only
    assert len(ds.images[0].instances) == 2
    assert [(p.severity, p.record) for p in ds.problems] == [("warning", "line 11"), ("warning", "line 5")]
    assert "differs from its mask's box" in ds.problems[0].message
    assert "3 objects listed, the mask has 2" in ds.problems[1].message


def test_garbage_annotation_lines(root: Path):
    """Unrecognised and malformed lines are warnings naming their line numbers."""
    path = root / "Annotation" / "Ped1.txt"
    lines = path.read_text().splitlines()
    lines[10] = 'Bounding box for object 1 "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : (5, x) - (20, 40)'
    lines.insert(3, "complete nonsense \x00\x01")
    path.write_text("\n".join(lines))
    ds = pennfudan.read(root)
    assert [(p.severity, p.record) for p in ds.problems] == [("warning", "line 4"), ("warning", "line 12")]
    assert "unrecognised line" in ds.problems[0].message and "malformed" in ds.problems[1].message
    assert len(ds.images[0].instances) == 2


def test_classes_txt_matches_labels(root: Path):
    """With classes.txt, labels pick the class (PASperson* -> pedestrian); an unknown label is an
    error naming the annotation file and the object; strict raises."""
    (root / "classes.txt").write_text("car\npedestrian\n")
    ds = pennfudan.read(root)
    assert ds.classes == ["car", "pedestrian"]
    assert [o.label for o in ds.images[0].instances] == [1, 1]
    # Ped2 has no annotation file: with two classes its object has no class.
    assert [(p.file, p.record) for p in ds.errors] == [(str(root / "Annotation" / "Ped2.txt"), "object 1")]
    path = root / "Annotation" / "Ped1.txt"
    path.write_text(path.read_text().replace("object 2 \"PASpersonWalking\"", "object 2 \"truck\"")
                    .replace('pedestrian 2 ("PASpersonWalking")', 'pedestrian 2 ("truck")'))  # fmt: skip
    ds = pennfudan.read(root)
    assert ("object 2", "unknown class 'truck'") in [(p.record, p.message) for p in ds.errors]
    with pytest.raises(DataError, match=r"Ped1\.txt: object 2: unknown class 'truck'"):
        pennfudan.read(root, strict=True)


def test_missing_mask_and_orphan_mask(root: Path):
    """An image without a mask is an error naming the image; a mask without an image a warning."""
    _image(root / "PNGImages" / "Ped3.png")
    write_label_png(root / "PedMasks" / "Lonely_mask.png", np.ones((4, 4), dtype=np.int64))
    ds = pennfudan.read(root)
    assert [r.file_name for r in ds.images] == ["Ped1.png", "Ped2.png"]
    assert [(p.severity, Path(p.file).name) for p in ds.problems] == [
        ("error", "Ped3.png"),
        ("warning", "Lonely_mask.png"),
    ]


def test_round_trip(tmp_path: Path):
    """write -> read: values 1..N in object order (the later object wins overlaps), boxes from the
    written masks, classes by name; a box-only object is written as its box, a crowd object is left
    out and an object hidden by later ones is dropped."""
    _image(tmp_path / "src" / "a.jpg", 64, 48)
    m1 = np.zeros((48, 64), dtype=bool)
    m1[5:30, 5:25] = True
    m2 = np.zeros((48, 64), dtype=bool)
    m2[20:40, 20:50] = True
    hidden = np.zeros((48, 64), dtype=bool)
    hidden[25:30, 30:35] = True  # inside m2, painted before it
    objects = [
        Instance((5.0, 5.0, 25.0, 30.0), 0, m1),
        Instance((30.0, 25.0, 35.0, 30.0), 1, hidden),
        Instance((20.0, 20.0, 50.0, 40.0), 1, m2),
        Instance((0.0, 0.0, 64.0, 48.0), 0, np.ones((48, 64), dtype=bool), iscrowd=True),
        Instance((52.0, 2.0, 60.0, 10.0), 0),  # no mask: its box
    ]
    ds = AnnotationSet([ImageRecord(7, tmp_path / "src" / "a.jpg", 64, 48, objects)], ["walker", "cyclist"])
    root = pennfudan.write(ds, tmp_path / "out")
    assert (root / "classes.txt").read_text().split() == ["walker", "cyclist"]
    back = pennfudan.read(root)
    assert back.problems == [] and back.classes == ["walker", "cyclist"]
    got = back.images[0]
    assert got.file_name == "a.jpg"
    expected_boxes = [(5.0, 5.0, 25.0, 30.0), (20.0, 20.0, 50.0, 40.0), (52.0, 2.0, 60.0, 10.0)]
    assert [o.box for o in got.instances] == expected_boxes
    assert [o.label for o in got.instances] == [0, 1, 0]
    ids = read_label_png(got.instances[0].mask.path)
    expected = np.zeros((48, 64), dtype=np.int64)
    expected[m1] = 1
    expected[m2] = 2
    expected[2:10, 52:60] = 3
    assert np.array_equal(ids, expected)


def test_round_trip_real_subset(tmp_path: Path, shared_dataset):
    """The real set written again and read back: the same boxes and identical masks (first 10 images)."""
    ds = pennfudan.read(shared_dataset("pennfudan"))
    ds.images = ds.images[:10]
    back = pennfudan.read(pennfudan.write(ds, tmp_path / "out"))
    assert back.problems == []
    for a, b in zip(ds.images, back.images, strict=True):
        assert [o.box for o in a.instances] == [o.box for o in b.instances]
        mask_a, mask_b = a.instances[0].mask.path, b.instances[0].mask.path
        assert np.array_equal(read_label_png(mask_a), read_label_png(mask_b))


def test_real_pennfudan(shared_dataset):
    """120 images and 300 pedestrians (the annotation files' 'Objects with ground truth' total); the
    two images whose annotated box differs from the mask's by more than 2 px are warned about."""
    ds = pennfudan.read(shared_dataset("pennfudan"), strict=True)
    assert len(ds.images) == 120 and ds.num_instances == 300
    assert ds.errors == []
    assert sorted(Path(p.file).name for p in ds.warnings) == ["PennPed00019.txt", "PennPed00027.txt"]
    first = ds.images[0]
    # the stem: the GPU machine's offline copy of the data holds the images as JPEG (FudanPed00001.jpg)
    assert Path(first.file_name).stem == "FudanPed00001" and (first.width, first.height) == (559, 536)
    # Annotation: (160, 182) - (302, 431) and (420, 171) - (535, 486), 1-based inclusive.
    assert [o.box for o in first.instances] == [(159.0, 181.0, 302.0, 431.0), (419.0, 170.0, 535.0, 486.0)]

"""Pascal VOC reader and writer (segdet.data.formats.voc) and the VOC palette.

References: the hand-written fixture in tests/data/fixtures/voc (expected values computed by hand from
the VOC devkit's conventions: 1-based inclusive bndbox -> x1 = xmin - 1, x2 = xmax; SegmentationObject
value k = k-th <object>), and the VOC devkit's labelcolormap for the palette. Comparisons are exact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdet.data.formats import voc
from segdet.data.formats.voc_write import voc_box
from segdet.data.masks import read_label_png
from segdet.data.palette import voc_palette, write_palette_png
from segdet.data.structures import AnnotationSet, ImageRecord, Instance, InstancePNG
from segdet.errors import DataError

FIXTURE = Path(__file__).parent / "fixtures" / "voc"


def _image(path: Path, width: int, height: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def _semantic_img1() -> np.ndarray:
    sem = np.zeros((48, 64), dtype=np.int64)
    sem[9:30, 4:20] = 12  # dog = class 11, value 12
    sem[4:40, 29:60] = 15  # person = class 14, value 15
    sem[9:30, 3] = 255  # a void border
    return sem


def _objects_img1() -> np.ndarray:
    ids = np.zeros((48, 64), dtype=np.int64)
    ids[9:30, 4:20] = 1
    ids[4:40, 29:60] = 2
    return ids


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """The fixture's XML and split files plus generated images and palette PNGs."""
    root = tmp_path / "VOC"
    shutil.copytree(FIXTURE, root)
    _image(root / "JPEGImages" / "img1.jpg", 64, 48)
    _image(root / "JPEGImages" / "img2.png", 50, 40)  # VOC readers must accept .png images
    _image(root / "JPEGImages" / "seg3.jpg", 32, 24)
    write_palette_png(root / "SegmentationClass" / "img1.png", _semantic_img1())
    write_palette_png(root / "SegmentationObject" / "img1.png", _objects_img1())
    seg3 = np.zeros((24, 32), dtype=np.int64)
    seg3[5:10, 5:10] = 8
    write_palette_png(root / "SegmentationClass" / "seg3.png", seg3)
    return root


def test_palette_matches_devkit_colours():
    """VOC devkit labelcolormap: 0 black, 1 (128,0,0), 2 (0,128,0), 3 (128,128,0), 15 person
    (192,128,128), 20 tvmonitor (0,64,128), 255 void (224,224,192). Exact."""
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 15: (192, 128, 128),
                20: (0, 64, 128), 255: (224, 224, 192)}  # fmt: skip
    for index, rgb in expected.items():
        assert tuple(pal[index]) == rgb


def test_read_fixture_every_xml(voc_root: Path):
    """split=None: every XML plus the segmentation-only PNG; boxes converted by hand from 1-based
    inclusive indices, difficult flags, instance PNG values, size from the header when <size> is absent."""
    ds = voc.read(voc_root)
    assert ds.problems == []
    assert ds.classes == list(voc.VOC_CLASSES)
    assert ds.semantic_classes == ["background", *voc.VOC_CLASSES]
    assert ds.ignore_index == 255
    by_name = {r.file_name: r for r in ds.images}
    assert set(by_name) == {"img1.jpg", "img2.png", "seg3.jpg"}

    img1 = by_name["img1.jpg"]
    assert (img1.width, img1.height) == (64, 48)
    assert [o.box for o in img1.instances] == [(4.0, 9.0, 20.0, 30.0), (29.0, 4.0, 60.0, 40.0)]
    assert [ds.classes[o.label] for o in img1.instances] == ["dog", "person"]
    assert [o.difficult for o in img1.instances] == [True, False]
    objects = voc_root / "SegmentationObject" / "img1.png"
    assert [o.mask for o in img1.instances] == [InstancePNG(objects, 1), InstancePNG(objects, 2)]
    assert img1.semantic == voc_root / "SegmentationClass" / "img1.png"

    img2 = by_name["img2.png"]
    assert (img2.width, img2.height) == (50, 40)  # no <size>: read from the PNG header
    assert [o.box for o in img2.instances] == [(0.0, 0.0, 50.0, 40.0)]
    assert img2.instances[0].mask is None and img2.semantic is None

    seg3 = by_name["seg3.jpg"]
    assert seg3.instances == [] and (seg3.width, seg3.height) == (32, 24)


def test_split_selection(voc_root: Path):
    """ImageSets/Main/<split>.txt selects ids; ImageSets/Segmentation/<split>.txt is used when Main has no
    such split, and keeps listed ids that only have a SegmentationClass PNG."""
    assert [r.file_name for r in voc.read(voc_root, split="train").images] == ["img1.jpg"]
    assert [r.file_name for r in voc.read(voc_root, split="val").images] == ["img2.png"]
    seg = voc.read(voc_root, split="segtrain")
    assert [r.file_name for r in seg.images] == ["img1.jpg", "seg3.jpg"]
    assert seg.images[1].instances == []
    with pytest.raises(DataError, match="split 'nope' not found"):
        voc.read(voc_root, split="nope")


def test_palette_pngs_decode_to_indices(voc_root: Path):
    """The torch datasets give the palette indices (255 = void kept) and the k-th object's pixels
    (SegmentationObject == k), equal to the arrays written."""
    seg = voc.VOCSegmentation(voc_root, split="segtrain")
    assert len(seg) == 2
    _, target = seg[0]
    assert np.array_equal(target["semantic"].numpy(), _semantic_img1())
    assert (target["semantic"] == 255).sum() == 21

    det = voc.VOCDetection(voc_root, split="train", masks=True)
    _, target = det[0]
    ids = _objects_img1()
    assert np.array_equal(target["masks"].numpy(), np.stack([ids == 1, ids == 2]).astype(np.uint8))
    assert target["difficult"].tolist() == [True, False]


def _tiny_dataset(tmp_path: Path) -> AnnotationSet:
    _image(tmp_path / "src" / "a.png", 64, 48, seed=1)
    _image(tmp_path / "src" / "b.jpg", 40, 32, seed=2)
    m1 = np.zeros((48, 64), dtype=bool)
    m1[5:20, 10:30] = True
    m2 = np.zeros((48, 64), dtype=bool)
    m2[15:40, 25:60] = True  # overlaps m1: the later object wins there
    sem = np.zeros((48, 64), dtype=np.int64)
    sem[m1], sem[m2], sem[0, :] = 1, 2, 9  # 9 = this set's ignore value
    images = [
        ImageRecord(1, tmp_path / "src" / "a.png", 64, 48,
                    [Instance((10.0, 5.0, 30.0, 20.0), 0, m1), Instance((25.0, 15.0, 60.0, 40.0), 1, m2,
                                                                       difficult=True)], sem),
        ImageRecord(2, tmp_path / "src" / "b.jpg", 40, 32, [Instance((0.0, 0.0, 40.0, 32.0), 1)]),
    ]  # fmt: skip
    return AnnotationSet(images, ["cat", "dog"], ignore_index=9)


def test_round_trip(tmp_path: Path):
    """write -> read gives the same boxes, classes, difficult flags; SegmentationObject holds value k for
    object k with the later object winning overlaps; the semantic mask comes back with the ignore value
    written as VOC's 255. Exact."""
    ds = _tiny_dataset(tmp_path)
    root = voc.write(ds, tmp_path / "out")
    assert (root / "classes.txt").read_text().split() == ["cat", "dog"]
    assert (root / "ImageSets" / "Main" / "all.txt").read_text().split() == ["a", "b"]
    assert (root / "ImageSets" / "Segmentation" / "all.txt").read_text().split() == ["a"]
    back = voc.read(root)
    assert back.problems == [] and back.classes == ["cat", "dog"]
    assert [r.file_name for r in back.images] == ["a.png", "b.jpg"]
    for src, got in zip(ds.images, back.images, strict=True):
        assert (got.width, got.height) == (src.width, src.height)
        assert [o.box for o in got.instances] == [o.box for o in src.instances]
        assert [o.label for o in got.instances] == [o.label for o in src.instances]
        assert [o.difficult for o in got.instances] == [o.difficult for o in src.instances]
    a = back.images[0]
    ids = read_label_png(a.instances[0].mask.path)
    m1, m2 = ds.images[0].instances[0].mask, ds.images[0].instances[1].mask
    assert np.array_equal(ids == 2, m2) and np.array_equal(ids == 1, m1 & ~m2)
    expected_sem = np.where(ds.images[0].semantic == 9, 255, ds.images[0].semantic)
    assert np.array_equal(read_label_png(a.semantic), expected_sem)
    assert Image.open(a.semantic).mode == "P"
    assert back.images[1].instances[0].mask is None  # b has no masks: no SegmentationObject PNG
    assert not (root / "SegmentationObject" / "b.png").exists()


def test_write_copies_images_and_links_only_when_asked(tmp_path: Path):
    """Images are copied by default (an edit of the output must not edit the source); with
    ``link_images=True`` they are hard-linked where the file system allows (the source's inode)."""
    ds = _tiny_dataset(tmp_path)
    root = voc.write(ds, tmp_path / "out")
    written, source = root / "JPEGImages" / "a.png", ds.images[0].path
    assert os.stat(written).st_ino != os.stat(source).st_ino
    assert written.read_bytes() == source.read_bytes()
    linked = voc.write(ds, tmp_path / "linked", link_images=True)
    assert os.stat(linked / "JPEGImages" / "a.png").st_ino == os.stat(source).st_ino


def test_voc_box_rounding():
    """Hand-computed: round half up, +1 on the minimum, clipped to the image, at least one pixel."""
    assert voc_box((10.0, 5.0, 30.0, 20.0), 64, 48) == (11, 6, 30, 20)
    assert voc_box((10.4, 5.5, 29.5, 15.2), 64, 48) == (11, 7, 30, 15)
    assert voc_box((-3.0, -1.0, 70.0, 50.0), 64, 48) == (1, 1, 64, 48)
    assert voc_box((10.2, 10.2, 10.3, 10.3), 64, 48) == (11, 11, 11, 11)


def _xml(objects: str, size: str = "<size><width>64</width><height>48</height></size>") -> str:
    return f"<annotation><filename>x.jpg</filename>{size}{objects}</annotation>"


def _obj(name: str, box: tuple) -> str:
    coords = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))
    return f"<object><name>{name}</name><bndbox>{coords}</bndbox></object>"


def _planted(tmp_path: Path, xml: str, stem: str = "x") -> Path:
    root = tmp_path / "bad"
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / f"{stem}.xml").write_text(xml)
    _image(root / "JPEGImages" / "x.jpg", 64, 48)
    return root


@pytest.mark.parametrize(
    ("objects", "record", "message"),
    [
        (_obj("unicorn", (1, 1, 5, 5)), "object 2", "unknown class 'unicorn'"),
        (_obj("dog", ("nan", 1, 5, 5)), "object 2", "non-finite"),
        (_obj("dog", (10, 1, 5, 5)), "object 2", "non-positive width"),
        (_obj("dog", ("abc", 1, 5, 5)), "object 2", "is not a number"),
        (_obj("dog", (-80, 1, -70, 5)), "object 2", "outside"),
        ("<object><name>dog</name></object>", "object 2", "no <bndbox>"),
        ("<object><bndbox><xmin>1</xmin></bndbox></object>", "object 2", "no <name>"),
    ],
)
def test_planted_object_errors(tmp_path: Path, objects: str, record: str, message: str):
    """Each bad object is one error naming the XML and the object; good objects are kept; strict
    raises DataError with the same location."""
    root = _planted(tmp_path, _xml(_obj("cat", (1, 1, 10, 10)) + objects))
    ds = voc.read(root)
    errors = ds.errors
    assert len(errors) == 1
    assert errors[0].file == str(root / "Annotations" / "x.xml") and errors[0].record == record
    assert message in errors[0].message
    assert ds.classes[ds.images[0].instances[0].label] == "cat"
    with pytest.raises(DataError, match=record):
        voc.read(root, strict=True)


def test_malformed_xml_reports_line(tmp_path: Path):
    """An XML parse error is one error naming the file and the parser's line; the image is dropped."""
    root = _planted(tmp_path, "<annotation>\n<filename>x.jpg</filename>\n<object>\n</annotation>\n")
    ds = voc.read(root)
    assert ds.images == []
    assert len(ds.errors) == 1 and ds.errors[0].record == "line 4"
    assert "malformed XML" in ds.errors[0].message
    with pytest.raises(DataError, match=r"x\.xml: line 4: malformed XML"):
        voc.read(root, strict=True)


def test_missing_image_and_bad_size(tmp_path: Path):
    """An XML whose image is missing is an error naming the image; an unusable <size> falls back to the
    image header with a warning."""
    root = _planted(tmp_path, _xml(_obj("dog", (1, 1, 5, 5))))
    (root / "Annotations" / "y.xml").write_text(
        "<annotation><filename>missing.jpg</filename>" + _obj("dog", (1, 1, 5, 5)) + "</annotation>"
    )
    (root / "Annotations" / "x.xml").write_text(
        _xml(_obj("dog", (1, 1, 5, 5)), size="<size><width>sixty</width><height>48</height></size>")
    )
    ds = voc.read(root)
    assert [r.file_name for r in ds.images] == ["x.jpg"]
    assert (ds.images[0].width, ds.images[0].height) == (64, 48)
    assert [(p.severity, Path(p.file).name, p.record) for p in ds.problems] == [
        ("warning", "x.xml", "size/width"),
        ("error", "missing.jpg", "filename"),
    ]


def test_bad_classes_txt(tmp_path: Path):
    """classes.txt with an empty line and a repeated name: errors at their lines; an empty file or a
    non-UTF-8 one raises DataError naming classes.txt."""
    root = _planted(tmp_path, _xml(_obj("dog", (1, 1, 5, 5))))
    (root / "classes.txt").write_text("dog\n\ncat\ndog\n")
    ds = voc.read(root)
    where = [(Path(p.file).name, p.record) for p in ds.errors]
    assert where == [("classes.txt", "line 2"), ("classes.txt", "line 4")]
    with pytest.raises(DataError, match=r"classes\.txt: line 2"):
        voc.read(root, strict=True)
    (root / "classes.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"classes\.txt: classes file names no class"):
        voc.read(root)
    (root / "classes.txt").write_bytes(b"\xff\xfe\x00dog")
    with pytest.raises(DataError, match=r"classes\.txt"):
        voc.read(root)


def test_split_file_lists_unknown_id(tmp_path: Path):
    """An id in a split file without XML or mask is an error at its line of the split file."""
    root = _planted(tmp_path, _xml(_obj("dog", (1, 1, 5, 5))))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("x\n\nghost\n")
    ds = voc.read(root, split="train")
    assert [r.file_name for r in ds.images] == ["x.jpg"]
    assert [(Path(p.file).name, p.record) for p in ds.errors] == [("train.txt", "line 3")]


def test_rewrite_read_dataset(voc_root: Path, tmp_path: Path):
    """A read VOC set (InstancePNG masks, SegmentationClass paths, a segmentation-only image) written
    again and read back: same boxes and flags, identical palette indices in both mask PNGs."""
    ds = voc.read(voc_root)
    back = voc.read(voc.write(ds, tmp_path / "again"))
    assert back.problems == []
    assert [r.file_name for r in back.images] == [r.file_name for r in ds.images]
    for src, got in zip(ds.images, back.images, strict=True):
        assert [(o.box, o.label, o.difficult) for o in got.instances] == [
            (o.box, o.label, o.difficult) for o in src.instances
        ]
        assert (got.semantic is None) == (src.semantic is None)
        if src.semantic is not None:
            assert np.array_equal(read_label_png(got.semantic), read_label_png(src.semantic))
    objects = back.images[0].instances[0].mask.path
    assert np.array_equal(read_label_png(objects), _objects_img1())


def _occluded_dataset(tmp_path: Path) -> AnnotationSet:
    """One 32x32 image: object 1 (cat) entirely covered by object 2 (dog, written after it), object 3
    (cat) without a mask, object 4 (dog) visible."""
    _image(tmp_path / "src" / "a.png", 32, 32, seed=3)
    hidden = np.zeros((32, 32), dtype=bool)
    hidden[6:12, 6:12] = True
    cover = np.zeros((32, 32), dtype=bool)
    cover[2:20, 2:20] = True
    last = np.zeros((32, 32), dtype=bool)
    last[24:30, 24:30] = True
    objects = [
        Instance((6.0, 6.0, 12.0, 12.0), 0, hidden),
        Instance((2.0, 2.0, 20.0, 20.0), 1, cover),
        Instance((20.0, 0.0, 30.0, 8.0), 0),
        Instance((24.0, 24.0, 30.0, 30.0), 1, last),
    ]
    return AnnotationSet([ImageRecord(1, tmp_path / "src" / "a.png", 32, 32, objects)], ["cat", "dog"])


def test_objects_without_pixels_keep_their_box_and_pass_check(tmp_path: Path):
    """Item 2: an object with no visible pixel (covered by later ones) or without a mask keeps its XML
    object, marked <segmented>0</segmented>, and value k stays the k-th object for the others; read back,
    the marked objects have no mask and `check` finds nothing (it reported 'instance values [1] have no
    pixels'; an object without a mask dropped the whole image's SegmentationObject)."""
    import xml.etree.ElementTree as ET

    from segdet.data.check import check_dataset
    from segdet.data.formats.report import WriteReport

    ds = _occluded_dataset(tmp_path)
    report = WriteReport()
    root = voc.write(ds, tmp_path / "out", report=report)
    xml = ET.parse(root / "Annotations" / "a.xml").getroot()
    flags = [o.findtext("segmented") for o in xml.findall("object")]
    assert flags == ["0", None, "0", None]
    ids = read_label_png(root / "SegmentationObject" / "a.png")
    assert sorted(np.unique(ids).tolist()) == [0, 2, 4]
    assert np.array_equal(ids == 4, ds.images[0].instances[3].mask)
    back = voc.read(root)
    masks = [o.mask for o in back.images[0].instances]
    assert masks[0] is None and masks[2] is None
    assert (masks[1].value, masks[3].value) == (2, 4)
    assert [o.box for o in back.images[0].instances] == [o.box for o in ds.images[0].instances]
    assert check_dataset(back) == []
    assert report.objects == 4 and not report.left_out
    assert dict(report.without_mask) == {"with no visible pixel (covered by objects after it)": 1}


def test_unmarked_object_without_pixels_is_still_an_error(tmp_path: Path):
    """The check accepts an XML object without SegmentationObject pixels only when it is marked
    <segmented>0</segmented>: in a dataset that does not say so, a missing value is a broken mask."""
    from segdet.data.check import check_dataset

    root = voc.write(_occluded_dataset(tmp_path), tmp_path / "out")
    xml = root / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<segmented>0</segmented>", "", 1))
    problems = check_dataset(voc.read(root))
    assert [(p.severity, p.message) for p in problems] == [("error", "instance values [1] have no pixels")]


def test_semantic_classes_without_background_round_trip(tmp_path: Path):
    """Item 1: semantic classes that are not 'background' + the object classes (a mask folder's: value 0
    is a class) are written as they are with segmentation_classes.txt naming the values, and read back
    with the same names; the reader took value 0 as 'background' and shifted every name by one."""
    _image(tmp_path / "src" / "a.png", 8, 6)
    sem = np.zeros((6, 8), dtype=np.int64)
    sem[:, 4:] = 1
    sem[0] = 2  # this set's ignore value
    names = ["Sky", "Road"]
    record = ImageRecord(1, tmp_path / "src" / "a.png", 8, 6, [], sem)
    ds = AnnotationSet([record], list(names), semantic_classes=list(names), ignore_index=2)
    root = voc.write(ds, tmp_path / "out")
    assert (root / "segmentation_classes.txt").read_text().split() == names
    back = voc.read(root)
    assert back.problems == []
    assert (back.classes, back.semantic_classes, back.ignore_index) == (names, names, 255)
    assert np.array_equal(read_label_png(back.images[0].semantic), np.where(sem == 2, 255, sem))
    # VOC's own convention (value 0 = background) needs no such file
    plain = voc.write(_tiny_dataset(tmp_path), tmp_path / "plain")
    assert not (plain / "segmentation_classes.txt").exists()

"""A synthetic dataset written by every writer and read back by every reader keeps every object.

Reference: the generator's exact ground truth. Boxes must come back to the format's precision
(exact for COCO/VOC/Pascal-style integer pixel boxes, which synthetic boxes are; 1e-6 of the image
size for YOLO's normalised 6-decimal rows); masks exactly, except YOLO whose polygon rows are
rasterised again (IoU >= 0.9 per object); semantic masks exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segdet.data import shapes
from segdet.data.formats import read_dataset, write_dataset
from segdet.data.masks import mask_to_bitmap
from segdet.data.structures import AnnotationSet

INSTANCE_FORMATS = ["coco", "voc", "yolo", "pennfudan"]
SEMANTIC_FORMATS = ["voc", "masks"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> AnnotationSet:
    return shapes.generate(tmp_path_factory.mktemp("shapes"), 6, seed=3, size=96)


def _by_stem(ds: AnnotationSet) -> dict:
    return {Path(r.file_name).stem: r for r in ds.images}


def _sorted_instances(record):
    return sorted(record.instances, key=lambda o: (o.label, *o.box))


def assert_same_objects(expected: AnnotationSet, actual: AnnotationSet, *, box_atol: float, mask_iou: float):
    assert actual.classes == expected.classes
    exp, act = _by_stem(expected), _by_stem(actual)
    assert exp.keys() == act.keys()
    for stem, e in exp.items():
        a = act[stem]
        assert (a.width, a.height) == (e.width, e.height), stem
        ei, ai = _sorted_instances(e), _sorted_instances(a)
        assert [o.label for o in ai] == [o.label for o in ei], stem
        np.testing.assert_allclose(
            [o.box for o in ai], [o.box for o in ei], atol=box_atol, rtol=0, err_msg=stem
        )
        for o_e, o_a in zip(ei, ai, strict=True):
            m_e = mask_to_bitmap(o_e.mask, e.height, e.width)
            m_a = mask_to_bitmap(o_a.mask, a.height, a.width)
            iou = (m_e & m_a).sum() / (m_e | m_a).sum()
            assert iou >= mask_iou, (stem, iou)


@pytest.mark.parametrize("fmt", INSTANCE_FORMATS)
def test_instances_survive_each_format(fmt, synthetic, tmp_path):
    back = read_dataset(fmt, write_dataset(fmt, synthetic, tmp_path / fmt), strict=True)
    assert not back.problems
    exact = fmt != "yolo"
    assert_same_objects(
        synthetic, back, box_atol=1e-4 if exact else 1e-6 * 96 * 2, mask_iou=1.0 if exact else 0.9
    )


@pytest.mark.parametrize("fmt", SEMANTIC_FORMATS)
def test_semantic_masks_survive(fmt, synthetic, tmp_path):
    from segdet.data.masks import read_label_png

    back = read_dataset(fmt, write_dataset(fmt, synthetic, tmp_path / fmt), strict=True)
    exp, act = _by_stem(synthetic), _by_stem(back)
    assert exp.keys() == act.keys()
    for stem, e in exp.items():
        sem = act[stem].semantic
        sem = sem if isinstance(sem, np.ndarray) else read_label_png(sem)
        np.testing.assert_array_equal(sem, e.semantic, err_msg=stem)


def test_chain_through_every_format(synthetic, tmp_path):
    """coco -> voc -> pennfudan -> coco: the objects are still the generator's."""
    ds = synthetic
    for fmt in ["coco", "voc", "pennfudan", "coco"]:
        ds = read_dataset(
            fmt, write_dataset(fmt, ds, tmp_path / f"{fmt}-{len(list(tmp_path.iterdir()))}"), strict=True
        )
    assert_same_objects(synthetic, ds, box_atol=1e-4, mask_iou=1.0)


@pytest.mark.parametrize("label", [2, -1])
@pytest.mark.parametrize("fmt", INSTANCE_FORMATS)
def test_writers_refuse_labels_outside_the_class_list(fmt, label, tmp_path):
    """An object whose label is no class is refused with one line naming the dataset, the image and the
    label, before anything is written. (The YOLO writer wrote a class id its own data.yaml does not
    name; VOC and Penn-Fudan ended in an IndexError for 2 and wrote label -1 as the last class.)"""
    from PIL import Image

    from segdet.data.structures import ImageRecord, Instance
    from segdet.errors import DataError

    image = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(image)
    record = ImageRecord(7, image, 16, 16, [Instance((1.0, 1.0, 9.0, 9.0), label)])
    dataset = AnnotationSet([record], ["cat", "dog"], source="in-memory set")
    with pytest.raises(DataError, match=rf"label {label} is outside the class list") as info:
        write_dataset(fmt, dataset, tmp_path / "out")
    assert (info.value.file, info.value.record) == ("in-memory set", "image id=7")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()

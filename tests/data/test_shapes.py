"""The synthetic shapes generator: determinism and exact ground truth.

References: ``segdet.data.masks.bitmap_box`` (boxes, exact), the semantic mask (union of the instance
masks, exact), the background texture (``image == background`` outside the objects, exact), hand-built
implicit shapes for the rasteriser's pixel-centre rule, the PNG files read back with Pillow (exact).
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from segdet.data import shapes
from segdet.data.masks import bitmap_box


def _as_bytes(s: shapes.ShapesSample) -> bytes:
    parts = [s.image.tobytes(), s.semantic.tobytes(), bytes(s.labels)]
    parts += [m.tobytes() for m in s.masks] + [np.asarray(s.boxes, dtype=np.float64).tobytes()]
    return b"".join(parts)


def test_same_seed_same_bytes_different_seed_different():
    """Rendering is a pure function of (seed, index): identical bytes twice; another seed or index
    gives another image."""
    a, b = shapes.render(5, seed=1, size=64), shapes.render(5, seed=1, size=64)
    assert _as_bytes(a) == _as_bytes(b)
    assert not np.array_equal(a.image, shapes.render(5, seed=2, size=64).image)
    assert not np.array_equal(a.image, shapes.render(6, seed=1, size=64).image)


def test_image_does_not_depend_on_dataset_length(tmp_path):
    """Image i of a 3-image set equals image i of a 10-image set, byte for byte (PNG decoded)."""
    small = shapes.generate(tmp_path / "a", 3, seed=7, size=48)
    large = shapes.generate(tmp_path / "b", 10, seed=7, size=48)
    for r_small, r_large in zip(small.images, large.images[:3], strict=True):
        assert np.array_equal(np.asarray(Image.open(r_small.path)), np.asarray(Image.open(r_large.path)))
        assert np.array_equal(r_small.semantic, r_large.semantic)
        assert [o.box for o in r_small.instances] == [o.box for o in r_large.instances]


@pytest.mark.parametrize("size", [64, (48, 80)])
def test_ground_truth_is_exact(size):
    """For 40 images: boxes == bitmap_box(mask) exactly; masks pairwise disjoint (occlusion removes
    covered pixels); union of masks == semantic foreground and semantic == label + 1 there; outside the
    foreground the image is the untouched background; inside, each object is one flat colour; every
    kept object has at least MIN_VISIBLE_PIXELS pixels."""
    for i in range(40):
        s = shapes.render(i, seed=3, size=size)
        h, w = (size, size) if isinstance(size, int) else size
        assert s.image.shape == (h, w, 3) and s.image.dtype == np.uint8
        assert s.semantic.shape == (h, w) and s.semantic.dtype == np.uint8
        assert len(s.labels) == len(s.masks) == len(s.boxes) >= 1
        union = np.zeros((h, w), dtype=np.int64)
        for label, mask, box in zip(s.labels, s.masks, s.boxes, strict=True):
            assert mask.dtype == bool and mask.shape == (h, w)
            assert box == bitmap_box(mask)
            assert mask.sum() >= shapes.MIN_VISIBLE_PIXELS
            assert np.all(s.semantic[mask] == label + 1)
            assert len(np.unique(s.image[mask], axis=0)) == 1
            union += mask
        assert union.max() <= 1, "instance masks overlap"
        assert np.array_equal(union > 0, s.semantic > 0)
        background = s.semantic == 0
        assert np.array_equal(s.image[background], s.background[background])
        # Every pixel that differs from the background texture belongs to an object.
        assert np.all(s.semantic[np.any(s.image != s.background, axis=-1)] > 0)


def test_occlusion_happens_and_hidden_objects_are_dropped():
    """Over 50 images some object is partly hidden (its mask is not its convex full shape: its box
    holds pixels of a later object) and every drawn object passes the visibility rule."""
    occluded = 0
    for i in range(50):
        s = shapes.render(i, seed=0, size=96)
        for k, box in enumerate(s.boxes):
            x1, y1, x2, y2 = (int(v) for v in box)
            later = np.zeros_like(s.masks[k])
            for m in s.masks[k + 1 :]:
                later |= m
            occluded += bool(later[y1:y2, x1:x2].any())
    assert occluded > 10


def test_every_class_appears_and_counts_are_bounded():
    """Over 50 images each of the 4 classes appears at least 10 times; object counts stay within
    [1, max_objects]."""
    counts = Counter()
    for i in range(50):
        s = shapes.render(i, seed=11, size=64, max_objects=5)
        assert 1 <= len(s.labels) <= 5
        counts.update(s.labels)
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) >= 10
    assert shapes.CLASSES == ("circle", "rectangle", "triangle", "ellipse")


def test_rasteriser_uses_pixel_centres():
    """A circle's mask is exactly ``(x+0.5-cx)² + (y+0.5-cy)² <= r²``: the generator's circle, redrawn
    from the same random draws by hand, matches it pixel for pixel."""
    h = w = 40
    rng = np.random.default_rng(0)
    got = shapes._shape_bitmap(rng, 0, h, w)
    rng = np.random.default_rng(0)
    r = rng.uniform(0.08, 0.28) * 40
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    yy, xx = np.mgrid[0:h, 0:w]
    assert np.array_equal(got, (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r)


def test_generate_writes_pngs_and_annotations(tmp_path):
    """generate(): PNG files named shapes_00000.png... decode to the rendered image; records carry the
    rendered masks, boxes, labels and semantic mask; instance ids are unique."""
    ds = shapes.generate(tmp_path, 4, seed=5, size=(40, 56))
    assert ds.classes == list(shapes.CLASSES)
    assert ds.semantic_classes == ["background", *shapes.CLASSES]
    assert [r.file_name for r in ds.images] == [f"shapes_{i:05d}.png" for i in range(4)]
    ids = [o.id for r in ds.images for o in r.instances]
    assert len(ids) == len(set(ids))
    for i, r in enumerate(ds.images):
        s = shapes.render(i, seed=5, size=(40, 56))
        assert r.path == tmp_path / "images" / r.file_name
        assert (r.width, r.height) == (56, 40)
        assert np.array_equal(np.asarray(Image.open(r.path).convert("RGB")), s.image)
        assert np.array_equal(r.semantic, s.semantic)
        assert [o.label for o in r.instances] == s.labels
        assert [o.box for o in r.instances] == s.boxes
        for o, m in zip(r.instances, s.masks, strict=True):
            assert np.array_equal(o.mask, m)


def test_write_coco_round_trip(tmp_path):
    """write(..., "coco"): read back through the COCO reader, same boxes (exact) and labels; no scratch
    folder is left behind."""
    from segdet.data.formats import coco

    path = shapes.write(tmp_path, "coco", 3, seed=2, size=48)
    back = coco.read(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shapes-")]
    assert len(back.images) == 3
    for i, r in enumerate(sorted(back.images, key=lambda r: r.file_name)):
        s = shapes.render(i, seed=2, size=48)
        assert sorted((o.label, *o.box) for o in r.instances) == sorted(
            (lab, *box) for lab, box in zip(s.labels, s.boxes, strict=True)
        )


def test_speed():
    """100 images of 128 px render in well under a few seconds (loose bound for a shared 2-core box)."""
    start = time.perf_counter()
    for i in range(100):
        shapes.render(i, seed=0, size=128)
    assert time.perf_counter() - start < 10.0

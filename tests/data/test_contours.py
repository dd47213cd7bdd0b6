"""Tests of bitmap -> polygon tracing against pycocotools' polygon rasteriser and hand-computed shapes."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segdet.data.contours import bitmap_to_polygons, merge_polygons, polygon_area
from segdet.data.masks import bitmap_box


def rasterise(polys: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """Union of the polygons as pycocotools decodes them (the COCO evaluator's view of a polygon)."""
    rles = mask_utils.frPyObjects([p.ravel().tolist() for p in polys], h, w)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def poly_box(poly: np.ndarray) -> tuple[float, float, float, float]:
    return (*poly.min(axis=0).tolist(), *poly.max(axis=0).tolist())


def random_blob(rng: np.random.Generator, h: int = 64, w: int = 64) -> np.ndarray:
    """A union of a few random discs and scattered single pixels (several components, some touching
    only at corners)."""
    yy, xx = np.mgrid[:h, :w]
    b = np.zeros((h, w), dtype=bool)
    for _ in range(rng.integers(1, 5)):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(2, 12)
        b |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    b |= rng.random((h, w)) < 0.01
    return b


def test_rectangle_exact_corners():
    """A filled rectangle gives its 4 pixel corners, clockwise on the screen (hand-computed)."""
    b = np.zeros((8, 10), dtype=bool)
    b[2:5, 3:7] = True  # rows 2..4, cols 3..6 -> box (3, 2, 7, 5)
    (poly,) = bitmap_to_polygons(b)
    np.testing.assert_array_equal(poly, [[7, 2], [7, 5], [3, 5], [3, 2]])
    assert polygon_area(poly) == 12


def test_l_shape_drops_collinear_points():
    """An L of 5 pixels has 6 corners and area 5; no vertex lies in the middle of a straight run."""
    b = np.zeros((5, 5), dtype=bool)
    b[1:4, 1] = True
    b[3, 1:4] = True
    (poly,) = bitmap_to_polygons(b)
    assert len(poly) == 6
    assert polygon_area(poly) == 5
    assert poly_box(poly) == bitmap_box(b)


def test_diagonal_pixels_are_one_component():
    """8-connectivity: pixels touching at a corner form one polygon (through a pinch vertex), and
    pycocotools rasterises it back to exactly those pixels."""
    b = np.zeros((6, 6), dtype=bool)
    b[1, 1] = b[2, 2] = b[3, 3] = True
    polys = bitmap_to_polygons(b)
    assert len(polys) == 1
    assert polygon_area(polys[0]) == 3
    np.testing.assert_array_equal(rasterise(polys, 6, 6), b)


def test_separate_components_and_border_pixels():
    """Two 4-apart components, one touching the image border, give two polygons in raster order."""
    b = np.zeros((6, 7), dtype=bool)
    b[0:2, 0:2] = True
    b[4:6, 4:7] = True
    polys = bitmap_to_polygons(b)
    assert [poly_box(p) for p in polys] == [(0, 0, 2, 2), (4, 4, 7, 6)]
    np.testing.assert_array_equal(rasterise(polys, 6, 7), b)


def test_holes_are_ignored():
    """A ring gives only its outer boundary (documented: holes are filled)."""
    b = np.ones((6, 6), dtype=bool)
    b[2:4, 2:4] = False
    polys = bitmap_to_polygons(b)
    assert len(polys) == 1
    assert polygon_area(polys[0]) == 36


def test_empty_and_full():
    assert bitmap_to_polygons(np.zeros((4, 4), dtype=bool)) == []
    (poly,) = bitmap_to_polygons(np.ones((3, 5), dtype=np.uint8))
    assert poly_box(poly) == (0, 0, 5, 3)


@pytest.mark.parametrize("seed", range(5))
def test_random_blobs_match_pycocotools(seed):
    """Random blobs (60 per seed): against pycocotools' rasteriser of the traced polygons,

    * the polygons cover every pixel and add only hole pixels: the shoelace area of each polygon equals
      the pixel count pycocotools gives for it, and the union contains the bitmap;
    * the merged single polygon (YOLO's form) rasterises to exactly the same pixels as the parts;
    * IoU with the bitmap >= 0.95 for blobs of >= 50 pixels, and the bounding box is the bitmap's.
    """
    rng = np.random.default_rng(seed)
    for _ in range(60):
        b = random_blob(rng)
        polys = bitmap_to_polygons(b)
        parts = rasterise(polys, *b.shape)
        assert (parts >= b).all()
        for p in polys:
            assert polygon_area(p) == rasterise([p], *b.shape).sum()
        merged = merge_polygons(polys)
        one = rasterise([merged], *b.shape)
        np.testing.assert_array_equal(one, parts)
        assert poly_box(merged) == bitmap_box(b)
        if b.sum() >= 50:
            iou = (one & b).sum() / (one | b).sum()
            assert iou >= 0.95


def test_disc_exact():
    """A disc has no holes: polygon area equals its pixel count and rasterising gives it back exactly."""
    yy, xx = np.mgrid[:40, :40]
    b = (xx - 19.3) ** 2 + (yy - 20.1) ** 2 <= 12.5**2
    polys = bitmap_to_polygons(b)
    assert len(polys) == 1
    assert polygon_area(polys[0]) == b.sum()
    np.testing.assert_array_equal(rasterise(polys, 40, 40), b)


def test_merge_single_and_empty():
    p = np.array([[0, 0], [2, 0], [2, 2], [0, 2]], dtype=float)
    np.testing.assert_array_equal(merge_polygons([p]), p)
    assert merge_polygons([]).shape == (0, 2)

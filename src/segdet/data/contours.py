"""Bitmap masks to polygons, for formats that store masks as polygons (YOLO segmentation rows).

The boundary is traced on the *pixel-edge grid* (the "crack edges" between a foreground and a
background pixel), not through pixel centres as OpenCV's ``findContours`` does. Vertices are therefore
pixel corners in the toolkit's continuous coordinates (pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``):

* the polygon of a component encloses exactly its pixels (plus its holes, see below), so its area equals
  the pixel count and its bounding box equals :func:`segdet.data.masks.bitmap_box`;
* pycocotools rasterises such a polygon back to the same pixels (its scan conversion samples pixel
  centres), which is what makes a YOLO polygon row round-trip a bitmap mask.

Connectivity: foreground components are **8-connected** (as in OpenCV and scikit-image's default for
contours): two pixels touching only at a corner belong to one component, and its boundary passes twice
through that corner (a zero-width pinch). Holes are **ignored**: only outer boundaries are returned, so a
ring is returned as a filled disc.

Algorithm (crack following, e.g. Rosenfeld & Kak, *Digital Picture Processing*, ch. 11): every
foreground/background edge is a directed unit segment with the foreground on its right (clockwise on the
screen, y pointing down). Every vertex has as many incoming as outgoing edges, so the edges split into
closed loops; a walk follows them, turning left when a vertex offers two ways out (a saddle, where two
foreground pixels meet diagonally: turning left keeps them in one loop, which is 8-connectivity).
Outer boundaries run clockwise and have positive shoelace area, hole boundaries negative, which is how
holes are told apart without labelling components.
"""

from __future__ import annotations

import numpy as np

# Directions on the screen (x right, y down): right, down, left, up. Turning right is d + 1.
_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def bitmap_to_polygons(bitmap: np.ndarray) -> list[np.ndarray]:
    """Outer boundaries of the 8-connected components of ``bitmap`` (``H x W``, bool or 0/1).

    Returns one ``N x 2`` float array of ``(x, y)`` pixel-corner vertices per component, clockwise on the
    screen, closed implicitly (the last vertex joins the first), with collinear vertices dropped. Holes are
    not returned. Components are ordered by their first pixel in raster order.
    """
    fg = np.asarray(bitmap).astype(bool)
    if fg.ndim != 2:
        raise ValueError(f"bitmap must be 2-D, got shape {fg.shape}")
    p = np.pad(fg, 1)  # background border, so every component has a closed boundary
    inner = p[1:-1, 1:-1]
    # out[d][y, x]: an edge in direction d leaves vertex (x, y). Vertex (x, y) is the top-left corner of
    # pixel (row y, col x). Each foreground pixel contributes the edges it shares with background pixels.
    h, w = fg.shape
    out = np.zeros((4, h + 1, w + 1), dtype=bool)
    out[0, :-1, :-1] |= inner & ~p[:-2, 1:-1]  # top edge, (x, y) -> (x+1, y), background above
    out[1, :-1, 1:] |= inner & ~p[1:-1, 2:]  # right edge, (x+1, y) -> (x+1, y+1), background right
    out[2, 1:, 1:] |= inner & ~p[2:, 1:-1]  # bottom edge, (x+1, y+1) -> (x, y+1), background below
    out[3, 1:, :-1] |= inner & ~p[1:-1, :-2]  # left edge, (x, y+1) -> (x, y), background left

    polygons = []
    # Every top edge whose left end starts a run of the loop is a good place to start a walk; walking
    # consumes the edges, so each loop is traced once. Scanning top edges in raster order finds each
    # outer boundary at its component's first pixel.
    for y, x in zip(*np.nonzero(out[0]), strict=True):
        if not out[0, y, x]:
            continue  # consumed by an earlier walk
        poly = _walk(out, int(x), int(y))
        if _signed_area(poly) > 0:  # clockwise on the screen: an outer boundary
            polygons.append(poly)
    return polygons


def _walk(out: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Follow the loop that starts with the rightward edge leaving ``(x0, y0)``, consuming its edges.

    Returns the vertices where the direction changes, so runs of collinear edges leave no points.
    """
    x, y, d = x0, y0, 0
    corners = []
    while True:
        out[d, y, x] = False
        dx, dy = _STEPS[d]
        x, y = x + dx, y + dy
        at_start = x == x0 and y == y0
        # Prefer a left turn (8-connectivity at saddles), then straight on, then a right turn. The start
        # edge counts as still there, so the loop closes where it began even at a saddle.
        for nd in ((d + 3) % 4, d, (d + 1) % 4):
            if out[nd, y, x] or (at_start and nd == 0):
                break
        else:  # pragma: no cover - every vertex has as many exits as entries
            raise AssertionError("inconsistent boundary edges")
        if nd != d:
            corners.append((x, y))
        if at_start and nd == 0:
            return np.asarray(corners, dtype=np.float64)
        d = nd


def _signed_area(poly: np.ndarray) -> float:
    """Shoelace formula ``A = 1/2 * sum(x_i * y_{i+1} - x_{i+1} * y_i)``; positive for clockwise on the
    screen (y down)."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def polygon_area(poly: np.ndarray) -> float:
    """Unsigned area of a simple polygon (shoelace formula)."""
    return abs(_signed_area(np.asarray(poly, dtype=np.float64).reshape(-1, 2)))


def merge_polygons(polys: list[np.ndarray]) -> np.ndarray:
    """Join several polygons into one, for formats that store one polygon per object (YOLO).

    Each further polygon is spliced into the result at the closest pair of vertices: the path goes from
    the result's vertex ``a`` to the polygon's vertex ``b``, once around the polygon back to ``b``, and back
    to ``a``. The bridge ``a -> b`` is travelled once each way, so it has zero width and encloses nothing;
    scan conversion with either fill rule gives back the union of the parts (as long as they do not
    overlap). This is the idea of Ultralytics' ``merge_multi_segment``, spliced greedily instead of in
    list order so that bridges stay short.
    """
    parts = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polys if len(p)]
    if not parts:
        return np.zeros((0, 2), dtype=np.float64)
    # Largest first: the result grows from the main part, small fragments are attached to it.
    parts.sort(key=polygon_area, reverse=True)
    merged = parts[0]
    for q in parts[1:]:
        d2 = ((merged[:, None, :] - q[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(np.argmin(d2)), d2.shape)
        merged = np.concatenate([merged[: i + 1], q[j:], q[: j + 1], merged[i:]])
    return merged

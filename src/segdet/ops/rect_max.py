"""Maximum and first arg-maximum of a feature map over many axis-aligned rectangles, in O(1) per rectangle.

For rectangles ``R_q = {(h, w): top_q <= h < bottom_q, left_q <= w < right_q}`` of image ``n_q`` this
computes, for every channel ``c``::

    value[q, c]  = max  x[n_q, c, h, w]                over (h, w) in R_q
    argmax[q, c] = -2 - (h * W + w)   for the first such maximum in row-major order (smallest h, then w)

with the conventions of Fast R-CNN's RoI max pooling as torchvision's CPU kernel implements them: an
element takes part only if ``x > -FLT_MAX`` (NaN, -inf and values <= -FLT_MAX never win; if nothing in
``R_q`` does, ``value = -FLT_MAX`` and ``argmax = -1``), and an empty rectangle gives ``value = 0``,
``argmax = -1``. The arg-max comes as the code ``-2 - position`` (``-1``: none; ``position = -2 -
argmax``), the low half of the key below as it is: its reader decodes it where it copies it anyway.

Algorithm: a two-dimensional sparse table (range-maximum queries; Bentley & Saxe 1980, the 2-D form
of Bender & Farach-Colton 2000), with exact block sizes where they pay, of *keys*, not values:

* ``key(n, c, h, w) = code(x) * 2**32 + (2**32 - 2 - (h * W + w))`` is an int64 whose order is "larger
  value first, then smaller position first". ``code`` is any order-preserving int32 code of the
  values: for float32 the IEEE bits read as a sign-magnitude integer (``-0.0`` and ``0.0`` share code
  0, as they compare equal), or the bits as they are when the map has no negative value (ReLU
  outputs: then the value needs no decoding); for float64, whose bits do not fit, the value's rank
  among the distinct values of the map. So ``max`` of keys is the maximum *and* its first position,
  and the max of any collection of overlapping sets is the max over their union.
* Level ``(a, b)`` of the table holds ``T_ab[n, h, w] = max key over the a x b block at (h, w)``. The
  block heights are ``{1, ..., E_r}`` and the powers of two above (``E_r`` a power of two), the widths
  likewise with ``E_c``; each level is one pass over the map from two built before it:
  ``T_{a,1}[h] = max(T_{a-1,1}[h], T_{1,1}[h + a - 1])`` up to ``E_r``, then doubling
  ``T_{2a,1}[h] = max(T_{a,1}[h], T_{a,1}[h + a])`` (the same along the columns of every row level).
* A rectangle of height ``L_h`` uses the largest block height ``a <= L_h``: one block row (at ``top``)
  if ``a = L_h``, else two (at ``top`` and ``bottom - a``, overlapping); the same for the width. So its
  key is the max of one, two or four table entries, however large it is.
* ``E_r, E_c`` are chosen per call by a cost model (``_choose_sizes``): every level costs a pass over
  the map, every table entry a rectangle reads a gathered row. Many small rectangles on a small map
  (Fast R-CNN's conv5) get exact sizes and one read each; large ones on a large map the plain powers
  of two and four.

Without the arg-max the keys are the values themselves (raised to ``-FLT_MAX`` where unpickable, which
is also what a rectangle of nothing else must read): half the bytes and no decoding.

Cost: (number of levels) x N*C*H*W to build the table plus one to four gathers per rectangle and
channel, against ``sum of rectangle areas x C`` for the direct loop. The channels go in chunks,
channels-last (``[N, H, W, chunk]``: one gathered table row holds a chunk's channels); the levels are
built one after the other in five buffers, each answering its rectangles as soon as it is built, into
one block of rows per group of rectangles (the plan sorts them by level), gathered back into the
rectangles' order at the end. The results are decoded and copied into the outputs (of any strides).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from segdet.ops.rect_keys import (
    Float32Keys,
    NonNegativeKeys,
    PackedKeys,
    RankKeys,
    ValueKeys,
)

# Bytes of a channel chunk's level buffers (five) / of one gather: they bound the chunk's channels and
# keep the allocations under glibc's mmap threshold (32 MB), reused instead of page-faulted in anew.
TABLE_BYTES = 24 << 20
GATHER_BYTES = 4 << 20
RESULT_BYTES = 16 << 20  # a chunk's keys of all rectangles
# The exactness limits the cost model tries (2: powers of two only, the plain sparse table).
EXACT_LIMITS = (2, 4, 8, 16)
# Relative costs per channel (measured with torch's CPU kernels): one element of a level pass (a
# torch.maximum of two slices), one table entry read for a rectangle (a gathered row, and its share
# of the max over the corners).
COST_LEVEL = 1.0
COST_CORNER = 2.0


def _sizes(limit: int, largest: int) -> list[int]:
    """Block sizes ``{1, ..., limit} U {powers of two}`` up to ``largest`` (``limit`` a power of two, so
    that every size is the max of two built before it: ``a = (a - 1) + 1`` up to ``limit``, then
    ``a = a/2 + a/2``)."""
    sizes = set(range(1, min(limit, largest) + 1))
    p = 1
    while p <= largest:
        sizes.add(p)
        p *= 2
    return sorted(sizes)


def _steps(sizes: list[int]) -> list[tuple[int, int]]:
    """``(a, t)`` for every size ``a > 1`` in build order: the ``a`` block at ``h`` is the max of the
    block of the size before (``s``) at ``h`` and the ``t`` block at ``h + a - t``, ``t`` 1 (exact
    sizes, ``a = s + 1``) or ``s`` (doubling)."""
    return [(a, 1 if a - s == 1 else s) for s, a in itertools.pairwise(sizes)]


def _choose_sizes(heights: Tensor, widths: Tensor, map_elements: int) -> tuple[list[int], list[int]]:
    """Block heights and widths for rectangles of these (non-empty) sizes: the candidates of
    ``EXACT_LIMITS`` that minimise the cost model (per channel) ``levels x map_elements x
    COST_LEVEL + corners x COST_CORNER``.

    Variables: ``counts[L_h, L_w]`` the number of rectangles of each size, ``two_r[L_h]`` 1 where a
    height needs two block rows under the candidate heights (likewise ``two_c``), ``corners[L_h, L_w]``
    the table entries a rectangle of that size reads."""
    max_h, max_w = int(heights.max()), int(widths.max())
    counts = torch.bincount(heights * (max_w + 1) + widths, minlength=(max_h + 1) * (max_w + 1))
    counts = counts.view(max_h + 1, max_w + 1).double()
    best: tuple[float, list[int], list[int]] | None = None
    for rows in sorted({tuple(_sizes(limit, max_h)) for limit in EXACT_LIMITS}):
        two_r = torch.ones(max_h + 1, dtype=torch.float64)
        two_r[list(rows)] = 0
        for cols in sorted({tuple(_sizes(limit, max_w)) for limit in EXACT_LIMITS}):
            two_c = torch.ones(max_w + 1, dtype=torch.float64)
            two_c[list(cols)] = 0
            corners = (1 + two_r[:, None]) * (1 + two_c[None, :])
            reads = float((counts * corners).sum())
            cost = len(rows) * len(cols) * map_elements * COST_LEVEL + reads * COST_CORNER
            if best is None or (cost, len(rows) * len(cols)) < (best[0], len(best[1]) * len(best[2])):
                best = (cost, list(rows), list(cols))
    assert best is not None
    return best[1], best[2]


@dataclass(frozen=True)
class _Level:
    """The rectangles of block size ``a x b`` that read ``corners.shape[0]`` blocks (1, 2 or 4): rows
    ``[start, stop)`` of the plan's order, and the table rows of their blocks (``corners``, int64
    ``[k, stop - start]``)."""

    a: int
    b: int
    start: int
    stop: int
    corners: Tensor


@dataclass(frozen=True)
class _Plan:
    """``levels`` (groups of rectangles) in build order; ``rows``: block heights, ``cols[a]``: the widths
    built on height ``a``. The rectangles are answered sorted by group (the empty ones, ``empty`` of
    them, first); ``inverse[q]`` is where rectangle ``q``'s answer lands in that order."""

    levels: list[_Level]
    rows: list[int]
    cols: dict[int, list[int]]
    inverse: Tensor
    empty: int


def _plan(n: Tensor, top: Tensor, bottom: Tensor, left: Tensor, right: Tensor, shape: tuple) -> _Plan:
    """The levels a set of rectangles (1-D int64 tensors, clipped to the map, possibly empty) needs.

    Variables: ``a, b`` a rectangle's block height / width (the largest chosen size not above its
    height / width; ``ia, ib`` their indices in the chosen sizes), ``kr, kc`` 1 if the block row /
    column is exact (one block), else 2 (one at each end, overlapping), ``hi, wj`` the number of block
    positions of that level per column / row, ``order`` the rectangles sorted by ``(ia, ib, kr, kc)``."""
    _, H, W = shape
    valid = (bottom > top) & (right > left)
    h, w = (bottom - top).clamp(min=1), (right - left).clamp(min=1)
    if bool(valid.any()):
        row_sizes, col_sizes = _choose_sizes(h[valid], w[valid], shape[0] * H * W)
    else:
        row_sizes, col_sizes = [1], [1]
    ia, ib = _largest_at_most(h, row_sizes), _largest_at_most(w, col_sizes)
    a, b = torch.tensor(row_sizes)[ia], torch.tensor(col_sizes)[ib]
    kr, kc = 1 + (a != h).long(), 1 + (b != w).long()
    code = torch.where(valid, ((ia * len(col_sizes) + ib) * 2 + kr - 1) * 2 + kc - 1, -1)
    order = torch.argsort(code, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    levels, widest = [], dict.fromkeys(row_sizes, 0)
    start = 0
    values, counts = torch.unique_consecutive(code[order], return_counts=True)
    empty = 0
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        bins, stop = order[start : start + count], start + count
        if value < 0:
            empty, start = count, stop
            continue
        ab, two_c = divmod(value, 2)
        ab, two_r = divmod(ab, 2)
        i, j = divmod(ab, len(col_sizes))
        la, lb = row_sizes[i], col_sizes[j]
        hi, wj = H - la + 1, W - lb + 1
        r0, r1 = (n[bins] * hi + top[bins]) * wj, (n[bins] * hi + bottom[bins] - la) * wj
        c0, c1 = left[bins], right[bins] - lb
        corners = [r0 + c0] + ([r0 + c1] if two_c else []) + ([r1 + c0] if two_r else [])
        corners += [r1 + c1] if two_r and two_c else []
        levels.append(_Level(la, lb, start, stop, torch.stack(corners)))
        widest[la] = max(widest[la], lb)
        start = stop
    last = max((a for a in row_sizes if widest[a]), default=1)
    rows = [a for a in row_sizes if a <= last]
    cols = {a: [b for b in col_sizes if b <= widest[a]] for a in rows}
    return _Plan(levels, rows, cols, inverse, empty)


def _largest_at_most(length: Tensor, sizes: list[int]) -> Tensor:
    """The index in ``sizes`` (ascending, from 1) of the largest size ``<= length`` (``>= 1``)."""
    return torch.searchsorted(torch.tensor(sizes), length, right=True) - 1


def _answer(table: Tensor, level: _Level, out: Tensor) -> None:
    """``out[start:stop] = max of each rectangle's corner entries`` of ``table`` (one level,
    ``[..., width]``)."""
    width = out.shape[1]
    rows = table.view(-1, width)
    k = level.corners.shape[0]
    step = max(1, GATHER_BYTES // (8 * k * width))
    for p0 in range(0, level.stop - level.start, step):
        corners = level.corners[:, p0 : p0 + step]
        target = out[level.start + p0 : level.start + p0 + corners.shape[1]]
        if k == 1:
            torch.index_select(rows, 0, corners[0], out=target)
        else:
            torch.amax(rows.index_select(0, corners.reshape(-1)).view(k, -1, width), 0, out=target)


def _answer_levels(keys: Tensor, buffers: Tensor, plan: _Plan, out: Tensor) -> None:
    """Build the table level by level from ``keys`` (``[N, H, W, width]``, level (1, 1), held in
    ``buffers[0]``) and answer each level's rectangles into ``out`` (``[Q, width]``, in the plan's
    order) right away.

    Row levels ``(a, 1)`` alternate between ``buffers[1]`` and ``[2]``, column levels ``(a, b > 1)``
    between ``[3]`` and ``[4]``: a level is kept only while the next one is built from it (and
    ``keys``, which the exact sizes extend by one row or column at a time). A level's tensor holds
    the blocks that fit: ``[N, H - a + 1, W - b + 1, width]``."""
    N, H, W, width = keys.shape
    by_level: dict[tuple[int, int], list[_Level]] = {}
    for level in plan.levels:
        by_level.setdefault((level.a, level.b), []).append(level)

    def buffer(k: int, h: int, w: int) -> Tensor:
        return buffers[k, : N * h * w * width].view(N, h, w, width)

    row, row_buffer = keys, 2
    for a, t in [(1, 1), *_steps(plan.rows)]:
        if a > 1:  # rows: the previous level (s) and keys (t = 1) or the previous level again (t = s)
            fit, other = H - a + 1, keys if t == 1 else row
            row_buffer = 3 - row_buffer
            row = torch.maximum(row[:, :fit], other[:, a - t : a - t + fit], out=buffer(row_buffer, fit, W))
        block, col_buffer = row, 4
        for b, v in [(1, 1), *_steps(plan.cols[a])]:
            if b > 1:
                fit, other = W - b + 1, row if v == 1 else block
                col_buffer = 7 - col_buffer
                shifted = other[:, :, b - v : b - v + fit]
                block = torch.maximum(block[:, :, :fit], shifted, out=buffer(col_buffer, row.shape[1], fit))
            for level in by_level.get((a, b), []):
                _answer(block, level, out)


class RectMax(NamedTuple):
    """``value`` and ``argmax`` (``None`` when not asked for) ``[*S, C]``; ``unpickable``: whether the
    map holds elements that never win (NaN, -inf, <= -FLT_MAX), so that ``argmax`` may be -1 outside
    the empty rectangles too."""

    value: Tensor
    argmax: Tensor | None
    unpickable: bool


def rect_max(
    x: Tensor,
    n: Tensor,
    top: Tensor,
    bottom: Tensor,
    left: Tensor,
    right: Tensor,
    value: Tensor | None = None,
    argmax: Tensor | None = None,
    with_argmax: bool = True,
) -> RectMax:
    """Max and first (row-major) arg-max of ``x[n, :, top:bottom, left:right]`` for every rectangle.

    ``x``: ``[N, C, H, W]`` float32 or float64 on the CPU. ``n, top, bottom, left, right``: int64
    tensors that broadcast to one shape ``S`` (rectangles clipped to ``[0, H] x [0, W]``; empty ones
    allowed). Returns ``value`` (``x.dtype``) and ``argmax`` (int32 codes ``-2 - (h * W + w)``, ``-1``
    for none; skipped unless ``with_argmax``), both ``[*S, C]``, written into ``value`` / ``argmax`` (of
    any strides and, for ``argmax``, any integer dtype holding ``-1 - H * W``) when given. See the
    module docstring for the conventions and the algorithm."""
    N, C, H, W = x.shape
    rect = torch.broadcast_tensors(n, top, bottom, left, right)
    shape = rect[0].shape
    value = torch.empty(*shape, C, dtype=x.dtype) if value is None else value
    if with_argmax and argmax is None:
        argmax = torch.empty(*shape, C, dtype=torch.int32)
    argmax = argmax if with_argmax else None
    if rect[0].numel() == 0 or C == 0:
        return RectMax(value, argmax, False)
    flat = [t.reshape(-1) for t in rect]
    q = flat[0].numel()
    plan = _plan(*flat, (N, H, W))
    size = 8 if with_argmax else x.element_size()
    width = max(1, min(C, TABLE_BYTES // (5 * size * N * H * W), RESULT_BYTES // (size * q)))
    if not with_argmax:
        keys: PackedKeys | ValueKeys = ValueKeys(x)
    else:
        keys = (
            NonNegativeKeys(x, width)
            if NonNegativeKeys.applies(x)
            else Float32Keys(x, width)
            if x.dtype == torch.float32
            else RankKeys(x)
        )
    per_row = q // shape[0]  # rectangles per index of the first dimension: outputs go by rows
    step = max(1, GATHER_BYTES // (size * width * per_row))
    buffers = torch.empty(5, N * H * W * width, dtype=keys.dtype)
    results = torch.empty(2, q * width, dtype=keys.dtype)
    for c0 in range(0, C, width):
        c1 = min(C, c0 + width)
        grouped = results[0, : q * (c1 - c0)].view(q, c1 - c0)
        grouped[: plan.empty].fill_(keys.spare)
        level0 = buffers[0, : N * H * W * (c1 - c0)].view(N, H, W, c1 - c0)
        keys.encode(c0, c1, level0)
        _answer_levels(level0, buffers, plan, grouped)
        # back to the rectangles' order: a gather of rows (a scatter into it would be slower)
        res = torch.index_select(grouped, 0, plan.inverse, out=results[1, : q * (c1 - c0)].view(q, c1 - c0))
        for r0 in range(0, shape[0], step):
            r1 = min(shape[0], r0 + step)
            v, a = keys.decode(res[r0 * per_row : r1 * per_row].view(r1 - r0, *shape[1:], c1 - c0))
            # Copied into the outputs, whatever their strides: copy_ transposes several times faster
            # than the decoding's elementwise ops would writing through them.
            value[r0:r1, ..., c0:c1] = v
            if argmax is not None:
                argmax[r0:r1, ..., c0:c1] = a
    return RectMax(value, argmax, with_argmax and keys.has_unpickable)

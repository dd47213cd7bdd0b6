"""Maximum and first arg-maximum of a feature map over many axis-aligned rectangles, in O(1) per rectangle.

For rectangles ``R_q = {(h, w): top_q <= h < bottom_q, left_q <= w < right_q}`` of image ``n_q`` this
computes, for every channel ``c``::

    value[q, c]  = max  x[n_q, c, h, w]                over (h, w) in R_q
    argmax[q, c] = h * W + w   of the first such maximum in row-major order (smallest h, then w)

with the conventions of Fast R-CNN's RoI max pooling as torchvision's CPU kernel implements them: an
element takes part only if ``x > -FLT_MAX`` (NaN, -inf and values <= -FLT_MAX never win; if nothing in
``R_q`` does, ``value = -FLT_MAX`` and ``argmax = -1``), and an empty rectangle gives ``value = 0``,
``argmax = -1``.

Algorithm: a two-dimensional sparse table (range-maximum queries; Bentley & Saxe 1980, the 2-D form
of Bender & Farach-Colton 2000) of *keys*, not values:

* ``key(n, c, h, w) = code(x) * 2**32 + (2**32 - 2 - (h * W + w))`` is an int64 whose order is "larger
  value first, then smaller position first". ``code`` is any order-preserving int32 code of the
  values: for float32 the IEEE bits read as a sign-magnitude integer (``-0.0`` and ``0.0`` share code
  0, as they compare equal); for float64, whose bits do not fit, the value's rank among the distinct
  values of the map. So ``max`` of keys is the maximum *and* its first position, and the max of any
  collection of overlapping sets is the max over their union.
* Level ``(i, j)`` of the table holds ``T_ij[n, h, w] = max key over the 2**i x 2**j block at (h, w)``,
  built by doubling: ``T_{i+1,0}[h] = max(T_i0[h], T_i0[h + 2**i])`` (rows) and
  ``T_{i,j+1}[., w] = max(T_ij[., w], T_ij[., w + 2**j])`` (columns); only the levels some rectangle
  needs are built.
* A rectangle of height ``L_h`` and width ``L_w`` is the union of the four ``2**i x 2**j`` blocks
  anchored at its corners, ``i = floor(log2 L_h)``, ``j = floor(log2 L_w)``: its key is the max of four
  table entries, however large the rectangle.

Cost: (number of levels) x N*C*H*W to build the table plus four gathers per rectangle and channel,
against ``sum of rectangle areas x C`` for the direct loop. The channels are processed in chunks so
that the table (channels-last, ``[levels x N x H x W, chunk]``) stays a few MB: one gathered table row
holds a chunk's channels.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

FLT_MAX = 3.4028234663852886e38
_LOW = 2**32
# Bytes of one channel chunk's table / one gather, to keep the working set in cache and the
# allocations under glibc's mmap threshold (reused instead of page-faulted in on every call).
TABLE_BYTES = 8 << 20
GATHER_BYTES = 4 << 20

if sys.byteorder != "little":  # the key's low / high int32 halves are read through a view
    raise ImportError("segdet.ops.rect_max assumes a little-endian machine")


@dataclass(frozen=True)
class _Plan:
    """Table levels to build and the four table rows each rectangle reads.

    ``levels``: ``(i, j, first_row)`` in build order; ``rows``: table rows in all (plus one spare row
    that empty rectangles read); ``corners``: int64 ``[4, Q]`` table rows of the corner blocks."""

    levels: list[tuple[int, int, int]]
    rows: int
    corners: Tensor


def _floor_log2(length: Tensor, largest: int) -> Tensor:
    lut = torch.tensor([max(v.bit_length() - 1, 0) for v in range(largest + 1)], device=length.device)
    return lut[length]


def _plan(n: Tensor, top: Tensor, bottom: Tensor, left: Tensor, right: Tensor, shape: tuple) -> _Plan:
    """The levels a set of rectangles (1-D int64 tensors, clipped to the map, possibly empty) needs.

    Variables: ``lh, lw`` rectangle height / width, ``i, j`` their floor-log2 (the block of the
    level), ``hi, wj`` the number of block positions of that level per column / row."""
    N, H, W = shape
    valid = (bottom > top) & (right > left)
    lh, lw = (bottom - top).clamp(min=0), (right - left).clamp(min=0)
    i = torch.where(valid, _floor_log2(lh, H), 0)  # empty rectangles: level (0, 0), then the spare row
    j = torch.where(valid, _floor_log2(lw, W), 0)
    needed = torch.unique(i[valid] * 64 + j[valid]).tolist()
    widest: dict[int, int] = {}
    for code in needed:
        widest[code // 64] = max(widest.get(code // 64, 0), code % 64)
    levels, first = [], torch.zeros(max(widest, default=0) + 1, 64, dtype=torch.int64)
    rows = 0
    for li in range(max(widest, default=0) + 1):
        for lj in range(widest.get(li, 0) + 1):
            levels.append((li, lj, rows))
            first[li, lj] = rows
            rows += N * (H - (1 << li) + 1) * (W - (1 << lj) + 1)
    hi, wj = H - (1 << i) + 1, W - (1 << j) + 1
    base = first[i, j] + n * hi * wj
    r0, r1 = top * wj, (bottom - (1 << i)) * wj
    c0, c1 = left, right - (1 << j)
    corners = torch.stack([base + r0 + c0, base + r0 + c1, base + r1 + c0, base + r1 + c1])
    corners = torch.where(valid, corners, rows)  # the spare row: empty rectangles are fixed at the end
    return _Plan(levels, rows + 1, corners)


class _Float32Codes:
    """``code(x)``: float32 bits read as a sign-magnitude integer (``-0.0 -> 0``); unpickable elements
    get ``code(-FLT_MAX)``."""

    none = -0x7F7FFFFF  # code(-FLT_MAX): what NaN, -inf and -FLT_MAX become (through fmax)

    def __init__(self, x: Tensor) -> None:
        self.x = x
        # NaN fails the comparison too; only then does the arg-max need the "nothing pooled" fix.
        self.has_unpickable = x.numel() > 0 and not bool(x.amin() > -FLT_MAX)

    def encode(self, c0: int, c1: int, out: Tensor) -> Tensor:
        """int32 codes of channels ``[c0, c1)`` as ``[N, H, W, c1 - c0]`` (``out`` is a float32 buffer)."""
        y = torch.fmax(self.x[:, c0:c1].permute(0, 2, 3, 1), torch.tensor(-FLT_MAX), out=out)
        bits = y.view(torch.int32)
        sign = bits >> 31
        code = sign & 0x7FFFFFFF
        code ^= bits
        code -= sign  # (bits ^ magnitude mask) - sign = -|x| for negatives: -0.0 and 0.0 meet at 0
        return code

    def decode(self, code: Tensor, out: Tensor) -> None:
        """``out`` (float32, any strides) ``=`` the value of ``code``: bits ``|code| | (code & sign bit)``."""
        torch.bitwise_or(code.abs(), code & -(2**31), out=out.view(torch.int32))


class _RankCodes:
    """``code(x)``: rank of ``x`` among the distinct pickable values of the map (rank 0: unpickable, if any).

    float64 values do not fit the key's 32 high bits; their ranks do (up to 2**31 distinct values)."""

    def __init__(self, x: Tensor) -> None:
        pickable = torch.where(x > -FLT_MAX, x, float("-inf"))
        values, ranks = torch.unique(pickable, sorted=True, return_inverse=True)
        self.has_unpickable = values.numel() > 0 and bool(values[0] == float("-inf"))
        self.none = 0 if self.has_unpickable else -1
        self.values = values.clamp(min=-FLT_MAX)  # -inf (nothing pickable) reads back as -FLT_MAX
        self.ranks = ranks.to(torch.int32)

    def encode(self, c0: int, c1: int, out: Tensor) -> Tensor:
        return self.ranks[:, c0:c1].permute(0, 2, 3, 1)

    def decode(self, code: Tensor, out: Tensor) -> None:
        out.copy_(self.values[code.long()])


def _build_levels(table: Tensor, plan: _Plan, shape: tuple, width: int) -> None:
    """Fill levels ``(i, j) != (0, 0)`` of ``table`` (``[rows, width]``) by doubling, in place."""
    N, H, W = shape
    views: dict[tuple[int, int], Tensor] = {}
    for i, j, first in plan.levels:
        hi, wj = H - (1 << i) + 1, W - (1 << j) + 1
        level = table[first : first + N * hi * wj].view(N, hi, wj, width)
        views[(i, j)] = level
        if j > 0:  # columns: blocks 2**(j-1) apart
            src, s = views[(i, j - 1)], 1 << (j - 1)
            torch.maximum(src[:, :, :-s], src[:, :, s:], out=level)
        elif i > 0:  # rows
            src, s = views[(i - 1, 0)], 1 << (i - 1)
            torch.maximum(src[:, :-s], src[:, s:], out=level)


class RectMax(NamedTuple):
    """``value`` and ``argmax`` (``None`` when not asked for) ``[*S, C]``; ``missing``: whether some
    ``argmax`` may be ``-1`` (an empty rectangle, or unpickable elements in the map)."""

    value: Tensor
    argmax: Tensor | None
    missing: bool


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
    allowed). Returns ``value`` (``x.dtype``) and ``argmax`` (int32, ``h * W + w``; skipped unless
    ``with_argmax``), both ``[*S, C]``, written into ``value`` / ``argmax`` (of any strides) when given.
    See the module docstring for the conventions and the algorithm."""
    N, C, H, W = x.shape
    rect = torch.broadcast_tensors(n, top, bottom, left, right)
    shape = rect[0].shape
    value = torch.empty(*shape, C, dtype=x.dtype) if value is None else value
    if with_argmax and argmax is None:
        argmax = torch.empty(*shape, C, dtype=torch.int32)
    argmax = argmax if with_argmax else None
    empty = (rect[2] <= rect[1]) | (rect[4] <= rect[3])
    if rect[0].numel() == 0 or C == 0:
        return RectMax(value, argmax, False)
    flat = [t.reshape(-1) for t in rect]
    plan = _plan(*flat, (N, H, W))
    codes = _Float32Codes(x) if x.dtype == torch.float32 else _RankCodes(x)
    width = max(1, min(C, TABLE_BYTES // (8 * plan.rows)))
    per_row = rect[0][0].numel()  # rectangles per index of the first dimension: queries go by rows
    step = max(1, GATHER_BYTES // (32 * width * per_row))
    table = torch.empty(plan.rows * width, dtype=torch.int64)
    scratch = torch.empty(N * H * W * width, dtype=torch.float32)
    low = (_LOW - 2 - torch.arange(H * W, dtype=torch.int64)).view(1, H, W, 1)
    minus_two = torch.tensor(-2, dtype=torch.int32)
    for c0 in range(0, C, width):
        c1 = min(C, c0 + width)
        t = table[: plan.rows * (c1 - c0)].view(plan.rows, c1 - c0)
        t[-1] = 0
        code = codes.encode(c0, c1, scratch[: N * H * W * (c1 - c0)].view(N, H, W, c1 - c0))
        torch.add(low, code, alpha=_LOW, out=t[: N * H * W].view(N, H, W, c1 - c0))
        _build_levels(t, plan, (N, H, W), c1 - c0)
        for r0 in range(0, shape[0], step):
            r1 = min(shape[0], r0 + step)
            rows = plan.corners[:, r0 * per_row : r1 * per_row].reshape(-1)
            key = t.index_select(0, rows).view(4, -1, c1 - c0).amax(0)
            halves = key.view(torch.int32).view(r1 - r0, *shape[1:], c1 - c0, 2)
            lo, hi = halves[..., 0], halves[..., 1]  # little-endian halves of the int64 key
            codes.decode(hi, value[r0:r1, ..., c0:c1])
            if argmax is not None:
                a = torch.sub(minus_two, lo, out=argmax[r0:r1, ..., c0:c1])
                if codes.has_unpickable:
                    a.masked_fill_(hi == codes.none, -1)
    has_empty = bool(empty.any())
    if has_empty:
        value.masked_fill_(empty[..., None], 0)
        if argmax is not None:
            argmax.masked_fill_(empty[..., None], -1)
    return RectMax(value, argmax, has_empty or codes.has_unpickable)

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

Without the arg-max the keys are the values themselves (raised to ``-FLT_MAX`` where unpickable, which
is also what a rectangle of nothing else must read): half the bytes and no decoding.

Cost: (number of levels) x N*C*H*W to build the table plus four gathers per rectangle and channel,
against ``sum of rectangle areas x C`` for the direct loop. The channels go in chunks, channels-last
(``[N, H, W, chunk]``: one gathered table row holds a chunk's channels), and the levels are built one
after the other in four buffers, each answering the rectangles of its level as soon as it is built.
The results are decoded into contiguous tensors and copied into the outputs (of any strides).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

FLT_MAX = 3.4028234663852886e38
_LOW = 2**32
# Bytes of a channel chunk's level buffers (four) / of one gather: they bound the chunk's channels and
# keep the allocations under glibc's mmap threshold (32 MB), reused instead of page-faulted in anew.
TABLE_BYTES = 24 << 20
GATHER_BYTES = 4 << 20
RESULT_BYTES = 16 << 20  # a chunk's keys of all rectangles

if sys.byteorder != "little":  # the key's low / high int32 halves are read through a view
    raise ImportError("segdet.ops.rect_max assumes a little-endian machine")


@dataclass(frozen=True)
class _Level:
    """The rectangles ``bins`` (indices into the flattened rectangles) answered by level ``(i, j)`` and
    the table rows of their four corner blocks (``corners``, int64 ``[4, len(bins)]``)."""

    i: int
    j: int
    bins: Tensor
    corners: Tensor


@dataclass(frozen=True)
class _Plan:
    """``levels`` with rectangles, in build order; ``widest[i]``: the last ``j`` built on row level
    ``i``; ``empty``: indices of the empty rectangles."""

    levels: list[_Level]
    widest: list[int]
    empty: Tensor


def _floor_log2(length: Tensor, largest: int) -> Tensor:
    lut = torch.tensor([max(v.bit_length() - 1, 0) for v in range(largest + 1)], device=length.device)
    return lut[length]


def _plan(n: Tensor, top: Tensor, bottom: Tensor, left: Tensor, right: Tensor, shape: tuple) -> _Plan:
    """The levels a set of rectangles (1-D int64 tensors, clipped to the map, possibly empty) needs.

    Variables: ``i, j`` the floor-log2 of a rectangle's height / width (its level's block), ``hi, wj``
    the number of block positions of that level per column / row, ``order`` the rectangles sorted by
    level."""
    _, H, W = shape
    valid = (bottom > top) & (right > left)
    i = _floor_log2((bottom - top).clamp(min=0), H)
    j = _floor_log2((right - left).clamp(min=0), W)
    code = torch.where(valid, i * 64 + j, -1)
    order = torch.argsort(code, stable=True)
    levels, widest = [], []
    start = 0
    values, counts = torch.unique_consecutive(code[order], return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        bins, start = order[start : start + count], start + count
        if value < 0:
            continue
        li, lj = divmod(value, 64)
        hi, wj = H - (1 << li) + 1, W - (1 << lj) + 1
        r0, r1 = (n[bins] * hi + top[bins]) * wj, (n[bins] * hi + bottom[bins] - (1 << li)) * wj
        c0, c1 = left[bins], right[bins] - (1 << lj)
        levels.append(_Level(li, lj, bins, torch.stack([r0 + c0, r0 + c1, r1 + c0, r1 + c1])))
        widest += [0] * (li + 1 - len(widest))
        widest[li] = max(widest[li], lj)
    return _Plan(levels, widest, torch.nonzero(~valid).view(-1))


class _PackedKeys:
    """int64 keys ``code(x) * 2**32 + (2**32 - 2 - position)`` (see the module docstring); the spare
    key reads back as value 0 (code ``zero``), position -1."""

    dtype = torch.int64
    none: int  # the code of unpickable elements: their bins have no arg-max
    zero: int  # the code of 0.0
    has_unpickable: bool

    def __init__(self, x: Tensor) -> None:
        H, W = x.shape[2:]
        self.x = x
        self.low = (_LOW - 2 - torch.arange(H * W, dtype=torch.int64)).view(1, H, W, 1)
        self.minus_two = torch.tensor(-2, dtype=torch.int32)

    @property
    def spare(self) -> int:
        return self.zero * _LOW + _LOW - 1

    def codes(self, c0: int, c1: int) -> Tensor:
        """int32 codes of channels ``[c0, c1)`` as ``[N, H, W, c1 - c0]``."""
        raise NotImplementedError

    def values(self, code: Tensor) -> Tensor:
        raise NotImplementedError

    def encode(self, c0: int, c1: int, out: Tensor) -> None:
        torch.add(self.low, self.codes(c0, c1), alpha=_LOW, out=out)

    def decode(self, key: Tensor) -> tuple[Tensor, Tensor]:
        """Value and arg-max (new contiguous tensors) of keys ``[..., width]``."""
        halves = key.view(torch.int32).view(*key.shape, 2)
        lo, hi = halves[..., 0], halves[..., 1]  # little-endian halves of the int64 key
        argmax = torch.sub(self.minus_two, lo)
        if self.has_unpickable:
            argmax.masked_fill_(hi == self.none, -1)
        return self.values(hi), argmax


class _Float32Keys(_PackedKeys):
    """``code(x)``: float32 bits read as a sign-magnitude integer (``-0.0 -> 0``); unpickable elements
    (through ``fmax``) get ``code(-FLT_MAX)``."""

    none = -0x7F7FFFFF
    zero = 0

    def __init__(self, x: Tensor, width: int) -> None:
        super().__init__(x)
        N, _, H, W = x.shape
        self.scratch = torch.empty(N * H * W * width, dtype=torch.float32)
        # NaN fails the comparison too; only then does the arg-max need the "nothing pooled" fix.
        self.has_unpickable = x.numel() > 0 and not bool(x.amin() > -FLT_MAX)

    def codes(self, c0: int, c1: int) -> Tensor:
        chunk = self.x[:, c0:c1].permute(0, 2, 3, 1)
        y = torch.fmax(chunk, torch.tensor(-FLT_MAX), out=self.scratch[: chunk.numel()].view(chunk.shape))
        bits = y.view(torch.int32)
        sign = bits >> 31
        code = sign & 0x7FFFFFFF
        code ^= bits
        code -= sign  # (bits ^ magnitude mask) - sign = -|x| for negatives: -0.0 and 0.0 meet at 0
        return code

    def values(self, code: Tensor) -> Tensor:
        """The float32 value of ``code``: bits ``|code| | (code & sign bit)``."""
        return torch.bitwise_or(code.abs(), code & -(2**31)).view(torch.float32)


class _RankKeys(_PackedKeys):
    """``code(x)``: rank of ``x`` among the distinct pickable values of the map (rank 0: unpickable, if
    any). float64 values do not fit the key's 32 high bits; their ranks do (up to 2**31 values)."""

    def __init__(self, x: Tensor) -> None:
        super().__init__(x)
        pickable = torch.where(x > -FLT_MAX, x, float("-inf"))
        values, ranks = torch.unique(pickable, sorted=True, return_inverse=True)
        self.has_unpickable = values.numel() > 0 and bool(values[0] == float("-inf"))
        self.none = 0 if self.has_unpickable else -1
        self.zero = values.numel()  # one more code, read back as 0.0
        # -inf (nothing pickable) reads back as -FLT_MAX
        self.table = torch.cat([values.clamp(min=-FLT_MAX), values.new_zeros(1)])
        self.ranks = ranks.to(torch.int32)

    def codes(self, c0: int, c1: int) -> Tensor:
        return self.ranks[:, c0:c1].permute(0, 2, 3, 1)

    def values(self, code: Tensor) -> Tensor:
        return self.table[code.long()]


class _ValueKeys:
    """No arg-max: the keys are the values, unpickable ones raised to -FLT_MAX (``fmax``), which is
    what torchvision outputs when nothing is pooled. Half the bytes of the packed keys, no decoding."""

    spare = 0.0

    def __init__(self, x: Tensor) -> None:
        self.x, self.dtype = x, x.dtype

    def encode(self, c0: int, c1: int, out: Tensor) -> None:
        torch.fmax(self.x[:, c0:c1].permute(0, 2, 3, 1), torch.tensor(-FLT_MAX, dtype=self.dtype), out=out)

    def decode(self, key: Tensor) -> tuple[Tensor, None]:
        return key, None


def _answer(table: Tensor, level: _Level, out: Tensor) -> None:
    """``out[bins] = max of the four corner entries`` of ``table`` (one level, ``[..., width]``)."""
    width = out.shape[1]
    rows = table.view(-1, width)
    step = max(1, GATHER_BYTES // (32 * width))
    for p0 in range(0, level.bins.numel(), step):
        corners = level.corners[:, p0 : p0 + step].reshape(-1)
        out.index_copy_(
            0, level.bins[p0 : p0 + step], rows.index_select(0, corners).view(4, -1, width).amax(0)
        )


def _answer_levels(keys: Tensor, buffers: Tensor, plan: _Plan, out: Tensor) -> None:
    """Build the table level by level from ``keys`` (``[N, H, W, width]``, level (0, 0), held in
    ``buffers[0]``) and answer each level's rectangles into ``out`` (``[Q, width]``) right away.

    Row levels ``(i, 0)`` alternate between ``buffers[0]`` and ``[1]``, column levels ``(i, j > 0)``
    between ``[2]`` and ``[3]``: a level is only kept while the next one is built from it."""
    N, _, W, width = keys.shape
    by_level = {(level.i, level.j): level for level in plan.levels}

    def buffer(k: int, h: int, w: int) -> Tensor:
        return buffers[k, : N * h * w * width].view(N, h, w, width)

    row = keys
    for i, widest in enumerate(plan.widest):
        if i > 0:
            s = 1 << (i - 1)
            row = torch.maximum(row[:, :-s], row[:, s:], out=buffer(i % 2, row.shape[1] - s, W))
        block = row
        for j in range(widest + 1):
            if j > 0:
                s = 1 << (j - 1)
                block = torch.maximum(
                    block[:, :, :-s],
                    block[:, :, s:],
                    out=buffer(2 + j % 2, block.shape[1], block.shape[2] - s),
                )
            if (i, j) in by_level:
                _answer(block, by_level[(i, j)], out)


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
    allowed). Returns ``value`` (``x.dtype``) and ``argmax`` (int32, ``h * W + w``; skipped unless
    ``with_argmax``), both ``[*S, C]``, written into ``value`` / ``argmax`` (of any strides and, for
    ``argmax``, any integer dtype holding ``H * W``) when given. See the module docstring for the
    conventions and the algorithm."""
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
    width = max(1, min(C, TABLE_BYTES // (4 * size * N * H * W), RESULT_BYTES // (size * q)))
    if not with_argmax:
        keys: _PackedKeys | _ValueKeys = _ValueKeys(x)
    else:
        keys = _Float32Keys(x, width) if x.dtype == torch.float32 else _RankKeys(x)
    per_row = q // shape[0]  # rectangles per index of the first dimension: outputs go by rows
    step = max(1, GATHER_BYTES // (size * width * per_row))
    buffers = torch.empty(4, N * H * W * width, dtype=keys.dtype)
    results = torch.empty(q * width, dtype=keys.dtype)
    for c0 in range(0, C, width):
        c1 = min(C, c0 + width)
        res = results[: q * (c1 - c0)].view(q, c1 - c0)
        res.index_fill_(0, plan.empty, keys.spare)
        level0 = buffers[0, : N * H * W * (c1 - c0)].view(N, H, W, c1 - c0)
        keys.encode(c0, c1, level0)
        _answer_levels(level0, buffers, plan, res)
        for r0 in range(0, shape[0], step):
            r1 = min(shape[0], r0 + step)
            v, a = keys.decode(res[r0 * per_row : r1 * per_row].view(r1 - r0, *shape[1:], c1 - c0))
            # Decoded into new (contiguous) tensors, then copied into the outputs: copy_ transposes
            # to their strides several times faster than an elementwise op writing through them.
            value[r0:r1, ..., c0:c1] = v
            if argmax is not None:
                argmax[r0:r1, ..., c0:c1] = a
    return RectMax(value, argmax, with_argmax and keys.has_unpickable)

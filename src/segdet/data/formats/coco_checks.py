"""Type and value checks of COCO JSON records (the parts of the reader that do not build anything).

JSON gives back whatever the file holds: a ``bbox`` may be a string, a width a boolean, an RLE string may
hold characters pycocotools' decoder would read past. These checks turn every such case into one
message, so that the reader can report it against the record and drop it, and so that nothing handed on
to pycocotools can make its C code read or write out of bounds.

Formats checked are those of the COCO data format page (https://cocodataset.org/#format-data) and of
pycocotools' ``maskApi.c`` (polygons, compressed and uncompressed RLE).
"""

from __future__ import annotations

import math

import numpy as np

from segdet.data.validate import OUTSIDE_TOLERANCE


def is_int(value: object) -> bool:
    """A JSON integer (``true``/``false`` are not integers)."""
    return type(value) is int


def as_size(value: object) -> int | None:
    """A positive image dimension: an integer, or a float with an integral value (some tools write
    ``640.0``); ``None`` otherwise."""
    if type(value) is float and math.isfinite(value) and value.is_integer():
        value = int(value)
    if type(value) is int and 0 < value < 2**31:
        return value
    return None


def as_floats(value: object, n: int | None = None) -> list[float] | None:
    """A JSON array of ``n`` (any if None) finite or non-finite numbers as floats; None if it is not
    one (strings, booleans, nested arrays and numbers too large for a float are refused)."""
    if not isinstance(value, list) or (n is not None and len(value) != n):
        return None
    if not all(type(v) in (int, float) for v in value):
        return None
    try:
        return [float(v) for v in value]
    except OverflowError:
        return None


def polygon_problem(polygons: list) -> str | None:
    """What is wrong with a COCO polygon list ``[[x0, y0, x1, y1, ...], ...]``, or None.

    Each polygon needs an even number of finite coordinates and at least 3 points. (pycocotools reads a
    4-number "polygon" as a box, so a 2-point polygon is not just degenerate but misread.)
    """
    for k, poly in enumerate(polygons):
        coords = as_floats(poly)
        if coords is None:
            return f"polygon {k} is not a list of numbers"
        if len(coords) % 2:
            return f"polygon {k} has an odd number of coordinates ({len(coords)})"
        if len(coords) < 6:
            return f"polygon {k} has {len(coords) // 2} points; at least 3 are needed"
        if not all(math.isfinite(v) for v in coords):
            return f"polygon {k} has non-finite coordinates"
    return None


def clip_polygons(polygons: list, width: int, height: int) -> tuple[list, bool]:
    """``(polygons, False)`` when every point lies in the image (within the tolerance boxes get, see
    :data:`segdet.data.validate.OUTSIDE_TOLERANCE`), else ``(clipped polygons, True)``.

    Clipping keeps points far outside the image (up to 1e308 in a valid JSON file) away from
    pycocotools' rasteriser, which converts coordinates to C ``int``.
    """
    t = OUTSIDE_TOLERANCE
    xs = [v for p in polygons for v in p[0::2]]
    ys = [v for p in polygons for v in p[1::2]]
    if min(xs) >= -t and min(ys) >= -t and max(xs) <= width + t and max(ys) <= height + t:
        return polygons, False
    clipped = []
    for p in polygons:
        q = [float(v) for v in p]
        q[0::2] = [min(max(v, 0.0), float(width)) for v in q[0::2]]
        q[1::2] = [min(max(v, 0.0), float(height)) for v in q[1::2]]
        clipped.append(q)
    return clipped, True


def rle_problem(rle: dict, height: int, width: int) -> str | None:
    """What is wrong with a COCO RLE ``{"size": [h, w], "counts": ...}`` for an ``height x width``
    image, or None.

    ``counts`` is either a list of run lengths (uncompressed RLE) or pycocotools' compressed string; in
    both cases the runs must be non-negative and add up to ``h * w`` exactly (pycocotools' decoder does
    not check this and would write past its buffer).
    """
    size = rle.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(is_int(v) for v in size)):
        return f"RLE 'size' {size!r} is not [height, width]"
    if size != [height, width]:
        return f"mask size mismatch: RLE size {size} (h, w) differs from the {width}x{height} image"
    counts = rle.get("counts")
    if isinstance(counts, str):
        runs = decode_rle_string(counts)
        if runs is None:
            return "RLE 'counts' is not a valid compressed RLE string"
    elif isinstance(counts, list) and all(is_int(v) for v in counts):
        runs = counts
    else:
        return "RLE 'counts' is neither a string nor a list of integers"
    if any(r < 0 or r >= 2**32 for r in runs):
        return "RLE has negative or too large run lengths"
    if sum(runs) != height * width:
        return f"RLE runs cover {sum(runs)} pixels, the {width}x{height} image has {height * width}"
    return None


def decode_rle_string(s: str) -> list[int] | None:
    """Run lengths of a compressed COCO RLE string, or None when it is malformed.

    The format (pycocotools ``rleToString``): each run is a signed LEB128-like number in 5-bit groups,
    least significant first, each character ``48 + group`` with bit 0x20 meaning "more groups follow";
    from the fourth run on, the number stored is the difference to the run two places before.
    """
    runs: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k = 0, 0
        while True:
            if p >= n:
                return None  # the last number is cut off
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            p, k = p + 1, k + 1
            if not c & 0x20:
                if c & 0x10:
                    x |= -1 << (5 * k)  # sign extension
                break
            if k > 7:  # more than 35 bits cannot be a 32-bit run length
                return None
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def rle_totals(strings: list[str | bytes], chunk: int = 1 << 15) -> tuple[np.ndarray, np.ndarray]:
    """``(valid, total)`` per compressed RLE string, for many strings at once: ``valid`` is whether
    :func:`decode_rle_string` accepts the string with every run in ``[0, 2**32)``, ``total`` the sum of
    its runs, i.e. the pixels it covers (0 where not valid). Vectorised with numpy over about ``chunk``
    characters at a time (see :func:`_rle_chunk`)."""
    n = len(strings)
    valid = np.ones(n, dtype=bool)
    encoded: list[bytes] = []
    for i, s in enumerate(strings):
        if isinstance(s, str):
            if s.isascii():
                s = s.encode("ascii")
            else:
                valid[i], s = False, b""
        encoded.append(s)
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
    total = np.zeros(n, dtype=np.int64)
    begin, ends = 0, np.cumsum(lengths)
    while begin < n:
        end = max(begin + 1, int(np.searchsorted(ends, ends[begin - 1] + chunk if begin else chunk)))
        part = slice(begin, end)
        if lengths[part].any():
            ok, total[part] = _rle_chunk(b"".join(encoded[part]), lengths[part])
            valid[part] &= ok
        begin = end
    return valid, np.where(valid, total, 0)


def _chain_sums(x: np.ndarray, first: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The runs of RLE strings from their numbers ``x`` (string ``k`` has ``counts[k] > 0`` numbers from
    ``first[k]``): ``r_0 = x_0`` and ``r_j = sum of x_i over 1 <= i <= j, i = j (mod 2)``.

    With ``y`` = ``x`` but 0 at every string's first number, ``A`` the running sum of ``y`` and ``B`` that
    of ``(-1)^i y``, both from the string's start: ``r_j = (A_j + (-1)^j B_j) / 2`` for ``j >= 1`` (the
    terms of the other parity cancel). Two running sums over all strings at once, each minus its value
    just before the string starts; ``(-1)^i`` uses the global index, the string's own sign cancels out.
    """
    y = x.copy()
    y[first] = 0
    a = np.cumsum(y)
    y[1::2] *= -1
    b = np.cumsum(y)
    before = first - 1
    base_a = np.where(first > 0, a[before], 0)
    base_b = np.where(first > 0, b[before], 0)
    a -= np.repeat(base_a, counts)
    b -= np.repeat(base_b, counts)
    b[1::2] *= -1
    runs = (a + b) >> 1
    runs[first] = x[first]
    return runs


def _rle_chunk(joined: bytes, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rle_totals` of the strings of ``lengths`` characters concatenated in ``joined``.

    Characters ``c = byte - 48`` in ``[0, 64)``; a number ends at a character ``c < 32`` (no 0x20 bit);
    its ``G <= 8`` groups give ``sum_g (c_g & 0x1F) << 5 g``, minus ``2 ** (5 G)`` when the last group has
    the 0x10 bit. Run ``j`` is number ``j`` plus run ``j - 2`` for ``j > 2`` (:func:`_chain_sums`).
    """
    n = len(lengths)
    valid = np.ones(n, dtype=bool)
    string_ends = np.cumsum(lengths)

    def invalidate(char_positions: np.ndarray) -> None:
        valid[np.searchsorted(string_ends, char_positions, side="right")] = False

    c = np.frombuffer(joined, dtype=np.uint8) - np.uint8(48)  # bytes below 48 wrap above 63
    bad = c >= 64
    if bad.any():
        invalidate(np.flatnonzero(bad))
        c = np.where(bad, np.uint8(0), c)
    stop = c < 32
    last = string_ends[lengths > 0] - 1
    cut = last[~stop[last]]
    if len(cut):  # the last number is cut off; end it there to keep numbers inside their string
        invalidate(cut)
        stop[cut] = True
    stops = np.flatnonzero(stop)
    starts = np.concatenate(([0], stops[:-1] + 1))
    groups = stops - starts + 1
    if (groups > 8).any():
        invalidate(starts[groups > 8])
    x = (c[starts] & 0x1F).astype(np.int64)
    for g in range(1, 8):
        more = np.flatnonzero(groups > g)
        if not len(more):
            break
        x[more] += (c[starts[more] + g] & 0x1F).astype(np.int64) << (5 * g)
    signed = np.flatnonzero(c[stops] & 0x10)
    x[signed] -= np.left_shift(1, 5 * np.minimum(groups[signed], 8))
    first = np.searchsorted(stops, string_ends - lengths)  # each string's first number
    counts = np.searchsorted(stops, string_ends) - first
    has = counts > 0
    runs = _chain_sums(x, first[has], counts[has])
    out_of_range = (runs < 0) | (runs >= 2**32)
    if out_of_range.any():
        invalidate(starts[out_of_range])
    total = np.zeros(n, dtype=np.int64)
    total[has] = np.add.reduceat(runs, first[has])
    return valid, total

"""The keys :mod:`segdet.ops.rect_max` takes maxima of: int64 ``code(x) * 2**32 + (2**32 - 2 -
position)``, whose max is the maximum and its first position (see that module's docstring), or the
values themselves when no arg-max is needed.

Each kind encodes a chunk of channels channels-last (``encode``) and decodes gathered keys into values
and arg-max codes ``-2 - position`` (``decode``). ``FLT_MAX``: torchvision's "nothing pooled" value;
elements not above ``-FLT_MAX`` never win.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

FLT_MAX = 3.4028234663852886e38
_LOW = 2**32

if sys.byteorder != "little":  # the key's low / high int32 halves are read through a view
    raise ImportError("segdet.ops.rect_keys assumes a little-endian machine")


class PackedKeys:
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
        """Value and arg-max *code* ``-2 - position`` (``-1``: none) of keys ``[..., width]``, views of
        ``key`` where they can be: the arg-max code is the key's low half as it is (whoever reads it
        decodes it, once, where it copies it anyway)."""
        halves = key.view(torch.int32).view(*key.shape, 2)
        lo, hi = halves[..., 0], halves[..., 1]  # little-endian halves of the int64 key
        if self.has_unpickable:
            lo = lo.masked_fill(hi == self.none, -1)
        return self.values(hi), lo


class _FloatBitKeys(PackedKeys):
    """Codes made from float32 bits, computed channels-last in a reused ``scratch`` buffer (``width``
    channels)."""

    def __init__(self, x: Tensor, width: int) -> None:
        super().__init__(x)
        N, _, H, W = x.shape
        self.scratch = torch.empty(N * H * W * width, dtype=torch.float32)

    def channels_last(self, c0: int, c1: int) -> tuple[Tensor, Tensor]:
        """Channels ``[c0, c1)`` as ``[N, H, W, c1 - c0]`` and the scratch view of that shape."""
        chunk = self.x[:, c0:c1].permute(0, 2, 3, 1)
        return chunk, self.scratch[: chunk.numel()].view(chunk.shape)


class Float32Keys(_FloatBitKeys):
    """``code(x)``: float32 bits read as a sign-magnitude integer (``-0.0 -> 0``); unpickable elements
    (through ``fmax``) get ``code(-FLT_MAX)``."""

    none = -0x7F7FFFFF
    zero = 0

    def __init__(self, x: Tensor, width: int) -> None:
        super().__init__(x, width)
        # NaN fails the comparison too; only then does the arg-max need the "nothing pooled" fix.
        self.has_unpickable = x.numel() > 0 and not bool(x.amin() > -FLT_MAX)

    def codes(self, c0: int, c1: int) -> Tensor:
        chunk, scratch = self.channels_last(c0, c1)
        bits = torch.fmax(chunk, torch.tensor(-FLT_MAX), out=scratch).view(torch.int32)
        sign = bits >> 31
        code = sign & 0x7FFFFFFF
        code ^= bits
        code -= sign  # (bits ^ magnitude mask) - sign = -|x| for negatives: -0.0 and 0.0 meet at 0
        return code

    def values(self, code: Tensor) -> Tensor:
        """The float32 value of ``code``: bits ``|code| | (code & sign bit)``."""
        return torch.bitwise_or(code.abs(), code & -(2**31)).view(torch.float32)


class NonNegativeKeys(_FloatBitKeys):
    """``code(x)``: the float32 bits as they are, for maps without negative values (and without NaN),
    such as the ReLU outputs a detector pools: their order is the values' order once ``-0.0`` is
    made ``0.0`` (``x + 0.0``), and the value is the code read as a float: no decoding."""

    none = -1  # no code is negative: nothing is unpickable
    zero = 0
    has_unpickable = False

    @staticmethod
    def applies(x: Tensor) -> bool:
        return x.dtype == torch.float32 and x.numel() > 0 and bool(x.amin() >= 0)  # NaN fails too

    def codes(self, c0: int, c1: int) -> Tensor:
        chunk, scratch = self.channels_last(c0, c1)
        return torch.add(chunk, 0.0, out=scratch).view(torch.int32)

    def values(self, code: Tensor) -> Tensor:
        return code.view(torch.float32)


class RankKeys(PackedKeys):
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


class ValueKeys:
    """No arg-max: the keys are the values, unpickable ones raised to -FLT_MAX (``fmax``), which is
    what torchvision outputs when nothing is pooled. Half the bytes of the packed keys, no decoding."""

    spare = 0.0

    def __init__(self, x: Tensor) -> None:
        self.x, self.dtype = x, x.dtype

    def encode(self, c0: int, c1: int, out: Tensor) -> None:
        torch.fmax(self.x[:, c0:c1].permute(0, 2, 3, 1), torch.tensor(-FLT_MAX, dtype=self.dtype), out=out)

    def decode(self, key: Tensor) -> tuple[Tensor, None]:
        return key, None

"""RoI max pooling (Girshick, "Fast R-CNN", ICCV 2015): ``torchvision.ops.roi_pool``, fast on the CPU.

Each RoI ``(n, x1, y1, x2, y2)`` (input-image pixels) is quantised to feature-map cells and cut into a
``PH x PW`` grid of bins; each output is the maximum of its bin. With ``s`` the spatial scale, ``r(.)``
rounding half away from zero (C's ``round``), every quantity computed in the input's float type exactly
as torchvision's CPU kernel does::

    x1' = r(x1 s),  y1' = r(y1 s),  x2' = r(x2 s),  y2' = r(y2 s)
    roi_h = max(y2' - y1' + 1, 1),  bin_h = roi_h / PH          (the same for w)
    top_p    = clip(floor(p bin_h) + y1', 0, H),   bottom_p = clip(ceil((p + 1) bin_h) + y1', 0, H)
    out[k, c, p, q] = max of x[n, c, h, w] over top_p <= h < bottom_p, left_q <= w < right_q

and the gradient goes to the first maximal element in row-major order (``argmax``): ``dL/dx[n, c, a] =
sum of dL/dout[k, c, p, q] over the bins whose argmax is a`` (torchvision's tie rule, its ``0`` for an
empty bin and ``-FLT_MAX`` when only NaN / -inf lie in a bin, with no gradient for either).

torchvision's CPU kernel visits every element of every bin with scalar code on one thread, channel by
channel. Ours (``csrc/roi_pool.cpp``, built on first use by :mod:`segdet.ops.native`) computes the bins
by the same formulas in the same float type, reads the map channels-last, so that each cell of a bin
updates the running maxima (and arg-maxima) of many channels in a few SIMD instructions, and shares the
RoIs among as many threads as torch uses (calls of under ~1 M outputs run on one: starting threads
would cost more); the backward pass splits the channels among them.

Without a C++ compiler (or with ``SEGDET_NATIVE=0``) a pure-torch path is taken: the bins' maxima are
range-maximum queries on a table of block maxima (:mod:`segdet.ops.rect_max`): a vectorised pass over
the map per block size, then one to four gathered table rows per bin (one where the table has the
bin's exact size, as it has for the small bins of Fast R-CNN's conv5), whatever the bin's size; the
arg-max comes with the maximum. The table's cost per output is fixed (a gather and a few vectorised
passes), so it wins by far on bins of tens of cells and loses on bins of one or two: on that path,
calls whose bins are that small on average (or whose work is tiny) go to torchvision's kernel
(``_torchvision_is_faster``, the crossover as measured).

Both backward passes scatter the output gradient into the arg-max positions in torchvision's order
(RoI, then bin, for every element), so they are deterministic and *equal* to torchvision's: the same
float additions in the same order.

Other devices use torchvision's kernel. Half-precision inputs are pooled in float32 and returned in
their dtype, as torchvision's autocast wrapper does; ``rois`` are converted to the pooling dtype
(torchvision requires them to match). Image indices outside ``[0, N)`` are refused (torchvision reads
out of bounds).
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torchvision.ops import roi_pool as tv_roi_pool

from segdet.ops import native
from segdet.ops.rect_max import rect_max

# Below these, torchvision's kernel is called instead (see ``_torchvision_is_faster``).
MIN_VISITS = 1 << 22
MIN_BIN_AREA = 4.5
# Output elements per step of the backward scatter: bounds its int64 index buffer (reused, not
# page-faulted in again on every step).
BACKWARD_ELEMENTS = 1 << 20


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """Per-image ``[R_i, 4]`` boxes -> ``[ΣR_i, 5]`` rows ``(image index, x1, y1, x2, y2)``."""
    if not boxes:
        raise ValueError("boxes must hold one [R_i, 4] tensor per image, got an empty list")
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must be [R, 4] (x1, y1, x2, y2), got {tuple(b.shape)}")
    concat = torch.cat(boxes, dim=0)
    # full_like, not full((len(b), 1)): a traced (exported) graph keeps data-dependent box counts symbolic
    image_index = torch.cat([torch.full_like(b[:, :1], i, dtype=concat.dtype) for i, b in enumerate(boxes)])
    return torch.cat((image_index, concat), dim=1)


def _round_half_away(v: Tensor) -> Tensor:
    """C's ``round``: halves away from zero (``torch.round`` rounds them to even); ``a - floor(a)`` is
    exact."""
    a = v.abs()
    whole = a.floor()
    return (whole + (a - whole >= 0.5).to(v.dtype)).copysign(v)


def roi_bins(
    rois: Tensor, spatial_scale: float, output_size: tuple[int, int], height: int, width: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``top, bottom`` (int64 ``[K, PH]``) and ``left, right`` (``[K, PW]``) of every bin, clipped to
    the map, by the formulas of the module docstring, in ``rois.dtype`` arithmetic."""
    dtype = rois.dtype
    corners = _round_half_away(rois[:, 1:] * torch.tensor(spatial_scale, dtype=dtype)).long()
    x1, y1, x2, y2 = corners.unbind(1)

    def edges(start: Tensor, end: Tensor, bins: int, limit: int) -> tuple[Tensor, Tensor]:
        size = (end - start + 1).clamp(min=1).to(dtype) / bins
        p = torch.arange(bins + 1, dtype=dtype)[None]
        lo = (p[:, :-1] * size[:, None]).floor().long() + start[:, None]
        hi = (p[:, 1:] * size[:, None]).ceil().long() + start[:, None]
        return lo.clamp(0, limit), hi.clamp(0, limit)

    top, bottom = edges(y1, y2, output_size[0], height)
    left, right = edges(x1, x2, output_size[1], width)
    return top, bottom, left, right


def _image_index(rois: Tensor, batch: int) -> Tensor:
    index = rois[:, 0].long()  # truncation, as the C kernel's int conversion
    if index.numel() and not 0 <= int(index.min()) <= int(index.max()) < batch:
        raise ValueError(f"rois[:, 0] must be image indices in [0, {batch}), got {index.unique().tolist()}")
    return index


class _Bins(NamedTuple):
    """Bin edges (``roi_bins``) and image index of every RoI."""

    top: Tensor
    bottom: Tensor
    left: Tensor
    right: Tensor
    image: Tensor

    def empty(self) -> Tensor:
        """bool ``[K, PH * PW]``: the bins that pool nothing (outside the map, or degenerate)."""
        rows, cols = self.bottom <= self.top, self.right <= self.left
        return (rows[:, :, None] | cols[:, None, :]).flatten(1)


def _torchvision_is_faster(bins: _Bins, channels: int) -> bool:
    """Whether torchvision's loop beats the sparse table on these bins.

    The loop costs ``visits``, the sum of the bins' areas (x C); the table a fixed ~10 vectorised
    passes per output element plus its levels. Measured here: with bins of ~3 cells on average the
    loop is faster, from ~6 cells on the table is (the more so the larger the bins); below ~4 M
    visits the table's fixed cost (some 50 operator calls) dominates."""
    rows = (bins.bottom - bins.top).clamp(min=0).sum(1)
    cols = (bins.right - bins.left).clamp(min=0).sum(1)
    visits = channels * int((rows * cols).sum())
    outputs = channels * bins.top.numel() * bins.left.shape[1]
    return visits < MIN_VISITS or visits < MIN_BIN_AREA * outputs


def _pool(x: Tensor, bins: _Bins, with_argmax: bool) -> tuple[Tensor, Tensor | None, bool]:
    """Pool ``x`` (float32 / float64): ``output [K, C, PH, PW]``, ``argmax`` (``[C, K, PH, PW]``,
    channel-major for the backward pass, ``rect_max``'s codes ``-2 - position`` (-1: none), int16 when
    they fit, else int32; ``None`` unless ``with_argmax``) and whether ``argmax`` may be -1 outside the
    empty bins."""
    _, C, H, W = x.shape
    (K, ph), pw = bins.top.shape, bins.left.shape[1]
    out = torch.empty(K, C, ph, pw, dtype=x.dtype)
    # codes -2 - position reach -(H W + 1): int16 holds them while H W < 2**15
    small = torch.int16 if H * W < 2**15 else torch.int32
    argmax = torch.empty(C, K, ph, pw, dtype=small) if with_argmax else None
    if out.numel() == 0:
        return out, argmax, False
    if H * W == 0:  # every bin is empty
        if argmax is not None:
            argmax.fill_(-1)
        return out.zero_(), argmax, False
    pooled = rect_max(
        x,
        bins.image[:, None, None],
        bins.top[:, :, None],
        bins.bottom[:, :, None],
        bins.left[:, None, :],
        bins.right[:, None, :],
        value=out.permute(0, 2, 3, 1),
        argmax=None if argmax is None else argmax.permute(1, 2, 3, 0),
        with_argmax=with_argmax,
    )
    return out, argmax, pooled.unpickable


def _unpool(
    grad: Tensor, argmax: Tensor, empty: Tensor, unpickable: bool, image: Tensor, shape: tuple[int, ...]
) -> Tensor:
    """``dL/dx``: ``grad[k, c, p, q]`` added to ``x[image[k], c]`` at ``argmax[c, k, p, q]``, skipping
    -1: the ``empty`` bins (``[K, PH * PW]``) and, when ``unpickable``, bins of only NaN / -inf.

    Each element receives its terms in torchvision's order (ascending RoI, then bin), so the sums are
    the same float additions. The work goes by image and block of channels: one ``scatter_add_`` along
    the flattened ``H W`` of the block's planes ``[channels, HW]`` (parallel over channels) takes every
    RoI's terms, so the block's planes stay in cache while they are added to. Variables: ``src`` /
    ``index`` the gradient / arg-max of the image's RoIs in the block as ``[channels, RoIs x PH x PW]``;
    a skipped term adds 0 at position 0 instead."""
    N, C, H, W = shape
    grad_input = torch.zeros(N, C, H * W, dtype=grad.dtype)
    K, bins = grad.shape[0], grad.shape[2] * grad.shape[3]
    if grad.numel() == 0:
        return grad_input.view(shape)
    order = torch.argsort(image, stable=True)
    in_order = bool((order == torch.arange(K)).all())
    bounds = torch.searchsorted(image[order], torch.arange(N + 1)).tolist()
    grad, argmax = grad.flatten(2), argmax.flatten(2)
    minus_two = torch.tensor(-2, dtype=argmax.dtype)
    for n in range(N):
        k0, k1 = bounds[n], bounds[n + 1]
        if k0 == k1:
            continue
        rows = slice(k0, k1) if in_order else order[k0:k1]
        skip = torch.nonzero(empty[rows].reshape(-1)).view(-1)
        block = max(1, min(C, BACKWARD_ELEMENTS // ((k1 - k0) * bins)))
        src = torch.empty(block, k1 - k0, bins, dtype=grad.dtype)
        index = torch.empty(block, k1 - k0, bins, dtype=torch.int64)
        for c0 in range(0, C, block):
            c1 = min(C, c0 + block)
            s, i = src[: c1 - c0], index[: c1 - c0]
            s.copy_(grad[rows, c0:c1].transpose(0, 1))
            torch.sub(minus_two, argmax[c0:c1, rows], out=i)  # rect_max's codes: -2 - position
            s, i = s.view(c1 - c0, -1), i.view(c1 - c0, -1)
            if unpickable:
                missing = i < 0
                s.masked_fill_(missing, 0)
                i.masked_fill_(missing, 0)
            elif skip.numel():
                s.index_fill_(1, skip, 0)
                i.index_fill_(1, skip, 0)
            grad_input[n, c0:c1].scatter_add_(1, i, s)
    return grad_input.view(shape)


class _RoIPool(torch.autograd.Function):
    """The pure-torch path: sparse-table forward (:func:`_pool`), scatter backward (:func:`_unpool`)."""

    @staticmethod
    def forward(ctx, input: Tensor, bins: _Bins):
        out, argmax, unpickable = _pool(_pooling_dtype(input), bins, ctx.needs_input_grad[0])
        ctx.save_for_backward(argmax, bins.empty(), bins.image)
        ctx.shape, ctx.unpickable = tuple(input.shape), unpickable
        return out.to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        argmax, empty, image = ctx.saved_tensors
        grad_input = _unpool(_pooling_dtype(grad), argmax, empty, ctx.unpickable, image, ctx.shape)
        return grad_input.to(grad.dtype), None


_FLOAT_ARGUMENT = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}


def _kernel_suffix(dtype: torch.dtype, index: torch.dtype) -> str:
    """The C++ kernels' names end in their float and arg-max types, e.g. ``f32_i16``."""
    floats = {torch.float32: "f32", torch.float64: "f64"}
    return f"{floats[dtype]}_{'i16' if index == torch.int16 else 'i32'}"


def _pointer(t: Tensor | None) -> ctypes.c_void_p:
    """The address of ``t``'s data (null for ``None``): the caller keeps ``t`` alive until the call."""
    return ctypes.c_void_p(None if t is None else t.data_ptr())


class _NativeRoIPool(torch.autograd.Function):
    """The C++ path (``csrc/roi_pool.cpp``): bins, maxima and arg-maxima in one call; the arg-max is
    kept ``[K, C, PH, PW]`` (flat ``h W + w``, -1 for none; int16 while it fits) for the backward call."""

    @staticmethod
    def forward(ctx, input, rois, image, size, spatial_scale, kernels):
        x = _pooling_dtype(input)
        _, C, H, W = x.shape
        K, (ph, pw) = rois.shape[0], size
        out = torch.empty(K, C, ph, pw, dtype=x.dtype)
        # positions h W + w and -1: int16 holds them while H W < 2**15
        index = torch.int16 if H * W < 2**15 else torch.int32
        argmax = torch.empty(K, C, ph, pw, dtype=index) if ctx.needs_input_grad[0] else None
        if out.numel():
            # held in variables: the kernel reads them after _pointer has returned. The kernel reads
            # the map channels-last: as it is if it is laid out so, else it transposes a copy.
            channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            x = x if channels_last else x.contiguous()
            rois = rois.contiguous()
            scalar = _FLOAT_ARGUMENT[x.dtype]
            i64 = ctypes.c_int64
            failed = getattr(kernels, f"roi_pool_forward_{_kernel_suffix(x.dtype, index)}")(
                _pointer(x), i64(channels_last), i64(x.shape[0]), i64(H), i64(W), i64(C),
                _pointer(rois), scalar(spatial_scale),
                i64(K), i64(ph), i64(pw), _pointer(out), _pointer(argmax), i64(torch.get_num_threads()),
            )  # fmt: skip
            if failed:  # the kernel's channels-last copy of the map did not fit in memory
                raise MemoryError(f"roi_pool: no memory for a channels-last copy of the {tuple(x.shape)} map")
        ctx.save_for_backward(argmax, image)
        ctx.shape, ctx.kernels, ctx.index = tuple(input.shape), kernels, index
        return out.to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        argmax, image = ctx.saved_tensors
        N, C, H, W = ctx.shape
        g = _pooling_dtype(grad).contiguous()
        grad_input = torch.zeros(N, C, H, W, dtype=g.dtype)
        if g.numel():
            image = image.contiguous()
            i64 = ctypes.c_int64
            getattr(ctx.kernels, f"roi_pool_backward_{_kernel_suffix(g.dtype, ctx.index)}")(
                _pointer(g), _pointer(argmax), _pointer(image), i64(g.shape[0]), i64(C),
                i64(g.shape[2] * g.shape[3]), i64(H * W), _pointer(grad_input), i64(torch.get_num_threads()),
            )  # fmt: skip
        return grad_input.to(grad.dtype), None, None, None, None, None


def _pooling_dtype(t: Tensor) -> Tensor:
    """float32 / float64 as they are, half precision in float32 (torchvision's autocast does the same)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """``torchvision.ops.roi_pool``: Fast R-CNN's RoI max pooling; see the module docstring.

    Args:
        input: ``[N, C, H, W]`` features.
        boxes: ``[K, 5]`` rows ``(image index, x1, y1, x2, y2)``, or a list of per-image ``[L_i, 4]``
            boxes, in input-image pixels.
        output_size: ``PH`` or ``(PH, PW)``.
        spatial_scale: features per input pixel (``1/16`` for a stride-16 map).

    Returns ``[K, C, PH, PW]``, equal to torchvision's output (the same maxima; a bin whose first
    maximum is ``-0.0`` may read ``0.0``) with the same gradient."""
    rois = boxes if isinstance(boxes, Tensor) else boxes_to_rois(boxes)
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [K, 5] rows (image index, x1, y1, x2, y2), got {tuple(rois.shape)}")
    if input.dim() != 4:
        raise ValueError(f"input must be [N, C, H, W], got {tuple(input.shape)}")
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(map(int, output_size))
    if input.device.type != "cpu" or torch.compiler.is_exporting():  # exported: torchvision's op itself
        return tv_roi_pool(input, rois, size, spatial_scale)
    N, C, H, W = input.shape
    rois = rois.to(_pooling_dtype(input).dtype)
    image = _image_index(rois, N)
    # the kernel's positions h W + w are int32
    kernels = native.library("roi_pool") if H * W < 2**31 else None
    if kernels is not None:
        return _NativeRoIPool.apply(input, rois, image, size, spatial_scale, kernels)
    bins = _Bins(*roi_bins(rois, spatial_scale, size, H, W), image)
    if _torchvision_is_faster(bins, C):
        return tv_roi_pool(_pooling_dtype(input), rois, size, spatial_scale).to(input.dtype)
    return _RoIPool.apply(input, bins)

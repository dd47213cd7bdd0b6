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

torchvision's CPU kernel visits every element of every bin with scalar code on one thread: its cost is
``sum of RoI areas x C``. Here the bins' maxima are range-maximum queries on a sparse table
(:mod:`segdet.ops.rect_max`): a few vectorised passes over the map, then four gathers per bin,
whatever its size. The backward pass is one ``scatter_add_`` of the output gradient into the argmax
positions, in torchvision's order (RoI, channel, bin), so it is deterministic and equal to
torchvision's up to nothing at all (the same float additions in the same order).

Other devices use torchvision's kernel. Half-precision inputs are pooled in float32 and returned in
their dtype, as torchvision's autocast wrapper does; ``rois`` are converted to the pooling dtype
(torchvision requires them to match).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torchvision.ops import roi_pool as tv_roi_pool

from segdet.ops.rect_max import rect_max

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
    image_index = torch.cat(
        [torch.full((len(b), 1), i, dtype=concat.dtype, device=concat.device) for i, b in enumerate(boxes)]
    )
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
    if index.numel() and (bool((index < 0).any()) or bool((index >= batch).any())):
        raise ValueError(f"rois[:, 0] must be image indices in [0, {batch}), got {index.unique().tolist()}")
    return index


def _pool(
    x: Tensor, rois: Tensor, spatial_scale: float, output_size: tuple[int, int], with_argmax: bool
) -> tuple[Tensor, Tensor | None, bool, Tensor]:
    """Pool ``x`` (float32 / float64): ``output [K, C, PH, PW]``, ``argmax`` (int32 ``[C, K, PH, PW]``,
    channel-major for the backward pass; ``None`` unless ``with_argmax``), whether some ``argmax`` may
    be -1, and the RoIs' image indices."""
    N, C, H, W = x.shape
    K, (ph, pw) = rois.shape[0], output_size
    image = _image_index(rois, N)
    out = torch.empty(K, C, ph, pw, dtype=x.dtype)
    argmax = torch.empty(C, K, ph, pw, dtype=torch.int32) if with_argmax else None
    if out.numel() == 0:
        return out, argmax, False, image
    if H * W == 0:
        if argmax is not None:
            argmax.fill_(-1)
        return out.zero_(), argmax, True, image
    top, bottom, left, right = roi_bins(rois, spatial_scale, output_size, H, W)
    pooled = rect_max(
        x,
        image[:, None, None],
        top[:, :, None],
        bottom[:, :, None],
        left[:, None, :],
        right[:, None, :],
        value=out.permute(0, 2, 3, 1),
        argmax=None if argmax is None else argmax.permute(1, 2, 3, 0),
        with_argmax=with_argmax,
    )
    return out, argmax, pooled.missing, image


def _unpool(
    grad: Tensor, argmax: Tensor, missing: bool, image: Tensor, shape: tuple[int, int, int, int]
) -> Tensor:
    """``dL/dx``: ``grad[k, c, p, q]`` added to ``x[image[k], c]`` at ``argmax[c, k, p, q]`` (skipping
    ``-1``, which only occurs when ``missing``).

    Each element receives its terms in torchvision's order (ascending RoI, then bin), so the sums are
    the same float additions. The work goes by image and block of channels: one ``scatter_add_`` along
    the flattened ``H W`` of the block's planes ``[channels, HW]`` (parallel over channels) takes every
    RoI's terms, so the block's planes stay in cache while they are added to. Variables: ``src`` /
    ``index`` the gradient / arg-max of the image's RoIs in the block as ``[channels, RoIs x PH x PW]``."""
    N, C, H, W = shape
    grad_input = torch.zeros(N, C, H * W, dtype=grad.dtype)
    K, bins = grad.shape[0], grad.shape[2] * grad.shape[3]
    if grad.numel() == 0:
        return grad_input.view(shape)
    order = torch.argsort(image, stable=True)
    in_order = bool((order == torch.arange(K)).all())
    bounds = torch.searchsorted(image[order], torch.arange(N + 1)).tolist()
    grad, argmax = grad.flatten(2), argmax.flatten(2)
    for n in range(N):
        k0, k1 = bounds[n], bounds[n + 1]
        if k0 == k1:
            continue
        rows = slice(k0, k1) if in_order else order[k0:k1]
        block = max(1, min(C, BACKWARD_ELEMENTS // ((k1 - k0) * bins)))
        src = torch.empty(block, k1 - k0, bins, dtype=grad.dtype)
        index = torch.empty(block, k1 - k0, bins, dtype=torch.int64)
        for c0 in range(0, C, block):
            c1 = min(C, c0 + block)
            s, i = src[: c1 - c0], index[: c1 - c0]
            s.copy_(grad[rows, c0:c1].transpose(0, 1))
            i.copy_(argmax[c0:c1, rows])
            s, i = s.view(c1 - c0, -1), i.view(c1 - c0, -1)
            if missing:  # nothing pooled there: add 0 at position 0 instead
                skip = i < 0
                s.masked_fill_(skip, 0)
                i.masked_fill_(skip, 0)
            grad_input[n, c0:c1].scatter_add_(1, i, s)
    return grad_input.view(shape)


class _RoIPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input: Tensor, rois: Tensor, spatial_scale: float, output_size: tuple[int, int]):
        dtype = input.dtype if input.dtype in (torch.float32, torch.float64) else torch.float32
        out, argmax, missing, image = _pool(
            input.to(dtype), rois.to(dtype), spatial_scale, output_size, ctx.needs_input_grad[0]
        )
        ctx.save_for_backward(argmax, image)
        ctx.shape, ctx.missing = tuple(input.shape), missing
        return out.to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        argmax, image = ctx.saved_tensors
        dtype = grad.dtype if grad.dtype in (torch.float32, torch.float64) else torch.float32
        return _unpool(grad.to(dtype), argmax, ctx.missing, image, ctx.shape).to(grad.dtype), None, None, None


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
    maximum is ``-0.0`` reads ``0.0``) with the same gradient."""
    rois = boxes if isinstance(boxes, Tensor) else boxes_to_rois(boxes)
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [K, 5] rows (image index, x1, y1, x2, y2), got {tuple(rois.shape)}")
    if input.dim() != 4:
        raise ValueError(f"input must be [N, C, H, W], got {tuple(input.shape)}")
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(map(int, output_size))
    if input.device.type != "cpu":
        return tv_roi_pool(input, rois, size, spatial_scale)
    return _RoIPool.apply(input, rois, float(spatial_scale), size)

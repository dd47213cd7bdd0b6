"""RoIAlign on every CPU thread (RoI max pooling: :mod:`segdet.ops.roi_pool`).

torchvision's CPU kernels of ``roi_align`` (forward and backward) run on one thread,
whatever ``torch.get_num_threads()`` says: in a Faster R-CNN R50-FPN forward at 800x800 the box pooler's
1000 RoIs cost ~15% of the time while the other cores wait. The output of each RoI depends on that RoI
only, so the RoIs are cut into one contiguous chunk per intra-op thread and the chunks are pooled at the
same time with torchvision's kernels (they release the GIL):

* forward: the same kernel on each chunk, outputs concatenated: bit-identical to one call;
* backward: ``∂L/∂x = Σ_chunks ∂L_chunk/∂x``, each chunk's gradient from torchvision's backward kernel,
  summed in chunk order: equal to one call up to the order of float additions, deterministic.

The functions take torchvision's arguments (``rois`` as ``[K, 5]`` rows ``(batch index, x1, y1, x2, y2)``)
and fall back to ``torchvision.ops`` itself on other devices, for few RoIs, or with one thread.
Half-precision inputs are pooled in float32 and returned in their dtype, as torchvision's autocast
wrapper of these ops does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align

from segdet.ops.roi_pool import boxes_to_rois

T = TypeVar("T")

# Below this many RoIs per thread, starting threads costs more than it saves.
MIN_ROIS_PER_THREAD = 32


def _num_chunks(input: Tensor, rois: Tensor) -> int:
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [K, 5] rows (batch index, x1, y1, x2, y2), got {tuple(rois.shape)}")
    if input.device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), rois.shape[0] // MIN_ROIS_PER_THREAD))


def _in_threads(fn: Callable[..., T], args: Sequence[tuple]) -> list[T]:
    """``[fn(*a) for a in args]``, the first in this thread and the others in worker threads, each
    without autograd recording (the callers are autograd Functions) and in the caller's inference mode."""
    inference = torch.is_inference_mode_enabled()

    def call(a: tuple) -> T:
        with torch.no_grad(), torch.inference_mode(inference):
            return fn(*a)

    with ThreadPoolExecutor(max_workers=len(args) - 1) as pool:
        futures = [pool.submit(call, a) for a in args[1:]]
        first = call(args[0])
        return [first] + [f.result() for f in futures]


def _kernel_inputs(input: Tensor, rois: Tensor, chunks: int) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """``input`` in the layout and dtype the kernels need (one copy, instead of one per thread; half
    precision is pooled in float32 as torchvision's autocast wrapper does), ``rois`` in that dtype, and
    its ``chunks`` parts."""
    dtype = input.dtype if input.dtype in (torch.float32, torch.float64) else torch.float32
    rois = rois.to(dtype)
    return input.to(dtype).contiguous(), rois, rois.tensor_split(chunks)


def _summed_in_threads(fn: Callable[..., Tensor], args: Sequence[tuple]) -> Tensor:
    """``Σ fn(*a)`` over ``args`` (the chunks' gradients), computed in threads, summed in order."""
    grads = _in_threads(fn, args)
    total = grads[0]
    for g in grads[1:]:
        total.add_(g)
    return total


class _RoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, spatial_scale, output_size, sampling_ratio, aligned, chunks):
        x, rois, parts = _kernel_inputs(input, rois, chunks)
        op = torch.ops.torchvision.roi_align
        outs = _in_threads(
            lambda r: op(x, r, spatial_scale, output_size[0], output_size[1], sampling_ratio, aligned),
            [(r,) for r in parts],
        )
        ctx.save_for_backward(rois)
        ctx.args = (spatial_scale, output_size, sampling_ratio, aligned, chunks, tuple(input.shape))
        return torch.cat(outs).to(input.dtype)

    @staticmethod
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        spatial_scale, (ph, pw), sampling_ratio, aligned, chunks, (n, c, h, w) = ctx.args
        op = torch.ops.torchvision._roi_align_backward
        total = _summed_in_threads(
            lambda g, r: op(g, r, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned),
            list(zip(grad.to(rois.dtype).tensor_split(chunks), rois.tensor_split(chunks), strict=True)),
        )
        return total.to(grad.dtype), None, None, None, None, None, None


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def roi_align(
    input: Tensor,
    rois: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """``torchvision.ops.roi_align`` (He et al., "Mask R-CNN", 2017) on every CPU thread; see the module
    docstring. ``rois``: ``[K, 5]`` rows ``(batch index, x1, y1, x2, y2)``, or a list of per-image
    ``[L_i, 4]`` boxes (as torchvision and :func:`segdet.ops.roi_pool.roi_pool` take)."""
    if not isinstance(rois, Tensor):
        rois = boxes_to_rois(rois)
    # Exported graphs (segdet export) hold torchvision's op itself: the threads are this process's
    chunks = 1 if torch.compiler.is_exporting() else _num_chunks(input, rois)
    if chunks == 1:
        # The same dtypes as the threaded path: torchvision's kernels refuse rois of another dtype than
        # the input and have no bfloat16 CPU kernel (a half-precision model's float32 proposals).
        low = input.dtype not in (torch.float32, torch.float64)
        x = input.float() if low else input
        out = tv_roi_align(x, rois.to(x.dtype), output_size, spatial_scale, sampling_ratio, aligned)
        return out.to(input.dtype) if low else out
    return _RoIAlign.apply(input, rois, spatial_scale, _pair(output_size), sampling_ratio, aligned, chunks)

"""The weight gradient of a 3x3 convolution by Winograd's minimal filtering, on the CPU.

For ``y = w ⋆ x`` (3x3, stride 1, zero padding 1) the weight gradient is a correlation of two feature
maps, ``∂L/∂w[o, i, k] = Σ_{n, p} ∂L/∂y[n, o, p] · x[n, i, p + k - 1]``: ``9 C_out C_in`` multiply-adds per
pixel computed directly (oneDNN's kernel). Cut the output gradient into 4 x 4 tiles ``e`` and take
the 6 x 6 input patch ``d`` under each. By the transposition principle, Lavin & Gray's ``F(4x4, 3x3)``
("Fast Algorithms for Convolutional Neural Networks", CVPR 2016) becomes ``F(3x3, 4x4)``, which gives
each tile's contribution to the 3 x 3 gradient as

    ∂L/∂w = Gᵀ [ (A e Aᵀ) ⊙ (Bᵀ d B) ] G

with Lavin's ``Bᵀ`` and ``G`` and ``A`` the transpose of his ``Aᵀ``. The sum over tiles moves inside
``Gᵀ [·] G``, so for each of the 36 points ξ it is one matrix product over all T tiles of the batch:

    M[ξ] = U[ξ] V[ξ]ᵀ,   U[ξ] = (A e Aᵀ)[ξ] as [C_out, T],   V[ξ] = (Bᵀ d B)[ξ] as [C_in, T]

That is ``36 C_out C_in`` multiply-adds per 16 pixels where the direct method needs ``144``: 4x
fewer. The two transforms are integer combinations of the values (``csrc/winograd.cpp``); the products
run in torch.bmm; the fractions of ``G`` apply once, to the 36 summed products.

On the 2-core AVX2 host (2 threads, batch 2) it takes 0.4-0.55 of oneDNN's time from 25 x 34 maps
up (the table in :mod:`segdet.ops.nnpack_conv`'s docstring, "Training"); on short batches of tiles
(2 x 19²: 50) the 36 products are too thin and it is slower, hence ``min_tiles`` there
(:mod:`segdet.ops.nnpack_rules`; on Zen 4 more tiles and 256 channels). Of the time, about a third are
the products, the rest the transforms and the final ``Gᵀ [·] G``. The rounding differs
from oneDNN's by ~1e-5 of the gradient's largest value (Winograd's transforms and another order of the
sums; ``tests/ops/test_winograd.py``).
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from segdet.ops.native import library

# The most memory the transformed tiles of one group of images may take (see conv3x3_weight_grad).
TRANSFORM_BYTES = 512 * 2**20

# Lavin & Gray's F(4x4, 3x3): y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A for a 4 x 4 output tile.
_G = (
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)


@functools.cache
def _output_transform() -> Tensor:
    """[9, 36]: ``∂L/∂w[k1, k2] = Σ_ξ G[ξ1, k1] G[ξ2, k2] M[ξ1, ξ2]`` as one matrix, ``Gᵀ ⊗ Gᵀ``."""
    g = torch.tensor(_G, dtype=torch.float64)
    return torch.kron(g.T, g.T).float()


def _kernels() -> ctypes.CDLL | None:
    return library("winograd")


def available() -> bool:
    """The transforms' C++ kernel is built and loaded (else callers use oneDNN's weight gradient)."""
    return _kernels() is not None


def _transform(kernel, t: Tensor) -> Tensor:
    """``[36, C, T]`` transform of the contiguous float32 map ``t`` [N, C, H, W]."""
    n, c, h, w = t.shape
    tiles = n * ((h + 3) // 4) * ((w + 3) // 4)
    out = torch.empty(36, c, tiles)
    i64 = ctypes.c_int64
    kernel(
        ctypes.c_void_p(t.data_ptr()), i64(n), i64(c), i64(h), i64(w), ctypes.c_void_p(out.data_ptr()),
        i64(torch.get_num_threads()),
    )  # fmt: skip
    return out


def conv3x3_weight_grad(x: Tensor, grad_out: Tensor) -> Tensor:
    """``∂L/∂w`` [C_out, C_in, 3, 3] of ``conv2d(x, w, padding=1)`` given ``x`` [N, C_in, H, W] and
    ``grad_out`` = ∂L/∂y [N, C_out, H, W], float32 on the CPU (module docstring). Needs the C++ kernel
    (:func:`available`)."""
    kernels = _kernels()
    if kernels is None:
        raise RuntimeError("segdet.ops.winograd needs its C++ kernel (no compiler, or SEGDET_NATIVE=0)")
    if x.dtype != torch.float32 or grad_out.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError("conv3x3_weight_grad: float32 CPU tensors only")
    # both held in variables: the kernels read them after the pointers were taken
    x, grad_out = x.contiguous(), grad_out.contiguous()
    n, c_in, h, w = x.shape
    c_out = grad_out.shape[1]
    # The transformed tiles take 36 / 16 = 2.25x the two maps; a large batch is cut into groups of images
    # whose tiles fit in TRANSFORM_BYTES, their products added up.
    per_image = 36 * (c_in + c_out) * ((h + 3) // 4) * ((w + 3) // 4) * 4
    group = max(1, TRANSFORM_BYTES // per_image)
    m = None  # [36, C_out, C_in]
    for start in range(0, n, group):
        v = _transform(kernels.winograd_input_f32, x[start : start + group])  # [36, C_in, T]
        u = _transform(kernels.winograd_grad_f32, grad_out[start : start + group])  # [36, C_out, T]
        m = torch.bmm(u, v.transpose(1, 2)) if m is None else m.baddbmm_(u, v.transpose(1, 2))
    return (_output_transform() @ m.view(36, -1)).view(3, 3, c_out, c_in).permute(2, 3, 0, 1).contiguous()

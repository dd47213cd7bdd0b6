"""segdet.ops.winograd: the Winograd weight gradient of a 3x3 convolution against oneDNN's
(``torch.ops.aten.convolution_backward``, the reference) to 5e-5 of the gradient's largest value
(Winograd's transforms and another order of the sums: ~1e-5 measured)."""

from __future__ import annotations

import pytest
import torch

from segdet.ops import winograd
from segdet.ops.winograd import conv3x3_weight_grad

pytestmark = pytest.mark.skipif(not winograd.available(), reason="the C++ kernel could not be built here")


def _reference(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    weight = torch.empty(grad_out.shape[1], x.shape[1], 3, 3)
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False]
    )[1]


def _inputs(n, c_in, h, w, c_out, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, c_in, h, w, generator=generator), torch.randn(n, c_out, h, w, generator=generator)


@pytest.mark.parametrize(
    "shape",
    [
        (1, 1, 1, 1, 1),  # one pixel: one tile, almost all padding
        (1, 3, 5, 7, 2),  # sizes not multiples of the 4 x 4 tile
        (2, 16, 9, 13, 8),
        (3, 8, 4, 4, 5),  # exactly one tile per image
        (1, 4, 17, 3, 6),  # a narrow map
        (2, 32, 24, 20, 48),
    ],
)
def test_matches_onednn(shape):
    x, grad_out = _inputs(*shape)
    expected = _reference(x, grad_out)
    got = conv3x3_weight_grad(x, grad_out)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-5 * float(expected.abs().max()))


def test_non_contiguous_inputs():
    x, grad_out = _inputs(2, 8, 12, 10, 6)
    expected = conv3x3_weight_grad(x, grad_out)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    wide = torch.zeros(2, 6, 12, 20)
    wide[..., ::2] = grad_out
    assert torch.equal(conv3x3_weight_grad(x_cl, wide[..., ::2]), expected)


def test_same_result_on_one_and_two_threads():
    """Threads split the channels, each transformed alone: the transforms do not depend on them (the
    map is large enough for the kernel to use threads)."""
    x = _inputs(1, 64, 64, 64, 8)[0]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = winograd._transform(winograd._kernels().winograd_input_f32, x)
        torch.set_num_threads(2)
        two = winograd._transform(winograd._kernels().winograd_input_f32, x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_transforms_by_hand():
    """One 4 x 4 gradient tile of ones: A e Aᵀ is the outer product of A's row sums (1, 4, 0, 15, -5, 1);
    one input patch: Bᵀ d B of a single 1 at (1, 1) (map pixel (0, 0), after the padding) is the outer
    product of Bᵀ's column 1 (0, -4, 4, -2, 2, 4)."""
    kernels = winograd._kernels()
    u = winograd._transform(kernels.winograd_grad_f32, torch.ones(1, 1, 4, 4)).view(6, 6)
    rows = torch.tensor([1.0, 4.0, 0.0, 15.0, -5.0, 1.0])
    assert torch.equal(u, torch.outer(rows, rows))
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 1.0
    v = winograd._transform(kernels.winograd_input_f32, x).view(6, 6)
    column = torch.tensor([0.0, -4.0, 4.0, -2.0, 2.0, 4.0])
    assert torch.equal(v, torch.outer(column, column))


def test_refuses_other_dtypes():
    x, grad_out = _inputs(1, 2, 4, 4, 2)
    with pytest.raises(ValueError, match="float32"):
        conv3x3_weight_grad(x.double(), grad_out.double())


def test_large_batches_in_groups(monkeypatch):
    """A batch whose transformed tiles exceed ``TRANSFORM_BYTES`` is summed group by group."""
    x, grad_out = _inputs(5, 8, 12, 10, 6)
    one_group = conv3x3_weight_grad(x, grad_out)
    calls = []
    transform = winograd._transform
    monkeypatch.setattr(winograd, "_transform", lambda k, t: calls.append(len(t)) or transform(k, t))
    monkeypatch.setattr(winograd, "TRANSFORM_BYTES", 2 * 36 * (8 + 6) * 3 * 3 * 4)  # two images a group
    grouped = conv3x3_weight_grad(x, grad_out)
    assert calls == [2, 2, 2, 2, 1, 1]
    expected = _reference(x, grad_out)
    torch.testing.assert_close(grouped, expected, rtol=0, atol=5e-5 * float(expected.abs().max()))
    torch.testing.assert_close(grouped, one_group, rtol=0, atol=5e-5 * float(expected.abs().max()))

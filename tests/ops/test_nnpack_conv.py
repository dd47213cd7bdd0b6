"""segdet.ops.nnpack_conv: NNPACK's 3x3 convolutions against torch's own ``F.conv2d`` (oneDNN), the
reference, to 5e-5 of the output's largest value (Winograd's transforms cost about an order of magnitude
of float32 rounding: ~1.2e-5 measured); the fallbacks bit for bit."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segdet.ops import nnpack_conv, winograd
from segdet.ops.nnpack_conv import (
    MIN_CHANNELS,
    NNPACKConv2d,
    is_eligible,
    nnpack_available,
    use_nnpack,
)

needs_nnpack = pytest.mark.skipif(not nnpack_available(), reason="torch has no NNPACK here")


def _set_rules(monkeypatch, **changes) -> None:
    """Run NNPACKConv2d with AVX2's thresholds changed by ``changes``, the Winograd weight gradient for
    every width (the tests' convolutions have 128 channels, under Zen 4's ``min_grad_channels``)."""
    rules = dataclasses.replace(nnpack_conv.AVX2, min_grad_channels=1, **changes)
    monkeypatch.setattr(nnpack_conv, "rules", lambda: rules)


def _conv(in_channels: int = 128, out_channels: int = 128, bias: bool = True, seed: int = 0) -> NNPACKConv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
    with torch.no_grad():
        if bias:
            conv.bias.normal_(0, 0.1)
    holder = nn.Sequential(conv)
    use_nnpack(holder)
    return holder[0]


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-5 * float(expected.abs().max()))


@needs_nnpack
@pytest.mark.parametrize(
    ("shape", "bias", "calls"),
    [
        ((1, 128, 60, 70), True, 1),  # one image: NNPACK's one-image path (Winograd F(6x6, 3x3))
        ((1, 128, 53, 49), False, 1),  # odd sizes, no bias
        ((3, 128, 60, 50), True, 3),  # large images: the one-image path, image by image
        ((30, 128, 14, 14), True, 1),  # many RoIs: NNPACK's batch path
    ],
)
def test_matches_torch_convolution(shape, bias, calls, monkeypatch):
    """By AVX2's thresholds (the shapes are chosen for them), on any CPU."""
    _set_rules(monkeypatch)
    conv = _conv(bias=bias)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).relu()
    seen = []
    kernel = torch._nnpack_spatial_convolution
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda *a: seen.append(1) or kernel(*a))
    with torch.no_grad():
        got = conv(x)
        expected = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert len(seen) == calls
    assert got.shape == shape
    _close(got, expected)


@needs_nnpack
def test_keeps_channels_last():
    conv = _conv()
    x = torch.randn(1, 128, 60, 60).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        got = conv(x)
        expected = F.conv2d(x.contiguous(), conv.weight, conv.bias, padding=1)
    assert got.is_contiguous(memory_format=torch.channels_last)
    _close(got, expected)


@needs_nnpack
@pytest.mark.parametrize(
    "shape",
    [
        lambda r: (1, 128, int(r.min_pixels**0.5) - 1, int(r.min_pixels**0.5) - 1),  # one small image
        lambda r: (r.min_batch - 1, 128, 14, 14),  # too few RoIs for the batch path
        lambda r: (2 * r.min_batch, 128, r.min_side - 1, r.min_side - 1),  # RoIs too small for it
        lambda r: (0, 128, 60, 60),  # an empty batch (no RoIs)
    ],
)
def test_small_inputs_use_the_usual_kernel(shape):
    """Where NNPACK does not pay (this CPU's rules), the output is F.conv2d's bit for bit."""
    shape = shape(nnpack_conv.rules())
    conv = _conv()
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))


@needs_nnpack
def test_autocast_uses_the_usual_kernel():
    conv = _conv()
    x = torch.randn(1, 128, 60, 60)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = conv(x)
        expected = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, expected)


@needs_nnpack
def test_training_uses_the_usual_kernel():
    """When a gradient is needed, the output is F.conv2d's bit for bit, and the gradient flows."""
    conv = _conv()
    x = torch.randn(1, 128, 60, 60)
    out = conv(x)
    assert torch.equal(out, F.conv2d(x, conv.weight, conv.bias, padding=1))
    out.sum().backward()
    assert conv.weight.grad is not None


def test_use_nnpack_replaces_eligible_convolutions_only():
    model = nn.Sequential(
        nn.Conv2d(3, MIN_CHANNELS, 3, padding=1),  # too few input channels
        nn.Conv2d(MIN_CHANNELS, MIN_CHANNELS, 3, padding=1),  # eligible
        nn.Sequential(nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.ReLU()),  # eligible, nested
        nn.Conv2d(256, 256, 3, padding=1, stride=2),  # strided
        nn.Conv2d(256, 256, 3, padding=2, dilation=2),  # dilated
        nn.Conv2d(256, 256, 3, padding=1, groups=256),  # depthwise
        nn.Conv2d(256, 256, 1),  # 1x1
        nn.Conv2d(256, 64, 3, padding=1),  # too few output channels
    )
    keys = list(model.state_dict())
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [is_eligible(m) for m in model.modules() if isinstance(m, nn.Conv2d)] == [
        False, True, True, False, False, False, False, False,
    ]  # fmt: skip
    replaced = use_nnpack(model)
    if not nnpack_available():
        assert replaced == 0
        return
    assert replaced == 2
    assert isinstance(model[1], NNPACKConv2d) and isinstance(model[2][0], NNPACKConv2d)
    assert model[2][0].bias is None
    # The same parameters (not copies) under the same state-dict keys.
    assert [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)] == weights
    assert list(model.state_dict()) == keys


# ------------------------------------------------------------------------------------------ training
def _training_conv(bias: bool = True) -> NNPACKConv2d:
    conv = _conv(bias=bias)
    conv.training_path = True
    return conv


def _gradients(conv: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, *, kernel=None):
    """(output, ∂L/∂x, ∂L/∂w, ∂L/∂b) of ``conv`` (``kernel``: F.conv2d with its parameters instead)."""
    x = x.detach().clone().requires_grad_()
    conv.zero_grad(set_to_none=True)
    out = conv(x) if kernel is None else kernel(x, conv.weight, conv.bias, padding=1)
    out.backward(grad_out)
    bias_grad = None if conv.bias is None else conv.bias.grad
    return out.detach(), x.grad, conv.weight.grad, bias_grad


@needs_nnpack
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("min_pixels", "min_tiles", "expected"),
    [
        (1, 1, {"nnpack": 4, "winograd": 1}),  # forward + input gradient (2 images each), weight gradient
        (1, 10**9, {"nnpack": 4, "winograd": 0}),  # NNPACK only
        (10**9, 1, {"nnpack": 0, "winograd": 1}),  # the Winograd weight gradient only
    ],
)
def test_training_path_matches_onednn(bias, min_pixels, min_tiles, expected, monkeypatch):
    """Output and every gradient within Winograd's rounding of F.conv2d's (no ReLU between: a changed
    sign near zero would move a whole gradient value); the kernels that ran are counted."""
    if expected["winograd"] and not winograd.available():
        pytest.skip("the Winograd weight gradient's C++ kernel could not be built here")
    _set_rules(monkeypatch, min_train_pixels=min_pixels, min_tiles=min_tiles)
    calls = {"nnpack": 0, "winograd": 0}
    nnpack_kernel, weight_grad = torch._nnpack_spatial_convolution, nnpack_conv.conv3x3_weight_grad
    monkeypatch.setattr(
        torch,
        "_nnpack_spatial_convolution",
        lambda *a: calls.__setitem__("nnpack", calls["nnpack"] + 1) or nnpack_kernel(*a),
    )
    monkeypatch.setattr(
        nnpack_conv,
        "conv3x3_weight_grad",
        lambda *a: calls.__setitem__("winograd", calls["winograd"] + 1) or weight_grad(*a),
    )
    conv = _training_conv(bias=bias)
    generator = torch.Generator().manual_seed(2)
    x, grad_out = (
        torch.randn(2, 128, 30, 25, generator=generator),
        torch.randn(2, 128, 30, 25, generator=generator),
    )
    got = _gradients(conv, x, grad_out)
    assert calls == expected
    expected_values = _gradients(conv, x, grad_out, kernel=F.conv2d)
    for a, b in zip(got, expected_values, strict=True):
        if b is None:
            assert a is None
        else:
            _close(a, b)


@needs_nnpack
def test_training_path_frozen_weight_or_input(monkeypatch):
    """Only the gradients asked for are computed: a frozen layer still passes the input gradient back,
    and the first layer (input without gradient) gets its weight gradient."""
    _set_rules(monkeypatch, min_train_pixels=1, min_tiles=1)
    conv = _training_conv()
    x = torch.randn(1, 128, 20, 20)
    conv.weight.requires_grad_(False)
    conv.bias.requires_grad_(False)
    x_grad = x.clone().requires_grad_()
    conv(x_grad).sum().backward()
    expected = torch.ops.aten.convolution_backward(
        torch.ones(1, 128, 20, 20),
        x,
        conv.weight,
        None,
        [1, 1],
        [1, 1],
        [1, 1],
        False,
        [0, 0],
        1,
        [True, False, False],
    )[0]
    _close(x_grad.grad, expected)
    assert conv.weight.grad is None
    conv.weight.requires_grad_(True)
    conv(x).sum().backward()  # x needs no gradient
    assert conv.weight.grad is not None and conv.bias.grad is None


@needs_nnpack
def test_training_path_is_deterministic_and_keeps_channels_last(monkeypatch):
    _set_rules(monkeypatch, min_train_pixels=1, min_tiles=1)
    conv = _training_conv()
    x = torch.randn(2, 128, 24, 24).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(2, 128, 24, 24)
    first, second = _gradients(conv, x, grad_out), _gradients(conv, x, grad_out)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert conv(x).is_contiguous(memory_format=torch.channels_last)


@needs_nnpack
def test_training_path_below_thresholds_is_onednn_bit_for_bit(monkeypatch):
    """Maps under ``min_train_pixels`` per image and ``min_tiles`` tiles: F.conv2d's gradients exactly."""
    conv = _training_conv()
    rules = nnpack_conv.rules()
    side = int(rules.min_tiles**0.5) * 4 - 8  # fewer tiles than min_tiles, one image
    assert side * side < rules.min_train_pixels
    x, grad_out = torch.randn(1, 128, side, side), torch.randn(1, 128, side, side)
    got, expected = _gradients(conv, x, grad_out), _gradients(conv, x, grad_out, kernel=F.conv2d)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))

"""segdet.ops.roi_align (RoIs split over CPU threads) against torchvision.ops.roi_align (RoI max pooling:
test_roi_pool.py).

Reference: torchvision's own op on all RoIs in one call. Forward: bit-identical (torch.equal). Backward:
the features' gradient within 1e-5 (the chunks' gradients are summed in another order).
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from segdet.ops import roi_align as threaded


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _rois(num: int, batch: int, extent: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=g) * extent
    wh = 2 + torch.rand(num, 2, generator=g) * extent / 2
    index = torch.randint(0, batch, (num, 1), generator=g).float()
    return torch.cat([index, xy, xy + wh], dim=1)


CASES = [
    ("align", threaded.roi_align, torchvision.ops.roi_align, {"sampling_ratio": 2}),
    (
        "align-adaptive-aligned",
        threaded.roi_align,
        torchvision.ops.roi_align,
        {"sampling_ratio": 0, "aligned": True},
    ),
]


@pytest.mark.parametrize(("name", "ours", "ref", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_forward_and_backward_match_torchvision(two_threads, name, ours, ref, kwargs):
    features = torch.randn(2, 6, 30, 41, dtype=torch.float64, requires_grad=True)
    rois = _rois(250, 2, 150.0).double()
    assert threaded._num_chunks(features, rois) == 2  # the threaded path is the one under test
    got, expected = ours(features, rois, (5, 4), 0.25, **kwargs), ref(features, rois, (5, 4), 0.25, **kwargs)
    assert torch.equal(got, expected)
    upstream = torch.randn_like(got)
    (g_ours,) = torch.autograd.grad(got, features, upstream)
    (g_ref,) = torch.autograd.grad(expected, features, upstream)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-5, rtol=1e-5)


def test_roi_align_gradcheck(two_threads):
    """Finite differences through the threaded backward (float64, RoIs split in 2 chunks)."""
    features = torch.randn(1, 2, 9, 11, dtype=torch.float64, requires_grad=True)
    rois = _rois(64, 1, 30.0, seed=3).double()
    assert threaded._num_chunks(features, rois) == 2
    assert torch.autograd.gradcheck(lambda f: threaded.roi_align(f, rois, 3, 0.5, 2), (features,))


def test_inference_mode_channels_last_and_autocast(two_threads):
    features = torch.randn(2, 8, 20, 24)
    rois = _rois(100, 2, 80.0)
    expected = torchvision.ops.roi_align(features, rois, 7, 0.25, 2)
    with torch.inference_mode():
        assert torch.equal(threaded.roi_align(features, rois, 7, 0.25, 2), expected)
    last = features.contiguous(memory_format=torch.channels_last)
    assert torch.equal(threaded.roi_align(last, rois, 7, 0.25, 2), expected)
    low = features.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, ref = threaded.roi_align(low, rois, 7, 0.25, 2), torchvision.ops.roi_align(low, rois, 7, 0.25, 2)
    assert got.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(got, ref)


def test_few_rois_or_one_thread_call_torchvision_directly():
    features = torch.randn(1, 3, 10, 10)
    assert threaded._num_chunks(features, _rois(10, 1, 10.0)) == 1
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert threaded._num_chunks(features, _rois(500, 1, 10.0)) == 1
    finally:
        torch.set_num_threads(before)


def test_rois_of_the_wrong_shape_are_refused():
    features = torch.randn(1, 3, 10, 10)
    rois = _rois(100, 1, 10.0)[:, 1:]  # 4 columns: not the [K, 5] layout
    with pytest.raises(ValueError, match=r"\[K, 5\]"):
        threaded.roi_align(features, rois, 2, 1.0, 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_rois", [10, 100])
def test_low_precision_features_with_float32_rois_at_any_roi_count(two_threads, dtype, num_rois):
    """Half / bfloat16 features with float32 RoIs (a ``model.half()`` R-CNN: the RPN's proposals stay
    float32) pool the same with few RoIs (torchvision's path) as with many (the threaded one).

    Reference: torchvision's autocast rule, ``roi_align(x.float(), rois.float()).to(x.dtype)``; equal
    (torch.equal), the gradient to 1e-3 in ``dtype``. Before the fix the few-RoI path called
    torchvision's CPU kernel directly, which refuses RoIs of another dtype than the features and has
    no bfloat16 kernel.
    """
    features = torch.randn(2, 4, 20, 24).to(dtype).requires_grad_()
    rois = _rois(num_rois, 2, 80.0)
    got = threaded.roi_align(features, rois, 7, 0.25, 2)
    expected = torchvision.ops.roi_align(features.detach().float(), rois, 7, 0.25, 2).to(dtype)
    assert got.dtype == dtype
    assert torch.equal(got, expected)
    got.float().sum().backward()
    reference = features.detach().float().requires_grad_()
    torchvision.ops.roi_align(reference, rois, 7, 0.25, 2).sum().backward()
    torch.testing.assert_close(features.grad.float(), reference.grad, atol=1e-3, rtol=1e-2)


def test_per_image_box_lists_as_torchvision():
    """A list of per-image ``[L_i, 4]`` boxes gives torchvision's output for the same list (exact)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    boxes = [
        torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.5, 1.0, 15.0, 9.0]]),
        torch.tensor([[4.0, 4.0, 12.0, 14.0]]),
    ]
    ours = threaded.roi_align(x, boxes, (3, 3), 0.5, 2, True)
    assert torch.equal(ours, torchvision.ops.roi_align(x, boxes, (3, 3), 0.5, 2, True))

"""segdet.ops.roi_pool against torchvision.ops.roi_pool, on both CPU paths: the C++ kernel
(``csrc/roi_pool.cpp``) and the pure-torch sparse table (``rect_max``), via the ``path`` fixture.

Reference: torchvision's CPU kernel, called on the same inputs. Tolerances:

* forward: none, ``torch.equal`` (the maxima are elements of the map; the bin edges are computed with
  the kernel's own float arithmetic and rounding). The one documented difference, a bin whose first
  maximum is ``-0.0``, reading ``0.0``, is equal under ``torch.equal`` too.
* backward: none, ``torch.equal``. A gradient element is a sum over the bins whose arg-max it is; ours
  routes to the same arg-max (torchvision's tie rule: first maximum in row-major order) and adds the
  terms in the kernel's order (RoI, then bin), so the sums are the same float additions. Where we add
  a ``0`` for a bin that pooled nothing, the result can only differ in the sign of a zero.
* ``gradcheck`` (float64, finite differences, its default ``eps=1e-6, atol=1e-5, rtol=1e-3``) on a
  map of distinct values, where max pooling is differentiable.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import segdet.ops.rect_keys as rect_keys_module
import segdet.ops.rect_max as rect_max_module
from segdet.ops import native, roi_pool
from segdet.ops.rect_keys import FLT_MAX
from segdet.ops.rect_max import rect_max

tv_roi_pool = torchvision.ops.roi_pool
# the module: ``segdet.ops.roi_pool`` is the function (exported like torchvision.ops.roi_pool)
roi_pool_module = importlib.import_module("segdet.ops.roi_pool")


def _table_always(monkeypatch) -> None:
    """The pure-torch path, with the sparse table however small the map (that path hands calls whose
    bins are tiny to torchvision's kernel)."""
    monkeypatch.setenv("SEGDET_NATIVE", "0")
    monkeypatch.setattr(roi_pool_module, "MIN_VISITS", 0)
    monkeypatch.setattr(roi_pool_module, "MIN_BIN_AREA", 0)


@pytest.fixture(params=["native", "table"])
def path(request, monkeypatch):
    """The comparisons run on both CPU paths of ``roi_pool``: the C++ kernel (``csrc/roi_pool.cpp``)
    and the pure-torch sparse table."""
    if request.param == "native":
        monkeypatch.delenv("SEGDET_NATIVE", raising=False)
        if native.library("roi_pool") is None:
            pytest.skip("no C++ compiler here: roi_pool's C++ kernel cannot be built")
    else:
        _table_always(monkeypatch)
    return request.param


@pytest.fixture
def table(monkeypatch):
    """Tests of the sparse table's own machinery (block sizes, chunking, keys, dispatch)."""
    _table_always(monkeypatch)


def random_rois(num: int, images: int, height: float, width: float, seed: int, dtype=torch.float32):
    """``[num, 5]`` RoIs in image pixels: random boxes plus the edge cases (outside the map, across
    its borders, exactly on them, degenerate, inverted, on rounding halves)."""
    g = torch.Generator().manual_seed(seed)
    extent = torch.tensor([width, height])
    xy = (torch.rand(num, 2, generator=g) * 1.2 - 0.1) * extent
    wh = torch.rand(num, 2, generator=g) * extent * 0.7
    boxes = torch.cat([xy, xy + wh], dim=1)
    w, h = width, height
    edge = torch.tensor(
        [
            [-40.0, -40.0, -10.0, -10.0],  # outside, above left
            [w + 5, h + 5, w + 60, h + 60],  # outside, below right
            [-20.0, -20.0, w + 20, h + 20],  # covers the map and more
            [0.0, 0.0, w - 1, h - 1],  # exactly the map
            [0.0, 0.0, 0.0, 0.0],  # one point
            [w - 1, h - 1, w - 1, h - 1],  # the last point
            [10.0, 12.0, 10.0, 30.0],  # zero width
            [30.0, 20.0, 5.0, 6.0],  # inverted (x2 < x1, y2 < y1)
            [7.5, 8.5, 23.5, 17.5],  # halves: C's round goes away from zero
            [-0.5, -1.5, 2.5, 3.5],
            [w - 2, 0.0, w + 2, h],  # across the right border
        ]
    )
    boxes = torch.cat([boxes, edge])
    index = torch.randint(0, images, (len(boxes), 1), generator=g).float()
    return torch.cat([index, boxes], dim=1).to(dtype)


def assert_same_as_torchvision(features, rois, output_size, spatial_scale):
    """Forward (with and without the arg-max, i.e. with and without grad) and backward (random
    upstream gradient) equal to torchvision's, exactly."""
    with torch.no_grad():
        no_grad = roi_pool(features, rois, output_size, spatial_scale)
    features = features.detach().requires_grad_(True)
    got = roi_pool(features, rois, output_size, spatial_scale)
    expected = tv_roi_pool(features, rois, output_size, spatial_scale)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert got.is_contiguous()
    assert torch.equal(got, expected)
    assert torch.equal(no_grad, expected)
    upstream = torch.randn(got.shape, generator=torch.Generator().manual_seed(1), dtype=got.dtype)
    (g_ours,) = torch.autograd.grad(got, features, upstream)
    (g_ref,) = torch.autograd.grad(expected, features, upstream)
    assert torch.equal(g_ours, g_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("output_size", "spatial_scale"), [((7, 7), 1 / 16), ((2, 3), 1 / 4), (5, 1.0)])
def test_random_and_edge_rois_match_torchvision(dtype, output_size, spatial_scale, path):
    features = torch.randn(3, 5, 17, 23, dtype=dtype)
    rois = random_rois(120, 3, 17 / spatial_scale, 23 / spatial_scale, seed=7, dtype=dtype)
    assert_same_as_torchvision(features, rois, output_size, spatial_scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_go_to_the_first_maximum_in_row_major_order(dtype, path):
    """Constant maps, maps of three values and all-zero maps with -0.0 sprinkled in: every bin has tied
    maxima, and the gradient must reach the element torchvision picks."""
    g = torch.Generator().manual_seed(3)
    constant = torch.full((2, 3, 15, 19), 0.5, dtype=dtype)
    few_values = torch.randint(0, 3, (2, 3, 15, 19), generator=g).to(dtype)
    zeros = torch.zeros(2, 3, 15, 19, dtype=dtype)
    zeros[torch.rand(zeros.shape, generator=g) < 0.5] = -0.0
    rois = random_rois(80, 2, 15 * 4, 19 * 4, seed=11, dtype=dtype)
    for features in (constant, few_values, zeros, -constant):
        assert_same_as_torchvision(features, rois, (3, 4), 0.25)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_cpp_kernel_keeps_the_sign_of_zero(dtype, monkeypatch):
    """The C++ path compares as torchvision's loop does, so a bin whose first maximum is ``-0.0`` reads
    ``-0.0`` (the sparse table may give ``0.0``, equal under ``torch.equal``): bit for bit equal."""
    monkeypatch.delenv("SEGDET_NATIVE", raising=False)
    if native.library("roi_pool") is None:
        pytest.skip("no C++ compiler here: roi_pool's C++ kernel cannot be built")
    g = torch.Generator().manual_seed(23)
    zeros = torch.zeros(2, 40, 9, 11, dtype=dtype)
    zeros[torch.rand(zeros.shape, generator=g) < 0.6] = -0.0
    rois = random_rois(50, 2, 9 * 2, 11 * 2, seed=24, dtype=dtype)
    got, expected = roi_pool(zeros, rois, (3, 3), 0.5), tv_roi_pool(zeros, rois, (3, 3), 0.5)
    assert torch.equal(got.signbit(), expected.signbit()) and bool(expected.signbit().any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_inf_and_lowest_values_never_win(dtype, path):
    """torchvision pools only ``x > -FLT_MAX``: NaN, -inf, -FLT_MAX (and, in float64, anything lower)
    never win; a bin of nothing else reads -FLT_MAX and passes no gradient."""
    features = torch.randn(2, 4, 13, 16, dtype=dtype)
    features[0, 0, :6] = float("nan")
    features[0, 1, 3:] = float("-inf")
    features[1, 2] = -FLT_MAX
    features[1, 3, ::2, ::3] = -1e300 if dtype == torch.float64 else float("nan")
    features[0, 3] = float("inf")
    rois = random_rois(60, 2, 13 * 2, 16 * 2, seed=5, dtype=dtype)
    assert_same_as_torchvision(features, rois, (4, 3), 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_many_channels_with_ties_nan_and_threads(dtype, threads, path):
    """Channel counts past the C++ kernel's SIMD blocks (32 floats / 16 doubles) with channels left over,
    ties, NaN, -inf and -0.0 inside the blocks, on one thread and on two (RoIs shared in the forward
    pass, channels split in the backward pass): torchvision's outputs and gradients."""
    g = torch.Generator().manual_seed(21)
    features = torch.randint(0, 4, (2, 70, 14, 17), generator=g).to(dtype) - 2
    features[0, 3:40:3, 2:9] = float("nan")
    features[1, 5:60:7, :, 4:] = float("-inf")
    features[features == 0] = -0.0
    features[0, 33:, ::2] = torch.randn(37, 7, 17, generator=g, dtype=dtype)
    rois = random_rois(150, 2, 14 * 4, 17 * 4, seed=22, dtype=dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert_same_as_torchvision(features, rois, (4, 5), 0.25)
    finally:
        torch.set_num_threads(previous)


def test_channels_last_input_and_several_images_out_of_order(path):
    features = torch.randn(4, 6, 20, 24).contiguous(memory_format=torch.channels_last)
    rois = random_rois(90, 4, 80, 96, seed=2)
    rois = rois[torch.randperm(len(rois), generator=torch.Generator().manual_seed(0))]
    assert_same_as_torchvision(features, rois, 7, 0.25)


def test_list_of_boxes_and_empty_rois(path):
    features = torch.randn(2, 3, 12, 12, requires_grad=True)
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 30.0], [5.0, 5.0, 40.0, 44.0]]), torch.tensor([[1.0, 2, 3, 4]])]
    assert torch.equal(roi_pool(features, boxes, 2, 0.25), tv_roi_pool(features, boxes, 2, 0.25))
    empty = torch.zeros(0, 5)
    out = roi_pool(features, empty, (3, 2), 0.25)
    assert out.shape == (0, 3, 3, 2)
    (grad,) = torch.autograd.grad(out.sum(), features)
    assert torch.equal(grad, torch.zeros_like(features))
    assert torch.equal(roi_pool(features, [torch.zeros(0, 4), torch.zeros(0, 4)], 2), torch.zeros(0, 3, 2, 2))


def test_gradcheck(path):
    """Finite differences through our backward, float64, distinct values (max pooling is differentiable
    there), several bins selecting the same element (overlapping RoIs)."""
    features = torch.randn(2, 1, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = random_rois(10, 2, 12, 14, seed=9, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_pool(f, rois, (3, 2), 0.5), (features,))


def test_chunked_paths_match(monkeypatch, table):
    """Tiny table, gather and backward budgets: many channel chunks, row steps and channel blocks."""
    monkeypatch.setattr(rect_max_module, "TABLE_BYTES", 1)
    monkeypatch.setattr(rect_max_module, "GATHER_BYTES", 1)
    monkeypatch.setattr(roi_pool_module, "BACKWARD_ELEMENTS", 1)
    features = torch.randn(2, 5, 11, 13)
    assert_same_as_torchvision(features, random_rois(25, 2, 44, 52, seed=4), (2, 3), 0.25)


def test_no_grad_inference_and_half_precision(path):
    features = torch.randn(1, 4, 16, 16)
    rois = random_rois(40, 1, 64, 64, seed=8)
    expected = tv_roi_pool(features, rois, 3, 0.25)
    with torch.inference_mode():
        assert torch.equal(roi_pool(features, rois, 3, 0.25), expected)
    for dtype in (torch.float16, torch.bfloat16):
        low = features.to(dtype)
        got = roi_pool(low, rois, 3, 0.25)
        assert got.dtype == dtype
        assert torch.equal(got, tv_roi_pool(low.float(), rois, 3, 0.25).to(dtype))


def test_bad_rois_are_refused(path):
    features = torch.randn(2, 3, 10, 10)
    with pytest.raises(ValueError, match=r"\[K, 5\]"):
        roi_pool(features, torch.zeros(4, 4), 2)
    with pytest.raises(ValueError, match=r"image indices in \[0, 2\)"):
        roi_pool(features, torch.tensor([[2.0, 0, 0, 4, 4]]), 2)
    with pytest.raises(ValueError, match=r"boxes\[1\] must be \[R, 4\]"):
        roi_pool(features, [torch.zeros(1, 4), torch.zeros(1, 5)], 2)


def test_rect_max_of_explicit_rectangles():
    """rect_max on its own: hand-made rectangles against a direct max / first arg-max."""
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    rects = [(0, 0, 9, 0, 10), (1, 2, 5, 3, 4), (1, 8, 9, 9, 10), (0, 3, 3, 1, 5), (0, 4, 7, 2, 9)]
    n, top, bottom, left, right = (torch.tensor(v) for v in zip(*rects, strict=True))
    value, argmax, unpickable = rect_max(x, n, top, bottom, left, right)
    assert not unpickable
    for q, (b, t, u, le, r) in enumerate(rects):
        block = x[b, :, t:u, le:r].flatten(1)
        if block.shape[1] == 0:
            assert torch.equal(value[q], torch.zeros(3, dtype=x.dtype)) and bool((argmax[q] == -1).all())
            continue
        best = block.argmax(1)
        assert torch.equal(value[q], block.max(1).values)
        position = (t + best // (r - le)) * 10 + le + best % (r - le)
        assert torch.equal(argmax[q].long(), -2 - position)  # rect_max's arg-max codes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    k=st.integers(0, 12),
    ph=st.integers(1, 4),
    pw=st.integers(1, 4),
    scale=st.sampled_from([1.0, 0.5, 0.25, 1 / 3]),
    seed=st.integers(0, 2**16),
    levels=st.booleans(),
)
def test_property_matches_torchvision(n, c, h, w, k, ph, pw, scale, seed, levels, path):
    """Any small map, RoIs anywhere around it, any grid: same output and gradient. ``levels``: a map of
    few distinct values (ties everywhere) or continuous values."""
    g = torch.Generator().manual_seed(seed)
    if levels:
        features = torch.randint(0, 3, (n, c, h, w), generator=g).float()
    else:
        features = torch.randn(n, c, h, w, generator=g)
    corners = (torch.rand(k, 4, generator=g) * 1.4 - 0.2) * torch.tensor([w, h, w, h]) / scale
    rois = torch.cat([torch.randint(0, n, (k, 1), generator=g).float(), corners], dim=1)
    assert_same_as_torchvision(features, rois, (ph, pw), scale)


def test_dispatch_small_bins_to_torchvision(monkeypatch):
    """On the pure-torch path, bins of ~1 cell go to torchvision's kernel, bins of many cells to the
    sparse table (the rule on the mean bin area; the one on the total work is lowered to fit a small
    map)."""
    monkeypatch.setenv("SEGDET_NATIVE", "0")
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return tv_roi_pool(*args, **kwargs)

    monkeypatch.setattr(roi_pool_module, "tv_roi_pool", counting)
    monkeypatch.setattr(roi_pool_module, "MIN_VISITS", 1000)
    features = torch.randn(1, 8, 64, 64)
    tiny = torch.tensor([[0.0, 0, 0, 100, 100]]).repeat(4, 1)  # 7 x 7 bins of ~1 cell at 1/16
    assert torch.equal(roi_pool(features, tiny, 7, 1 / 16), tv_roi_pool(features, tiny, 7, 1 / 16))
    assert len(calls) == 1
    large = torch.tensor([[0.0, 0, 0, 1000, 1000]]).repeat(4, 1)  # bins of ~81 cells
    assert torch.equal(roi_pool(features, large, 7, 1 / 16), tv_roi_pool(features, large, 7, 1 / 16))
    assert len(calls) == 1


@pytest.mark.parametrize("limits", [(2,), (4,), (16,)])
def test_every_block_scheme_matches(monkeypatch, limits, table):
    """Powers of two only (the plain sparse table: most rectangles read two or four blocks), exact
    sizes up to 4 (a mix) and up to 16 (one block each here): the same outputs and gradients as
    torchvision's, float32 (packed keys) and float64 (ranks)."""
    monkeypatch.setattr(rect_max_module, "EXACT_LIMITS", limits)
    features = torch.randn(2, 3, 21, 26)
    rois = random_rois(70, 2, 84, 104, seed=12)
    assert_same_as_torchvision(features, rois, (3, 4), 0.25)
    assert_same_as_torchvision(features.double(), rois.double(), 2, 0.25)


def test_maps_without_negative_values_use_plain_float_bits(table):
    """ReLU outputs (zeros tied everywhere, ``-0.0`` among them): the keys take the float bits as they
    are, and the results are torchvision's."""
    g = torch.Generator().manual_seed(13)
    features = torch.randn(2, 4, 19, 22, generator=g).relu()
    features[0, 1, :5] = -0.0
    assert rect_keys_module.NonNegativeKeys.applies(features)
    assert not rect_keys_module.NonNegativeKeys.applies(features - 1e-3)
    assert_same_as_torchvision(features, random_rois(60, 2, 76, 88, seed=14), (3, 3), 0.25)


@pytest.mark.parametrize("width", [2**15 - 1, 2**15])
def test_argmax_codes_at_the_int16_limit(width, path):
    """The arg-max is kept as ``-2 - position`` codes, int16 while the map has fewer than 2**15 cells:
    the last cell of the largest such map (code -32768) and of the first larger one (int32) both get
    their gradient, as torchvision's. The bins are thousands of cells wide: table blocks far past 64
    (the plan's group codes once assumed block widths below 64)."""
    features = torch.randn(1, 2, 1, width, generator=torch.Generator().manual_seed(15))
    features[:, :, 0, -1] = 10.0
    rois = torch.tensor([[0.0, 0.0, 0.0, width - 1.0, 0.0], [0.0, width - 40.0, 0.0, width - 1.0, 0.0]])
    assert_same_as_torchvision(features, rois, (1, 3), 1.0)

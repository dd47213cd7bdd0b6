"""segdet.ops.BoxCoder against torchvision's detection BoxCoder and hand-computed codes."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from segdet.ops import BoxCoder

WEIGHTS = [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)]
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}
DTYPES = [torch.float32, torch.float64]


def positive_boxes(n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """``n`` xyxy boxes with sides in [2, 80) px, top-left in [0, 200)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 200
    wh = 2 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 78
    return torch.cat((xy, xy + wh), dim=1).to(dtype)


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    # Relative tolerance; the absolute part only matters for codes that are ~0.
    torch.testing.assert_close(actual, expected, rtol=RTOL[dtype], atol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_encode_matches_torchvision(dtype, weights):
    """encode (tensor and per-image list forms) == torchvision BoxCoder.encode / encode_single,
    rtol 1e-5 (float32) / 1e-12 (float64)."""
    gt, anchors = positive_boxes(300, 1, dtype), positive_boxes(300, 2, dtype)
    ours, theirs = BoxCoder(weights), TVBoxCoder(weights)
    targets = ours.encode(gt, anchors)
    assert targets.shape == (300, 4) and targets.dtype == dtype
    close(targets, theirs.encode_single(gt, anchors), dtype)

    per_image = ours.encode([gt[:100], gt[100:]], [anchors[:100], anchors[100:]])
    expected = theirs.encode([gt[:100], gt[100:]], [anchors[:100], anchors[100:]])
    assert isinstance(per_image, list) and [len(t) for t in per_image] == [100, 200]
    for a, b in zip(per_image, expected, strict=True):
        close(a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_decode_matches_torchvision(dtype, weights):
    """decode of class-specific codes [N, 4K] with per-image anchor lists == torchvision
    BoxCoder.decode ([N, K, 4]), rtol 1e-5 / 1e-12; a single anchor tensor gives the same."""
    g = torch.Generator().manual_seed(3)
    anchors = positive_boxes(120, 4, dtype)
    codes = (torch.randn(120, 4 * 3, generator=g, dtype=torch.float64) * 2).to(dtype)
    ours = BoxCoder(weights).decode(codes, [anchors[:50], anchors[50:]])
    theirs = TVBoxCoder(weights).decode(codes, [anchors[:50], anchors[50:]])
    assert ours.shape == (120, 3, 4) and ours.dtype == dtype
    close(ours, theirs, dtype)
    torch.testing.assert_close(BoxCoder(weights).decode(codes, anchors), ours, rtol=0, atol=0)
    # The [N, K, 4] layout of the same codes decodes the same.
    by_class = BoxCoder(weights).decode(codes.reshape(120, 3, 4), anchors)
    torch.testing.assert_close(by_class, ours, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_round_trip(dtype, weights):
    """decode(encode(boxes, anchors), anchors) == boxes (coordinates up to 280 px; atol 1e-3 px in
    float32, 1e-9 px in float64)."""
    gt, anchors = positive_boxes(500, 5, dtype), positive_boxes(500, 6, dtype)
    coder = BoxCoder(weights)
    back = coder.decode(coder.encode(gt, anchors), anchors)
    atol = 1e-3 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(back[:, 0], gt, rtol=0, atol=atol)


def test_encode_hand_computed():
    """Anchor [0,0,10,10] (centre (5,5), 10x10), box [5,5,15,25] (centre (10,15), 10x20):
    t = (0.5, 1, 0, log 2), times weights (10, 10, 5, 5) -> (5, 10, 0, 5 log 2)."""
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    box = torch.tensor([[5.0, 5.0, 15.0, 25.0]], dtype=torch.float64)
    expected = torch.tensor([[5.0, 10.0, 0.0, 5 * math.log(2)]], dtype=torch.float64)
    torch.testing.assert_close(BoxCoder((10, 10, 5, 5)).encode(box, anchor), expected, rtol=0, atol=1e-14)
    decoded = BoxCoder((10, 10, 5, 5)).decode(expected, anchor)
    torch.testing.assert_close(decoded, box[:, None], rtol=0, atol=1e-12)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_decode_clamps_huge_sizes(weights):
    """dw, dh above bbox_xform_clip (default log(1000/16)) decode as exactly the clip: a 16 px anchor
    grows to at most 1000 px, never to inf; the result equals torchvision's. Huge negative dw shrinks the
    box to zero width (exp underflows, no NaN)."""
    anchor = torch.tensor([[100.0, 100.0, 116.0, 116.0]])
    ww, wh = weights[2], weights[3]
    codes = torch.tensor([[0.0, 0.0, 1e4 * ww, 1e4 * wh], [0.0, 0.0, -1e4 * ww, 0.0]])
    coder = BoxCoder(weights)
    decoded = coder.decode(codes, anchor.expand(2, 4))[:, 0]
    assert torch.isfinite(decoded).all()
    sizes = decoded[:, 2:] - decoded[:, :2]
    torch.testing.assert_close(sizes[0], torch.tensor([1000.0, 1000.0]), rtol=1e-5, atol=0)
    assert sizes[1, 0] == 0 and sizes[1, 1] == 16
    torch.testing.assert_close(decoded, TVBoxCoder(weights).decode_single(codes, anchor.expand(2, 4)))
    # A custom clip is honoured.
    small = BoxCoder(weights, bbox_xform_clip=math.log(2.0)).decode(codes[:1], anchor)[0, 0]
    torch.testing.assert_close(small[2:] - small[:2], torch.tensor([32.0, 32.0]), rtol=1e-6, atol=0)


def test_empty_and_broadcast_inputs():
    """No anchors: [0, 4K] codes decode to [0, K, 4]; empty per-image lists encode to empty lists of
    targets. decode_single broadcasts one anchor per row against K codes."""
    coder = BoxCoder((10, 10, 5, 5))
    assert coder.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 2, 4)
    assert coder.decode(torch.zeros(0, 8), [torch.zeros(0, 4), torch.zeros(0, 4)]).shape == (0, 2, 4)
    targets = coder.encode(
        [torch.zeros(0, 4), positive_boxes(3, 7, torch.float32)],
        [
            torch.zeros(0, 4),
            positive_boxes(3, 8, torch.float32),
        ],
    )
    assert [t.shape for t in targets] == [(0, 4), (3, 4)]
    anchors = positive_boxes(5, 9, torch.float32)
    codes = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0))
    rows = torch.stack([coder.decode_single(codes[:, k], anchors) for k in range(3)], dim=1)
    torch.testing.assert_close(coder.decode_single(codes, anchors[:, None]), rows, rtol=0, atol=0)
    with pytest.raises(ValueError):
        BoxCoder((1.0, 1.0, 1.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_box_coder_on_cuda_equals_cpu():
    """Encode and decode on a CUDA device give CUDA tensors equal to the CPU results (1e-12, float64)."""
    gt, anchors = positive_boxes(50, 10, torch.float64), positive_boxes(50, 11, torch.float64)
    coder = BoxCoder((10, 10, 5, 5))
    targets = coder.encode(gt.cuda(), anchors.cuda())
    assert targets.is_cuda
    torch.testing.assert_close(targets.cpu(), coder.encode(gt, anchors), rtol=1e-12, atol=1e-12)
    decoded = coder.decode(targets, [anchors[:20].cuda(), anchors[20:].cuda()])
    torch.testing.assert_close(decoded.cpu(), coder.decode(targets.cpu(), anchors), rtol=1e-12, atol=1e-12)


def test_integer_boxes_encode_against_float_anchors():
    """Integer ground-truth boxes (pixel-aligned annotations) encode against float anchors as their
    float values do.

    Reference: torchvision's ``BoxCoder.encode_single``, whose arithmetic promotes int boxes with float
    anchors to float; rtol 1e-5. Before the fix the anchors were cast to the boxes' int64 dtype, i.e.
    truncated (``t_x`` 1.667 instead of 1.457 below).
    """
    gt = torch.tensor([[10, 10, 50, 50], [0, 3, 7, 90]])
    anchors = torch.tensor([[10.5, 10.5, 40.7, 45.3], [0.25, 2.5, 9.75, 60.5]])
    got = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(gt, anchors)
    expected = TVBoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(gt.float(), anchors)
    assert got.dtype == torch.float32
    close(got, expected, torch.float32)

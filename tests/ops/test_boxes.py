"""segdet.ops.boxes against torchvision.ops and hand-computed values."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision.ops as tvo
from torchvision.ops.boxes import _box_inter_union as tv_box_inter_union

from segdet.ops import (
    box_area,
    box_convert,
    box_inter_union,
    box_iou,
    box_iou_pairwise,
    clip_boxes_to_image,
    generalized_box_iou,
    generalized_box_iou_pairwise,
    remove_small_boxes,
)

TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
DTYPES = [torch.float32, torch.float64]


def random_boxes(
    n: int, seed: int, dtype: torch.dtype = torch.float32, degenerate: bool = True
) -> torch.Tensor:
    """``n`` xyxy boxes in a 100 px image; with ``degenerate`` about a third have zero width and/or height,
    some of them repeated points (coincident zero-area boxes)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 40
    if degenerate:
        kind = torch.randint(0, 6, (n,), generator=g)
        wh[kind == 0, 0] = 0  # zero width
        wh[kind == 1, 1] = 0  # zero height
        wh[kind == 2] = 0  # a point
        points = torch.nonzero(kind == 2).flatten()
        if len(points) > 1:  # some points coincide exactly
            xy[points[1::2]] = xy[points[0]].clone()
    return torch.cat((xy, xy + wh), dim=1).to(dtype)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(actual, expected, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_fmt", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("out_fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_convert_matches_torchvision(dtype, in_fmt, out_fmt):
    """box_convert == torchvision.ops.box_convert for all format pairs, batched [B, N, 4] too (1e-6/1e-12),
    and converting back gives the input (to the same tolerance, values up to ~140 px)."""
    boxes = random_boxes(64, seed=1, dtype=dtype).reshape(4, 16, 4)
    if in_fmt != "xyxy":  # make valid boxes of the input format from xyxy ones
        boxes = tvo.box_convert(boxes, "xyxy", in_fmt)
    ours = box_convert(boxes, in_fmt, out_fmt)
    assert ours.dtype == dtype and ours.shape == boxes.shape
    assert_close(ours, tvo.box_convert(boxes, in_fmt, out_fmt), dtype)
    torch.testing.assert_close(box_convert(ours, out_fmt, in_fmt), boxes, rtol=0, atol=100 * TOL[dtype])


def test_box_convert_hand_values_and_bad_format():
    """One box by hand: xyxy (1, 2, 5, 8) is xywh (1, 2, 4, 6) and cxcywh (3, 5, 4, 6)."""
    xyxy = torch.tensor([[1.0, 2.0, 5.0, 8.0]])
    assert box_convert(xyxy, "xyxy", "xywh").tolist() == [[1.0, 2.0, 4.0, 6.0]]
    assert box_convert(xyxy, "xyxy", "cxcywh").tolist() == [[3.0, 5.0, 4.0, 6.0]]
    assert box_convert(torch.tensor([[3.0, 5.0, 4.0, 6.0]]), "cxcywh", "xyxy").tolist() == xyxy.tolist()
    same = box_convert(xyxy, "xyxy", "xyxy")
    assert same.data_ptr() != xyxy.data_ptr()  # always a new tensor
    with pytest.raises(ValueError, match="xyxy, xywh or cxcywh"):
        box_convert(xyxy, "xyxy", "yolo")


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_area_matches_torchvision(dtype):
    """box_area == torchvision.ops.box_area, degenerate boxes (area 0) included (1e-6/1e-12)."""
    boxes = random_boxes(200, seed=2, dtype=dtype)
    assert_close(box_area(boxes), tvo.box_area(boxes), dtype)
    assert (box_area(boxes) == 0).sum() > 10


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_inter_union_matches_torchvision(dtype):
    """box_inter_union == torchvision's _box_inter_union (intersection and union, N x M)."""
    a, b = random_boxes(40, seed=3, dtype=dtype), random_boxes(30, seed=4, dtype=dtype)
    inter, union = box_inter_union(a, b)
    tv_inter, tv_union = tv_box_inter_union(a, b)
    assert inter.shape == (40, 30)
    assert_close(inter, tv_inter, dtype)
    assert_close(union, tv_union, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_iou_matches_torchvision_where_defined(dtype):
    """box_iou == torchvision.ops.box_iou wherever torchvision is finite (|A ∪ B| > 0), to 1e-6/1e-12;
    where torchvision gives NaN (0/0: both boxes of zero area) ours is exactly 0; no NaN anywhere."""
    a, b = random_boxes(120, seed=5, dtype=dtype), random_boxes(100, seed=6, dtype=dtype)
    ours, theirs = box_iou(a, b), tvo.box_iou(a, b)
    defined = torch.isfinite(theirs)
    assert (~defined).sum() > 10, "the data must contain pairs of degenerate boxes"
    assert_close(ours[defined], theirs[defined], dtype)
    assert (ours[~defined] == 0).all()
    assert torch.isfinite(ours).all() and (ours >= 0).all() and (ours <= 1).all()
    # Batched leading dimensions give the same as one image at a time.
    batched = box_iou(torch.stack((a, a)), torch.stack((b, b)))
    assert batched.shape == (2, 120, 100) and torch.equal(batched[1], ours)


@pytest.mark.parametrize("dtype", DTYPES)
def test_generalized_box_iou_matches_torchvision_where_defined(dtype):
    """generalized_box_iou == torchvision.ops.generalized_box_iou where torchvision is finite
    (1e-6/1e-12); where it is NaN ours follows the documented rule: 0 if the enclosing box has zero area,
    else -1 (IoU 0, penalty |C|/|C| = 1)."""
    a, b = random_boxes(120, seed=7, dtype=dtype), random_boxes(100, seed=8, dtype=dtype)
    ours, theirs = generalized_box_iou(a, b), tvo.generalized_box_iou(a, b)
    defined = torch.isfinite(theirs)
    assert_close(ours[defined], theirs[defined], dtype)
    lt = torch.minimum(a[:, None, :2], b[None, :, :2])
    rb = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    enclosing = (rb - lt).prod(dim=-1)
    expected_undefined = torch.where(enclosing == 0, 0.0, -1.0).to(dtype)
    torch.testing.assert_close(ours[~defined], expected_undefined[~defined], rtol=0, atol=0)
    assert torch.isfinite(ours).all() and (ours >= -1).all() and (ours <= 1).all()


def test_iou_and_giou_hand_computed():
    """[0,0,2,2] vs [1,1,3,3]: |A∩B| = 1, |A∪B| = 7, |C| = 9 -> IoU 1/7, GIoU 1/7 - 2/9. Disjoint
    [0,0,1,1] vs [2,0,3,1]: IoU 0, |C| = 3, |A∪B| = 2 -> GIoU -1/3."""
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0]], dtype=torch.float64)
    expected_iou = torch.tensor([1 / 7, 0.0], dtype=torch.float64)
    expected_giou = torch.tensor([1 / 7 - 2 / 9, -1 / 3], dtype=torch.float64)
    torch.testing.assert_close(box_iou_pairwise(a, b), expected_iou, rtol=0, atol=1e-15)
    torch.testing.assert_close(generalized_box_iou_pairwise(a, b), expected_giou, rtol=0, atol=1e-15)
    torch.testing.assert_close(box_iou(a, b).diagonal(), expected_iou, rtol=0, atol=1e-15)
    inter, union = box_inter_union(a, b)
    assert inter.diagonal().tolist() == [1.0, 0.0] and union.diagonal().tolist() == [7.0, 2.0]


def test_degenerate_rules_hand_computed():
    """The documented zero-denominator rule, case by case (torchvision: NaN for the first three)."""
    point = torch.tensor([5.0, 5.0, 5.0, 5.0])
    cases = [
        # (box a, box b, IoU, GIoU)
        (point, point, 0.0, 0.0),  # the same point: |A∪B| = 0 and |C| = 0
        (point, torch.tensor([9.0, 9.0, 9.0, 9.0]), 0.0, -1.0),  # two points apart: |C| = 16
        (torch.tensor([0.0, 5.0, 4.0, 5.0]), torch.tensor([2.0, 5.0, 9.0, 5.0]), 0.0, 0.0),  # one line
        (point, torch.tensor([0.0, 0.0, 10.0, 10.0]), 0.0, 0.0),  # point inside a box: IoU 0, C = B
    ]
    for a, b, iou, giou in cases:
        assert box_iou_pairwise(a, b).item() == iou
        assert generalized_box_iou_pairwise(a, b).item() == giou
        assert box_iou(a[None], b[None]).item() == iou
        assert generalized_box_iou(a[None], b[None]).item() == giou


@pytest.mark.parametrize("dtype", DTYPES)
def test_pairwise_is_the_diagonal(dtype):
    """box_iou_pairwise / generalized_box_iou_pairwise == the diagonal of torchvision's N x M matrices
    where defined (1e-6/1e-12), == the diagonal of ours everywhere, and broadcast over leading dims."""
    a, b = random_boxes(150, seed=9, dtype=dtype), random_boxes(150, seed=10, dtype=dtype)
    iou, giou = box_iou_pairwise(a, b), generalized_box_iou_pairwise(a, b)
    assert iou.shape == (150,)
    torch.testing.assert_close(iou, box_iou(a, b).diagonal(), rtol=0, atol=0)
    torch.testing.assert_close(giou, generalized_box_iou(a, b).diagonal(), rtol=0, atol=0)
    tv_iou, tv_giou = tvo.box_iou(a, b).diagonal(), tvo.generalized_box_iou(a, b).diagonal()
    defined = torch.isfinite(tv_iou)
    assert_close(iou[defined], tv_iou[defined], dtype)
    assert_close(giou[defined], tv_giou[defined], dtype)
    # One box against many by broadcasting equals a row of the matrix.
    torch.testing.assert_close(box_iou_pairwise(a[3], b), box_iou(a[3:4], b)[0], rtol=0, atol=0)


def test_gradients_are_finite_for_degenerate_boxes():
    """A GIoU loss over pairs that include zero-area boxes has finite gradients (torch.where alone would
    back-propagate 0/0 = NaN through the unused branch)."""
    a = random_boxes(64, seed=11, dtype=torch.float64).requires_grad_(True)
    b = random_boxes(64, seed=12, dtype=torch.float64)
    b = torch.cat((b[:32], a.detach()[32:]))  # identical pairs, degenerate ones included
    (1 - generalized_box_iou_pairwise(a, b)).sum().backward()
    assert torch.isfinite(a.grad).all()
    a.grad = None
    box_iou(a, b).sum().backward()
    assert torch.isfinite(a.grad).all()


def test_low_precision_and_integer_boxes_match_torchvision():
    """float16 boxes: areas and IoU are computed in float32 like torchvision (same values, float32
    result); int64 boxes give the same IoU as torchvision."""
    boxes16 = random_boxes(50, seed=13, degenerate=False).half()
    assert box_area(boxes16).dtype == torch.float32
    torch.testing.assert_close(box_area(boxes16), tvo.box_area(boxes16), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(box_iou(boxes16, boxes16), tvo.box_iou(boxes16, boxes16), rtol=1e-6, atol=1e-6)
    boxes_int = random_boxes(50, seed=14, degenerate=False).round().long()
    theirs = tvo.box_iou(boxes_int, boxes_int)
    defined = torch.isfinite(theirs)
    torch.testing.assert_close(box_iou(boxes_int, boxes_int)[defined], theirs[defined], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_boxes_to_image_matches_torchvision(dtype):
    """clip_boxes_to_image == torchvision.ops.clip_boxes_to_image (exact), boxes sticking out on every
    side, shapes [N, 4] and [B, N, 4]; size is (height, width)."""
    boxes = random_boxes(60, seed=15, dtype=dtype) * 2 - 60
    for shaped in (boxes, boxes.reshape(3, 20, 4)):
        ours = clip_boxes_to_image(shaped, (50, 80))
        assert torch.equal(ours, tvo.clip_boxes_to_image(shaped, (50, 80)))
    clipped = clip_boxes_to_image(torch.tensor([[-5.0, -5.0, 100.0, 100.0]], dtype=dtype), (50, 80))
    assert clipped.tolist() == [[0.0, 0.0, 80.0, 50.0]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_remove_small_boxes_matches_torchvision(dtype):
    """remove_small_boxes == torchvision.ops.remove_small_boxes (same indices); a side equal to min_size
    is kept, a zero side is removed."""
    boxes = random_boxes(200, seed=16, dtype=dtype)
    for min_size in (0.0, 1e-3, 5.0, 20.0):
        assert torch.equal(remove_small_boxes(boxes, min_size), tvo.remove_small_boxes(boxes, min_size))
    exact = torch.tensor([[0.0, 0.0, 2.0, 3.0], [0.0, 0.0, 1.5, 3.0], [1.0, 1.0, 1.0, 9.0]], dtype=dtype)
    assert remove_small_boxes(exact, 2.0).tolist() == [0]
    assert remove_small_boxes(exact, 1e-6).tolist() == [0, 1]


def test_box_functions_compile_with_torchscript():
    """The box functions compile with torch.jit.script and give the same results as eager mode."""
    a, b = random_boxes(20, seed=17), random_boxes(30, seed=18)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in recent torch releases
        scripted = {f.__name__: torch.jit.script(f) for f in (box_iou, generalized_box_iou, box_convert)}
        clip = torch.jit.script(clip_boxes_to_image)
    assert torch.equal(scripted["box_iou"](a, b), box_iou(a, b))
    assert torch.equal(scripted["generalized_box_iou"](a, b), generalized_box_iou(a, b))
    assert torch.equal(scripted["box_convert"](a, "xyxy", "cxcywh"), box_convert(a, "xyxy", "cxcywh"))
    assert torch.equal(clip(a, (30, 40)), clip_boxes_to_image(a, (30, 40)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_box_functions_on_cuda_equal_cpu():
    """On a CUDA device the box functions return CUDA tensors equal to the CPU results (1e-12, float64)."""
    a, b = random_boxes(80, seed=19, dtype=torch.float64), random_boxes(60, seed=20, dtype=torch.float64)
    ca, cb = a.cuda(), b.cuda()
    for fn in (box_iou, generalized_box_iou):
        result = fn(ca, cb)
        assert result.is_cuda
        torch.testing.assert_close(result.cpu(), fn(a, b), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(generalized_box_iou_pairwise(ca, ca).cpu(), generalized_box_iou_pairwise(a, a))
    torch.testing.assert_close(box_convert(ca, "xyxy", "cxcywh").cpu(), box_convert(a, "xyxy", "cxcywh"))
    assert torch.equal(clip_boxes_to_image(ca, (30, 40)).cpu(), clip_boxes_to_image(a, (30, 40)))
    assert torch.equal(remove_small_boxes(ca, 3.0).cpu(), remove_small_boxes(a, 3.0))

"""Box losses against torch.nn.functional, torchvision.ops, hand-computed values and gradcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, generalized_box_iou_loss

from segdet.losses import (
    GIoULoss,
    IoULoss,
    L1Loss,
    SmoothL1Loss,
    giou_loss,
    iou_loss,
    l1_loss,
    smooth_l1_loss,
)

REDUCTIONS = ["none", "mean", "sum"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_boxes(n: int, g: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """Valid xyxy boxes in a 100×100 image, with sizes from 1 to 41 pixels."""
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 60
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 40 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [0.0, 1 / 9, 0.5, 1.0, 2.0])
def test_smooth_l1_matches_torch(beta, reduction):
    """Equals F.smooth_l1_loss(beta=β) to 1e-6, β = 0 (pure L1) included."""
    g = _gen(0)
    a, b = (
        torch.randn(20, 4, generator=g, dtype=torch.float64),
        torch.randn(20, 4, generator=g, dtype=torch.float64),
    )
    ours = smooth_l1_loss(a, b, beta=beta, reduction=reduction)
    torch.testing.assert_close(
        ours, F.smooth_l1_loss(a, b, beta=beta, reduction=reduction), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(SmoothL1Loss(beta, reduction)(a, b), ours)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_l1_matches_torch(reduction):
    """Equals F.l1_loss to 1e-6."""
    g = _gen(1)
    a, b = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    torch.testing.assert_close(l1_loss(a, b, reduction=reduction), F.l1_loss(a, b, reduction=reduction))
    torch.testing.assert_close(L1Loss(reduction)(a, b), F.l1_loss(a, b, reduction=reduction))


def test_smooth_l1_hand_values():
    """β = 1: |d| = 0.5 → 0.5·0.25/1 = 0.125; |d| = 2 → 2 − 0.5 = 1.5; β = 0: |d|."""
    a = torch.tensor([0.5, -2.0])
    zero = torch.zeros(2)
    torch.testing.assert_close(smooth_l1_loss(a, zero, reduction="none"), torch.tensor([0.125, 1.5]))
    torch.testing.assert_close(smooth_l1_loss(a, zero, beta=0.0, reduction="none"), torch.tensor([0.5, 2.0]))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_giou_matches_torchvision(reduction):
    """Equals torchvision.ops.generalized_box_iou_loss on valid boxes (overlapping and disjoint) to 1e-6."""
    g = _gen(2)
    pred, target = _random_boxes(50, g), _random_boxes(50, g)
    pred[:10] = target[:10] + torch.randn(10, 4, generator=g, dtype=torch.float64).clamp(-0.4, 0.4)
    ours = giou_loss(pred, target, reduction=reduction)
    torch.testing.assert_close(
        ours, generalized_box_iou_loss(pred, target, reduction=reduction), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(GIoULoss(reduction=reduction)(pred, target), ours)


def test_iou_matches_torchvision_box_iou_diagonal():
    """1 − IoU equals 1 − diag(torchvision.ops.box_iou(pred, target)) to 1e-6 (eps = 1e-7 on areas ≥ 1)."""
    g = _gen(3)
    pred, target = _random_boxes(30, g), _random_boxes(30, g)
    pred[:10] = target[:10] + 0.3
    ours = iou_loss(pred, target, reduction="none")
    torch.testing.assert_close(ours, 1 - box_iou(pred, target).diagonal(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(IoULoss()(pred, target), ours.mean())


def test_iou_and_giou_hand_values():
    """(0,0,2,2) vs (1,1,3,3): IoU = 1/7, enclosing 9, GIoU = 1/7 − (9 − 7)/9.

    Disjoint (0,0,1,1) vs (2,2,3,3): IoU = 0, union 2, enclosing 9, GIoU = −7/9 → loss 16/9.
    Identical boxes: both losses 0.
    """
    pred = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [5, 5, 9, 8]], dtype=torch.float64)
    target = torch.tensor([[1.0, 1, 3, 3], [2, 2, 3, 3], [5, 5, 9, 8]], dtype=torch.float64)
    iou = iou_loss(pred, target, reduction="none")
    giou = giou_loss(pred, target, reduction="none")
    torch.testing.assert_close(
        iou, torch.tensor([1 - 1 / 7, 1.0, 0.0], dtype=torch.float64), rtol=0, atol=1e-7
    )
    expected = torch.tensor([1 - (1 / 7 - 2 / 9), 16 / 9, 0.0], dtype=torch.float64)
    torch.testing.assert_close(giou, expected, rtol=0, atol=1e-7)


def test_inverted_predicted_box_counts_as_empty():
    """A predicted box with x2 < x1 has area 0: IoU 0 and a finite GIoU gradient (documented choice)."""
    pred = torch.tensor([[3.0, 0, 1, 2]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0.0, 0, 2, 2]], dtype=torch.float64)
    assert iou_loss(pred, target).item() == pytest.approx(1.0)
    giou_loss(pred, target).backward()
    assert torch.isfinite(pred.grad).all()


def test_empty_mean_is_zero_with_gradient():
    """No box: mean is 0 with a graph (like torchvision's GIoU loss; F.l1_loss would give NaN)."""
    pred = torch.zeros(0, 4, requires_grad=True)
    for fn in (smooth_l1_loss, l1_loss, iou_loss, giou_loss):
        loss = fn(pred, torch.zeros(0, 4))
        loss.backward()
        assert loss.item() == 0.0


def test_gradcheck():
    """gradcheck in float64 for every box loss (random overlapping and disjoint boxes)."""
    g = _gen(4)
    pred = _random_boxes(6, g).requires_grad_(True)
    target = _random_boxes(6, g)
    deltas = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros(6, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: smooth_l1_loss(x, zeros, beta=0.5), (deltas,))
    assert torch.autograd.gradcheck(lambda x: l1_loss(x, zeros), (deltas,))
    assert torch.autograd.gradcheck(lambda x: iou_loss(x, target), (pred,))
    assert torch.autograd.gradcheck(lambda x: giou_loss(x, target), (pred,))


def test_errors():
    """Shape mismatch, non-box last dimension, negative β, unknown reduction: ValueError."""
    with pytest.raises(ValueError, match="same shape"):
        smooth_l1_loss(torch.zeros(3, 4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        giou_loss(torch.zeros(3, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="beta"):
        SmoothL1Loss(beta=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        iou_loss(torch.zeros(1, 4), torch.zeros(1, 4), reduction="batchmean")


# ---------------------------------------------------------------- half precision


def test_half_precision_mean_matches_torch():
    """fp16 inputs of 70 000 elements (more than fp16's largest value, 65504): the mean equals
    F.l1_loss / F.smooth_l1_loss on the same fp16 tensors (which accumulate in float32) to rtol 1e-3.
    An fp16 element count is inf there, and the mean used to be 0."""
    g = _gen(10)
    pred = (torch.rand(70_000, generator=g) * 4).half()
    target = torch.zeros(70_000, dtype=torch.float16)
    for ours, ref in (
        (l1_loss(pred, target), F.l1_loss(pred, target)),
        (smooth_l1_loss(pred, target), F.smooth_l1_loss(pred, target)),
    ):
        assert ours.dtype == torch.float32  # reduced in float32
        torch.testing.assert_close(ours, ref.float(), rtol=1e-3, atol=0)
    # The sum exceeds 65504 too: it is accumulated (and returned) in float32, not inf.
    torch.testing.assert_close(l1_loss(pred, target, reduction="sum"), pred.float().sum(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_boxes_match_torchvision(dtype):
    """Half-precision boxes of a few hundred pixels (areas above fp16's 65504): GIoU equals
    torchvision.ops.generalized_box_iou_loss, which upcasts fp16 / bf16 boxes to float32, to 1e-6;
    IoU equals box_iou's diagonal on the float32 copies to 1e-6. fp16 areas used to overflow to NaN."""
    g = _gen(11)
    xy = torch.rand(6, 2, generator=g) * 200
    pred = torch.cat([xy, xy + 260 + torch.rand(6, 2, generator=g) * 100], dim=1).to(dtype)
    target = (pred.float() + torch.randn(6, 4, generator=g) * 30).to(dtype)
    target[:, 2:] = torch.maximum(target[:, 2:], target[:, :2] + 1)
    ours = giou_loss(pred, target, reduction="none")
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, generalized_box_iou_loss(pred, target), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        iou_loss(pred, target, reduction="none"),
        1 - box_iou(pred.float(), target.float()).diagonal(),
        rtol=1e-6,
        atol=1e-6,
    )

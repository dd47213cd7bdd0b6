"""Focal losses against torchvision.ops.sigmoid_focal_loss, F.cross_entropy, the formula, and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from segdet.losses import (
    SigmoidFocalLoss,
    SoftmaxFocalLoss,
    binary_cross_entropy_loss,
    cross_entropy_loss,
    sigmoid_focal_loss,
    softmax_focal_loss,
)

LOG2 = math.log(2.0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- sigmoid


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("alpha", "tv_alpha"), [(0.25, 0.25), (0.6, 0.6), (None, -1)])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_sigmoid_focal_matches_torchvision(reduction, alpha, tv_alpha, gamma):
    """Equals torchvision.ops.sigmoid_focal_loss for 0/1 targets (alpha=None ↔ alpha=-1) to 1e-6."""
    g = _gen(0)
    logits = torch.randn(2, 9, 4, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(2, 9, 4, generator=g) > 0.7).double()
    ours = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    ref = tv_sigmoid_focal_loss(logits, targets, alpha=tv_alpha, gamma=gamma, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_sigmoid_focal_float32_matches_torchvision():
    """float32, defaults α = 0.25, γ = 2, mean: equal to torchvision to 1e-6."""
    g = _gen(1)
    logits, targets = torch.randn(64, 5, generator=g) * 2, (torch.rand(64, 5, generator=g) > 0.8).float()
    ref = tv_sigmoid_focal_loss(logits, targets, reduction="mean")
    torch.testing.assert_close(SigmoidFocalLoss()(logits, targets), ref, rtol=1e-6, atol=1e-6)


def test_sigmoid_focal_hand_values():
    """p̂ = σ(0) = 1/2, α = 0.25, γ = 2: FL = 0.25·0.25·log 2 for p = 1 and 0.75·0.25·log 2 for p = 0."""
    loss = sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]), reduction="none")
    torch.testing.assert_close(loss, torch.tensor([0.25 * 0.25 * LOG2, 0.75 * 0.25 * LOG2]))


def test_sigmoid_focal_soft_target_follows_formula():
    """Soft target p = 0.5 at p̂ = σ(ln 3) = 3/4, α = None, γ = 2: each term keeps its own modulating factor.

    FL = 0.5·(1/4)²·(−log 3/4) + 0.5·(3/4)²·(−log 1/4) (this differs from torchvision's soft form).
    """
    x = torch.tensor([math.log(3.0)], dtype=torch.float64)
    expected = 0.5 * (1 / 4) ** 2 * -math.log(3 / 4) + 0.5 * (3 / 4) ** 2 * -math.log(1 / 4)
    loss = sigmoid_focal_loss(x, torch.tensor([0.5], dtype=torch.float64), alpha=None, reduction="sum")
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_sigmoid_focal_gamma0_is_bce():
    """γ = 0 and α = None reduce to the binary cross-entropy (our BCE and F's) to 1e-6, soft targets too."""
    g = _gen(2)
    x, t = (
        torch.randn(3, 7, generator=g, dtype=torch.float64),
        torch.rand(3, 7, generator=g, dtype=torch.float64),
    )
    ours = sigmoid_focal_loss(x, t, alpha=None, gamma=0.0)
    torch.testing.assert_close(ours, binary_cross_entropy_loss(x, t), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(x, t), rtol=1e-6, atol=1e-6)


def test_sigmoid_focal_extreme_logits():
    """Logits ±1e4: wrong → α·|x| or (1 − α)·|x| (analytic limit), right → 0; gradients finite and analytic.

    For x → +∞, p = 0: FL ≈ (1 − α)·x, so dFL/dx → 1 − α = 0.75; for x → −∞, p = 1: dFL/dx → −α = −0.25.
    """
    logits = torch.tensor([1e4, -1e4, 1e4, -1e4], requires_grad=True)
    targets = torch.tensor([0.0, 1.0, 1.0, 0.0])
    loss = sigmoid_focal_loss(logits, targets, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([0.75e4, 0.25e4, 0.0, 0.0]))
    loss.sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([0.75, -0.25, 0.0, 0.0]))


def test_sigmoid_focal_ignore_index_and_weight():
    """ignore_index drops elements (mean over kept ones = torchvision mean on them, 1e-6); weight rescales."""
    g = _gen(3)
    logits = torch.randn(4, 3, generator=g, dtype=torch.float64)
    targets = (torch.rand(4, 3, generator=g) > 0.5).double()
    targets[1, 2] = targets[3, 0] = -1.0
    kept = targets != -1
    ours = sigmoid_focal_loss(logits, targets, ignore_index=-1)
    ref = tv_sigmoid_focal_loss(logits[kept], targets[kept], reduction="mean")
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    weighted = sigmoid_focal_loss(logits, targets, weight=weight, ignore_index=-1, reduction="none")
    plain = sigmoid_focal_loss(logits, targets, ignore_index=-1, reduction="none")
    torch.testing.assert_close(weighted, plain * weight)


# ---------------------------------------------------------------- softmax


def _naive_softmax_focal(logits, targets, gamma, weight):
    """Reference straight from the formula −w_t (1 − p̂_t)^γ log p̂_t (fine in float64 for moderate logits)."""
    p = logits.softmax(1).gather(1, targets.unsqueeze(1)).squeeze(1)
    w = weight[targets]
    return -(w * (1 - p) ** gamma * torch.log(p)).sum() / w.sum()


@pytest.mark.parametrize("gamma", [0.5, 2.0, 3.0])
def test_softmax_focal_matches_formula(gamma):
    """Random N×C×H×W inputs: equal to the naive float64 formula (weighted mean) to 1e-6."""
    g = _gen(4)
    logits = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(0, 4, (2, 3, 3), generator=g)
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    ours = softmax_focal_loss(logits, targets, gamma=gamma, weight=weight)
    torch.testing.assert_close(
        ours, _naive_softmax_focal(logits, targets, gamma, weight), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_softmax_focal_gamma0_is_cross_entropy(reduction):
    """γ = 0 equals F.cross_entropy with weight and ignore_index (same weighted mean) to 1e-6."""
    g = _gen(5)
    logits = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 5, (3, 4), generator=g)
    targets[0, 1] = 255
    weight = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    ours = softmax_focal_loss(
        logits, targets, gamma=0.0, weight=weight, ignore_index=255, reduction=reduction
    )
    ref = F.cross_entropy(logits, targets, weight=weight, ignore_index=255, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_softmax_focal_hand_values():
    """Uniform logits: C = 2 → p̂_t = 1/2, FL = (1/2)²·log 2; C = 3 → p̂_t = 1/3, FL = (2/3)²·log 3 (γ = 2)."""
    two = softmax_focal_loss(torch.zeros(1, 2), torch.tensor([0]))
    three = softmax_focal_loss(torch.zeros(1, 3), torch.tensor([2]))
    assert two.item() == pytest.approx(0.25 * LOG2, rel=1e-6)
    assert three.item() == pytest.approx((2 / 3) ** 2 * math.log(3), rel=1e-6)


def test_softmax_focal_extreme_logits():
    """Logits (1e4, −1e4, 0): target 0 → 0; target 1 → 2e4 with gradient → softmax − onehot = (1, −1, 0)."""
    logits = torch.tensor([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0]], requires_grad=True)
    loss = softmax_focal_loss(logits, torch.tensor([0, 1]), reduction="none")
    torch.testing.assert_close(loss, torch.tensor([0.0, 2e4]))
    loss.sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 0.0]]))


def test_softmax_focal_all_ignored_is_zero():
    """Everything ignored: 0 with a zero gradient (not NaN)."""
    logits = torch.randn(2, 3, requires_grad=True)
    loss = SoftmaxFocalLoss(ignore_index=7)(logits, torch.tensor([7, 7]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros(2, 3))


def test_focal_gradcheck():
    """gradcheck in float64 for both forms (weights, ignore_index, non-integer γ)."""
    g = _gen(6)
    x = torch.randn(2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    soft = torch.rand(2, 3, 2, generator=g, dtype=torch.float64)
    soft[0, 0, 0] = -1.0
    assert torch.autograd.gradcheck(
        lambda v: sigmoid_focal_loss(v, soft, gamma=1.5, ignore_index=-1, reduction="sum"), (x,)
    )
    targets = torch.tensor([[0, 2], [1, -100]])
    weight = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: softmax_focal_loss(v, targets, gamma=2.5, weight=weight), (x,))


def test_focal_argument_errors():
    """Bad α, γ, shapes and class counts raise ValueError; softmax form matches CE argument checks."""
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="alpha"):
        sigmoid_focal_loss(x, torch.zeros(2, 3), alpha=-1)
    with pytest.raises(ValueError, match="gamma"):
        SigmoidFocalLoss(gamma=-0.5)
    with pytest.raises(ValueError, match="same shape"):
        sigmoid_focal_loss(x, torch.zeros(3))
    with pytest.raises(ValueError, match="C >= 2"):
        softmax_focal_loss(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        softmax_focal_loss(x, torch.tensor([0, 3]))
    # Same message family as cross_entropy_loss for one-hot float targets.
    with pytest.raises(ValueError, match="one-hot"):
        softmax_focal_loss(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="one-hot"):
        cross_entropy_loss(x, torch.zeros(2, 3))


# ---------------------------------------------------------------- half precision


def test_half_precision_mean_over_many_elements():
    """fp16 logits of 90 000 elements (more than fp16's largest value, 65504): the sigmoid form equals
    torchvision.ops.sigmoid_focal_loss on the float32 copy to rtol 1e-3, the softmax form with γ = 0
    equals F.cross_entropy on the float32 copy to rtol 1e-3. The mean used to be 0 (fp16 count inf)."""
    g = _gen(10)
    logits = (torch.randn(1, 1, 300, 300, generator=g) * 2).half()
    targets = (torch.rand(1, 1, 300, 300, generator=g) > 0.9).half()
    ref = tv_sigmoid_focal_loss(logits.float(), targets.float(), reduction="mean")
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), ref, rtol=1e-3, atol=0)

    logits = (torch.randn(1, 3, 300, 300, generator=g) * 2).half()
    labels = torch.randint(0, 3, (1, 300, 300), generator=g)
    ref = F.cross_entropy(logits.float(), labels)
    torch.testing.assert_close(softmax_focal_loss(logits, labels, gamma=0.0), ref, rtol=1e-3, atol=0)

"""Cross-entropy losses against torch.nn.functional, hand-computed formula values and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segdet.losses import (
    BalancedBinaryCrossEntropyLoss,
    BinaryCrossEntropyLoss,
    CrossEntropyLoss,
    WeightedBinaryCrossEntropyLoss,
    balanced_binary_cross_entropy_loss,
    binary_cross_entropy_loss,
    cross_entropy_loss,
    weighted_binary_cross_entropy_loss,
)

LOG2 = math.log(2.0)
REDUCTIONS = ["none", "mean", "sum"]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- binary


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_matches_torch_with_weight_and_pos_weight(reduction):
    """Equals F.binary_cross_entropy_with_logits (weight, per-channel pos_weight, soft targets) to 1e-6."""
    g = _gen(1)
    logits = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64) * 3
    targets = torch.rand(2, 3, 5, 5, generator=g, dtype=torch.float64)
    weight = torch.rand(3, 1, 1, generator=g, dtype=torch.float64)
    pos_weight = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64).view(3, 1, 1)
    ours = binary_cross_entropy_loss(
        logits, targets, weight=weight, pos_weight=pos_weight, reduction=reduction
    )
    ref = F.binary_cross_entropy_with_logits(
        logits, targets, weight=weight, pos_weight=pos_weight, reduction=reduction
    )
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_bce_float32_matches_torch():
    """float32 inputs: equal to F.binary_cross_entropy_with_logits to 1e-6 (mean)."""
    g = _gen(2)
    logits, targets = (
        torch.randn(4, 1, 8, 8, generator=g) * 4,
        (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float(),
    )
    ours = binary_cross_entropy_loss(logits, targets)
    torch.testing.assert_close(
        ours, F.binary_cross_entropy_with_logits(logits, targets), rtol=1e-6, atol=1e-6
    )


def test_wce_hand_values():
    """WCE = −(β p log p̂ + (1 − p) log(1 − p̂)) at p̂ = σ(0) = 1/2, β = 3.

    Hand values: 3·log 2 for p = 1, log 2 for p = 0.
    """
    logits = torch.zeros(2)
    targets = torch.tensor([1.0, 0.0])
    loss = weighted_binary_cross_entropy_loss(logits, targets, beta=3.0, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([3 * LOG2, LOG2]))
    module = WeightedBinaryCrossEntropyLoss(beta=3.0, reduction="sum")
    torch.testing.assert_close(module(logits, targets), torch.tensor(4 * LOG2))


def test_balanced_ce_hand_values():
    """BCE = −(β p log p̂ + (1 − β)(1 − p) log(1 − p̂)).

    Hand values at x = 0, β = 0.8: 0.8·log 2 (p = 1), 0.2·log 2 (p = 0).
    """
    loss = balanced_binary_cross_entropy_loss(
        torch.zeros(2), torch.tensor([1.0, 0.0]), beta=0.8, reduction="none"
    )
    torch.testing.assert_close(loss, torch.tensor([0.8 * LOG2, 0.2 * LOG2]))


def test_balanced_ce_auto_beta_is_negative_fraction():
    """beta='auto' (HED): 1 positive of 4 → β = 3/4; each term from the formula with softplus values."""
    x = torch.tensor([2.0, -1.0, 0.0, 1.0], dtype=torch.float64)
    p = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)

    def softplus(v):
        return math.log1p(math.exp(v))

    # −log σ(x) = softplus(−x), −log(1 − σ(x)) = softplus(x)
    expected = [0.75 * softplus(-2.0), 0.25 * softplus(-1.0), 0.25 * LOG2, 0.25 * softplus(1.0)]
    loss = balanced_binary_cross_entropy_loss(x, p, reduction="none")
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    module = BalancedBinaryCrossEntropyLoss()
    torch.testing.assert_close(module(x, p), torch.tensor(sum(expected) / 4, dtype=torch.float64))


def test_bce_ignore_index_equals_loss_on_kept_elements():
    """ignore_index: the mean over kept elements equals F.binary_cross_entropy_with_logits on them (1e-6)."""
    g = _gen(3)
    logits = torch.randn(2, 1, 6, 6, generator=g, dtype=torch.float64)
    targets = (torch.rand(2, 1, 6, 6, generator=g) > 0.5).double()
    ignored = torch.rand(2, 1, 6, 6, generator=g) < 0.3
    targets[ignored] = 255.0
    ours = binary_cross_entropy_loss(logits, targets, ignore_index=255, pos_weight=2.0)
    ref = F.binary_cross_entropy_with_logits(
        logits[~ignored], targets[~ignored], pos_weight=torch.tensor(2.0, dtype=torch.float64)
    )
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    none = binary_cross_entropy_loss(logits, targets, ignore_index=255, reduction="none")
    assert torch.all(none[ignored] == 0)


@pytest.mark.parametrize(
    "loss_fn",
    [
        binary_cross_entropy_loss,
        lambda x, t, **kw: balanced_binary_cross_entropy_loss(x, t, beta=0.3, **kw),
        lambda x, t, **kw: balanced_binary_cross_entropy_loss(x, t, **kw),
    ],
)
def test_binary_all_ignored_mean_is_zero_with_gradient(loss_fn):
    """Everything ignored: mean is 0 and the gradient is 0 (torch's mean over nothing would be NaN)."""
    logits = torch.randn(3, 4, requires_grad=True)
    loss = loss_fn(logits, torch.full((3, 4), -1.0), ignore_index=-1)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros(3, 4))


def test_binary_extreme_logits_finite_and_exact():
    """Logits ±1e4: loss is the analytic limit (|x|·coefficient when wrong, 0 when right).

    The gradient is the analytic σ(x) − p (times β on positives).
    """
    logits = torch.tensor([1e4, -1e4, 1e4, -1e4], requires_grad=True)
    targets = torch.tensor([0.0, 1.0, 1.0, 0.0])
    loss = binary_cross_entropy_loss(logits, targets, pos_weight=2.0, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([1e4, 2e4, 0.0, 0.0]))
    loss.sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([1.0, -2.0, 0.0, 0.0]))
    for beta in (0.3, "auto"):
        x = logits.detach().clone().requires_grad_(True)
        value = balanced_binary_cross_entropy_loss(x, targets, beta=beta, reduction="sum")
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(x.grad).all()
    torch.testing.assert_close(
        balanced_binary_cross_entropy_loss(logits, targets, beta=0.3, reduction="none"),
        torch.tensor([0.7e4, 0.3e4, 0.0, 0.0]),
    )


def test_binary_gradcheck():
    """torch.autograd.gradcheck in float64 for the binary forms, with weight, pos_weight and ignore_index."""
    g = _gen(4)
    logits = torch.randn(2, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.rand(2, 2, 3, generator=g, dtype=torch.float64)
    targets[0, 0, 0] = -1.0
    weight = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: binary_cross_entropy_loss(x, targets, pos_weight=2.5, weight=weight, ignore_index=-1),
        (logits,),
    )
    assert torch.autograd.gradcheck(
        lambda x: balanced_binary_cross_entropy_loss(x, targets, ignore_index=-1, reduction="sum"), (logits,)
    )


def test_binary_argument_errors():
    """Shape/dtype mismatches, a non-broadcastable weight, bad β and reduction raise ValueError."""
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="same shape"):
        binary_cross_entropy_loss(x, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="same shape"):
        binary_cross_entropy_loss(x, torch.zeros(2, 3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="C×1×1"):
        binary_cross_entropy_loss(x, torch.zeros_like(x), weight=torch.ones(3))
    with pytest.raises(ValueError, match="pos_weight"):
        binary_cross_entropy_loss(x, torch.zeros_like(x), pos_weight=-1.0)
    with pytest.raises(ValueError, match="beta"):
        balanced_binary_cross_entropy_loss(x, torch.zeros_like(x), beta=1.5)
    with pytest.raises(ValueError, match="beta"):
        BalancedBinaryCrossEntropyLoss(beta="balanced")
    with pytest.raises(ValueError, match="reduction"):
        BinaryCrossEntropyLoss(reduction="avg")


def test_bce_module_buffers_follow_device_and_dtype():
    """Tensor weights are buffers: .double() converts them and the module equals the function."""
    module = BinaryCrossEntropyLoss(pos_weight=torch.tensor([2.0]), weight=torch.tensor([0.5])).double()
    assert module.pos_weight.dtype == torch.float64 and module.weight.dtype == torch.float64
    assert set(dict(module.named_buffers())) == {"pos_weight", "weight"}
    x, t = torch.randn(5, 1, dtype=torch.float64), torch.rand(5, 1, dtype=torch.float64)
    torch.testing.assert_close(
        module(x, t), binary_cross_entropy_loss(x, t, pos_weight=module.pos_weight, weight=module.weight)
    )


# ---------------------------------------------------------------- multi-class


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("use_weight", [False, True])
def test_ce_matches_torch(reduction, label_smoothing, use_weight):
    """Equals F.cross_entropy (weight, ignore_index, label_smoothing, N×C×H×W) to 1e-6."""
    g = _gen(5)
    logits = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, 4, (2, 5, 6), generator=g)
    targets[torch.rand(2, 5, 6, generator=g) < 0.2] = 255
    weight = torch.tensor([0.2, 1.0, 3.0, 0.7], dtype=torch.float64) if use_weight else None
    kwargs = dict(weight=weight, ignore_index=255, label_smoothing=label_smoothing, reduction=reduction)
    torch.testing.assert_close(
        cross_entropy_loss(logits, targets, **kwargs),
        F.cross_entropy(logits, targets, **kwargs),
        rtol=1e-6,
        atol=1e-6,
    )


def test_ce_default_ignore_index_and_2d_input_match_torch():
    """N×C logits with torch's default ignore_index = -100: equal to F.cross_entropy to 1e-6 (float32)."""
    g = _gen(6)
    logits, targets = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    targets[2] = -100
    torch.testing.assert_close(
        cross_entropy_loss(logits, targets), F.cross_entropy(logits, targets), atol=1e-6, rtol=1e-6
    )
    torch.testing.assert_close(
        CrossEntropyLoss()(logits, targets), F.cross_entropy(logits, targets), atol=1e-6, rtol=1e-6
    )


def test_ce_hand_values():
    """Uniform logits over 3 classes: −log(1/3) = log 3 for any target; weighted mean Σwℓ/Σw stays log 3."""
    logits = torch.zeros(2, 3)
    targets = torch.tensor([0, 2])
    torch.testing.assert_close(cross_entropy_loss(logits, targets), torch.tensor(math.log(3)))
    weight = torch.tensor([1.0, 1.0, 4.0])
    # Σ w_t ℓ / Σ w_t = (1·log 3 + 4·log 3) / 5; 'sum' is 5·log 3.
    torch.testing.assert_close(cross_entropy_loss(logits, targets, weight=weight), torch.tensor(math.log(3)))
    torch.testing.assert_close(
        cross_entropy_loss(logits, targets, weight=weight, reduction="sum"), torch.tensor(5 * math.log(3))
    )


def test_ce_all_ignored_mean_is_zero_not_nan():
    """All targets ignored: 0 with a zero gradient, where F.cross_entropy gives NaN (documented)."""
    logits = torch.randn(2, 3, 4, requires_grad=True)
    targets = torch.full((2, 4), -100)
    assert torch.isnan(F.cross_entropy(logits, targets))
    loss = cross_entropy_loss(logits, targets, weight=torch.ones(3))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_ce_extreme_logits():
    """Logits (1e4, −1e4, 0): target 1 gives 2e4, gradient softmax − onehot = (1, −1, 0); target 0: 0."""
    logits = torch.tensor([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0]], requires_grad=True)
    loss = cross_entropy_loss(logits, torch.tensor([1, 0]), reduction="none")
    torch.testing.assert_close(loss, torch.tensor([2e4, 0.0]))
    loss.sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]))


def test_ce_gradcheck():
    """gradcheck in float64 with weight, ignore_index and label smoothing."""
    g = _gen(7)
    logits = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[[0, 1], [2, 255]], [[1, 1], [0, 2]]])
    weight = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: cross_entropy_loss(x, targets, weight=weight, ignore_index=255, label_smoothing=0.1),
        (logits,),
    )


def test_ce_argument_errors():
    """Float one-hot targets, out-of-range labels, wrong weight length, bad ε: ValueError naming the cause."""
    logits = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="one-hot"):
        cross_entropy_loss(logits, torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="int64 class-index targets N×"):
        cross_entropy_loss(logits, torch.zeros(2, 5, 4, dtype=torch.long))
    bad = torch.zeros(2, 4, 4, dtype=torch.long)
    bad[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cross_entropy_loss(logits, bad)
    with pytest.raises(ValueError, match="one entry per class"):
        cross_entropy_loss(logits, torch.zeros(2, 4, 4, dtype=torch.long), weight=torch.ones(4))
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.5)


def test_ce_module_weight_is_buffer():
    """CrossEntropyLoss keeps weight as a buffer and equals F.cross_entropy after .double()."""
    module = CrossEntropyLoss(weight=torch.tensor([1.0, 2.0]), ignore_index=None).double()
    assert "weight" in dict(module.named_buffers())
    g = _gen(8)
    x, t = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randint(0, 2, (6,), generator=g)
    torch.testing.assert_close(
        module(x, t), F.cross_entropy(x, t, weight=module.weight), rtol=1e-6, atol=1e-6
    )


def test_uint8_label_map_is_read_as_class_indices():
    """uint8 label map = int64 result (F.cross_entropy, 1e-6): 156 is a class, not a wrapped -100."""
    g = _gen(9)
    logits = torch.randn(2, 200, 3, generator=g, dtype=torch.float64)
    targets = torch.tensor([[156, 3, 0], [199, 156, 7]])
    ours = cross_entropy_loss(logits, targets.to(torch.uint8))
    torch.testing.assert_close(ours, F.cross_entropy(logits, targets), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- half precision


def test_half_precision_mean_over_many_elements():
    """fp16 logits of 90 000 elements (more than fp16's largest value, 65504), some ignored.

    Binary: equals F.binary_cross_entropy_with_logits on the kept fp16 elements (torch accumulates in
    float32) to rtol 1e-3. Multi-class with weights: equals F.cross_entropy on the float32 copy of the
    same logits to rtol 1e-3 (torch's own fp16 CPU mean is NaN here). An fp16 count or weight sum is inf,
    so the mean used to be 0 (or NaN)."""
    g = _gen(10)
    logits = (torch.randn(1, 1, 300, 300, generator=g) * 2).half()
    targets = (torch.rand(1, 1, 300, 300, generator=g) > 0.5).half()
    targets[0, 0, :10] = 255
    keep = targets != 255
    ours = binary_cross_entropy_loss(logits, targets, ignore_index=255)
    ref = F.binary_cross_entropy_with_logits(logits[keep], targets[keep])
    torch.testing.assert_close(ours, ref.float(), rtol=1e-3, atol=0)

    logits = (torch.randn(1, 3, 300, 300, generator=g) * 2).half()
    labels = torch.randint(0, 3, (1, 300, 300), generator=g)
    labels[0, :10] = 255
    weight = torch.tensor([0.5, 1.0, 2.0])
    ours = cross_entropy_loss(logits, labels, weight=weight.half(), ignore_index=255)
    ref = F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=255)
    torch.testing.assert_close(ours, ref, rtol=1e-3, atol=0)

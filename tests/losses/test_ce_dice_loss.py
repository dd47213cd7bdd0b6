"""CE + Dice: the weighted sum of the torch.nn.functional cross-entropy and our checked Dice."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segdet.losses import CEDiceLoss, ce_dice_loss, dice_loss


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_multiclass_is_weighted_sum_of_cross_entropy_and_dice():
    """multiclass: 0.7·F.cross_entropy(weight, ignore_index) + 0.3·dice_loss, to 1e-6."""
    g = _gen(0)
    logits = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 3, (2, 6, 6), generator=g)
    targets[0, :2] = 255
    weight = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    ours = ce_dice_loss(
        logits, targets, "multiclass", ce_weight=0.7, dice_weight=0.3, class_weight=weight, ignore_index=255
    )
    ce = F.cross_entropy(logits, targets, weight=weight, ignore_index=255)
    dice = dice_loss(logits, targets, "multiclass", ignore_index=255)
    torch.testing.assert_close(ours, 0.7 * ce + 0.3 * dice, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_elementwise_modes_use_binary_cross_entropy(mode):
    """binary/multilabel: F.binary_cross_entropy_with_logits (weight C×1×1) + dice_loss, to 1e-6."""
    g = _gen(1)
    c = 1 if mode == "binary" else 3
    logits = torch.randn(2, c, 4, 4, generator=g, dtype=torch.float64)
    targets = (torch.rand(2, c, 4, 4, generator=g) > 0.5).double()
    class_weight = torch.linspace(0.5, 1.5, c, dtype=torch.float64)
    module = CEDiceLoss(mode, class_weight=class_weight, per_image=True)
    ce = F.binary_cross_entropy_with_logits(logits, targets, weight=class_weight.view(c, 1, 1))
    dice = dice_loss(logits, targets, mode, per_image=True)
    torch.testing.assert_close(module(logits, targets), ce + dice, rtol=1e-6, atol=1e-6)


def test_only_one_term():
    """dice_weight = 0 gives exactly the cross-entropy, ce_weight = 0 exactly the Dice loss."""
    g = _gen(2)
    logits, targets = torch.randn(2, 4, 3, 3, generator=g), torch.randint(0, 4, (2, 3, 3), generator=g)
    torch.testing.assert_close(
        ce_dice_loss(logits, targets, "multiclass", dice_weight=0.0), F.cross_entropy(logits, targets)
    )
    torch.testing.assert_close(
        ce_dice_loss(logits, targets, "multiclass", ce_weight=0.0), dice_loss(logits, targets, "multiclass")
    )


def test_errors():
    """Missing or wrong mode, negative or zero term weights, wrong shapes, bad class_weight: clear errors."""
    with pytest.raises(TypeError):
        CEDiceLoss()
    with pytest.raises(ValueError, match="Dice mode"):
        CEDiceLoss("multi-label")
    with pytest.raises(ValueError, match="both 0"):
        CEDiceLoss("binary", ce_weight=0, dice_weight=0)
    with pytest.raises(ValueError, match="ce_weight"):
        CEDiceLoss("binary", ce_weight=-1)
    with pytest.raises(ValueError, match="mode='multiclass' expects"):
        ce_dice_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), "multiclass")
    with pytest.raises(ValueError, match="one entry per channel"):
        ce_dice_loss(
            torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), "multilabel", class_weight=torch.ones(2)
        )


def test_gradcheck_and_buffer():
    """gradcheck in float64 (multiclass, ignore_index); class_weight is a buffer converted by .double()."""
    g = _gen(3)
    module = CEDiceLoss("multiclass", class_weight=torch.tensor([1.0, 2.0, 0.5]), ignore_index=255).double()
    assert module.class_weight.dtype == torch.float64
    logits = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[[0, 1], [2, 255]], [[1, 1], [0, 2]]])
    assert torch.autograd.gradcheck(lambda x: module(x, targets), (logits,))

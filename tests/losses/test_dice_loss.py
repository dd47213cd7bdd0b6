"""Soft Dice loss: explicit modes and their shape errors, hand values, a loop reference, gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segdet.losses import DiceLoss, DiceMode, dice_loss


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_dice(probs: np.ndarray, target: np.ndarray, smooth: float, per_image: bool) -> np.ndarray:
    """1 − (2Σpp̂ + s)/(Σp + Σp̂ + s), written as plain loops over images and classes (N×C×L arrays)."""
    c = probs.shape[1]
    if not per_image:
        probs = probs.transpose(1, 0, 2).reshape(1, c, -1)
        target = target.transpose(1, 0, 2).reshape(1, c, -1)
    out = np.empty(probs.shape[:2])
    for i in range(probs.shape[0]):
        for k in range(c):
            inter = float(np.sum(probs[i, k] * target[i, k]))
            card = float(np.sum(probs[i, k]) + np.sum(target[i, k]))
            out[i, k] = 1 - (2 * inter + smooth) / (card + smooth)
    return out if per_image else out[0]


# ---------------------------------------------------------------- the mode argument


def test_mode_is_required():
    """No default mode: omitting it is a TypeError for both the module and the function."""
    with pytest.raises(TypeError):
        DiceLoss()
    with pytest.raises(TypeError):
        dice_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


@pytest.mark.parametrize("bad", ["multi-class", "MULTICLASS", "softmax", None, 2])
def test_unknown_mode_rejected_at_construction(bad):
    """Misspelt or non-string modes raise ValueError in the constructor, listing the valid ones."""
    with pytest.raises(ValueError, match="'binary', 'multiclass', 'multilabel'"):
        DiceLoss(bad)


def test_enum_and_string_modes_are_the_same():
    """DiceMode.MULTICLASS and 'multiclass' build the same loss."""
    assert DiceLoss(DiceMode.MULTICLASS).mode is DiceLoss("multiclass").mode is DiceMode.MULTICLASS
    assert "mode='multiclass'" in repr(DiceLoss("multiclass"))


@pytest.mark.parametrize(
    ("mode", "logits_shape", "targets", "fragments"),
    [
        # one-hot float targets given to multiclass: point to multilabel
        (
            "multiclass",
            (2, 3, 4, 4),
            torch.zeros(2, 3, 4, 4),
            ["int64 class-index targets N×H×W", "multilabel"],
        ),
        ("multiclass", (2, 3, 4, 4), torch.zeros(2, 4, 4), ["int64", "got logits (2, 3, 4, 4) float32"]),
        ("multiclass", (2, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), ["C >= 2"]),
        # several channels given to binary: point to the other modes
        ("binary", (2, 3, 4, 4), torch.zeros(2, 3, 4, 4), ["N×1×H×W", "multiclass", "multilabel"]),
        # missing channel dimension in binary targets
        ("binary", (2, 1, 4, 4), torch.zeros(2, 4, 4), ["unsqueeze(1)"]),
        # class indices given to multilabel
        ("multilabel", (2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), ["float targets N×C×H×W"]),
        ("multilabel", (2, 3, 4, 4), torch.zeros(2, 3, 4, 4, dtype=torch.long), ["mode='multiclass'"]),
    ],
)
def test_shape_errors_name_the_expected_layout(mode, logits_shape, targets, fragments):
    """Shapes inconsistent with the mode raise "mode='<mode>' expects ..., got ..." plus a hint."""
    with pytest.raises(ValueError, match=f"mode='{mode}' expects") as err:
        dice_loss(torch.zeros(logits_shape), targets, mode)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_argument_errors():
    """Bad smooth, eps, classes and out-of-range labels raise ValueError."""
    x, t = torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="smooth"):
        DiceLoss("multiclass", smooth=-1)
    with pytest.raises(ValueError, match="eps"):
        dice_loss(x, t, "multiclass", eps=0)
    with pytest.raises(ValueError, match="classes"):
        dice_loss(x, t, "multiclass", classes=[0, 3])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        dice_loss(x, torch.full((1, 2, 2), 3), "multiclass")


# ---------------------------------------------------------------- values


def test_binary_hand_values():
    """p̂ = σ(0) = 1/2 on 4 pixels, p = (1, 1, 0, 0): Σpp̂ = 1, Σp = Σp̂ = 2.

    smooth = 0: Dice = 2/4 → loss 0.5; smooth = 1: Dice = 3/5 → loss 0.4; log_loss: −log 0.6.
    """
    logits = torch.zeros(1, 1, 2, 2)
    targets = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert dice_loss(logits, targets, "binary", smooth=0).item() == pytest.approx(0.5)
    assert dice_loss(logits, targets, "binary").item() == pytest.approx(0.4)
    assert dice_loss(logits, targets, "binary", log_loss=True).item() == pytest.approx(-math.log(0.6))


def test_multiclass_hand_values_from_probabilities():
    """from_logits=False, 2 classes on 4 pixels, smooth = 0.

    class 1: p̂ = (.9, .8, .3, .1), p = (1, 1, 0, 0): Dice = 2·1.7/(2 + 2.1) = 3.4/4.1;
    class 0: p̂ = (.1, .2, .7, .9), p = (0, 0, 1, 1): Dice = 2·1.6/(2 + 1.9) = 3.2/3.9.
    """
    p1 = torch.tensor([0.9, 0.8, 0.3, 0.1], dtype=torch.float64)
    probs = torch.stack([1 - p1, p1]).view(1, 2, 4)
    targets = torch.tensor([[1, 1, 0, 0]])
    loss = dice_loss(probs, targets, "multiclass", smooth=0, from_logits=False, reduction="none")
    expected = torch.tensor([1 - 3.2 / 3.9, 1 - 3.4 / 4.1], dtype=torch.float64)
    torch.testing.assert_close(loss, expected)
    mean = dice_loss(probs, targets, "multiclass", smooth=0, from_logits=False)
    assert mean.item() == pytest.approx(expected.mean().item())


def test_per_image_versus_batch_hand_values():
    """Two images of 2 pixels, p̂ = 1/2 everywhere, targets (1, 1) and (0, 0), smooth = 1.

    per_image: image 1 Dice = (2·1 + 1)/(2 + 1 + 1) = 3/4, image 2 Dice = 1/(1 + 1) = 1/2 → mean loss 0.375.
    batch: Σpp̂ = 1, Σp = 2, Σp̂ = 2 → Dice = 3/5 → loss 0.4.
    """
    logits = torch.zeros(2, 1, 1, 2)
    targets = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(2, 1, 1, 2)
    per_image = dice_loss(logits, targets, "binary", per_image=True, reduction="none")
    torch.testing.assert_close(per_image, torch.tensor([[0.25], [0.5]]))
    assert dice_loss(logits, targets, "binary", per_image=True).item() == pytest.approx(0.375)
    assert dice_loss(logits, targets, "binary").item() == pytest.approx(0.4)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
def test_random_inputs_match_loop_reference(mode, smooth, per_image):
    """Random logits: per-class losses equal the loop reference on softmax/sigmoid probabilities (1e-6)."""
    g = _gen(1)
    c = 1 if mode == "binary" else 4
    logits = torch.randn(3, c, 5, 6, generator=g, dtype=torch.float64) * 2
    if mode == "multiclass":
        targets = torch.randint(0, c, (3, 5, 6), generator=g)
        probs, onehot = logits.softmax(1), F.one_hot(targets, c).permute(0, 3, 1, 2).double()
    else:
        targets = (torch.rand(3, c, 5, 6, generator=g) > 0.6).double()
        probs, onehot = logits.sigmoid(), targets
    ours = dice_loss(logits, targets, mode, smooth=smooth, per_image=per_image, reduction="none")
    ref = _reference_dice(
        probs.reshape(3, c, -1).numpy(), onehot.reshape(3, c, -1).numpy(), smooth, per_image
    )
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-6)
    assert dice_loss(logits, targets, mode, smooth=smooth, per_image=per_image).item() == pytest.approx(
        ref.mean(), rel=1e-6
    )


def test_any_number_of_spatial_dims():
    """N×C (no pixels) and N×C×D×H×W volumes follow the same formula as the loop reference (1e-6)."""
    g = _gen(2)
    for shape in [(6, 3), (2, 3, 2, 3, 4)]:
        logits = torch.randn(*shape, generator=g, dtype=torch.float64)
        targets = torch.randint(0, 3, shape[:1] + shape[2:], generator=g)
        onehot = F.one_hot(targets, 3).movedim(-1, 1).double()
        ours = dice_loss(logits, targets, "multiclass", reduction="none")
        n = shape[0]
        ref = _reference_dice(
            logits.softmax(1).reshape(n, 3, -1).numpy(), onehot.reshape(n, 3, -1).numpy(), 1.0, False
        )
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-6)


def test_multiclass_equals_multilabel_on_one_hot():
    """multiclass on indices equals multilabel on one-hot targets given the same softmax probabilities."""
    g = _gen(3)
    logits = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 3, (2, 4, 4), generator=g)
    onehot = F.one_hot(targets, 3).permute(0, 3, 1, 2).double()
    probs = logits.softmax(1)
    a = dice_loss(logits, targets, "multiclass")
    b = dice_loss(probs, onehot, "multilabel", from_logits=False)
    torch.testing.assert_close(a, b)


def test_ignore_index_equals_loss_on_kept_pixels():
    """Ignored pixels leave every sum: batch Dice equals Dice computed on the kept pixels only (1e-6)."""
    g = _gen(4)
    logits = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 3, (2, 5, 5), generator=g)
    ignored = torch.rand(2, 5, 5, generator=g) < 0.3
    targets[ignored] = 255
    ours = dice_loss(logits, targets, "multiclass", ignore_index=255, reduction="none")
    kept_logits = logits.permute(0, 2, 3, 1)[~ignored].T.unsqueeze(0)  # 1×C×M
    kept_targets = targets[~ignored].unsqueeze(0)  # 1×M
    torch.testing.assert_close(ours, dice_loss(kept_logits, kept_targets, "multiclass", reduction="none"))
    # Element-wise modes: a float target equal to ignore_index.
    ml_logits = torch.randn(2, 2, 4, generator=g, dtype=torch.float64)
    ml_targets = (torch.rand(2, 2, 4, generator=g) > 0.5).double()
    ml_targets[0, 1, 2] = -1.0
    ml = dice_loss(ml_logits, ml_targets, "multilabel", ignore_index=-1, reduction="none")
    probs = ml_logits.sigmoid() * (ml_targets != -1)
    ref = _reference_dice(probs.numpy(), ml_targets.clamp(min=0).numpy(), 1.0, False)
    np.testing.assert_allclose(ml.numpy(), ref, rtol=1e-6, atol=1e-6)


def test_classes_subset_selects_entries():
    """classes=[2, 0] returns those entries of the full per-class loss (softmax still over all classes)."""
    g = _gen(5)
    logits = torch.randn(2, 4, 3, 3, generator=g)
    targets = torch.randint(0, 4, (2, 3, 3), generator=g)
    full = dice_loss(logits, targets, "multiclass", reduction="none")
    sub = DiceLoss("multiclass", classes=[2, 0], reduction="none")(logits, targets)
    torch.testing.assert_close(sub, full[[2, 0]])


@pytest.mark.parametrize("per_image", [False, True])
def test_perfect_prediction_with_large_logits_is_zero(per_image):
    """A perfect one-hot prediction with large logits gives Dice loss 0 (to 1e-6) in every mode."""
    g = _gen(6)
    targets = torch.randint(0, 3, (2, 8, 8), generator=g)
    onehot = F.one_hot(targets, 3).permute(0, 3, 1, 2).float()
    logits = 1e4 * (2 * onehot - 1)
    logits.requires_grad_(True)
    loss = dice_loss(logits, targets, "multiclass", per_image=per_image)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(logits.grad).all()
    assert dice_loss(logits, onehot, "multilabel", per_image=per_image).item() == pytest.approx(0.0, abs=1e-6)
    binary = onehot[:, :1]
    assert dice_loss(1e4 * (2 * binary - 1), binary, "binary").item() == pytest.approx(0.0, abs=1e-6)


def test_empty_class_behaviour():
    """Hand values: class 2 is absent from target and prediction, class 1 only predicted.

    Class 2: Dice = s/s = 1 (loss 0) with smooth = 1, but loss 1 with smooth = 0.
    ignore_empty_classes drops classes 1 and 2 (no target pixel) from the mean: class 0 alone remains.
    """
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]).view(1, 3, 2)  # p̂ exactly one-hot, C=3
    targets = torch.tensor([[0, 0]])  # class 1 predicted but absent, class 2 absent everywhere
    none = dice_loss(probs, targets, "multiclass", from_logits=False, reduction="none")
    # class 0: (2·1 + 1)/(2 + 1 + 1) = 3/4; class 1: 1/(1 + 1) = 1/2; class 2: 1/1 = 1.
    torch.testing.assert_close(none, torch.tensor([0.25, 0.5, 0.0]))
    no_smooth = dice_loss(probs, targets, "multiclass", from_logits=False, smooth=0, reduction="none")
    torch.testing.assert_close(no_smooth, torch.tensor([1 - 2 / 3, 1.0, 1.0]))
    kept = dice_loss(probs, targets, "multiclass", from_logits=False, ignore_empty_classes=True)
    assert kept.item() == pytest.approx(0.25)  # only class 0 has target pixels
    kept_none = dice_loss(
        probs, targets, "multiclass", from_logits=False, ignore_empty_classes=True, reduction="none"
    )
    torch.testing.assert_close(kept_none, torch.tensor([0.25, 0.0, 0.0]))


def test_all_ignored_is_zero_with_gradient():
    """Every pixel ignored and ignore_empty_classes: 0 with a zero gradient, not NaN."""
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    loss = dice_loss(
        logits, torch.full((1, 3, 3), 255), "multiclass", ignore_index=255, ignore_empty_classes=True
    )
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
def test_gradcheck(mode):
    """gradcheck in float64, per image, with an ignored pixel, plain and log loss."""
    g = _gen(7)
    c = 1 if mode == "binary" else 3
    logits = torch.randn(2, c, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    if mode == "multiclass":
        targets = torch.randint(0, c, (2, 2, 3), generator=g)
        targets[0, 0, 0] = 255
    else:
        targets = torch.rand(2, c, 2, 3, generator=g, dtype=torch.float64)
        targets[0, 0, 0, 0] = 255.0
    for log_loss in (False, True):
        assert torch.autograd.gradcheck(
            lambda x, ll=log_loss: dice_loss(x, targets, mode, per_image=True, ignore_index=255, log_loss=ll),
            (logits,),
        )


def test_module_matches_function():
    """DiceLoss(...) gives the function's value with the same hyper-parameters."""
    g = _gen(8)
    logits, targets = torch.randn(2, 3, 4, 4, generator=g), torch.randint(0, 3, (2, 4, 4), generator=g)
    kwargs = dict(smooth=0.5, per_image=True, log_loss=True, reduction="sum")
    torch.testing.assert_close(
        DiceLoss("multiclass", **kwargs)(logits, targets), dice_loss(logits, targets, "multiclass", **kwargs)
    )


def test_uint8_targets_equal_int64():
    """multiclass accepts a uint8 label map; with ignore_index=255 the result equals the int64 one."""
    g = _gen(9)
    logits = torch.randn(1, 3, 4, 4, generator=g)
    targets = torch.randint(0, 3, (1, 4, 4), generator=g)
    targets[0, 0] = 255
    expected = dice_loss(logits, targets, "multiclass", ignore_index=255)
    torch.testing.assert_close(
        dice_loss(logits, targets.to(torch.uint8), "multiclass", ignore_index=255), expected
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_half_precision_equals_float32(dtype, mode):
    """Half-precision logits over 2×200×200 pixels (sums above fp16's largest value, 65504, and far
    beyond bf16's 8-bit mantissa): equal to the loss of the float32 copy of the same values to 1e-6.
    The sums used to be taken in the logits' dtype: NaN in fp16, a few 1e-3 off in bf16."""
    g = _gen(10)
    c = 1 if mode == "binary" else 3
    logits = (torch.randn(2, c, 200, 200, generator=g) + 3).to(dtype)
    if mode == "binary":
        targets = (torch.rand(2, 1, 200, 200, generator=g) > 0.05).to(dtype)
    else:
        targets = torch.where(torch.rand(2, 200, 200, generator=g) > 0.05, 0, 1)
        logits[:, 0] += 3
    ours = dice_loss(logits, targets, mode)
    ref = dice_loss(logits.float(), targets if mode == "multiclass" else targets.float(), mode)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)

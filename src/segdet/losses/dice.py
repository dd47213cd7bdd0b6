"""Soft Dice loss (Milletari et al. 2016, "V-Net"; Sudre et al. 2017) in three explicit modes.

For each class ``c``, with target ``p`` (one-hot, 0/1 or soft) and predicted probability ``p̂``, summed
over the pixels of one image (``per_image=True``) or of the whole batch (``per_image=False``):

    ``Dice_c = (2 · Σ p · p̂ + s) / (Σ p + Σ p̂ + s)``,   ``DL_c = 1 − Dice_c``
    (or ``DL_c = −log Dice_c`` with ``log_loss=True``)

where ``s = smooth`` is added to numerator and denominator. ``reduction`` then combines the per-class
(or per-image-and-class) losses.

The mode is a required argument, and the shapes must match it exactly; nothing is guessed or reshaped:

========== ====================== ================================= ==========================
mode       logits                 targets                           ``p̂``
========== ====================== ================================= ==========================
binary     ``N×1×H×W``            float ``N×1×H×W`` (0/1 or soft)   ``σ(x)``
multiclass ``N×C×H×W`` (C ≥ 2)    int64 class indices ``N×H×W``     ``softmax(x)`` over C
multilabel ``N×C×H×W``            float ``N×C×H×W`` (0/1 or soft)   ``σ(x)`` per channel
========== ====================== ================================= ==========================

(``H×W`` stands for any number of spatial dimensions, including none or three.)

Empty classes: a class absent from both target and prediction has ``Dice = s / s = 1`` (loss 0) when
``smooth > 0``, and ``Dice = 0 / eps = 0`` (loss 1, with no gradient) when ``smooth = 0``. A class absent
from the target but predicted gets ``Dice = s / (Σ p̂ + s)``, which pushes its predictions down.
``ignore_empty_classes=True`` instead drops the classes without target pixels from the mean.

Defaults: ``per_image=False`` (sums over the whole batch), because per-image Dice is noisy and biased
when a class covers a few pixels or none in an image; the batch Dice is the one of V-Net and the default
of segmentation_models_pytorch. ``smooth=1.0``, negligible against the pixel counts of a batch yet enough
to make empty classes well defined.

Half-precision (fp16 / bf16) inputs are upcast to float32 before the softmax or sigmoid, and the loss is
float32: an fp16 sum over more than 65504 pixels is inf (the loss was NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdet.losses._inputs import (
    check_class_indices,
    check_non_negative,
    float32_if_half,
    shape_str,
    valid_mask,
)
from segdet.losses._reduction import check_reduction, reduce_loss


class DiceMode(str, Enum):
    """How Dice reads its inputs; see the table in :mod:`segdet.losses.dice`."""

    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"


_EXPECTED = {
    DiceMode.BINARY: "logits N×1×H×W and float targets N×1×H×W",
    DiceMode.MULTICLASS: "logits N×C×H×W (C >= 2) and int64 class-index targets N×H×W",
    DiceMode.MULTILABEL: "logits N×C×H×W and float targets N×C×H×W (one channel per label)",
}


def parse_dice_mode(mode: DiceMode | str) -> DiceMode:
    """``DiceMode`` from a ``DiceMode`` or its string value; ValueError for anything else."""
    try:
        return DiceMode(mode)
    except ValueError:
        raise ValueError(
            f"Dice mode must be one of 'binary', 'multiclass', 'multilabel' (or DiceMode.BINARY, ...), "
            f"got {mode!r}"
        ) from None


def _shape_hint(logits: Tensor, targets: Tensor, mode: DiceMode) -> str:
    """A pointer to the mode (or reshape) that the given tensors suggest."""
    if mode is DiceMode.BINARY and logits.dim() >= 2 and logits.shape[1] > 1:
        return "; for C > 1 channels use mode='multiclass' (exclusive classes) or 'multilabel'"
    if mode is DiceMode.BINARY and targets.shape == logits.shape[:1] + logits.shape[2:]:
        return "; add the channel dimension with targets.unsqueeze(1)"
    if mode is DiceMode.MULTICLASS and targets.shape == logits.shape:
        return "; targets shaped like the logits are one-hot or multi-label: use mode='multilabel'"
    if mode is not DiceMode.MULTICLASS and not targets.is_floating_point():
        return "; integer targets are class indices: use mode='multiclass', or pass targets.float()"
    return ""


def check_dice_inputs(logits: Tensor, targets: Tensor, mode: DiceMode) -> None:
    """Raise ValueError unless ``logits`` and ``targets`` have the layout of ``mode``."""
    ok = logits.is_floating_point() and logits.dim() >= 2
    if ok and mode is DiceMode.MULTICLASS:
        ok = (
            logits.shape[1] >= 2
            and not targets.is_floating_point()
            and targets.dtype != torch.bool
            and targets.shape == logits.shape[:1] + logits.shape[2:]
        )
    elif ok:
        ok = targets.is_floating_point() and targets.shape == logits.shape
        ok = ok and (mode is DiceMode.MULTILABEL or logits.shape[1] == 1)
    if not ok:
        raise ValueError(
            f"mode='{mode.value}' expects {_EXPECTED[mode]}, got logits {shape_str(logits)} "
            f"and targets {shape_str(targets)}{_shape_hint(logits, targets, mode)}"
        )


def _probabilities_and_targets(
    logits: Tensor, targets: Tensor, mode: DiceMode, from_logits: bool, ignore_index: float | None
) -> tuple[Tensor, Tensor]:
    """Probabilities and target maps, both ``N×C×L`` (L = flattened pixels), ignored pixels zeroed."""
    n, c = logits.shape[:2]
    if mode is DiceMode.MULTICLASS:
        # Before comparing with ignore_index: -100 would wrap around in a uint8 map. one_hot needs int64.
        targets = targets.long()
    valid = valid_mask(targets, ignore_index)
    if mode is DiceMode.MULTICLASS:
        check_class_indices(targets, valid, c, ignore_index, "dice_loss")
        probs = logits.softmax(dim=1) if from_logits else logits
        safe = targets if valid is None else torch.where(valid, targets, torch.zeros_like(targets))
        target_map = F.one_hot(safe.reshape(n, -1), c).permute(0, 2, 1).to(probs.dtype)
        valid = None if valid is None else valid.reshape(n, 1, -1)
    else:
        probs = logits.sigmoid() if from_logits else logits
        target_map = targets.reshape(n, c, -1)
        valid = None if valid is None else valid.reshape(n, c, -1)
    probs = probs.reshape(n, c, -1)
    if valid is not None:
        probs = probs * valid
        target_map = torch.where(valid, target_map, torch.zeros_like(target_map))
    return probs, target_map


def dice_loss(
    logits: Tensor,
    targets: Tensor,
    mode: DiceMode | str,
    *,
    smooth: float = 1.0,
    eps: float = 1e-7,
    from_logits: bool = True,
    ignore_index: float | None = None,
    classes: Sequence[int] | None = None,
    per_image: bool = False,
    ignore_empty_classes: bool = False,
    log_loss: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Soft Dice loss ``DL_c = 1 − (2Σ p p̂ + s) / (Σ p + Σ p̂ + s)`` per class, reduced over classes.

    See the module docstring for the modes, their shapes and the empty-class behaviour.

    Args:
        logits: see the mode table; probabilities instead when ``from_logits=False``.
        targets: see the mode table.
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"`` (or a :class:`DiceMode`); required.
        smooth: ``s ≥ 0`` added to numerator and denominator.
        eps: lower bound of the denominator (and of Dice under ``log_loss``), only to avoid 0/0.
        from_logits: apply softmax (multiclass) or sigmoid (binary, multilabel) to ``logits``.
        ignore_index: target value of pixels excluded from every sum (both ``p`` and ``p̂``); for the
            element-wise modes a float target equal to it.
        classes: indices of the classes that enter the loss (the softmax still covers all of them).
        per_image: sum over each image and average the ``N×C`` Dice terms (True), or sum over the whole
            batch (False, the default, see the module docstring).
        ignore_empty_classes: drop from the mean the classes (per image if ``per_image``) that have no
            target pixel; they are 0 in ``reduction="none"``.
        log_loss: use ``−log(Dice)`` instead of ``1 − Dice``.
        reduction: ``"mean"`` over the kept classes (0 if none), ``"sum"``, or ``"none"``: a ``C'``
            vector (``N×C'`` if ``per_image``), ``C'`` the number of selected classes.
    """
    mode = parse_dice_mode(mode)
    check_reduction(reduction)
    check_non_negative(smooth, "smooth", "dice_loss")
    if not eps > 0:
        raise ValueError(f"dice_loss: eps must be > 0, got {eps!r}")
    check_dice_inputs(logits, targets, mode)
    # In float32: fp16 sums over more than 65504 pixels overflow, bf16 ones keep ~3 significant digits.
    logits, targets = float32_if_half(logits), float32_if_half(targets)
    probs, target_map = _probabilities_and_targets(logits, targets, mode, from_logits, ignore_index)
    if classes is not None:
        num_classes = logits.shape[1]
        classes = list(classes)
        if not classes or any(not 0 <= k < num_classes for k in classes):
            raise ValueError(
                f"dice_loss: classes must be a non-empty list of indices in [0, {num_classes}), got {classes}"
            )
        probs, target_map = probs[:, classes], target_map[:, classes]

    dims = (2,) if per_image else (0, 2)
    intersection = (probs * target_map).sum(dims)
    cardinality = (probs + target_map).sum(dims)
    dice = (2 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)
    loss = -torch.log(dice.clamp_min(eps)) if log_loss else 1 - dice
    if not ignore_empty_classes:
        return reduce_loss(loss, reduction)
    keep = target_map.sum(dims) > 0
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    return reduce_loss(loss, reduction, keep.sum())


class DiceLoss(nn.Module):
    """Module form of :func:`dice_loss`; ``mode`` is required and checked here, at construction."""

    def __init__(
        self,
        mode: DiceMode | str,
        *,
        smooth: float = 1.0,
        eps: float = 1e-7,
        from_logits: bool = True,
        ignore_index: float | None = None,
        classes: Sequence[int] | None = None,
        per_image: bool = False,
        ignore_empty_classes: bool = False,
        log_loss: bool = False,
        reduction: str = "mean",
    ):
        super().__init__()
        self.mode = parse_dice_mode(mode)
        check_non_negative(smooth, "smooth", "DiceLoss")
        self.smooth, self.eps = smooth, eps
        self.from_logits = from_logits
        self.ignore_index = ignore_index
        self.classes = None if classes is None else list(classes)
        self.per_image = per_image
        self.ignore_empty_classes = ignore_empty_classes
        self.log_loss = log_loss
        self.reduction = check_reduction(reduction)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return dice_loss(
            logits,
            targets,
            self.mode,
            smooth=self.smooth,
            eps=self.eps,
            from_logits=self.from_logits,
            ignore_index=self.ignore_index,
            classes=self.classes,
            per_image=self.per_image,
            ignore_empty_classes=self.ignore_empty_classes,
            log_loss=self.log_loss,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return f"mode='{self.mode.value}', smooth={self.smooth}, per_image={self.per_image}"

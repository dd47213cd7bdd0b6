"""Cross-entropy + soft Dice, the usual segmentation objective (e.g. nnU-Net, Isensee et al. 2021).

    ``L = λ_ce · CE + λ_dice · DL``

CE is the pixel-wise term (well-conditioned gradients early in training), Dice the region term (robust
to class imbalance). The CE form follows the Dice ``mode``: multi-class cross-entropy for
``"multiclass"``, binary cross-entropy (one sigmoid per channel) for ``"binary"`` and ``"multilabel"``.
The result is always a scalar: CE is the mean over non-ignored pixels, Dice the mean over classes, and
their unreduced forms have different shapes, so ``reduction="none"`` has no meaning here.
"""

from __future__ import annotations

from torch import Tensor, nn

from segdet.losses._inputs import check_non_negative
from segdet.losses.cross_entropy import binary_cross_entropy_loss, cross_entropy_loss
from segdet.losses.dice import DiceMode, check_dice_inputs, dice_loss, parse_dice_mode


def _check_term_weights(ce_weight: float, dice_weight: float) -> None:
    check_non_negative(ce_weight, "ce_weight", "ce_dice_loss")
    check_non_negative(dice_weight, "dice_weight", "ce_dice_loss")
    if ce_weight == 0 and dice_weight == 0:
        raise ValueError("ce_dice_loss: ce_weight and dice_weight are both 0")


def ce_dice_loss(
    logits: Tensor,
    targets: Tensor,
    mode: DiceMode | str,
    *,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    class_weight: Tensor | None = None,
    ignore_index: float | None = None,
    smooth: float = 1.0,
    per_image: bool = False,
    ignore_empty_classes: bool = False,
    log_loss: bool = False,
) -> Tensor:
    """``ce_weight · CE + dice_weight · DL`` from logits, as a scalar.

    Args:
        logits, targets, mode: as in :func:`~segdet.losses.dice.dice_loss` (logits, never probabilities).
        ce_weight, dice_weight: λ_ce, λ_dice ≥ 0, not both 0.
        class_weight: 1-D float tensor of C per-class weights for the CE term only (the ``weight`` of
            multi-class CE; a per-channel rescaling of the binary CE in the element-wise modes).
        ignore_index: target value excluded from both terms (None: none).
        smooth, per_image, ignore_empty_classes, log_loss: of the Dice term, see ``dice_loss``.
    """
    mode = parse_dice_mode(mode)
    _check_term_weights(ce_weight, dice_weight)
    check_dice_inputs(logits, targets, mode)
    if mode is DiceMode.MULTICLASS:
        ce = cross_entropy_loss(logits, targets, weight=class_weight, ignore_index=ignore_index)
    else:
        weight = None
        if class_weight is not None:
            if class_weight.dim() != 1 or class_weight.numel() != logits.shape[1]:
                raise ValueError(
                    f"ce_dice_loss: class_weight must have one entry per channel ({logits.shape[1]}), "
                    f"got shape {tuple(class_weight.shape)}"
                )
            weight = class_weight.view(-1, *([1] * (logits.dim() - 2)))
        ce = binary_cross_entropy_loss(logits, targets, weight=weight, ignore_index=ignore_index)
    dice = dice_loss(
        logits,
        targets,
        mode,
        smooth=smooth,
        ignore_index=ignore_index,
        per_image=per_image,
        ignore_empty_classes=ignore_empty_classes,
        log_loss=log_loss,
    )
    return ce_weight * ce + dice_weight * dice


class CEDiceLoss(nn.Module):
    """Module form of :func:`ce_dice_loss`; ``mode`` is required and checked at construction."""

    def __init__(
        self,
        mode: DiceMode | str,
        *,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        class_weight: Tensor | None = None,
        ignore_index: float | None = None,
        smooth: float = 1.0,
        per_image: bool = False,
        ignore_empty_classes: bool = False,
        log_loss: bool = False,
    ):
        super().__init__()
        self.mode = parse_dice_mode(mode)
        _check_term_weights(ce_weight, dice_weight)
        check_non_negative(smooth, "smooth", "CEDiceLoss")
        self.ce_weight, self.dice_weight = ce_weight, dice_weight
        self.register_buffer("class_weight", class_weight)
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.per_image = per_image
        self.ignore_empty_classes = ignore_empty_classes
        self.log_loss = log_loss

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return ce_dice_loss(
            logits,
            targets,
            self.mode,
            ce_weight=self.ce_weight,
            dice_weight=self.dice_weight,
            class_weight=self.class_weight,
            ignore_index=self.ignore_index,
            smooth=self.smooth,
            per_image=self.per_image,
            ignore_empty_classes=self.ignore_empty_classes,
            log_loss=self.log_loss,
        )

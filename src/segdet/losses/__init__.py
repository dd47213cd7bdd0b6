"""segdet.losses: segmentation and detection losses, each a function ``xxx_loss`` and a module ``XxxLoss``.

Every loss takes logits (never probabilities, except Dice with ``from_logits=False``), is stable at
extreme logits, and offers ``reduction`` in ``"none"``, ``"mean"``, ``"sum"``. A mean over nothing
(everything ignored, no box) is 0 with a gradient, where PyTorch gives NaN.

* cross-entropy: binary (plain / weighted WCE / balanced), multi-class (per-class weights, label smoothing)
* focal: sigmoid (binary, multi-label) and softmax (multi-class)
* Dice: binary, multi-class, multi-label (explicit, required ``mode``); CE + Dice
* boxes: smooth L1, L1, IoU, GIoU
"""

from segdet.losses.box_losses import (
    GIoULoss,
    IoULoss,
    L1Loss,
    SmoothL1Loss,
    giou_loss,
    iou_loss,
    l1_loss,
    smooth_l1_loss,
)
from segdet.losses.combined import CEDiceLoss, ce_dice_loss
from segdet.losses.cross_entropy import (
    BalancedBinaryCrossEntropyLoss,
    BinaryCrossEntropyLoss,
    CrossEntropyLoss,
    WeightedBinaryCrossEntropyLoss,
    balanced_binary_cross_entropy_loss,
    binary_cross_entropy_loss,
    cross_entropy_loss,
    weighted_binary_cross_entropy_loss,
)
from segdet.losses.dice import DiceLoss, DiceMode, dice_loss
from segdet.losses.focal import SigmoidFocalLoss, SoftmaxFocalLoss, sigmoid_focal_loss, softmax_focal_loss

__all__ = [
    "BalancedBinaryCrossEntropyLoss",
    "BinaryCrossEntropyLoss",
    "CEDiceLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "DiceMode",
    "GIoULoss",
    "IoULoss",
    "L1Loss",
    "SigmoidFocalLoss",
    "SmoothL1Loss",
    "SoftmaxFocalLoss",
    "WeightedBinaryCrossEntropyLoss",
    "balanced_binary_cross_entropy_loss",
    "binary_cross_entropy_loss",
    "ce_dice_loss",
    "cross_entropy_loss",
    "dice_loss",
    "giou_loss",
    "iou_loss",
    "l1_loss",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "softmax_focal_loss",
    "weighted_binary_cross_entropy_loss",
]

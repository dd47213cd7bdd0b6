"""Streaming confusion matrix for semantic segmentation and the metrics derived from it.

One ``C x C`` matrix of pixel counts (rows: ground truth, columns: prediction) is all that is needed for
every usual segmentation score, so the matrix is what is accumulated over batches, merged across
workers (by addition) and across DDP processes (by all-reduce); the scores are computed once at the end.

With ``TP_c = M[c, c]``, ``FP_c = sum_r M[r, c] - TP_c`` and ``FN_c = sum_k M[c, k] - TP_c``:

* IoU (Jaccard index)      ``TP / (TP + FP + FN)``
* Dice (F1)                ``2 TP / (2 TP + FP + FN)``
* pixel accuracy           ``sum_c TP_c / sum M``
* class accuracy (recall)  ``TP / (TP + FN)``
* frequency-weighted IoU   ``sum_c f_c IoU_c`` with ``f_c = (TP_c + FN_c) / sum M``

These are the definitions of Long et al., "Fully Convolutional Networks for Semantic Segmentation"
(CVPR 2015, section 5) and of the Pascal VOC / Cityscapes benchmarks. A class absent from both the
prediction and the truth (``TP + FP + FN == 0``) has an undefined IoU and Dice: it is reported as NaN
and left out of the means, as in mmsegmentation and torchmetrics' ``MeanIoU``. A class with no truth
but with predicted pixels has IoU 0 (its false positives are real errors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SegMetrics:
    """Scores computed from one confusion matrix. Per-class arrays have one float64 entry per class,
    NaN where the score is undefined; the means ignore NaN (and are NaN when every class is)."""

    iou: np.ndarray
    dice: np.ndarray
    class_accuracy: np.ndarray
    pixel_accuracy: float
    mean_iou: float
    mean_dice: float
    mean_class_accuracy: float
    fw_iou: float

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict:
        """JSON-ready form: the means and, per class, ``iou``, ``dice`` and ``accuracy``.

        NaN becomes ``None`` (JSON has no NaN). Classes are keyed by ``class_names`` (default: their
        index as a string).
        """
        names = [str(i) for i in range(len(self.iou))] if class_names is None else list(class_names)
        if len(names) != len(self.iou):
            raise ValueError(f"{len(names)} class names for {len(self.iou)} classes")
        return {
            "pixel_accuracy": _json_float(self.pixel_accuracy),
            "mean_iou": _json_float(self.mean_iou),
            "mean_dice": _json_float(self.mean_dice),
            "mean_class_accuracy": _json_float(self.mean_class_accuracy),
            "fw_iou": _json_float(self.fw_iou),
            "per_class": {
                name: {
                    "iou": _json_float(self.iou[i]),
                    "dice": _json_float(self.dice[i]),
                    "accuracy": _json_float(self.class_accuracy[i]),
                }
                for i, name in enumerate(names)
            },
        }


def _json_float(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` elementwise, NaN where ``den == 0`` (without a division warning)."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(x: np.ndarray) -> float:
    finite = x[~np.isnan(x)]
    return float(finite.mean()) if finite.size else math.nan


class ConfusionMatrix:
    """Accumulates a ``num_classes x num_classes`` int64 confusion matrix, batch by batch.

    ``matrix[t, p]`` counts the pixels of true class ``t`` predicted as ``p``. Pixels whose target is
    ``ignore_index`` are not counted (``None``: no value is ignored). The matrix lives on ``device``
    (default CPU); each batch is counted on its own device with a single ``torch.bincount`` and the
    ``C x C`` result is added to the matrix, so evaluating on the GPU costs no pixel transfer.

    Example::

        cm = ConfusionMatrix(21)
        for images, targets in loader:
            cm.update(model(images), targets)  # logits N x C x H x W, targets N x H x W
        cm.all_reduce()  # under DDP
        print(cm.compute().mean_iou)
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, device: torch.device | str | None = None
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self._matrix = torch.zeros(
            (self.num_classes, self.num_classes), dtype=torch.int64, device=device or "cpu"
        )

    @property
    def device(self) -> torch.device:
        return self._matrix.device

    @property
    def matrix(self) -> torch.Tensor:
        """The ``C x C`` int64 counts (rows: truth, columns: prediction). A view: do not modify."""
        return self._matrix

    def reset(self) -> None:
        self._matrix.zero_()

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Count one batch.

        ``target`` is an integer array of any shape. ``pred`` is either class indices of the same shape,
        or floating-point scores (logits or probabilities) with the class dimension at index 1
        (``N x C x ...`` for a target ``N x ...``), reduced here by argmax over that dimension.

        Raises ``ValueError`` naming the first offending value when a target (other than
        ``ignore_index``) or a prediction at a counted pixel lies outside ``[0, num_classes)``.
        """
        pred = torch.as_tensor(pred)
        target = torch.as_tensor(target)
        if pred.is_floating_point():
            if pred.dim() != target.dim() + 1:
                raise ValueError(
                    f"floating-point pred of shape {tuple(pred.shape)} must be scores N x C x ... for a "
                    f"target of shape {tuple(target.shape)}; pass integer class indices otherwise"
                )
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        target = target.to(device=pred.device, dtype=torch.int64).reshape(-1)
        pred = pred.to(torch.int64).reshape(-1)
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            target, pred = target[keep], pred[keep]

        c = self.num_classes
        for name, values in (("target", target), ("pred", pred)):
            bad = (values < 0) | (values >= c)
            if bool(bad.any()):
                value = int(values[bad][0])
                raise ValueError(f"{name} value {value} is outside [0, {c}) and is not the ignore value")

        counts = torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)
        self._matrix += counts.to(self._matrix.device)

    def _check_compatible(self, other: ConfusionMatrix) -> None:
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"cannot merge a ConfusionMatrix with {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {self.num_classes}-class and {other.num_classes}-class matrices")

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts to this matrix (in place) and return ``self``."""
        self._check_compatible(other)
        self._matrix += other._matrix.to(self._matrix.device)
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self._check_compatible(other)
        out = ConfusionMatrix(self.num_classes, self.ignore_index, self.device)
        return out.merge(self).merge(other)

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def all_reduce(self, group: object | None = None) -> ConfusionMatrix:
        """Sum the matrices of every process of ``group`` (default: the world) in place; a no-op when
        ``torch.distributed`` is not initialised. With the NCCL backend the matrix must be on the
        process's CUDA device (create it with ``device=``). Returns ``self``."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self._matrix, op=dist.ReduceOp.SUM, group=group)
        return self

    def compute(self, scored: Sequence[int] | None = None) -> SegMetrics:
        """The scores of the counts so far (formulas in the module docstring).

        ``scored``: the classes the means average over; default every class but ``ignore_index``. A
        model may have outputs that the set never scores: an ignore class kept in the middle of the
        class list, or one it was trained with past the set's classes. Their pixels are still errors
        of the true class (its false negatives), but their own IoU (0 when predicted, NaN when not) is
        no class of the set, so it stays out of the means, as in mmsegmentation, whose ignored label is
        no class at all. The per-class arrays keep every class.
        """
        if scored is None:
            scored = [c for c in range(self.num_classes) if c != self.ignore_index]
        scored = np.asarray(list(scored), dtype=np.int64)
        if scored.size and (scored.min() < 0 or scored.max() >= self.num_classes):
            raise ValueError(f"scored classes {scored.tolist()} outside 0..{self.num_classes - 1}")
        m = self._matrix.detach().cpu().numpy().astype(np.float64)
        tp = np.diag(m)
        truth = m.sum(axis=1)  # TP + FN
        predicted = m.sum(axis=0)  # TP + FP
        union = truth + predicted - tp  # TP + FP + FN
        total = m.sum()

        iou = _safe_ratio(tp, union)
        dice = _safe_ratio(2 * tp, truth + predicted)
        class_accuracy = _safe_ratio(tp, truth)
        pixel_accuracy = float(tp.sum() / total) if total > 0 else math.nan
        # Classes with truth always have union > 0, so their IoU is defined; their frequencies sum to 1.
        has_truth = truth > 0
        fw_iou = float((truth[has_truth] / total * iou[has_truth]).sum()) if total > 0 else math.nan
        return SegMetrics(
            iou=iou,
            dice=dice,
            class_accuracy=class_accuracy,
            pixel_accuracy=pixel_accuracy,
            mean_iou=_nanmean(iou[scored]),
            mean_dice=_nanmean(dice[scored]),
            mean_class_accuracy=_nanmean(class_accuracy[scored]),
            fw_iou=fw_iou,
        )

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"pixels={int(self._matrix.sum())})"
        )

"""Non-maximum suppression: hard NMS (torchvision's kernels) and Soft-NMS (our own, vectorised).

Hard NMS keeps the highest-scoring box and discards every other box whose IoU with it is
``> iou_threshold``, repeatedly. The CPU/CUDA kernels are torchvision's; these wrappers only fix the
interface and document it.

Soft-NMS (Bodla et al., "Soft-NMS -- Improving Object Detection With One Line of Code", ICCV 2017)
does not discard the neighbours of a selected box M but lowers their scores by a decay f(IoU(M, b_i)):

* linear:   ``s_i <- s_i * (1 - IoU)``            if ``IoU >= N_t``, unchanged otherwise (paper eq. 2);
* gaussian: ``s_i <- s_i * exp(-IoU^2 / sigma)``   for every remaining box (paper eq. 3; N_t unused).

then selects the highest *rescored* box next. Boxes whose score falls below ``score_threshold`` are
dropped (the pruning step of the authors' implementation; it does not change which boxes come first,
because scores only decrease).

Relation to hard NMS: replacing the linear decay ``1 - IoU`` by 0 gives hard NMS with the paper's
``IoU >= N_t`` rule. The same happens when ``score_threshold`` is above ``max(s) * (1 - N_t)`` but not
above any initial score: every decayed box then falls below the threshold and is dropped, every other
box keeps its score, and ``soft_nms(..., method="linear")`` returns exactly the boxes of hard NMS, in the
same order (up to IoU values exactly equal to the threshold, which torchvision's ``nms`` keeps).
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor

from segdet.ops.boxes import box_iou_pairwise

SOFT_NMS_METHODS = ("linear", "gaussian")


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Hard NMS (``torchvision.ops.nms``).

    Args:
        boxes: ``[N, 4]`` xyxy boxes.
        scores: ``[N]`` scores.
        iou_threshold: boxes with ``IoU > iou_threshold`` to a kept, higher-scoring box are discarded.

    Returns:
        int64 ``[K]`` indices of the kept boxes, by decreasing score.
    """
    return torchvision.ops.nms(boxes, scores, iou_threshold)


@torch.library.custom_op("segdet::nms", mutates_args=())
def exportable_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """:func:`nms` as the op ``segdet::nms``, which ``segdet export`` traces: torchvision's own
    ``torchvision::nms`` declares to the tracer that it keeps at least 2 boxes (its fake kernel's
    ``create_unbacked_symint``), so an exported graph would assert that at run time and fail on an image
    with 0 or 1 detection. ONNX: ``NonMaxSuppression`` (:func:`onnx_translations`)."""
    return torchvision.ops.nms(boxes, scores, iou_threshold)


@exportable_nms.register_fake
def _(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    kept = torch.library.get_ctx().new_dynamic_size()  # any count from 0
    return boxes.new_empty(kept, dtype=torch.int64)


def onnx_translations() -> dict:
    """``torch.onnx.export``'s ``custom_translation_table`` for segdet's ops: ``segdet::nms`` as
    onnxscript's translation of ``torchvision::nms`` (one ``NonMaxSuppression``)."""
    from onnxscript.function_libs.torch_lib.ops.vision import torchvision_nms

    return {torch.ops.segdet.nms.default: torchvision_nms}


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-wise hard NMS (``torchvision.ops.batched_nms``): boxes with different ``idxs`` never
    suppress each other.

    Args:
        boxes: ``[N, 4]`` xyxy boxes.
        scores: ``[N]`` scores.
        idxs: ``[N]`` integer class (or image, or image×class) of each box.
        iou_threshold: as in :func:`nms`.

    Returns:
        int64 ``[K]`` indices of the kept boxes, by decreasing score.

    While ``torch.export`` traces (``segdet export``), one ``nms`` call on boxes shifted apart per group
    (torchvision's coordinate trick, without its branches on the number of boxes, which a traced graph
    cannot take): the same selection, the exported graph's one NonMaxSuppression.
    """
    if torch.compiler.is_exporting():
        largest = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()  # 0 when there are no boxes
        shifts = idxs.to(boxes.dtype) * (largest + 1)
        return exportable_nms(boxes + shifts[:, None], scores, iou_threshold)
    return torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)


#: :func:`batched_nms_first` runs NMS on the ``PREFIX_FACTOR * count`` best boxes first.
PREFIX_FACTOR = 16


def batched_nms_first(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, count: int
) -> Tensor:
    """The first ``count`` (at least) of the indices :func:`batched_nms` keeps, by decreasing score,
    computed on the best-scoring boxes only when they suffice.

    Greedy NMS decides each box from the boxes of its group that score higher: so ``batched_nms`` of the
    boxes scoring at least some ``t`` keeps exactly the boxes that ``batched_nms`` of all keeps above
    ``t``, in the same order. With a cap of ``count`` detections, once such a prefix keeps ``count``
    boxes the rest cannot enter the result. The prefix is the ``PREFIX_FACTOR * count`` best boxes (and
    every box tied with the last of them), grown 4x until it keeps ``count`` or holds every box. Boxes
    of equal score may come in another order than one call over all boxes gives (a different sort of
    ties; either order is NMS's). EfficientDet's 5000 candidates of one Penn-Fudan image: the 100th kept
    box is the 1050th-1430th best, NMS 12.5 ms over all, ~3 ms over the first 1600.

    Args: as :func:`batched_nms`; ``count``: how many kept boxes are needed (e.g. the per-image cap).
    """
    size = PREFIX_FACTOR * count
    while 0 < size < scores.shape[0]:
        cut = scores.topk(size).values[-1]
        prefix = torch.nonzero(scores >= cut).flatten()
        keep = batched_nms(boxes[prefix], scores[prefix], idxs[prefix], iou_threshold)
        if keep.shape[0] >= count:
            return prefix[keep]
        size *= 4
    return batched_nms(boxes, scores, idxs, iou_threshold)


def _soft_nms_decay(iou: Tensor, method: str, iou_threshold: float, sigma: float) -> Tensor:
    """The rescoring factor f(IoU) of Soft-NMS (paper eq. 2 and 3)."""
    if method == "linear":
        return torch.where(iou >= iou_threshold, 1.0 - iou, torch.ones_like(iou))
    return torch.exp(-(iou * iou) / sigma)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    *,
    method: str = "linear",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    idxs: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al., ICCV 2017), optionally class-wise; see the module docstring for the rule.

    Each step selects, in every class at once, the alive box of highest current score, then rescores
    all alive boxes of that class with one IoU row against it: one argmax and one IoU row per selected
    box, all on the boxes' device; the Python loop runs over steps (at most the largest number of boxes
    kept in one class), never over pairs. Boxes of different ``idxs`` never affect each other: the IoU
    row is restricted to the selected box's class (an exact mask rather than torchvision's coordinate
    offset trick, which loses float precision for many classes and assumes non-negative coordinates).

    Args:
        boxes: ``[N, 4]`` xyxy boxes.
        scores: ``[N]`` scores (not modified).
        method: ``"linear"`` or ``"gaussian"``.
        iou_threshold: ``N_t`` of the linear decay (unused by ``"gaussian"``).
        sigma: ``sigma`` of the Gaussian decay (unused by ``"linear"``).
        score_threshold: boxes whose (rescored) score is below it are dropped; boxes already below it
            are never selected.
        idxs: ``[N]`` integer class of each box; ``None``: all one class.

    Returns:
        ``(keep, new_scores)``: int64 ``[K]`` indices of the kept boxes by decreasing rescored score,
        and ``[K]`` their rescored scores (each box's score when it was selected), in ``scores``' dtype.
    """
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"soft_nms method must be one of {SOFT_NMS_METHODS}, got {method!r}")
    if method == "gaussian" and sigma <= 0:
        raise ValueError(f"soft_nms sigma must be positive, got {sigma}")
    num = boxes.shape[0]
    device = boxes.device
    if num == 0:
        return torch.empty(0, dtype=torch.int64, device=device), scores.new_empty(0)

    # Half-precision scores lose the small decays; rescore in at least float32.
    work = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores.clone()
    if idxs is None:
        groups = torch.zeros(num, dtype=torch.int64, device=device)
    else:
        groups = torch.unique(idxs, return_inverse=True)[1].to(device)
    num_groups = int(groups.max()) + 1
    positions = torch.arange(num, device=device)
    no_box = torch.full((num,), num, dtype=torch.int64, device=device)
    minus_inf = torch.full_like(work, float("-inf"))

    alive = work >= score_threshold
    selected_score = torch.zeros_like(work)
    selected_step = torch.full((num,), -1, dtype=torch.int64, device=device)
    for step in range(num):
        current = torch.where(alive, work, minus_inf)
        best = torch.full((num_groups,), float("-inf"), dtype=work.dtype, device=device)
        best = best.scatter_reduce(0, groups, current, reduce="amax")
        is_best = alive & (current == best[groups])
        # One winner per class: among tied best scores, the lowest index (deterministic on any device).
        winner = torch.full((num_groups,), num, dtype=torch.int64, device=device)
        winner = winner.scatter_reduce(0, groups, torch.where(is_best, positions, no_box), reduce="amin")
        if not bool((winner < num).any()):  # the one host sync per step
            break
        is_winner = positions == winner[groups]
        selected_score = torch.where(is_winner, work, selected_score)
        selected_step = torch.where(is_winner, torch.full_like(selected_step, step), selected_step)
        alive = alive & ~is_winner

        # Each box against the box just selected in its own class (classes without one have no alive box).
        reference = boxes[winner.clamp(max=num - 1)[groups]]
        iou = box_iou_pairwise(boxes, reference).to(work.dtype)
        decay = _soft_nms_decay(iou, method, iou_threshold, sigma)
        work = torch.where(alive, work * decay, work)
        alive = alive & (work >= score_threshold)

    keep = torch.nonzero(selected_step >= 0).flatten()
    # Within a class the selection scores never increase, so "by score, then by step" is selection order.
    keep = keep[torch.argsort(selected_step[keep], stable=True)]
    keep = keep[torch.argsort(selected_score[keep], descending=True, stable=True)]
    return keep, selected_score[keep].to(scores.dtype)

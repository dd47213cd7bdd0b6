"""Turning scored candidate boxes into detections: the steps every detector's inference shares.

1. **score threshold and top-k**: of a set of scores, keep the ``k`` highest that exceed
   ``score_thresh`` (:func:`topk_above`), separately for each pyramid level (:func:`topk_per_level`:
   RPN proposals, RetinaNet) or each class (SSD), so that the dense lowest levels cannot crowd out the
   others and NMS stays cheap;
2. **non-maximum suppression per (image, class)** and a **per-image cap** (:func:`select_detections`):
   the candidates of all images of the batch in one ``batched_nms`` call whose groups are ``(image,
   class)`` pairs, so that boxes of different images or classes never suppress each other, exactly as
   a loop over images and classes would; then the ``detections_per_img`` best of each image.

The selections equal torchvision's per-image loops (``RoIHeads.postprocess_detections``,
``RetinaNet.postprocess_detections``, ``SSD.postprocess_detections``), up to the order of exactly tied
scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from segdet.models.detection.image_list import sizes_tensor
from segdet.ops.nms import batched_nms, batched_nms_first


def first_rows(x: Tensor, n: int) -> Tensor:
    """``x[:n]``, as a narrow to ``sym_min(len(x), n)``: under ``torch.export`` of torch 2.8 a slice of a
    data-dependent length (what an NMS keeps) guards on it ("u0 < 100") and the export fails (2.11 traces
    the slice)."""
    return x.narrow(0, 0, torch.sym_min(x.shape[0], n))


def image_bounds(image_sizes: Sequence[tuple[int, int]], images: Tensor, dtype: torch.dtype) -> Tensor:
    """``[R, 4]`` upper bounds ``(w, h, w, h)`` of the image (``(h, w)`` in ``image_sizes``) of each of
    ``R`` candidates, ``images`` its index; clip with ``torch.minimum(boxes.clamp(min=0), bounds)``
    (torchvision's ``clip_boxes_to_image``, for boxes of several images at once)."""
    sizes = sizes_tensor(image_sizes, images.device, dtype)
    return sizes[images].flip(1).repeat(1, 2)


def topk_above(scores: Tensor, k: int, score_thresh: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k' = min(k, M)`` highest of each row of ``scores`` (``[..., M]``) that exceed
    ``score_thresh`` (strictly; ``None``: no threshold).

    Returns ``(values, indices, valid)``, each ``[..., k']``, by decreasing score: ``valid`` is False for
    the slots a row fills with scores at or under the threshold (it has fewer than ``k'`` above it).
    Equal, row by row, to torchvision's ``scores[scores > t].topk(min(k, count))``.
    """
    k = min(k, scores.shape[-1])
    if score_thresh is None:
        values, indices = scores.topk(k, dim=-1)
        return values, indices, torch.ones_like(values, dtype=torch.bool)
    # Scores at or under the threshold sort last; they come back only to fill rows with fewer than k.
    masked = scores.masked_fill(scores <= score_thresh, float("-inf"))
    values, indices = masked.topk(k, dim=-1)
    return values, indices, values > score_thresh


def topk_per_level(
    scores: Tensor, level_sizes: Sequence[int], k: int, score_thresh: float | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`topk_above` for each level of ``scores`` (``[N, Σ_l M_l]``, levels of ``M_l`` columns).

    Returns ``(values, indices, valid, levels)``: the first three ``[N, Σ_l k_l]`` with ``indices``
    into the ``Σ_l M_l`` columns (level 0's candidates first), and ``levels`` ``[Σ_l k_l]``, the level
    of each column (the same for every image).
    """
    values, indices, valid, counts = [], [], [], []
    offset = 0
    for level in scores.split(list(level_sizes), dim=1):
        v, i, ok = topk_above(level, k, score_thresh)
        values.append(v)
        indices.append(i + offset)
        valid.append(ok)
        counts.append(v.shape[1])
        offset += level.shape[1]
    levels = torch.repeat_interleave(
        torch.arange(len(counts), device=scores.device), torch.tensor(counts, device=scores.device)
    )
    return torch.cat(values, dim=1), torch.cat(indices, dim=1), torch.cat(valid, dim=1), levels


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    images: Tensor,
    num_images: int,
    num_labels: int,
    nms_thresh: float,
    detections_per_img: int,
    extras: dict[str, Tensor] | None = None,
) -> list[dict[str, Tensor]]:
    """NMS per (image, class), then the ``detections_per_img`` best per image (module docstring).

    Args:
        boxes: ``[R, 4]`` xyxy candidate boxes of all images.
        scores, labels, images: ``[R]`` each candidate's score, class (``< num_labels``) and image.
        num_images: the batch size (images without candidates get empty results).
        num_labels: an upper bound of the labels (groups are ``image * num_labels + label``).
        nms_thresh: IoU above which the lower-scoring box of a group is suppressed.
        detections_per_img: the cap per image.
        extras: per-candidate tensors (first dimension ``R``) carried along, see :func:`best_per_image`.

    Returns:
        per image ``{"boxes", "scores", "labels"}`` (and the ``extras``) by decreasing score.
    """
    # batched_nms separates groups by shifting each one by group * (max coordinate + 1); with groups
    # (image, class) these shifts reach ~1e6 px, where float32 would round boxes by ~0.06 px and change
    # IoUs near the threshold. In float64 the shift is exact to ~1e-10 px.
    # (segdet export traces it in float32: ONNX's NonMaxSuppression takes nothing else; torchvision's own
    # batched_nms shifts float32 boxes too.)
    groups = images * num_labels + labels
    if torch.compiler.is_exporting():  # the exported graph's one NonMaxSuppression
        keep = batched_nms(boxes.float(), scores.float(), groups, nms_thresh)  # by decreasing score
    else:
        keep = _first_kept(
            boxes.double(), scores.double(), groups, images, num_images, nms_thresh, detections_per_img
        )
    return best_per_image(keep, boxes, scores, labels, images, num_images, detections_per_img, extras)


def _first_kept(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    images: Tensor,
    num_images: int,
    nms_thresh: float,
    cap: int,
) -> Tensor:
    """The indices NMS keeps, at least the first ``cap`` of each image, each image's by decreasing
    score (:func:`~segdet.ops.nms.batched_nms_first` per image: images never suppress each other)."""
    if num_images == 1:
        return batched_nms_first(boxes, scores, groups, nms_thresh, cap)
    kept = []
    for n in range(num_images):
        mine = torch.nonzero(images == n).flatten()
        kept.append(mine[batched_nms_first(boxes[mine], scores[mine], groups[mine], nms_thresh, cap)])
    return torch.cat(kept)


def best_per_image(
    keep: Tensor,
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    images: Tensor,
    num_images: int,
    detections_per_img: int,
    extras: dict[str, Tensor] | None = None,
) -> list[dict[str, Tensor]]:
    """The candidates ``keep`` (indices into the ``[R]`` candidates, by decreasing score: what an NMS
    returns) grouped by image, the ``detections_per_img`` best of each.

    Returns per image ``{"boxes", "scores", "labels"}`` and, for each ``extras`` entry (a tensor whose
    first dimension is the ``R`` candidates, e.g. YOLACT's mask coefficients), its rows, all by
    decreasing score.
    """
    columns = {"boxes": boxes, "scores": scores, "labels": labels, **(extras or {})}
    if num_images == 1:  # already in score order
        keep = first_rows(keep, detections_per_img)
    else:
        # Group by image keeping the score order, then keep each image's best ones. The keys (image,
        # position) are unique, so any sort is stable (ONNX, for segdet export, has no stable sort).
        position = torch.arange(keep.shape[0], device=keep.device)
        keep = keep[(images[keep] * keep.shape[0] + position).argsort()]
        per_image = torch.bincount(images[keep], minlength=num_images)
        starts = torch.cumsum(per_image, 0) - per_image
        rank = torch.arange(keep.shape[0], device=boxes.device) - starts[images[keep]]
        keep = keep[rank < detections_per_img]
    return split_by_image(images[keep], num_images, {name: values[keep] for name, values in columns.items()})


def split_by_image(images: Tensor, num_images: int, columns: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """The rows of ``columns`` (grouped image by image; ``images`` ``[R]`` the image of each row) as one
    dict per image. One image takes no split: nothing with a data-dependent size for ``segdet export``
    to trace (which exports one image at a time)."""
    if num_images == 1:
        return [dict(columns)]
    if torch.compiler.is_exporting():  # counts of a known length, their sum the rows (TridentNet's branches)
        counts = (images[None] == torch.arange(num_images, device=images.device)[:, None]).sum(1).tolist()
        torch._check(sum(counts) == images.shape[0])
    else:
        counts = torch.bincount(images, minlength=num_images).tolist()
    split = {name: values.split(counts) for name, values in columns.items()}
    return [{name: parts[i] for name, parts in split.items()} for i in range(num_images)]


def topk_pairs(
    scores: Tensor, k: int, score_thresh: float | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``k`` best (candidate, class) pairs of each image scoring above ``score_thresh``, flat over the
    batch: the candidates of the grid and centre-point detectors (YOLO's cells x boxes, CenterNet's peaks).

    Args:
        scores: ``[N, M, K]``, the score of class ``k`` for candidate ``m`` of image ``n``.
        k: pairs kept per image at most.
        score_thresh: strict lower bound (``None``: none).

    Returns:
        ``(image, candidate, label, score)``, each ``[R]``, image by image, by decreasing score.
    """
    num_images, _, num_classes = scores.shape
    values, index, valid = topk_above(scores.reshape(num_images, -1), k, score_thresh)
    image = torch.arange(num_images, device=scores.device)[:, None].expand_as(index)[valid]
    index = index[valid]
    return image, index // num_classes, index % num_classes, values[valid]

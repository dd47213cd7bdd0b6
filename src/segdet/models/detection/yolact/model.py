"""YOLACT (Bolya et al., "YOLACT: Real-time Instance Segmentation", ICCV 2019): instance segmentation in
one stage, as two parallel tasks: a set of image-wide prototype masks, and per anchor a class, a box and
``k`` coefficients that combine the prototypes into the instance's mask.

transform -> ResNet + FPN ``P3 .. P7`` (:mod:`.builders`) -> on every level the shared
:class:`~.head.YolactHead` (``K + 1`` class logits, 4 deltas and ``k`` coefficients for each of ``A = 3``
anchors of aspect ratios 1:2, 1:1, 2:1 per location), and on ``P3`` the :class:`~.protonet.Protonet`
(``k = 32`` prototypes at stride 4) -> losses (:mod:`.loss`) or detections with masks.

Composed of the shared detection parts: anchors (:mod:`~segdet.models.detection.anchors`), matching
(``IoU >= 0.5`` foreground, ``< 0.4`` background, the 0.4-0.5 "neutral" anchors ignored, every object
keeping its best anchor), SSD's box coding (variances 0.1 / 0.2) and class / box losses,
top-k and per-image capping (:mod:`~segdet.models.detection.postprocess`).

**Training** (sec. 3-4): ``L = L_cls + 1.5 L_box + 6.125 L_mask + L_sem`` (YOLACT's weights), the
class loss with 3 : 1 hard negative mining, smooth L1 box loss, the mask loss of the assembled masks
cropped to the ground-truth box and the auxiliary semantic segmentation loss on ``P3``
(:mod:`.loss`); reported as ``classification``, ``bbox_regression``, ``mask``, ``semantic``.

**Inference** (sec. 3.3), per image: softmax class scores of every anchor; per class the
``topk_candidates`` (200) best above ``score_thresh`` (0.05), decoded and clipped to the image;
**Fast NMS** at ``nms_thresh`` 0.5 per class (:mod:`.fast_nms`; ``nms="standard"``: the exact
sequential NMS the other detectors use); the ``detections_per_img`` (100) best of all classes. Their
masks ``σ(P c)`` are resampled from the prototype grid to the original image (one bilinear sampling,
:func:`masks_in_image`) and cropped to the predicted box: ``masks`` ``[D, 1, H, W]`` probabilities,
as Mask R-CNN's.

**Differences from the paper's code.** Images keep their aspect ratio (longer side ``max_size`` = 550,
padded to a multiple of 32: every segdet FPN detector's transform, so the anchor grid's strides are
exact), where the paper squashes them to 550 x 550; anchors are centred on a cell's top-left pixel
(torchvision's grid) instead of its centre; the FPN has no ReLU after its outputs; and every object keeps
its best anchors by torchvision's low-quality rule instead of YOLACT's greedy bipartite one.

Labels: class 0 of the softmax is the background, objects ``1 .. K`` inside (``label_offset = 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdet.models.detection.anchors import AnchorGenerator
from segdet.models.detection.detector import Detector
from segdet.models.detection.head_outputs import flatten_anchor_outputs, in_float32
from segdet.models.detection.image_list import ImageList, as_size
from segdet.models.detection.matcher import Matcher, match_to_targets
from segdet.models.detection.postprocess import best_per_image, image_bounds, select_detections, topk_above
from segdet.models.detection.settings import TransformSettings
from segdet.models.detection.ssd.loss import ssd_loss
from segdet.models.detection.ssd.model import SSD_BOX_WEIGHTS
from segdet.models.detection.transform import DetectionTransform
from segdet.models.detection.yolact.fast_nms import fast_nms
from segdet.models.detection.yolact.head import YolactHead
from segdet.models.detection.yolact.loss import semantic_segmentation_loss, yolact_mask_loss
from segdet.models.detection.yolact.protonet import (
    Protonet,
    assemble_masks,
    box_region,
    box_rows_and_columns,
)
from segdet.ops import BoxCoder
from segdet.ops.roi_align import roi_align

NMS_KINDS = ("fast", "standard")


@dataclass(frozen=True)
class YolactSettings(TransformSettings):
    """Transform (longer side 550 by default), inference (``score_thresh``, ``topk_candidates`` per
    class, ``nms`` ``"fast"`` / ``"standard"``, ``nms_thresh``, ``detections_per_img``) and training
    (``fg_iou_thresh``, ``bg_iou_thresh``, ``neg_to_pos_ratio`` of the hard negatives, the loss weights,
    ``max_masks`` per image) settings; YOLACT's defaults."""

    min_size: int | tuple[int, ...] = 550
    max_size: int = 550
    score_thresh: float = 0.05
    topk_candidates: int = 200
    nms: str = "fast"
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.4
    neg_to_pos_ratio: float = 3.0
    box_loss_weight: float = 1.5
    mask_loss_weight: float = 6.125
    semantic_loss_weight: float = 1.0
    max_masks: int = 100

    def __post_init__(self) -> None:
        if self.nms not in NMS_KINDS:
            raise ValueError(f"nms must be one of {NMS_KINDS}, got {self.nms!r}")
        if self.max_masks < 1:
            raise ValueError(f"max_masks must be at least 1, got {self.max_masks}")


class YOLACT(Detector):
    """YOLACT; see the module docstring.

    Args:
        transform: :class:`~segdet.models.detection.transform.DetectionTransform`.
        backbone: ResNet + FPN returning ``P3 .. P7`` (equally wide maps, finest first).
        anchor_generator: ``A`` anchors per location on every level.
        head: :class:`~.head.YolactHead` with ``K`` classes and ``k`` coefficients.
        protonet: :class:`~.protonet.Protonet` with ``k`` prototypes.
        num_classes: ``K``.
        settings: :class:`YolactSettings`.
    """

    label_offset = 1

    def __init__(
        self,
        transform: DetectionTransform,
        backbone: nn.Module,
        anchor_generator: AnchorGenerator,
        head: YolactHead,
        protonet: Protonet,
        num_classes: int,
        settings: YolactSettings,
    ) -> None:
        super().__init__(transform, backbone, num_classes)
        if len(set(anchor_generator.num_anchors_per_location())) != 1:
            raise ValueError("YOLACT's shared head needs the same number of anchors on every level")
        self.anchor_generator = anchor_generator
        self.head = head
        self.protonet = protonet
        # The auxiliary semantic segmentation head on P3 (training only).
        self.semantic = nn.Conv2d(head.in_channels, num_classes, 1)
        self.settings = settings
        self.matcher = Matcher(settings.fg_iou_thresh, settings.bg_iou_thresh, allow_low_quality_matches=True)
        self.box_coder = BoxCoder(SSD_BOX_WEIGHTS)

    def run_heads(
        self,
        batch: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None,
        generator: torch.Generator | None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        levels = list(features.values())
        logit_levels, delta_levels, coefficient_levels = self.head(levels)
        logits, deltas, coefficients, prototypes = in_float32(
            flatten_anchor_outputs(logit_levels, self.num_classes + 1),
            flatten_anchor_outputs(delta_levels, 4),
            flatten_anchor_outputs(coefficient_levels, self.protonet.num_prototypes),
            self.protonet(levels[0]),
        )
        anchors = self.anchor_generator(batch, levels, dtype=deltas.dtype)[0]  # shared by the images
        if self.training:
            assert targets is not None
            return [], self.losses(
                batch, levels[0], logits, deltas, coefficients, prototypes, anchors, targets, generator
            )
        return self.postprocess(logits, deltas, coefficients, prototypes, anchors, batch.image_sizes), {}

    def losses(
        self,
        batch: ImageList,
        p3: Tensor,
        logits: Tensor,
        deltas: Tensor,
        coefficients: Tensor,
        prototypes: Tensor,
        anchors: Tensor,
        targets: list[dict[str, Tensor]],
        generator: torch.Generator | None,
    ) -> dict[str, Tensor]:
        """The four weighted losses of the module docstring."""
        for i, target in enumerate(targets):
            if "masks" not in target:
                raise ValueError(f"target {i} has no 'masks': YOLACT trains on instance masks")
        s = self.settings
        padded = (as_size(batch.tensors.shape[-2]), as_size(batch.tensors.shape[-1]))
        matched = match_to_targets(self.matcher, anchors, targets)
        losses = ssd_loss(logits, deltas, anchors, matched, targets, self.box_coder, s.neg_to_pos_ratio)
        losses["bbox_regression"] = s.box_loss_weight * losses["bbox_regression"]
        mask = yolact_mask_loss(prototypes, coefficients, matched, targets, padded, s.max_masks, generator)
        losses["mask"] = s.mask_loss_weight * mask
        semantic_logits = in_float32(self.semantic(p3))[0]
        semantic = semantic_segmentation_loss(semantic_logits, targets, padded, self.label_offset)
        losses["semantic"] = s.semantic_loss_weight * semantic
        return losses

    @torch.no_grad()
    def postprocess(
        self,
        logits: Tensor,
        deltas: Tensor,
        coefficients: Tensor,
        prototypes: Tensor,
        anchors: Tensor,
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections per image (module docstring) from ``[N, M, K + 1]`` logits, ``[N, M, 4]`` deltas,
        ``[N, M, k]`` coefficients, ``[N, k, H_p, W_p]`` prototypes and the ``[M, 4]`` anchors; each
        with ``prototype_masks`` ``[D, H_p, W_p]``, its mask probabilities on the prototype grid."""
        s = self.settings
        num_images, _, num_labels = logits.shape
        scores = F.softmax(logits, dim=-1)[..., 1:].transpose(1, 2)  # [N, K, M]
        values, index, valid = topk_above(scores, s.topk_candidates, s.score_thresh)  # [N, K, k]
        image = torch.arange(num_images, device=logits.device)[:, None, None].expand_as(index)
        label = torch.arange(1, num_labels, device=logits.device)[None, :, None].expand_as(index)
        boxes = self.box_coder.decode_single(deltas[image, index], anchors[index])  # [N, K, k, 4]
        bounds = image_bounds(image_sizes, image.reshape(-1), boxes.dtype).reshape(boxes.shape)
        boxes = torch.minimum(boxes.clamp(min=0), bounds)
        flat = {"boxes": boxes.reshape(-1, 4), "scores": values.reshape(-1), "labels": label.reshape(-1)}
        images, anchor = image.reshape(-1), index.reshape(-1)
        if s.nms == "fast":
            keep = self.fast_nms_candidates(boxes, valid)
            kept_scores = flat["scores"][keep]
            if torch.compiler.is_exporting():  # ONNX has no stable sort; its TopK puts equal values by index
                order = kept_scores.topk(kept_scores.shape[0]).indices
            else:
                order = kept_scores.argsort(descending=True, stable=True)
            keep = keep[order]
            detections = best_per_image(
                keep, *flat.values(), images, num_images, s.detections_per_img, {"anchor": anchor}
            )
        else:
            keep = valid.reshape(-1)
            detections = select_detections(
                *(v[keep] for v in flat.values()),
                images[keep],
                num_images,
                num_labels,
                s.nms_thresh,
                s.detections_per_img,
                {"anchor": anchor[keep]},
            )
        for n, det in enumerate(detections):
            mask_logits = assemble_masks(prototypes[n], coefficients[n, det.pop("anchor")])
            det["prototype_masks"] = torch.sigmoid(mask_logits)
        return detections

    def fast_nms_candidates(self, boxes: Tensor, valid: Tensor) -> Tensor:
        """Indices into the flattened ``[N K k]`` candidates (``boxes`` ``[N, K, k, 4]``, ``valid``
        ``[N, K, k]``, each (image, class) group by decreasing score, valid slots first) that Fast NMS
        keeps. Only the groups with a candidate enter it, cut to the longest one's count: after training
        most classes have none above the threshold, and the ``k x k`` IoU matrices are the cost."""
        groups, candidates = valid.shape[0] * valid.shape[1], valid.shape[2]
        boxes, valid = boxes.reshape(groups, candidates, 4), valid.reshape(groups, candidates)
        if torch.compiler.is_exporting():  # the cut below is data-dependent; without it, the same result
            group, slot = torch.nonzero(fast_nms(boxes, valid, self.settings.nms_thresh), as_tuple=True)
            return group * candidates + slot
        counts = valid.sum(dim=1)
        used = torch.nonzero(counts).squeeze(1)
        longest = int(counts.max()) if groups else 0
        kept = fast_nms(boxes[used, :longest], valid[used, :longest], self.settings.nms_thresh)
        group, slot = torch.nonzero(kept, as_tuple=True)
        return used[group] * candidates + slot

    def outputs(
        self,
        detections: list[dict[str, Tensor]],
        losses: dict[str, Tensor],
        batch: ImageList,
        original_sizes: list[tuple[int, int]],
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """The detector's outputs (boxes in the original images), with each detection's mask resampled
        from the prototype grid to its original image and cropped to its box (module docstring)."""
        if self.training:
            return losses
        grid_masks = [det.pop("prototype_masks") for det in detections]
        results = super().outputs(detections, losses, batch, original_sizes)
        padded = (as_size(batch.tensors.shape[-2]), as_size(batch.tensors.shape[-1]))
        for result, masks, size, original in zip(
            results, grid_masks, batch.image_sizes, original_sizes, strict=True
        ):
            result["masks"] = masks_in_image(masks, result["boxes"], size, padded, original)
        return results


def masks_in_image(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    padded_size: tuple[int, int],
    original_size: tuple[int, int],
) -> Tensor:
    """``[D, 1, H_0, W_0]``: ``masks`` (``[D, H_p, W_p]`` on the prototype grid of the padded batch of
    ``padded_size``) sampled at the pixels of the original image (``original_size``) that was resized
    to ``image_size`` inside that batch, zero outside each detection's box (``boxes`` ``[D, 4]`` in
    the original image's pixels).

    The resized image covers ``[0, w / s) x [0, h / s)`` of the grid (``s`` its stride); one
    ``roi_align`` over that region with one bilinear sample at the centre of each output pixel
    (``aligned=True``) maps it to ``H_0 x W_0`` in a single resampling, as ``F.interpolate(...,
    align_corners=False)`` would the cropped region. With a symbolic original size (``segdet export``
    for any image size) the same sampling as two 1-D interpolations with the crop folded into their
    weights (:func:`resample_region`), since ONNX's ``RoiAlign`` takes a fixed output size (in eager
    PyTorch it takes about twice ``roi_align``'s time with its crop: 2.2 s against 1.0 s for 100 masks of
    800 x 1200 on 2 cores; on ONNX Runtime the any-size Penn-Fudan YOLACT takes 1.08 of the one-size
    graph's time)."""
    height, width = original_size
    stride = padded_size[0] / masks.shape[-2]
    extent = (image_size[0] / stride, image_size[1] / stride)
    if isinstance(height, torch.SymInt) or isinstance(width, torch.SymInt):
        rows, columns = box_rows_and_columns(boxes, (height, width), 1.0)
        return resample_region(masks, extent, (height, width), rows, columns)[:, None]
    region = torch.tensor([[0.0, 0.0, 0.0, extent[1], extent[0]]], dtype=masks.dtype, device=masks.device)
    sampled = roi_align(masks[None], region, (height, width), 1.0, 1, aligned=True)[0]
    inside = box_region(boxes, (height, width), 1.0)
    return (sampled * inside)[:, None]


def resample_region(
    masks: Tensor,
    extent: tuple[float, float],
    size: tuple[int, int],
    rows: Tensor | None = None,
    columns: Tensor | None = None,
) -> Tensor:
    """``[D, H, W]``: the region ``[0, extent_w) x [0, extent_h)`` of ``masks`` (``[D, H_p, W_p]``; the
    region inside the grid: ``extent <= (H_p, W_p)``) resampled to ``size = (H, W)`` with one bilinear
    sample at each output pixel's centre, rows then columns (:func:`_linear_along`):
    ``roi_align(masks[None], [[0, 0, 0, extent_w, extent_h]], size, 1.0, 1, aligned=True)[0]`` up to
    float rounding, for a symbolic ``size`` too; times ``rows[:, :, None] * columns[:, None, :]``
    (``[D, H]``, ``[D, W]``: a separable crop) if given, folded into the 1-D weights, which saves two
    passes over the ``D x H x W`` result."""
    resampled_rows = _linear_along(masks, 1, size[0], extent[0], rows)
    return _linear_along(resampled_rows, 2, size[1], extent[1], columns)


def _linear_along(x: Tensor, dim: int, size: int, extent: float, keep: Tensor | None = None) -> Tensor:
    """``x`` (``[D, ...]``) resampled along ``dim`` to ``size`` samples of ``[0, extent)`` (grid cells),
    one at each output cell's centre: position ``p_i = (i + 1/2) extent / size - 1/2``, clamped to the
    grid to ``[0, n - 1]`` as ``roi_align`` does (``p < 0`` -> 0; from the last cell on, the last
    cell), then ``x[floor(p)] (1 - f) + x[floor(p) + 1] f`` with ``f = p - floor(p)``; both weights
    times ``keep`` (``[D, size]``) if given."""
    n = x.shape[dim]
    i = torch.arange(size, dtype=x.dtype, device=x.device)
    position = ((i + 0.5) * (extent / size) - 0.5).clamp(0, n - 1)
    low = position.floor()
    fraction = position - low
    low = low.long()
    high = (low + 1).clamp(max=n - 1)
    shape = [1] * x.dim()
    shape[dim] = size
    w_low, w_high = (1 - fraction).reshape(shape), fraction.reshape(shape)
    if keep is not None:
        shape[0] = keep.shape[0]
        keep = keep.to(x.dtype).reshape(shape)
        w_low, w_high = w_low * keep, w_high * keep
    return x.index_select(dim, low) * w_low + x.index_select(dim, high) * w_high

"""The second stage of Faster / Mask R-CNN: classify the RPN's proposals, refine their boxes, predict masks.

Training (Girshick, "Fast R-CNN", ICCV 2015, sec. 2.3; Ren et al., "Faster R-CNN", NeurIPS 2015):

1. the ground-truth boxes are added to each image's proposals (so every object has a perfect RoI early
   in training);
2. each proposal is matched to the ground-truth box it overlaps most: foreground (label ``u`` of that
   box) if ``IoU >= fg_iou_thresh`` (0.5), background (label 0) if ``bg_iou_low <= IoU < bg_iou_thresh``
   (0.5), ignored otherwise (label -1: between the thresholds when they differ, and below ``bg_iou_low``,
   0 here; Fast R-CNN's 0.1 keeps background RoIs that overlap an object, "a heuristic for hard example
   mining"), and ignored when matched to an object its target flags in ``ignore`` (optional bool
   ``[G]``: TridentNet's scale-aware training); an image without objects is all background;
3. ``batch_size_per_image`` (512) RoIs are sampled per image, at most ``positive_fraction`` (25%)
   foreground;
4. their features are pooled and the box head gives class logits and class-specific deltas; the loss is
   :func:`~.box_head.fastrcnn_loss` ``L = L_cls + [u >= 1] L_loc`` with targets
   encoded w.r.t. the RoI by the R-CNN box coder (weights ``(10, 10, 5, 5)``) and smooth L1 of
   ``smooth_l1_beta`` (torchvision's 1/9; the Fast R-CNN paper's 1);
5. with a mask branch, the foreground sampled RoIs are pooled again (14 x 14) and
   :func:`~.mask_head.maskrcnn_loss` is added.

Inference (``postprocess``): softmax scores; every RoI gives one box per foreground class (decoded with
that class's deltas, clipped to the image); candidates with ``score > score_thresh`` (0.05) and sides
``>= 0.01`` px are kept; NMS at ``nms_thresh`` (0.5) runs per image and class; the best
``detections_per_img`` (100) per image remain. The mask branch then predicts each detection's mask for
its class (``m x m`` probabilities; paste them with
:func:`segdet.ops.masks.paste_masks_in_image`).

Labels here count the background: class 0 is background, objects are ``1 .. K-1`` (torchvision's
convention; a dataset's 0-based labels are shifted by one by the model that owns this module).
The result equals torchvision's ``RoIHeads`` (same proposals, features and weights), computed with
the per-image loops of its post-processing replaced by batched operations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdet.models.detection.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, Matcher
from segdet.models.detection.postprocess import image_bounds, select_detections
from segdet.models.detection.rcnn.box_head import fastrcnn_loss
from segdet.models.detection.rcnn.mask_head import maskrcnn_inference, maskrcnn_loss
from segdet.models.detection.rcnn.sampler import BalancedPositiveNegativeSampler
from segdet.ops.box_coder import BoxCoder
from segdet.ops.boxes import box_iou, remove_small_boxes


class RoIHeads(nn.Module):
    """Box (and optional mask) heads of Faster / Mask R-CNN; see the module docstring.

    Args:
        box_pooler: :class:`~segdet.models.detection.rcnn.poolers.MultiScaleRoIPool` (7 x 7).
        box_head: e.g. :class:`~segdet.models.detection.rcnn.box_head.TwoMLPHead`.
        box_predictor: :class:`~segdet.models.detection.rcnn.box_head.FastRCNNPredictor`.
        fg_iou_thresh, bg_iou_thresh: matching thresholds (foreground ``>= fg``, background ``< bg``).
        bg_iou_low: background RoIs need ``IoU >= bg_iou_low`` with their best object (0: all).
        smooth_l1_beta: the box loss's smooth L1 transition point.
        batch_size_per_image, positive_fraction: RoI sampling.
        bbox_reg_weights: box coder weights ``(w_x, w_y, w_w, w_h)``.
        score_thresh, nms_thresh, detections_per_img: post-processing.
        mask_pooler, mask_head, mask_predictor: the mask branch (all three, or none).

    ``forward(features, proposals, image_sizes, targets=None, generator=None)``:
        ``features`` the FPN dict; ``proposals`` per image ``[R_i, 4]`` xyxy; ``image_sizes`` per image
        ``(h, w)`` of the (resized, unpadded) image; ``targets`` (training) per image a dict with
        ``boxes`` float ``[G_i, 4]``, ``labels`` int64 ``[G_i]`` in ``1..K-1`` and, with a mask branch,
        ``masks`` ``[G_i, H, W]``; ``generator`` for the RoI sampling (global RNG when None).
        Returns ``(detections, losses)``: in training ``detections`` is ``[]`` and ``losses`` holds
        ``loss_classifier``, ``loss_box_reg`` (and ``loss_mask``); in eval ``losses`` is ``{}`` and each
        detection dict holds ``boxes`` ``[D, 4]``, ``labels`` ``[D]``, ``scores`` ``[D]`` (by decreasing
        score) and, with a mask branch, ``masks`` ``[D, 1, m, m]``.
    """

    def __init__(
        self,
        box_pooler: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        *,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        bg_iou_low: float = 0.0,
        smooth_l1_beta: float = 1 / 9,
        mask_pooler: nn.Module | None = None,
        mask_head: nn.Module | None = None,
        mask_predictor: nn.Module | None = None,
    ) -> None:
        super().__init__()
        mask_parts = (mask_pooler, mask_head, mask_predictor)
        if any(p is not None for p in mask_parts) and any(p is None for p in mask_parts):
            raise ValueError("mask_pooler, mask_head and mask_predictor must be given together")
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_pooler = mask_pooler
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.bg_iou_low = bg_iou_low
        self.smooth_l1_beta = smooth_l1_beta

    @property
    def has_mask(self) -> bool:
        return self.mask_predictor is not None

    # -- training ------------------------------------------------------------------------------------

    def _check_targets(self, targets: list[dict[str, Tensor]] | None, num_images: int) -> list[dict]:
        if targets is None:
            raise ValueError("RoIHeads needs targets in training mode")
        if len(targets) != num_images:
            raise ValueError(f"{num_images} images of proposals but {len(targets)} targets")
        needed = ("boxes", "labels", "masks") if self.has_mask else ("boxes", "labels")
        for i, t in enumerate(targets):
            missing = [k for k in needed if k not in t]
            if missing:
                raise ValueError(f"target {i} lacks {missing}")
            if not t["boxes"].is_floating_point():
                raise TypeError(f"target {i}: boxes must be floating point, got {t['boxes'].dtype}")
            if t["labels"].dtype != torch.int64:
                raise TypeError(f"target {i}: labels must be int64, got {t['labels'].dtype}")
        return targets

    def _label_proposals(
        self, proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, ignore: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Matched ground-truth index (0 for unmatched) and label (0 background, -1 ignored) per proposal;
        a proposal matched to an object flagged in ``ignore`` (bool ``[G]``) is ignored too."""
        if gt_boxes.shape[0] == 0:
            # Background image: every proposal is a negative, whatever bg_iou_low (a heuristic about
            # the background *near objects*; with none, keeping nothing would leave no sample at all).
            zeros = torch.zeros(proposals.shape[0], dtype=torch.int64, device=proposals.device)
            return zeros, zeros.clone()
        iou = box_iou(gt_boxes, proposals)
        matches = self.proposal_matcher(iou)
        matched = matches.clamp(min=0)
        labels = gt_labels[matched].to(torch.int64)
        labels[matches == BELOW_LOW_THRESHOLD] = 0
        labels[matches == BETWEEN_THRESHOLDS] = -1
        if ignore is not None:
            labels[(matches >= 0) & ignore[matched]] = -1
        if self.bg_iou_low > 0:
            labels[(labels == 0) & (iou.max(dim=0).values < self.bg_iou_low)] = -1
        return matched, labels

    def select_training_samples(
        self,
        proposals: list[Tensor],
        targets: list[dict[str, Tensor]],
        generator: torch.Generator | None = None,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Steps 1-3 of the module docstring.

        Returns per image the sampled RoIs ``[S_i, 4]``, their matched ground-truth indices ``[S_i]``,
        labels ``[S_i]`` (0 background) and regression targets ``[S_i, 4]``.
        """
        dtype = proposals[0].dtype
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        rois = [torch.cat((p, g)) for p, g in zip(proposals, gt_boxes, strict=True)]
        matched, labels = zip(
            *(
                self._label_proposals(r, g, t["labels"], t.get("ignore"))
                for r, g, t in zip(rois, gt_boxes, targets, strict=True)
            ),
            strict=True,
        )
        positive, negative = self.fg_bg_sampler(labels, generator=generator)
        keep = [torch.nonzero(p | n).flatten() for p, n in zip(positive, negative, strict=True)]
        rois = [r[k] for r, k in zip(rois, keep, strict=True)]
        matched = [m[k] for m, k in zip(matched, keep, strict=True)]
        labels = [lab[k] for lab, k in zip(labels, keep, strict=True)]
        # A background image has no box to index: its (all-background) RoIs get a dummy target.
        matched_boxes = [
            (g if g.shape[0] > 0 else g.new_zeros((1, 4)))[m] for g, m in zip(gt_boxes, matched, strict=True)
        ]
        regression_targets = self.box_coder.encode(matched_boxes, rois)
        return rois, matched, labels, regression_targets

    # -- inference -----------------------------------------------------------------------------------

    def postprocess(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections per image (see the module docstring), for all images at once: NMS per (image,
        class) and the per-image cap by :func:`~segdet.models.detection.postprocess.select_detections`.
        """
        device = class_logits.device
        num_classes = class_logits.shape[-1]
        num_images = len(proposals)
        # full_like per image: the counts stay symbolic in an exported graph (segdet export)
        image_of_roi = torch.cat(
            [torch.full_like(p[:, 0], i, dtype=torch.long) for i, p in enumerate(proposals)]
        )

        boxes = self.box_coder.decode(box_regression, proposals)  # [R, K, 4]
        # Clip every RoI's boxes to its own image.
        upper = image_bounds(image_sizes, image_of_roi, boxes.dtype)[:, None, :]
        boxes = torch.minimum(boxes.clamp(min=0), upper)
        scores = F.softmax(class_logits, dim=-1)

        # Every (RoI, foreground class) pair is a candidate.
        boxes = boxes[:, 1:].reshape(-1, 4)
        foreground = scores[:, 1:]  # [R, K - 1]
        scores = foreground.reshape(-1)
        labels = torch.arange(1, num_classes, device=device).expand_as(foreground).reshape(-1)
        images = image_of_roi[:, None].expand_as(foreground).reshape(-1)

        keep = torch.nonzero(scores > self.score_thresh).flatten()
        keep = keep[remove_small_boxes(boxes[keep], 1e-2)]
        return select_detections(
            boxes[keep],
            scores[keep],
            labels[keep],
            images[keep],
            num_images,
            num_classes,
            self.nms_thresh,
            self.detections_per_img,
        )

    # -- forward -------------------------------------------------------------------------------------

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if len(proposals) != len(image_sizes):
            raise ValueError(f"{len(proposals)} images of proposals but {len(image_sizes)} image sizes")
        if self.training:
            targets = self._check_targets(targets, len(proposals))
            proposals, matched, labels, regression_targets = self.select_training_samples(
                proposals, targets, generator
            )

        # RoIAlign's kernels read NCHW: a channels-last pyramid (fused inference) is converted here once
        # for the box and the mask pooler instead of inside every roi_align call.
        features = {k: v.contiguous() for k, v in features.items()}
        box_features = self.box_head(self.box_pooler(features, proposals, image_sizes))
        class_logits, box_regression = self.box_predictor(box_features)

        if not self.training:
            # Under reduced-precision autocast the heads give bf16 / fp16; decode, score and paste in
            # the proposals' float32 (see the RPN).
            dtype = proposals[0].dtype
            class_logits, box_regression = class_logits.to(dtype), box_regression.to(dtype)
            detections = self.postprocess(class_logits, box_regression, proposals, image_sizes)
            if self.has_mask:
                mask_logits = self._mask_logits(features, [d["boxes"] for d in detections], image_sizes)
                mask_logits = mask_logits.to(class_logits.dtype)
                probs = maskrcnn_inference(mask_logits, [d["labels"] for d in detections])
                for det, prob in zip(detections, probs, strict=True):
                    det["masks"] = prob
            return detections, {}

        loss_classifier, loss_box_reg = fastrcnn_loss(
            class_logits,
            box_regression,
            torch.cat(labels),
            torch.cat(regression_targets),
            beta=self.smooth_l1_beta,
        )
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        if self.has_mask:
            # Only the foreground RoIs train the mask branch.
            foreground = [torch.nonzero(lab > 0).flatten() for lab in labels]
            mask_rois = [r[f] for r, f in zip(proposals, foreground, strict=True)]
            mask_matched = [m[f] for m, f in zip(matched, foreground, strict=True)]
            mask_logits = self._mask_logits(features, mask_rois, image_sizes)
            losses["loss_mask"] = maskrcnn_loss(
                mask_logits,
                mask_rois,
                [t["masks"] for t in targets],
                [t["labels"] for t in targets],
                mask_matched,
            )
        return [], losses

    def _mask_logits(self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes) -> Tensor:
        pooled = self.mask_pooler(features, boxes, image_sizes)
        return self.mask_predictor(self.mask_head(pooled))

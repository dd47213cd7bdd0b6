"""Region Proposal Network (Ren et al., "Faster R-CNN", NeurIPS 2015, sec. 3.1; with the FPN levels of
Lin et al., CVPR 2017, sec. 4.1).

**Proposals** (training and inference):

1. The head (:class:`~segdet.models.detection.rcnn.rpn_head.RPNHead`) predicts, for every anchor ``i``, an
   objectness logit ``o_i`` and deltas ``t_i``; both are flattened in anchor order (level, y, x, anchor).
2. Per level and image, the ``k_l = min(pre_nms_top_n, H_l W_l A_l)`` anchors of highest logit are kept
   (logits are detached: no gradient flows through the proposals, as in the paper's approximate joint
   training).
3. Those are decoded, ``box_i = decode(t_i, anchor_i)`` with BoxCoder weights ``(1, 1, 1, 1)``, scored
   ``s_i = σ(o_i)``, clipped to the image's own (unpadded) size; boxes narrower or lower than
   ``min_size`` and boxes with ``s_i < score_thresh`` are dropped.
4. NMS at IoU ``nms_thresh``, separately per level (boxes of different levels never suppress each
   other), then the ``post_nms_top_n`` highest-scoring boxes of the image, by decreasing score.

**Training targets.** Each anchor is matched to the ground-truth box of highest IoU: label 1 if
``IoU >= fg_iou_thresh`` or if it is a ground-truth box's best anchor (ties included), 0 if
``IoU < bg_iou_thresh``, ignored (-1) in between, and ignored too when matched to an object its target
flags in ``ignore`` (bool ``[G]``, optional: TridentNet's scale-aware training). Images without boxes
give all-zero labels.
``batch_size_per_image`` anchors per image are sampled, up to ``positive_fraction`` positive.

**Loss** (paper eq. 1)::

    L = (1/N_cls) Σ_i L_cls(o_i, p*_i)  +  λ (1/N_reg) Σ_i p*_i L_reg(t_i, t*_i)

``L_cls`` is binary cross-entropy from logits, ``L_reg`` smooth L1 summed over the 4 coordinates with
``t*_i = encode(gt_i, anchor_i)``, ``p*_i`` the 0/1 label, sums over the sampled anchors. The paper
takes ``N_cls = 256`` (the mini-batch), ``N_reg ≈ 2400`` (anchor locations) and ``λ = 10``, so that
``λ / N_reg ≈ 1/240`` weighs both terms about equally. Like torchvision and Detectron2 we use
``N_reg = N_cls = number of sampled anchors`` and ``λ = 1`` (``1/256`` per image, nearly the paper's
weight, without depending on the feature map size), and smooth L1 with ``β = 1/9`` (py-faster-rcnn's
``σ = 3``, ``β = 1/σ²``), reported as ``loss_objectness`` and ``loss_rpn_box_reg``.

All of this equals torchvision's ``RegionProposalNetwork`` (same proposals, in the same order; same
losses when the random sampling draws from the same generator state), but the work torchvision does
per image or on all anchors is done here on the whole batch and only where needed: the top-k per level
runs once over the batch, only the selected ``Σ k_l`` anchors are decoded (not all of them), and
regression targets are encoded for the sampled positives only. Clipping, filtering and NMS stay per
image: ``batched_nms`` offsets boxes by their group id, and merging the images' groups would change the
floating-point rounding of those offsets, hence possibly which boxes survive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from segdet.losses import binary_cross_entropy_loss, smooth_l1_loss
from segdet.models.detection.anchors import AnchorGenerator
from segdet.models.detection.head_outputs import dense_head_outputs
from segdet.models.detection.image_list import ImageList
from segdet.models.detection.matcher import BETWEEN_THRESHOLDS, Matcher
from segdet.models.detection.postprocess import first_rows, topk_per_level
from segdet.models.detection.rcnn.sampler import BalancedPositiveNegativeSampler
from segdet.ops import BoxCoder, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

DEFAULT_PRE_NMS_TOP_N = {"training": 2000, "testing": 1000}
DEFAULT_POST_NMS_TOP_N = {"training": 2000, "testing": 1000}
# Smooth L1 transition point of the RPN box loss (see the module docstring).
RPN_SMOOTH_L1_BETA = 1.0 / 9.0


def _train_test_counts(counts: Mapping[str, int] | None, default: Mapping[str, int], name: str) -> dict:
    counts = dict(default if counts is None else counts)
    if set(counts) != {"training", "testing"}:
        raise ValueError(f"{name} must have exactly the keys 'training' and 'testing', got {sorted(counts)}")
    return counts


class RegionProposalNetwork(nn.Module):
    """Proposals (and, in training, the RPN losses) from feature maps; see the module docstring.

    Args:
        anchor_generator: anchors of every level, in the head's output order.
        head: module mapping the list of feature maps to (per level logits ``N x A x H x W``, per level
            deltas ``N x 4A x H x W``), e.g. :class:`~segdet.models.detection.rpn_head.RPNHead`.
        fg_iou_thresh: IoU at or above which an anchor is positive.
        bg_iou_thresh: IoU below which an anchor is negative.
        batch_size_per_image: anchors sampled per image for the loss.
        positive_fraction: at most this fraction of them positive.
        pre_nms_top_n: ``{"training": k, "testing": k}``, anchors kept per level before NMS
            (default 2000 / 1000).
        post_nms_top_n: ``{"training": k, "testing": k}``, proposals kept per image after NMS
            (default 2000 / 1000).
        nms_thresh: NMS IoU threshold.
        score_thresh: proposals with ``σ(logit) < score_thresh`` are dropped.
        min_size: proposals narrower or lower than this (pixels) are dropped.
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: nn.Module,
        *,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: Mapping[str, int] | None = None,
        post_nms_top_n: Mapping[str, int] | None = None,
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
        min_size: float = 1e-3,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self._pre_nms_top_n = _train_test_counts(pre_nms_top_n, DEFAULT_PRE_NMS_TOP_N, "pre_nms_top_n")
        self._post_nms_top_n = _train_test_counts(post_nms_top_n, DEFAULT_POST_NMS_TOP_N, "post_nms_top_n")
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = min_size

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

    # ----------------------------------------------------------------------------------- proposals
    def select_top_per_level(
        self, objectness: Tensor, num_anchors_per_level: Sequence[int]
    ) -> tuple[Tensor, Tensor]:
        """Indices of the ``k_l = min(pre_nms_top_n, n_l)`` highest logits of each level, for each image.

        Args:
            objectness: ``[N, Σ n_l]`` logits in anchor order.
            num_anchors_per_level: ``n_l = H_l W_l A_l``.

        Returns:
            ``(indices [N, Σ k_l], levels [Σ k_l])``: per image the anchors of level 0 by decreasing
            logit, then level 1, ...; and the level of each column (the same for every image).
        """
        _, indices, _, levels = topk_per_level(objectness, num_anchors_per_level, self.pre_nms_top_n())
        return indices, levels

    def filter_proposals(
        self, boxes: Tensor, scores: Tensor, levels: Tensor, image_sizes: Sequence[tuple[int, int]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Clip, drop small and low-scoring boxes, NMS per level, keep the ``post_nms_top_n`` best.

        Args:
            boxes: ``[N, K, 4]`` decoded candidate boxes.
            scores: ``[N, K]`` their probabilities ``σ(logit)``.
            levels: ``[K]`` level of each candidate (NMS groups).
            image_sizes: ``(h, w)`` of each image before padding.

        Returns:
            per image, boxes ``[P_i, 4]`` and scores ``[P_i]`` by decreasing score.
        """
        final_boxes, final_scores = [], []
        post_top_n = self.post_nms_top_n()
        for image_boxes, image_scores, size in zip(boxes, scores, image_sizes, strict=True):
            image_boxes = clip_boxes_to_image(image_boxes, size)
            keep = remove_small_boxes(image_boxes, self.min_size)
            keep = keep[image_scores[keep] >= self.score_thresh]
            image_boxes, image_scores, image_levels = image_boxes[keep], image_scores[keep], levels[keep]
            keep = batched_nms(image_boxes, image_scores, image_levels, self.nms_thresh)
            keep = first_rows(keep, post_top_n)
            final_boxes.append(image_boxes[keep])
            final_scores.append(image_scores[keep])
        return final_boxes, final_scores

    # ------------------------------------------------------------------------------------ training
    def assign_targets_to_anchors(
        self, anchors: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image, float labels ``[A]`` (1 positive, 0 negative, -1 ignored) and the matched ground-truth
        box of each anchor ``[A, 4]`` (meaningful for positives only; zeros for an image without boxes).
        """
        labels, matched_boxes = [], []
        for image_anchors, target in zip(anchors, targets, strict=True):
            gt_boxes = target["boxes"]
            if gt_boxes.numel() == 0:
                labels.append(image_anchors.new_zeros(image_anchors.shape[0], dtype=torch.float32))
                matched_boxes.append(torch.zeros_like(image_anchors, dtype=torch.float32))
                continue
            matched = self.proposal_matcher(box_iou(gt_boxes, image_anchors))
            image_labels = (matched >= 0).to(torch.float32)
            image_labels[matched == BETWEEN_THRESHOLDS] = -1.0
            if "ignore" in target:
                # Anchors matched to an object the image ignores (TridentNet's out-of-range scales) are
                # neither positive nor negative.
                image_labels[(matched >= 0) & target["ignore"][matched.clamp(min=0)]] = -1.0
            labels.append(image_labels)
            # Negative / ignored anchors (index < 0) get box 0; only positives' boxes are used.
            matched_boxes.append(gt_boxes[matched.clamp(min=0)])
        return labels, matched_boxes

    def compute_loss(
        self,
        objectness: Tensor,
        deltas: Tensor,
        anchors: Sequence[Tensor],
        labels: list[Tensor],
        matched_boxes: list[Tensor],
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(loss_objectness, loss_rpn_box_reg)`` over a random sample of anchors (module docstring).

        Args:
            objectness: ``[N, A]`` logits.
            deltas: ``[N, A, 4]`` predicted deltas.
            anchors: per image ``[A, 4]``.
            labels, matched_boxes: from :meth:`assign_targets_to_anchors`.
            generator: random generator of the sampler (``None``: torch's global one).
        """
        pos_masks, neg_masks = self.fg_bg_sampler(labels, generator)
        # Flat indices over the batch, positives of all images first, as torchvision orders them.
        positives = torch.nonzero(torch.cat(pos_masks)).flatten()
        negatives = torch.nonzero(torch.cat(neg_masks)).flatten()
        sampled = torch.cat((positives, negatives))

        table = _stack_shared(anchors)
        # A shared [A, 4] table serves every image: index it by the anchor's position within its image.
        if table.dim() == 2:
            positive_anchors = table[positives % deltas.shape[1]]
        else:
            positive_anchors = table.flatten(0, 1)[positives]
        targets = self.box_coder.encode_single(torch.cat(matched_boxes)[positives], positive_anchors)
        box_loss = smooth_l1_loss(
            deltas.reshape(-1, 4)[positives],
            targets.to(deltas.dtype),
            beta=RPN_SMOOTH_L1_BETA,
            reduction="sum",
        ) / max(sampled.numel(), 1)
        objectness_loss = binary_cross_entropy_loss(
            objectness.reshape(-1)[sampled], torch.cat(labels)[sampled].to(objectness.dtype)
        )
        return objectness_loss, box_loss

    # ------------------------------------------------------------------------------------- forward
    def forward(
        self,
        images: ImageList,
        features: Mapping[str, Tensor] | Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]] | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals for each image, and in training mode the losses.

        Args:
            images: the padded batch (only its size and ``image_sizes`` are used).
            features: the feature levels, in the anchor generator's level order (a dict's value order).
            targets: in training, per image a dict with ``"boxes"`` ``[G_i, 4]`` xyxy (``G_i`` may be 0).
            generator: random generator for the anchor sampling (training only).

        Returns:
            ``(proposals, losses)``: per image ``[P_i, 4]`` boxes by decreasing objectness (detached),
            and ``{"loss_objectness", "loss_rpn_box_reg"}`` in training, ``{}`` otherwise.
        """
        if self.training and targets is None:
            raise ValueError("RegionProposalNetwork needs targets in training mode")
        feature_list = list(features.values()) if isinstance(features, Mapping) else list(features)
        # One objectness logit per anchor; anchors, decoding and NMS in float32 under autocast.
        scores, deltas, num_anchors_per_level = dense_head_outputs(self.head, feature_list, 1)
        objectness = scores[..., 0]
        anchors = self.anchor_generator(images, feature_list, dtype=deltas.dtype)

        top_idx, levels = self.select_top_per_level(objectness.detach(), num_anchors_per_level)
        batch_idx = torch.arange(objectness.shape[0], device=objectness.device)[:, None]
        anchor_table = _stack_shared(anchors)
        top_anchors = anchor_table[top_idx] if anchor_table.dim() == 2 else anchor_table[batch_idx, top_idx]
        top_boxes = self.box_coder.decode_single(deltas.detach()[batch_idx, top_idx], top_anchors)
        top_scores = torch.sigmoid(objectness.detach()[batch_idx, top_idx])
        boxes, _ = self.filter_proposals(top_boxes, top_scores, levels, images.image_sizes)

        losses: dict[str, Tensor] = {}
        if self.training:
            assert targets is not None
            labels, matched_boxes = self.assign_targets_to_anchors(anchors, targets)
            loss_objectness, loss_box = self.compute_loss(
                objectness, deltas, anchors, labels, matched_boxes, generator
            )
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}
        return boxes, losses


def _stack_shared(anchors: Sequence[Tensor]) -> Tensor:
    """The images' anchors as one ``[A, 4]`` table when all images share one tensor, else ``[N, A, 4]``."""
    first = anchors[0]
    if all(a is first for a in anchors):
        return first
    return torch.stack(list(anchors))

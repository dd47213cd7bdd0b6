"""The R-CNN box regression parameterisation (Girshick et al., "Rich feature hierarchies", CVPR 2014,
appendix C; Ren et al., "Faster R-CNN", NeurIPS 2015, eq. 2).

A target box ``(x, y, w, h)`` (centre, size) is expressed relative to an anchor / proposal
``(x_a, y_a, w_a, h_a)`` as::

    t_x = w_x (x - x_a) / w_a        t_w = w_w log(w / w_a)
    t_y = w_y (y - y_a) / h_a        t_h = w_h log(h / h_a)

with per-coordinate weights ``(w_x, w_y, w_w, w_h)`` that scale the targets to roughly unit variance
(Faster R-CNN's box head uses ``(10, 10, 5, 5)``, the RPN ``(1, 1, 1, 1)``). Decoding inverts it::

    x = t_x / w_x * w_a + x_a        w = exp(min(t_w / w_w, clip)) * w_a
    y = t_y / w_y * h_a + y_a        h = exp(min(t_h / w_h, clip)) * h_a

where ``clip = bbox_xform_clip`` (default ``log(1000 / 16)``, the largest scale-up from a 16 px anchor
to a 1000 px box) stops an untrained regressor from overflowing ``exp``. Widths are ``x2 - x1``
(continuous coordinates, no "+1"), as in torchvision and Detectron2.

The arithmetic follows torchvision's ``BoxCoder`` so the two agree to round-off, and boxes encoded by one
decode with the other.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class BoxCoder:
    """Encode boxes as R-CNN regression targets relative to anchors, and decode predictions back.

    Args:
        weights: ``(w_x, w_y, w_w, w_h)`` multiplying the targets (see the module docstring).
        bbox_xform_clip: upper bound on ``t_w / w_w`` and ``t_h / w_h`` before ``exp`` when decoding.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"weights must have 4 values (w_x, w_y, w_w, w_h), got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip})"

    def _weights(self, like: Tensor) -> Tensor:
        return torch.tensor(self.weights, dtype=like.dtype, device=like.device)

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """Regression targets ``(t_x, t_y, t_w, t_h)`` of xyxy boxes w.r.t. xyxy anchors.

        Args:
            reference_boxes: ``[..., 4]`` the boxes to encode (the matched ground truth). The name and
                order follow torchvision's ``BoxCoder.encode(reference_boxes, proposals)``.
            proposals: ``[..., 4]`` the anchors / proposals they are relative to, broadcastable with
                ``reference_boxes``; they must have positive width and height.

        Returns:
            ``[..., 4]`` in ``reference_boxes``' dtype; integer boxes give the anchors' float dtype
            (float32 if both are integers).
        """
        if not reference_boxes.is_floating_point():
            # Casting the anchors to an integer dtype would truncate them (torchvision promotes to float).
            float_dtype = proposals.dtype if proposals.is_floating_point() else torch.float32
            reference_boxes = reference_boxes.to(float_dtype)
        proposals = proposals.to(reference_boxes.dtype)
        wx, wy, ww, wh = self._weights(reference_boxes).unbind()

        anchor_w = proposals[..., 2] - proposals[..., 0]
        anchor_h = proposals[..., 3] - proposals[..., 1]
        anchor_x = proposals[..., 0] + 0.5 * anchor_w
        anchor_y = proposals[..., 1] + 0.5 * anchor_h

        gt_w = reference_boxes[..., 2] - reference_boxes[..., 0]
        gt_h = reference_boxes[..., 3] - reference_boxes[..., 1]
        gt_x = reference_boxes[..., 0] + 0.5 * gt_w
        gt_y = reference_boxes[..., 1] + 0.5 * gt_h

        t_x = wx * (gt_x - anchor_x) / anchor_w
        t_y = wy * (gt_y - anchor_y) / anchor_h
        t_w = ww * torch.log(gt_w / anchor_w)
        t_h = wh * torch.log(gt_h / anchor_h)
        return torch.stack((t_x, t_y, t_w, t_h), dim=-1)

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """Boxes from regression codes: the inverse of :meth:`encode_single`, with the ``exp`` clamp.

        Args:
            rel_codes: ``[..., 4]`` codes ``(t_x, t_y, t_w, t_h)``.
            boxes: ``[..., 4]`` xyxy anchors, broadcastable with ``rel_codes`` (e.g. ``[N, 1, 4]`` against
                class-specific codes ``[N, K, 4]``).

        Returns:
            ``[..., 4]`` xyxy boxes in ``rel_codes``' dtype.
        """
        boxes = boxes.to(rel_codes.dtype)
        wx, wy, ww, wh = self._weights(rel_codes).unbind()

        anchor_w = boxes[..., 2] - boxes[..., 0]
        anchor_h = boxes[..., 3] - boxes[..., 1]
        anchor_x = boxes[..., 0] + 0.5 * anchor_w
        anchor_y = boxes[..., 1] + 0.5 * anchor_h

        dx = rel_codes[..., 0] / wx
        dy = rel_codes[..., 1] / wy
        # An untrained head can output huge dw/dh; without the clamp exp() overflows to inf.
        dw = (rel_codes[..., 2] / ww).clamp(max=self.bbox_xform_clip)
        dh = (rel_codes[..., 3] / wh).clamp(max=self.bbox_xform_clip)

        pred_x = dx * anchor_w + anchor_x
        pred_y = dy * anchor_h + anchor_y
        half_w = 0.5 * (torch.exp(dw) * anchor_w)
        half_h = 0.5 * (torch.exp(dh) * anchor_h)
        return torch.stack((pred_x - half_w, pred_y - half_h, pred_x + half_w, pred_y + half_h), dim=-1)

    def encode(
        self, reference_boxes: Tensor | list[Tensor], proposals: Tensor | list[Tensor]
    ) -> Tensor | list[Tensor]:
        """Encode boxes, either one tensor pair or per-image lists (torchvision's list interface).

        Args:
            reference_boxes: ``[N, 4]`` (or ``[..., 4]``) boxes to encode, or a list of per-image
                ``[N_i, 4]``.
            proposals: the matching anchors, of the same structure.

        Returns:
            ``[N, 4]`` targets, or a list of per-image ``[N_i, 4]`` targets when given lists.
        """
        if isinstance(reference_boxes, Tensor) and isinstance(proposals, Tensor):
            return self.encode_single(reference_boxes, proposals)
        if isinstance(reference_boxes, Tensor) or isinstance(proposals, Tensor):
            raise TypeError("encode expects two tensors or two lists of per-image tensors")
        if len(reference_boxes) != len(proposals):
            raise ValueError(f"{len(reference_boxes)} images of boxes but {len(proposals)} of proposals")
        counts = [len(b) for b in reference_boxes]
        targets = self.encode_single(torch.cat(list(reference_boxes)), torch.cat(list(proposals)))
        return list(targets.split(counts, dim=0))

    def decode(self, rel_codes: Tensor, boxes: Tensor | list[Tensor]) -> Tensor:
        """Decode (class-specific) codes for a batch of anchors.

        Args:
            rel_codes: ``[N, 4 * K]`` codes, ``K`` per anchor (one per class for a class-specific box
                head, ``K = 1`` for an RPN), laid out ``(t_x, t_y, t_w, t_h)`` per class; or ``[N, K, 4]``.
            boxes: ``[N, 4]`` xyxy anchors, or a list of per-image ``[N_i, 4]`` whose concatenation has
                ``N`` rows (torchvision's ``BoxCoder.decode(rel_codes, boxes: list[Tensor])``).

        Returns:
            ``[N, K, 4]`` xyxy boxes.
        """
        anchors = boxes if isinstance(boxes, Tensor) else torch.cat(list(boxes), dim=0)
        num = anchors.shape[0]
        if rel_codes.dim() == 3:
            codes = rel_codes
        elif torch.compiler.is_exporting():  # [N, 4K] rows; N may be symbolic (no test of it being 0)
            codes = rel_codes.reshape(num, rel_codes.shape[-1] // 4, 4)
        elif num > 0:
            # Like torchvision, any layout with N * 4K elements is read as N rows of K (t_x, t_y, t_w, t_h).
            codes = rel_codes.reshape(num, -1, 4)
        else:  # reshape cannot infer K from zero elements
            codes = rel_codes.reshape(0, rel_codes.shape[-1] // 4, 4)
        return self.decode_single(codes, anchors[:, None, :])

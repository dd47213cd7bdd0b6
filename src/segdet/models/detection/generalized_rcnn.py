"""The two-stage detector (R-CNN family): transform -> backbone -> RPN -> RoI heads -> postprocess.

Faster R-CNN (Ren et al., NeurIPS 2015) and Mask R-CNN (He et al., ICCV 2017) are this pipeline with
different parts (see :mod:`.faster_rcnn`, :mod:`.mask_rcnn`):

1. :class:`~.transform.DetectionTransform` normalises, resizes and pads the images into one batch;
2. the backbone (with or without FPN) gives a dict of feature maps;
3. the :class:`~.rpn.RegionProposalNetwork` proposes boxes (and its losses in training);
4. :class:`~.roi_heads.RoIHeads` classifies and refines them (and masks them);
5. in inference the detections are mapped back to the original images.

**Labels.** Datasets give contiguous object labels ``0 .. K-1`` without a background class; the model
takes ``num_classes = K``, accepts and returns labels ``0 .. K-1``. Inside, the RoI heads use
torchvision's convention (``0`` = background, objects ``1 .. K``, ``K + 1`` logits), so targets are
shifted by ``+1`` on the way in and detections by ``-1`` on the way out; nowhere else.

**Interface** (torchvision's): ``model(images, targets=None)`` with ``images`` a list of ``3 x H x W``
float tensors in ``[0, 1]`` (sizes may differ) or one ``N x 3 x H x W`` tensor, and per image a target
dict ``boxes`` (float ``[G, 4]`` xyxy absolute pixels), ``labels`` (int64 ``[G]``) and, for Mask R-CNN,
``masks`` (uint8 ``[G, H, W]``); ``tv_tensors.BoundingBoxes`` / ``Mask`` are accepted. ``G = 0`` (a
background-only image) is a valid training sample. Training returns the dict of losses
(``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``, ``loss_mask``);
evaluation returns per image ``boxes``, ``labels``, ``scores`` (by decreasing score) and ``masks``
(``[D, 1, H, W]`` probabilities in the original image).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from segdet.models.detection.fuse import fold_batchnorm
from segdet.models.detection.roi_heads import RoIHeads
from segdet.models.detection.rpn import RegionProposalNetwork
from segdet.models.detection.transform import DetectionTransform
from segdet.ops.nnpack_conv import nnpack_is_faster, use_nnpack


def _plain(x: Tensor) -> Tensor:
    """A tv_tensors subclass (BoundingBoxes, Mask) as a plain Tensor (no copy)."""
    return x.as_subclass(Tensor) if type(x) is not Tensor else x


class GeneralizedRCNN(nn.Module):
    """Two-stage detector; see the module docstring.

    Args:
        transform: :class:`~.transform.DetectionTransform`.
        backbone: module mapping the padded batch to a dict of feature maps, with ``out_channels``.
        rpn: :class:`~.rpn.RegionProposalNetwork`.
        roi_heads: :class:`~.roi_heads.RoIHeads` (``K + 1`` classes, background included).
        num_classes: ``K``, the object classes (no background).
    """

    def __init__(
        self,
        transform: DetectionTransform,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = num_classes

    @property
    def has_mask(self) -> bool:
        return self.roi_heads.has_mask

    def _prepare_targets(self, targets: Sequence[Mapping[str, Tensor]], num_images: int) -> list[dict]:
        """Plain tensors, checked, labels shifted to the RoI heads' ``1 .. K``."""
        if len(targets) != num_images:
            raise ValueError(f"{num_images} images but {len(targets)} targets")
        prepared = []
        for i, target in enumerate(targets):
            if "boxes" not in target or "labels" not in target:
                raise ValueError(f"target {i} needs 'boxes' and 'labels', has {sorted(target)}")
            boxes = _plain(target["boxes"])
            labels = _plain(target["labels"])
            if boxes.dim() != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"target {i}: boxes must be [G, 4], got shape {tuple(boxes.shape)}")
            if labels.shape != boxes.shape[:1]:
                raise ValueError(f"target {i}: {len(labels)} labels for {len(boxes)} boxes")
            if not boxes.is_floating_point():
                boxes = boxes.float()
            degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
            if degenerate.any():
                bad = boxes[int(torch.nonzero(degenerate)[0])].tolist()
                raise ValueError(f"target {i}: box {bad} has no positive width and height")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(f"target {i}: labels must be in [0, {self.num_classes - 1}]")
            new = {"boxes": boxes, "labels": labels.to(torch.int64) + 1}
            if "masks" in target:
                masks = _plain(target["masks"])
                new["masks"] = masks if masks.dtype == torch.uint8 else masks.to(torch.uint8)
            prepared.append(new)
        return prepared

    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[Mapping[str, Tensor]] | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training) or detections (evaluation); see the module docstring. ``generator`` drives
        the training randomness (multi-scale size, anchor and RoI sampling); ``None``: torch's global RNG."""
        if isinstance(images, Tensor) and images.dim() == 3:
            images = [images]
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        if self.training:
            if targets is None:
                raise ValueError("a detector in training mode needs targets")
            prepared = self._prepare_targets(targets, len(original_sizes))
        else:
            prepared = None
        batch, prepared = self.transform(images, prepared, generator)
        features = self.backbone(batch.tensors)
        if isinstance(features, Tensor):
            features = {"0": features}
        proposals, rpn_losses = self.rpn(batch, features, prepared, generator=generator)
        detections, head_losses = self.roi_heads(features, proposals, batch.image_sizes, prepared, generator)
        if self.training:
            return {**rpn_losses, **head_losses}
        for det in detections:
            det["labels"] = det["labels"] - 1
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)

    @torch.no_grad()
    def fuse_for_inference(
        self, channels_last: bool | None = None, fold: bool = True, nnpack: bool | None = None
    ) -> GeneralizedRCNN:
        """Prepare for fast inference, in place; every step keeps the outputs up to float32 rounding.

        * ``fold``: fold every BatchNorm (frozen, or eval-mode statistics) into the convolution before it
          (:func:`~.fuse.fold_batchnorm`); the model is for inference only afterwards.
        * ``nnpack``: run the wide 3x3 convolutions through NNPACK's Winograd / FFT kernels
          (:mod:`segdet.ops.nnpack_conv`); ``None``: where they were measured faster (a model on an
          AVX2 CPU).
        * ``channels_last``: store weights and batches channels-last; ``None``: on the CPU unless NNPACK
          is used (NNPACK works in NCHW, and layout copies around it cost more than channels-last gains:
          Faster R-CNN R50-FPN at 800², 2 AVX2 cores, 1.40 s NCHW against 1.46 s channels-last); never
          on CUDA, where float32 channels-last made ``segdet eval`` of a Penn-Fudan Mask R-CNN (images of
          many sizes) several times slower than the unfused NCHW model on an H200 (> 45 s against 12 s):
          folded and NCHW, the model runs the unfused model's convolution kernels minus the BatchNorm
          passes. Under autocast :func:`segdet.engine.inference.prepare_for_inference` asks for it.

        Returns the model, in eval mode."""
        self.eval()
        on_cpu = all(p.device.type == "cpu" for p in self.parameters())
        if nnpack is None:
            nnpack = nnpack_is_faster() and on_cpu
        if channels_last is None:
            channels_last = not nnpack and on_cpu
        if fold:
            fold_batchnorm(self)
        if nnpack:
            use_nnpack(self)
        if channels_last:
            self.to(memory_format=torch.channels_last)
            self.transform.memory_format = torch.channels_last
        return self

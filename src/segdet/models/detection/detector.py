"""What every detector shares: the interface, target checks and conversion, the transform in and out,
and the preparation for fast inference.

A detector is :class:`Detector` with its own :meth:`Detector.run_heads` (R-CNN: RPN then RoI heads;
RetinaNet, SSD: one dense head over the feature maps). The forward pass is the same for all:

1. the targets are checked and converted (plain tensors, float boxes, int64 labels shifted by
   :attr:`Detector.label_offset`, uint8 masks);
2. :class:`~.transform.DetectionTransform` normalises, resizes and batches the images (and targets);
3. the backbone (with its neck) gives a dict of feature maps;
4. :meth:`Detector.run_heads` gives the losses (training) or the detections in the resized images;
5. detections get their labels shifted back and are mapped to the original images (boxes scaled,
   masks pasted).

**Labels.** Datasets give contiguous object labels ``0 .. K-1`` without a background class; every
detector takes ``num_classes = K``, accepts and returns labels ``0 .. K-1``. Inside, a detector whose
classifier has a background class at index 0 (R-CNN's and SSD's softmax, torchvision's convention,
``K + 1`` logits) has ``label_offset = 1``: targets are shifted by ``+1`` on the way in and detections
by ``-1`` on the way out, nowhere else. RetinaNet's ``K`` sigmoid outputs need no background:
``label_offset = 0``.

**Interface** (torchvision's): ``model(images, targets=None)`` with ``images`` a list of ``3 x H x W``
float tensors in ``[0, 1]`` (sizes may differ) or one ``N x 3 x H x W`` tensor, and per image a target
dict ``boxes`` (float ``[G, 4]`` xyxy absolute pixels), ``labels`` (int64 ``[G]``) and, for instance
segmentation, ``masks`` (uint8 ``[G, H, W]``); ``tv_tensors.BoundingBoxes`` / ``Mask`` are accepted.
``G = 0`` (a background-only image) is a valid training sample. Training returns a dict of losses
(their sum is minimised); evaluation returns per image ``boxes``, ``labels``, ``scores`` (by decreasing
score) and, for Mask R-CNN, ``masks`` (``[D, 1, H, W]`` probabilities in the original image).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from segdet.models.detection.image_list import ImageList, as_size
from segdet.models.detection.transform import DetectionTransform
from segdet.models.fuse import fold_batchnorm
from segdet.models.memory_format import channels_last_pays, nnpack_pays
from segdet.ops.nnpack_conv import use_nnpack


def _plain(x: Tensor) -> Tensor:
    """A tv_tensors subclass (BoundingBoxes, Mask) as a plain Tensor (no copy)."""
    return x.as_subclass(Tensor) if type(x) is not Tensor else x


def prepare_targets(
    targets: Sequence[Mapping[str, Tensor]], num_images: int, num_classes: int, label_offset: int
) -> list[dict[str, Tensor]]:
    """Checked plain-tensor targets: float ``boxes`` ``[G, 4]`` of positive width and height, int64
    ``labels`` in ``[0, num_classes)`` shifted by ``label_offset``, uint8 ``masks`` when given. Raises
    ``ValueError`` naming the target and the problem."""
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
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"target {i}: labels must be in [0, {num_classes - 1}]")
        new = {"boxes": boxes, "labels": labels.to(torch.int64) + label_offset}
        if "masks" in target:
            masks = _plain(target["masks"])
            new["masks"] = masks if masks.dtype == torch.uint8 else masks.to(torch.uint8)
        prepared.append(new)
    return prepared


class Detector(nn.Module):
    """Base class of the detectors; see the module docstring.

    Args:
        transform: :class:`~.transform.DetectionTransform`.
        backbone: module mapping the padded batch to a dict of feature maps (or one map).
        num_classes: ``K``, the object classes (no background).

    Subclasses set :attr:`label_offset` and implement :meth:`run_heads`.
    """

    #: Index of the first object class inside the detector (1: class 0 is the background).
    label_offset: int = 1

    def __init__(self, transform: DetectionTransform, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.num_classes = num_classes

    def run_heads(
        self,
        batch: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None,
        generator: torch.Generator | None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """``(detections, losses)`` from the backbone's features: in training ``([], losses)`` with the
        prepared, resized ``targets``; in evaluation ``(detections, {})``, per image ``boxes`` in the
        resized image, ``labels`` (shifted by :attr:`label_offset`), ``scores`` (and ``masks``)."""
        raise NotImplementedError

    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[Mapping[str, Tensor]] | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training) or detections (evaluation); see the module docstring. ``generator`` drives
        the training randomness (multi-scale size, sampling); ``None``: torch's global RNG."""
        images, original_sizes, prepared = self.check_inputs(images, targets)
        batch, prepared = self.transform(images, prepared, generator)
        features = self.backbone(batch.tensors)
        if isinstance(features, Tensor):
            features = {"0": features}
        detections, losses = self.run_heads(batch, features, prepared, generator)
        return self.outputs(detections, losses, batch, original_sizes)

    def check_inputs(
        self, images: Sequence[Tensor] | Tensor, targets: Sequence[Mapping[str, Tensor]] | None
    ) -> tuple[Sequence[Tensor] | Tensor, list[tuple[int, int]], list[dict[str, Tensor]] | None]:
        """Step 1 of the module docstring: ``(images, original sizes, prepared targets)``; one
        ``3 x H x W`` image becomes a list of one, targets are prepared in training (required) and
        ``None`` in evaluation."""
        if isinstance(images, Tensor) and images.dim() == 3:
            images = [images]
        original_sizes = [(as_size(im.shape[-2]), as_size(im.shape[-1])) for im in images]
        prepared = None
        if self.training:
            if targets is None:
                raise ValueError("a detector in training mode needs targets")
            prepared = prepare_targets(targets, len(original_sizes), self.num_classes, self.label_offset)
        return images, original_sizes, prepared

    def outputs(
        self,
        detections: list[dict[str, Tensor]],
        losses: dict[str, Tensor],
        batch: ImageList,
        original_sizes: list[tuple[int, int]],
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Step 5 of the module docstring: the losses in training; else the detections with labels
        shifted back by :attr:`label_offset` and mapped to the original images."""
        if self.training:
            return losses
        if self.label_offset:
            for det in detections:
                det["labels"] = det["labels"] - self.label_offset
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)

    @torch.no_grad()
    def fuse_for_inference(
        self, channels_last: bool | None = None, fold: bool = True, nnpack: bool | None = None
    ) -> Detector:
        """Prepare for fast inference, in place; every step keeps the outputs up to float32 rounding.

        * ``fold``: fold every BatchNorm (frozen, or eval-mode statistics) into the convolution before it
          (:func:`segdet.models.fuse.fold_batchnorm`); the model is for inference only afterwards.
        * ``nnpack``: run the wide 3x3 convolutions through NNPACK's Winograd / FFT kernels
          (:mod:`segdet.ops.nnpack_conv`); ``None``: where they were measured faster
          (:func:`~segdet.models.memory_format.nnpack_pays`: a model without depthwise convolutions on an
          AVX2 CPU; on AMD Zen 4 one with an FPN or SSD).
        * ``channels_last``: store weights and batches channels-last; ``None``: on the CPU unless NNPACK
          is used (NNPACK works in NCHW, and layout copies around it cost more than channels-last gains:
          Faster R-CNN R50-FPN at 800², 2 AVX2 cores, 1.40 s NCHW against 1.46 s channels-last) or the
          model has depthwise convolutions dilated 5 or more
          (:func:`~segdet.models.memory_format.channels_last_pays`); never on CUDA, where
          float32 channels-last made ``segdet eval`` of a Penn-Fudan Mask R-CNN (images of many sizes)
          several times slower than the unfused NCHW model on an H200 (> 45 s against 12 s): folded and
          NCHW, the model runs the unfused model's convolution kernels minus the BatchNorm passes. Under
          autocast :func:`segdet.engine.inference.prepare_for_inference` asks for it.

        Returns the model, in eval mode."""
        self.eval()
        on_cpu = all(p.device.type == "cpu" for p in self.parameters())
        if nnpack is None:
            # depthwise models run faster channels-last than on NNPACK (segdet.models.memory_format)
            nnpack = on_cpu and nnpack_pays(self)
        if channels_last is None:
            channels_last = not nnpack and on_cpu and channels_last_pays(self)
        if fold:
            fold_batchnorm(self)
        if nnpack:
            use_nnpack(self)
        if channels_last:
            self.to(memory_format=torch.channels_last)
            self.transform.memory_format = torch.channels_last
        return self

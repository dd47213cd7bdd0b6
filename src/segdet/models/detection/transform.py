"""The image transform of the detectors: normalise, resize, batch; and map results back.

Forward (images and, in training, targets):

1. **normalise** each channel, ``x' = (x - mean_c) / std_c`` (ImageNet statistics by default, those the
   backbones were pre-trained with);
2. **resize** by one factor ``s = min(min_size / min(h, w), max_size / max(h, w))``: the shorter side
   becomes ``min_size`` unless the longer would then exceed ``max_size`` (Fast R-CNN, Girshick 2015,
   sec. 3.1: "scale ... so the shorter side is 600 pixels, the longer at most 1000"). The new size is
   ``floor(h s) x floor(w s)``, computed and interpolated by ``F.interpolate(scale_factor=s,
   recompute_scale_factor=True, mode="bilinear", align_corners=False)``, exactly as torchvision, so
   both give bit-identical tensors. In training ``min_size`` may be a tuple: one value is drawn per image
   (multi-scale training). With ``fixed_size = (H, W)`` every image is instead resized to exactly
   ``H x W`` (``F.interpolate(size=(H, W))``, aspect ratio not kept: SSD's 300 x 300 input). Target
   boxes scale per axis by ``new / old`` (float32 ratios), masks are resized by nearest-neighbour
   interpolation;
3. **batch**: images are zero-padded at the bottom and right to the largest height and width of the
   batch, rounded up to a multiple of ``size_divisible`` (32: the coarsest FPN stride, so every level
   has an integer size); ``image_sizes`` keeps each image's unpadded size.

Postprocess (inference): boxes are scaled back by ``old / new`` per axis (float32 ratios), and ``m x m``
mask probabilities are pasted into the original image (:func:`segdet.ops.masks.paste_masks_in_image`).

The result equals torchvision's ``GeneralizedRCNNTransform`` (tested bit for bit). A pre-batched
``N x 3 x H x W`` tensor is normalised, resized and padded as one tensor (one op each, no per-image
copies); the result is the same as for the list of its images.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdet.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from segdet.models.detection.image_list import ImageList, as_size, sizes_tensor
from segdet.ops.masks import paste_masks_in_image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DetectionTransform",
    "axis_ratios",
    "resize_boxes",
    "resize_scale",
]


def resize_scale(height: int, width: int, min_size: float, max_size: float) -> float:
    """``s = min(min_size / min(h, w), max_size / max(h, w))`` (Python floats, as torchvision; symbolic
    ones under ``torch.export`` with dynamic image sides: ``torch.sym_min`` / ``sym_max`` are the builtins
    on numbers and do not fix which term is the smaller on symbols)."""
    return torch.sym_min(min_size / torch.sym_min(height, width), max_size / torch.sym_max(height, width))


def _interpolate(x: Tensor, scale: float | tuple[int, int], mode: str) -> Tensor:
    """``x`` (``N x C x H x W``) resized by ``scale`` to ``floor(H s) x floor(W s)``, or to the size
    ``scale = (H', W')``."""
    if torch.compiler.is_exporting() and not isinstance(scale, tuple):
        # The size, not the factor: ONNX's Resize given a factor maps coordinates with it, PyTorch (with
        # recompute_scale_factor) with output / input size, which the size gives in both.
        # (torch.sym_int truncates: floor for these positive sizes; math.floor does not serialise)
        scale = (torch.sym_int(x.shape[-2] * scale), torch.sym_int(x.shape[-1] * scale))
    if isinstance(scale, tuple):
        if mode == "bilinear":
            return F.interpolate(x, size=scale, mode=mode, align_corners=False)
        return F.interpolate(x, size=scale, mode=mode)
    if mode == "bilinear":
        return F.interpolate(
            x, scale_factor=scale, mode=mode, recompute_scale_factor=True, align_corners=False
        )
    return F.interpolate(x, scale_factor=scale, mode=mode, recompute_scale_factor=True)


def axis_ratios(old_sizes: Tensor, new_sizes: Tensor) -> Tensor:
    """Per image ``(r_x, r_y, r_x, r_y)`` with ``r = new / old`` in float32: ``[N, 4]`` for ``[N, 2]``
    ``(h, w)`` sizes, to multiply xyxy boxes with."""
    ratios = new_sizes.to(torch.float32) / old_sizes.to(torch.float32)  # (r_y, r_x)
    return ratios.flip(-1).repeat(1, 2)


def resize_boxes(boxes: Tensor, old_size: Sequence[int], new_size: Sequence[int]) -> Tensor:
    """xyxy ``boxes`` of an ``old_size`` ``(h, w)`` image mapped to ``new_size`` (float32 ratios)."""
    ratio = axis_ratios(torch.tensor([old_size]), torch.tensor([new_size])).to(boxes.device)
    return boxes * ratio


class DetectionTransform(nn.Module):
    """Normalise, resize and batch images (and targets); map detections back. See the module docstring.

    Args:
        min_size: shorter side after resizing; a tuple draws one per image in training (the last one is
            used in evaluation).
        max_size: upper bound of the longer side.
        image_mean, image_std: per-channel normalisation.
        size_divisible: the padded batch's height and width are multiples of this.
        fixed_size: ``(H, W)`` every image is resized to (``min_size`` and ``max_size`` unused).
    """

    def __init__(
        self,
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        size_divisible: int = 32,
        fixed_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.min_size = tuple(min_size) if isinstance(min_size, Sequence) else (min_size,)
        if not self.min_size:
            raise ValueError("min_size must not be empty")
        self.max_size = max_size
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.size_divisible = size_divisible
        self.fixed_size = None if fixed_size is None else (int(fixed_size[0]), int(fixed_size[1]))
        # channels_last batches for a model converted to channels_last (see GeneralizedRCNN).
        self.memory_format = torch.contiguous_format
        # False: masks stay m x m in their boxes (segdet export's graphs; pasting is per-size work)
        self.paste_masks = True

    def extra_repr(self) -> str:
        size = (
            f"fixed_size={self.fixed_size}"
            if self.fixed_size is not None
            else f"min_size={self.min_size}, max_size={self.max_size}"
        )
        return f"{size}, mean={self.image_mean}, std={self.image_std}, size_divisible={self.size_divisible}"

    # -- forward -------------------------------------------------------------------------------------

    def normalize(self, images: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel for ``C x H x W`` or ``N x C x H x W`` float images."""
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point in [0, 1], got {images.dtype}")
        mean = torch.as_tensor(self.image_mean, dtype=images.dtype, device=images.device)[:, None, None]
        std = torch.as_tensor(self.image_std, dtype=images.dtype, device=images.device)[:, None, None]
        return torch.sub(images, mean).div_(std)  # one new tensor

    def _scale(self, size: tuple[int, int], generator: torch.Generator | None) -> float | tuple[int, int]:
        """The resize of an image of ``size``: a factor, or the fixed ``(H, W)``."""
        if self.fixed_size is not None:
            return self.fixed_size
        scale = resize_scale(*size, self._choose_min_size(generator), self.max_size)
        if not torch.compiler.is_exporting():
            # A side longer than max_size times the other floors that other to 0 pixels, which
            # F.interpolate refuses: keep one (the same sizes and pixels as the factor's otherwise).
            new = (int(size[0] * scale), int(size[1] * scale))
            if min(new) < 1:
                return (max(new[0], 1), max(new[1], 1))
        return scale

    def _choose_min_size(self, generator: torch.Generator | None) -> float:
        if not self.training or len(self.min_size) == 1:
            return self.min_size[-1]
        index = int(torch.randint(len(self.min_size), (1,), generator=generator))
        return self.min_size[index]

    def padded_size(self, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """The batch's ``(H, W)``: the largest height and width rounded up to ``size_divisible``."""
        d = self.size_divisible
        return (
            # ceil(h / d) * d in non-negative integers: ONNX's integer Div truncates (-(-h // d) would
            # round down there)
            (functools.reduce(torch.sym_max, (h for h, _ in sizes)) + d - 1) // d * d,
            (functools.reduce(torch.sym_max, (w for _, w in sizes)) + d - 1) // d * d,
        )

    def _resize_target(self, target: dict[str, Tensor], old: tuple[int, int], new: tuple[int, int], scale):
        target = dict(target)
        target["boxes"] = resize_boxes(target["boxes"], old, new)
        if "masks" in target:
            masks = target["masks"]
            if masks.shape[0] == 0:
                target["masks"] = masks.new_zeros((0, *new))
            else:
                resized = _interpolate(masks[:, None].float(), scale, "nearest")[:, 0]
                target["masks"] = resized.to(torch.uint8)
        return target

    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[dict[str, Tensor]] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        """Images (a list of ``3 x H_i x W_i`` or one ``N x 3 x H x W`` tensor, float in ``[0, 1]``) and
        optional targets (``boxes`` ``[G, 4]`` xyxy pixels, optional ``masks`` ``[G, H_i, W_i]``) ->
        the padded normalised batch and the resized targets (new dicts; the inputs are not modified).
        ``generator`` draws the training ``min_size`` when several are given."""
        if isinstance(images, Tensor) and images.dim() == 4:
            return self._forward_batch(images, targets, generator)
        images = list(images)
        if not images:
            raise ValueError("no images")
        if targets is not None and len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        resized, new_targets = [], []
        for i, image in enumerate(images):
            if image.dim() != 3:
                raise ValueError(f"image {i} must be C x H x W, got shape {tuple(image.shape)}")
            old = (as_size(image.shape[-2]), as_size(image.shape[-1]))
            scale = self._scale(old, generator)
            image = _interpolate(self.normalize(image)[None], scale, "bilinear")[0]
            resized.append(image)
            if targets is not None:
                new = (as_size(image.shape[-2]), as_size(image.shape[-1]))
                new_targets.append(self._resize_target(targets[i], old, new, scale))
        sizes = [(as_size(im.shape[-2]), as_size(im.shape[-1])) for im in resized]
        height, width = self.padded_size(sizes)
        batch = resized[0].new_zeros((len(resized), resized[0].shape[0], height, width))
        batch = batch.contiguous(memory_format=self.memory_format)
        for image, slot in zip(resized, batch, strict=True):
            slot[:, : image.shape[-2], : image.shape[-1]].copy_(image)
        return ImageList(batch, sizes), (new_targets if targets is not None else None)

    def _forward_batch(
        self, images: Tensor, targets: Sequence[dict[str, Tensor]] | None, generator: torch.Generator | None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        if self.training and len(self.min_size) > 1 and self.fixed_size is None:
            # one size per image: no longer one tensor
            return self.forward(list(images), targets, generator)
        if targets is not None and len(targets) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(targets)} targets")
        old = (as_size(images.shape[-2]), as_size(images.shape[-1]))
        scale = self._scale(old, generator)
        batch = _interpolate(self.normalize(images), scale, "bilinear")
        new = (as_size(batch.shape[-2]), as_size(batch.shape[-1]))
        height, width = self.padded_size([new])
        batch = F.pad(batch, (0, width - new[1], 0, height - new[0])).contiguous(
            memory_format=self.memory_format
        )
        new_targets = None
        if targets is not None:
            new_targets = [self._resize_target(t, old, new, scale) for t in targets]
        return ImageList(batch, [new] * images.shape[0]), new_targets

    # -- postprocess ---------------------------------------------------------------------------------

    def postprocess(
        self,
        detections: list[dict[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]],
        original_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Boxes (and ``m x m`` masks) of the resized images -> the original images' pixels.

        All images' boxes are rescaled in one multiplication; masks are pasted per image (each into its
        own image size).
        """
        if not detections:
            return detections
        device = detections[0]["boxes"].device
        ratios = axis_ratios(sizes_tensor(image_sizes, device), sizes_tensor(original_sizes, device))
        if len(detections) == 1:  # no sizes to split by (and none that torch.export must trace)
            scaled = [detections[0]["boxes"] * ratios]
        else:
            counts = [len(d["boxes"]) for d in detections]
            per_box = ratios.repeat_interleave(torch.as_tensor(counts, device=device), dim=0)
            scaled = torch.cat([d["boxes"] for d in detections]).mul(per_box).split(counts)
        results = []
        for det, image_boxes, size in zip(detections, scaled, original_sizes, strict=True):
            det = dict(det, boxes=image_boxes)
            if "masks" in det and self.paste_masks:
                det["masks"] = paste_masks_in_image(det["masks"], image_boxes, size)
            results.append(det)
        return results

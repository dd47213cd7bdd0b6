"""Drawing predictions and labels onto images: a colour palette, detections (boxes, labels, scores,
instance masks), semantic label maps, and PNG output.

Images are ``uint8`` tensors ``[3, H, W]`` (RGB, channels first, torchvision's layout). Box outlines and
text go through ``torchvision.utils.draw_bounding_boxes`` (Pillow), instance masks through
``torchvision.utils.draw_segmentation_masks``; semantic overlays are a plain alpha blend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from segdet.ops.palette import voc_palette

Color = tuple[int, int, int]


def color_palette(n: int) -> list[Color]:
    """``n`` distinct RGB colours, deterministic: Pascal VOC's bit-interleaved palette without its first
    entry (black), so that black stays free for "ignore" and class 0 is visible.

    ``color_palette(n)[k]`` is VOC's colour ``k + 1``: (128, 0, 0), (0, 128, 0), (128, 128, 0), ...
    All colours are distinct for ``n < 2**24``.
    """
    if n < 0:
        raise ValueError(f"color_palette needs n >= 0, got {n}")
    if n >= 2**24:
        raise ValueError(f"color_palette has at most 2**24 - 1 distinct colours, asked for {n}")
    return [tuple(int(v) for v in rgb) for rgb in voc_palette(n + 1)[1:]]


def _check_image(image: Tensor) -> Tensor:
    """A ``[3, H, W]`` uint8 copy on the CPU (grey ``[1, H, W]`` is repeated to RGB)."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a uint8 image [3|1, H, W], got {image.dtype} {tuple(image.shape)}")
    image = image.detach().cpu()
    return image.expand(3, -1, -1).clone() if image.shape[0] == 1 else image.clone()


def _outline_boxes(boxes: Tensor) -> Tensor:
    """Pixel rectangles to outline continuous xyxy boxes: the first and last pixel rows / columns covered.

    A box ``[10, 20)`` covers pixel columns 10..19, so its outline goes on columns 10 and 19 (Pillow's
    rectangle includes both end pixels); outlining it at 20 would draw one pixel outside the object.
    """
    x1y1 = boxes[:, :2].floor()
    x2y2 = torch.maximum(boxes[:, 2:].ceil() - 1, x1y1)
    return torch.cat((x1y1, x2y2), dim=1)


def _exclusive_masks(masks: Tensor, priority: Tensor) -> Tensor:
    """Give each pixel covered by several masks to only one of them, the one of highest priority.

    ``draw_segmentation_masks`` paints overlapping pixels black; with detections of touching objects
    that would hide both, so overlaps go to the higher-scoring (earlier, without scores) instance.
    """
    order = torch.argsort(priority, descending=True, stable=True)
    ordered = masks[order]
    # argmax returns the first maximal index: the highest-priority mask that covers the pixel.
    owner = ordered.to(torch.uint8).argmax(dim=0)
    exclusive = torch.zeros_like(ordered)
    exclusive.scatter_(0, owner[None], ordered.any(dim=0, keepdim=True))
    result = torch.zeros_like(masks)
    result[order] = exclusive
    return result


def _caption(label: int | None, score: float | None, class_names: Sequence[str] | None) -> str:
    parts = []
    if label is not None:
        parts.append(class_names[label] if class_names is not None else str(label))
    if score is not None:
        parts.append(f"{score:.2f}")
    return " ".join(parts)


def draw_detections(
    image_uint8_chw: Tensor,
    boxes: Tensor,
    labels: Tensor | None = None,
    scores: Tensor | None = None,
    masks: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.45,
) -> Tensor:
    """Draw detections (and instance masks) on an image.

    Masks are blended first (``out = (1 - alpha) * image + alpha * colour`` inside each mask), then box
    outlines and captions (``"name 0.87"``; the class index when ``class_names`` is None) are drawn on
    top. Colours come from :func:`color_palette`, by class when ``labels`` are given, else by detection.

    Args:
        image_uint8_chw: ``[3, H, W]`` (or ``[1, H, W]``) uint8 image; not modified.
        boxes: ``[N, 4]`` xyxy boxes in pixels.
        labels: ``[N]`` class indices (into ``class_names``).
        scores: ``[N]`` scores.
        masks: ``[N, H, W]`` or ``[N, 1, H, W]`` instance masks, bool, or probabilities drawn where > 0.5.
            Where masks overlap, the higher-scoring (or, without scores, earlier) detection is drawn.
        class_names: names of the classes, indexed by ``labels``.
        alpha: mask opacity.

    Returns:
        ``[3, H, W]`` uint8 image on the CPU.
    """
    image = _check_image(image_uint8_chw)
    boxes = boxes.detach().cpu().reshape(-1, 4).float()
    num = boxes.shape[0]
    label_list = labels.detach().cpu().tolist() if labels is not None else None
    score_list = scores.detach().cpu().float().tolist() if scores is not None else None
    for name, values in (("labels", label_list), ("scores", score_list)):
        if values is not None and len(values) != num:
            raise ValueError(f"{num} boxes but {len(values)} {name}")
    if num == 0:
        return image

    palette = color_palette(max(label_list) + 1 if label_list else num)
    colors = [palette[label_list[i]] if label_list else palette[i] for i in range(num)]

    if masks is not None:
        masks = masks.detach().cpu()
        if masks.dim() == 4:
            masks = masks[:, 0]
        if masks.shape[0] != num or masks.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"masks {tuple(masks.shape)} do not fit {num} boxes, image {tuple(image.shape)}")
        masks = masks if masks.dtype == torch.bool else masks > 0.5
        if score_list is not None:
            priority = torch.tensor(score_list)
        else:
            priority = -torch.arange(num, dtype=torch.float32)
        image = draw_segmentation_masks(image, _exclusive_masks(masks, priority), alpha=alpha, colors=colors)

    captions = None
    if label_list is not None or score_list is not None:
        captions = [
            _caption(
                label_list[i] if label_list is not None else None,
                score_list[i] if score_list is not None else None,
                class_names,
            )
            for i in range(num)
        ]
    # White text on a box-coloured background stays readable over masks and busy images.
    return draw_bounding_boxes(
        image,
        _outline_boxes(boxes),
        labels=captions,
        colors=colors,
        width=2,
        label_colors="white",
        fill_labels=True,
    )


def colorize_semantic(sem_hw: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Colour a semantic label map: class ``k`` becomes ``color_palette(num_classes)[k]``, ``ignore_index``
    black.

    Args:
        sem_hw: ``[H, W]`` integer labels in ``0..num_classes-1`` or ``ignore_index``.
        num_classes: number of classes.
        ignore_index: the "not labelled" value.

    Returns:
        ``[3, H, W]`` uint8 on ``sem_hw``'s device.

    Raises:
        ValueError: a value that is neither a class nor ``ignore_index``.
    """
    if sem_hw.dim() != 2 or sem_hw.is_floating_point():
        raise ValueError(f"expected an integer label map [H, W], got {sem_hw.dtype} {tuple(sem_hw.shape)}")
    sem = sem_hw.long()
    ignored = sem == ignore_index
    invalid = ~ignored & ((sem < 0) | (sem >= num_classes))
    if bool(invalid.any()):
        bad = sorted(set(sem[invalid].unique().tolist()))[:5]
        raise ValueError(f"label map values {bad} are neither 0..{num_classes - 1} nor ignore {ignore_index}")
    # Row num_classes of the lookup table is the ignore colour (black).
    lut = torch.tensor([*color_palette(num_classes), (0, 0, 0)], dtype=torch.uint8, device=sem.device)
    return lut[torch.where(ignored, num_classes, sem)].permute(2, 0, 1).contiguous()


def overlay_semantic(
    image: Tensor, sem: Tensor, num_classes: int, ignore_index: int = 255, alpha: float = 0.5
) -> Tensor:
    """Blend a semantic label map over an image: ``out = round((1 - alpha) * image + alpha * colour)`` on
    labelled pixels, the image unchanged on ``ignore_index`` pixels.

    Args:
        image: ``[3, H, W]`` uint8 image.
        sem: ``[H, W]`` integer label map of the same size.
        num_classes, ignore_index: as in :func:`colorize_semantic`.
        alpha: opacity of the colours.

    Returns:
        ``[3, H, W]`` uint8 on the image's device.
    """
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 image [3, H, W], got {image.dtype} {tuple(image.shape)}")
    if tuple(sem.shape) != tuple(image.shape[-2:]):
        raise ValueError(f"label map {tuple(sem.shape)} and image {tuple(image.shape)} differ in size")
    colors = colorize_semantic(sem.to(image.device), num_classes, ignore_index).float()
    blended = ((1.0 - alpha) * image.float() + alpha * colors).round().clamp(0, 255).to(torch.uint8)
    return torch.where((sem.to(image.device) == ignore_index)[None], image, blended)


def save_png(image_chw_uint8: Tensor, path: str | Path) -> Path:
    """Write a ``[3, H, W]`` or ``[1, H, W]`` uint8 image as a PNG (lossless), creating parent folders."""
    image = image_chw_uint8.detach().cpu()
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a uint8 image [3|1, H, W], got {image.dtype} {tuple(image.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(path, format="PNG")
    return path

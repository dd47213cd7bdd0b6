"""Batching samples for a ``DataLoader`` (``collate_fn``).

Detection models take a list of images of different sizes (they batch and pad them themselves, like
torchvision's ``GeneralizedRCNNTransform``), so detection batches are lists. Segmentation models take a
stacked tensor, so every sample must already have the same size (a fixed-size crop or letterbox).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from segdet.errors import ConfigError


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """``[(image, target), ...]`` -> ``([image, ...], [target, ...])``, sizes left as they are."""
    images = [sample[0] for sample in batch]
    targets = [sample[1] for sample in batch]
    return images, targets


def collate_segmentation(
    batch: Sequence[tuple[torch.Tensor, dict | torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(image, target), ...]`` -> images ``N x 3 x H x W`` and class maps ``N x H x W`` (int64).

    ``target`` is the semantic mask itself or a dict holding it under ``"semantic"``. Raises
    :class:`~segdet.errors.ConfigError` naming the sizes when samples differ in size, which means the
    transforms lack a fixed-size crop.
    """
    if len(batch) == 0:
        raise ConfigError("cannot collate an empty batch")
    images = [sample[0] for sample in batch]
    labels = [sample[1]["semantic"] if isinstance(sample[1], dict) else sample[1] for sample in batch]
    sizes = {tuple(x.shape[-2:]) for x in images} | {tuple(y.shape[-2:]) for y in labels}
    if len(sizes) > 1:
        listed = ", ".join(f"{h}x{w}" for h, w in sorted(sizes))
        raise ConfigError(
            f"cannot stack segmentation samples of different sizes (H x W: {listed}); use a transform with "
            "a fixed output size (segmentation_train's crop_size, a letterbox) or batch_size=1"
        )
    # Stack plain tensors: a batch is not one image, so the tv_tensor types are dropped.
    x = torch.stack([im.as_subclass(torch.Tensor) for im in images])
    y = torch.stack([lab.as_subclass(torch.Tensor) for lab in labels]).long()
    return x, y

"""A batch of images of different sizes, padded into one tensor, as the detectors consume it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def as_size(value: int | torch.SymInt) -> int:
    """A side length as an ``int``, except a symbolic one, which stays symbolic: under ``torch.export``
    with dynamic image sides (``segdet export``), ``int()`` would fix it to the traced example's value."""
    return value if isinstance(value, torch.SymInt) else int(value)


def sizes_tensor(
    sizes: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype = torch.int64
) -> Tensor:
    """``[N, 2]`` ``(h, w)`` of ``N`` images as a tensor; symbolic sizes (:func:`as_size`) stay symbolic
    (``torch.as_tensor`` would fix them to the traced example's)."""
    if not any(isinstance(v, torch.SymInt) for size in sizes for v in size):
        return torch.as_tensor(list(sizes), dtype=dtype, device=device).reshape(-1, 2)
    rows = [torch.stack([torch.scalar_tensor(v, dtype=dtype) for v in size]) for size in sizes]
    return torch.stack(rows).to(device)


@dataclass
class ImageList:
    """Padded images and the size of each image before padding.

    Attributes:
        tensors: ``N x C x H x W`` batch; image ``i`` occupies ``tensors[i, :, :h_i, :w_i]``, the rest is
            padding (usually zeros, with ``H``, ``W`` rounded up to a multiple of the backbone's stride).
        image_sizes: ``(h_i, w_i)`` of each image before padding; boxes are clipped to these, not to
            ``(H, W)``.

    The attribute names are torchvision's, so an ``ImageList`` also works with torchvision's detection
    modules (they only read these two attributes).
    """

    tensors: Tensor
    image_sizes: list[tuple[int, int]]

    def __post_init__(self) -> None:
        if self.tensors.dim() != 4:
            shape = tuple(self.tensors.shape)
            raise ValueError(f"ImageList.tensors must be N x C x H x W, got shape {shape}")
        if len(self.image_sizes) != self.tensors.shape[0]:
            n = self.tensors.shape[0]
            raise ValueError(f"{len(self.image_sizes)} image sizes for a batch of {n} images")
        self.image_sizes = [(as_size(h), as_size(w)) for h, w in self.image_sizes]

    def to(self, device: torch.device | str) -> ImageList:
        """The same batch on ``device`` (the sizes are plain Python ints)."""
        return ImageList(self.tensors.to(device), list(self.image_sizes))

"""Selective-search proposals for the images a detector is given: looked up in the cache, computed
(and cached) when missing.

A detector (R-CNN, Fast R-CNN) sees float images ``x = pixels / 255``; :func:`image_pixels` recovers
the pixels exactly and :class:`SelectiveSearchProposals` keys the cache with them
(:mod:`.cache`). A horizontally flipped image (the training augmentation) is looked up as such too:
its proposals are the cached ones of the unflipped image, mirrored, so flipping costs no search.
Any other change of the pixels (colour jitter, resizing before the model) is a new image whose
proposals are computed on first use.

Of the cached boxes (best first), those with a side shorter than ``min_size`` pixels are dropped (Fast
R-CNN's code drops sides under 2 px) and the first ``num_proposals`` are kept (2000 in both papers).

On the ``meta`` device (shape-only runs) there are no pixels to search, and a FLOP count on random
pixels should not search them (``stand_in = True``, set by :func:`segdet.models.flops.model_cost`):
the proposals are then a fixed grid of ``num_proposals`` boxes, so the heads are counted at that many
RoIs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from segdet.models.detection.proposals.cache import CacheEntry, ProposalCache, default_cache_dir, image_key
from segdet.models.detection.proposals.selective_search import (
    SelectiveSearchSettings,
    opencv_version,
    selective_search,
)


def image_pixels(image: Tensor) -> np.ndarray:
    """``H x W x 3`` uint8 RGB of a ``3 x H x W`` float image in ``[0, 1]`` (``round(255 x)``, exact for
    ``x = p / 255``) or of a ``3 x H x W`` uint8 image."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a 3 x H x W image, got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        image = (image.detach().float() * 255).round_().clamp_(0, 255).to(torch.uint8)
    return image.permute(1, 2, 0).cpu().numpy()


def grid_boxes(height: int, width: int, n: int) -> Tensor:
    """``n`` boxes of half the image's size on a regular grid (the stand-in proposals on ``meta``)."""
    k = max(1, math.ceil(math.sqrt(n)))
    steps = torch.arange(k, dtype=torch.float32) / k
    ys, xs = torch.meshgrid(steps * height / 2, steps * width / 2, indexing="ij")
    boxes = torch.stack([xs, ys, xs + width / 2, ys + height / 2], dim=-1).reshape(-1, 4)
    return boxes[:n]


def keep_proposals(boxes: np.ndarray, num_proposals: int, min_size: float) -> np.ndarray:
    """The first ``num_proposals`` of ``boxes`` (best first) whose sides are at least ``min_size``."""
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return boxes[sides >= min_size][:num_proposals]


class SelectiveSearchProposals:
    """The proposal source of R-CNN and Fast R-CNN (see the module docstring).

    Args:
        settings: selective search's settings.
        cache_dir: the cache's root; ``None``: :func:`~.cache.default_cache_dir`; ``""``: no disk
            cache (kept in memory for this object's life only).
        num_proposals: ``(training, inference)`` boxes kept per image.
        min_size: boxes with a side under this many pixels are dropped.
    """

    def __init__(
        self,
        settings: SelectiveSearchSettings,
        cache_dir: str | Path | None = None,
        num_proposals: tuple[int, int] = (2000, 2000),
        min_size: float = 2.0,
    ) -> None:
        if min(num_proposals) < 1:
            raise ValueError(f"num_proposals must be at least 1, got {num_proposals}")
        self.settings = settings
        root = default_cache_dir() if cache_dir is None else cache_dir
        self.cache = ProposalCache(root, settings) if str(root) else None
        self.num_proposals = tuple(num_proposals)
        self.min_size = float(min_size)
        self._memory: dict[str, CacheEntry] = {}
        #: Grid boxes instead of a search (see the module docstring).
        self.stand_in = False

    def __repr__(self) -> str:
        where = self.cache.folder if self.cache is not None else "memory"
        return (
            f"SelectiveSearchProposals({self.settings}, cache={where}, num_proposals={self.num_proposals}, "
            f"min_size={self.min_size})"
        )

    def _get(self, key: str, size: tuple[int, int]) -> CacheEntry | None:
        if self.cache is None:
            return self._memory.get(key)
        return self.cache.get(key, size)

    def _put(self, key: str, size: tuple[int, int], entry: CacheEntry) -> None:
        if self.cache is None:
            self._memory[key] = entry
        else:
            self.cache.put(key, size, entry, opencv_version())

    def lookup(self, pixels: np.ndarray) -> tuple[CacheEntry, bool]:
        """All boxes of an image (best first) and whether they came from the cache; computed and cached
        when neither the image nor its mirror image is there."""
        size = (int(pixels.shape[0]), int(pixels.shape[1]))
        key = image_key(pixels)
        entry = self._get(key, size)
        if entry is not None:
            return entry, True
        mirrored = self._get(image_key(pixels[:, ::-1]), size)
        if mirrored is not None:
            boxes = mirrored.boxes.copy()
            boxes[:, [0, 2]] = size[1] - mirrored.boxes[:, [2, 0]]
            return CacheEntry(boxes, mirrored.seconds), True
        start = time.perf_counter()
        boxes = selective_search(pixels, self.settings)
        entry = CacheEntry(boxes, time.perf_counter() - start)
        self._put(key, size, entry)
        return entry, False

    def __call__(self, images: Sequence[Tensor], training: bool = False) -> list[Tensor]:
        """Per image float32 ``[R_i, 4]`` xyxy proposals in its own pixels, on its device."""
        n = self.num_proposals[0 if training else 1]
        out = []
        for image in images:
            height, width = int(image.shape[-2]), int(image.shape[-1])
            if image.device.type == "meta" or self.stand_in:
                out.append(grid_boxes(height, width, n).to(image.device))
                continue
            entry, _ = self.lookup(image_pixels(image))
            boxes = keep_proposals(entry.boxes, n, self.min_size)
            out.append(torch.from_numpy(np.ascontiguousarray(boxes)).to(image.device))
        return out

"""The torch ``Dataset`` over an :class:`~segdet.data.structures.AnnotationSet`.

Samples follow torchvision's detection convention so users' code carries over::

    image:  tv_tensors.Image, float32, 3 x H x W, values in [0, 1]
    target: {"boxes": tv_tensors.BoundingBoxes (XYXY, absolute pixels), "labels": int64 [N],
             "masks": tv_tensors.Mask uint8 [N, H, W] (when masks are requested),
             "iscrowd": bool [N], "difficult": bool [N], "image_id": int,
             "semantic": tv_tensors.Mask int64 [H, W] (when requested; ``ignore_index`` marks void)}

Labels are the contiguous class indices of the annotation set (0..K-1); detection models add their
background class themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from segdet.data.io import load_image
from segdet.data.masks import mask_to_bitmap, read_label_png
from segdet.data.structures import AnnotationSet, ImageRecord
from segdet.data.target_transforms import SemanticMask
from segdet.errors import DataError

logger = logging.getLogger("segdet.data")


class SegDetDataset(Dataset):
    """Indexable samples of an annotation set.

    Args:
        annotations: the dataset, as a reader returned it.
        transforms: a callable ``(image, target) -> (image, target)``, e.g. a preset of
            :mod:`segdet.data.transforms`; it sees the image as uint8 and the float conversion to
            [0, 1] happens after it unless it already converted.
        masks: decode instance masks into ``target["masks"]``.
        semantic: load the semantic mask into ``target["semantic"]``.
        include_crowd: keep crowd objects (``iscrowd``); training usually leaves them out.
        strict: refuse (raise :class:`DataError`) an image that cannot be read or whose masks do not
            fit it; otherwise report it once (logged) and count it (:meth:`unreadable`).
        substitute: without ``strict``, what a bad image's index yields: the next readable sample
            (training: batches stay full), or, with ``substitute=False``, ``None``, which the evaluation
            collate functions leave out (evaluation: no image may be counted twice).
    """

    def __init__(
        self,
        annotations: AnnotationSet,
        transforms: Callable | None = None,
        *,
        masks: bool = False,
        semantic: bool = False,
        include_crowd: bool = False,
        strict: bool = False,
        substitute: bool = True,
    ) -> None:
        self.annotations = annotations
        self.transforms = transforms
        self.masks = masks
        self.semantic = semantic
        self.include_crowd = include_crowd
        self.strict = strict
        self.substitute = substitute
        # One flag per image, in shared memory: DataLoader workers mark what they skipped where the
        # main process can count it.
        self._bad = torch.zeros(len(annotations.images), dtype=torch.bool).share_memory_()
        self._decoded: list | None = None  # preload()'s samples

    @property
    def classes(self) -> list[str]:
        return self.annotations.classes

    def __len__(self) -> int:
        return len(self.annotations.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict] | None:
        n = len(self)
        for step in range(n):
            i = (index + step) % n
            try:
                return self.load(i)
            except DataError as e:
                if self.strict:
                    raise
                if i < len(self._bad) and not self._bad[i]:
                    self._bad[i] = True
                    logger.warning("skipping image %d: %s", self.annotations.images[i].id, e)
                if not self.substitute:
                    return None
        raise DataError("no readable image in the dataset", self.annotations.source)

    def unreadable(self) -> list[Path]:
        """The image files skipped so far (in any worker process) because they could not be loaded."""
        images = self.annotations.images
        return [images[i].path for i in torch.nonzero(self._bad).flatten().tolist() if i < len(images)]

    def load(self, index: int) -> tuple[torch.Tensor, dict]:
        """The sample at ``index``; raises :class:`DataError` when its files are bad."""
        if self._decoded is not None:
            decoded = self._decoded[index]
            if isinstance(decoded, DataError):
                raise decoded
            image, target = decoded
            target = dict(target)  # the transforms replace entries: keep the cached dict as it is
        else:
            image, target = self.decode(index)
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        if image.dtype == torch.uint8:
            image = tv_tensors.wrap(image.float().div_(255.0), like=image)
        return image, target

    def decode(self, index: int) -> tuple[torch.Tensor, dict]:
        """The image at ``index`` as a ``uint8`` tensor and its target, before any transform."""
        record = self.annotations.images[index]
        image = load_image(record.path)
        h, w = image.shape[-2:]
        if (w, h) != (record.width, record.height):
            raise DataError(
                f"image is {w}x{h} but its annotation says {record.width}x{record.height}", record.path
            )
        return image, self.target(record)

    def preload(self, threads: int = 4) -> None:
        """Decode every sample once and keep it in memory (images as ``uint8``): later loads only run the
        transforms. For datasets that fit in memory; worker processes started afterwards share the
        decoded tensors with this one (fork, copy-on-write). Decoding runs in ``threads`` threads
        (Pillow and zlib release the GIL); a bad file is kept as its error and reported when loaded."""
        from concurrent.futures import ThreadPoolExecutor

        def decode(index: int) -> tuple[torch.Tensor, dict] | DataError:
            try:
                return self.decode(index)
            except DataError as e:
                return e

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            self._decoded = list(pool.map(decode, range(len(self))))

    def target(self, record: ImageRecord) -> dict:
        """The target dict of one image, before transforms."""
        insts = [o for o in record.instances if self.include_crowd or not o.iscrowd]
        h, w = record.height, record.width
        boxes = torch.tensor([o.box for o in insts], dtype=torch.float32).reshape(-1, 4)
        target: dict = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor([o.label for o in insts], dtype=torch.int64),
            "iscrowd": torch.tensor([o.iscrowd for o in insts], dtype=torch.bool),
            "difficult": torch.tensor([o.difficult for o in insts], dtype=torch.bool),
            "image_id": record.id,
        }
        if self.masks:
            target["masks"] = tv_tensors.Mask(self._masks(record, insts))
        if self.semantic:
            target["semantic"] = SemanticMask(self._semantic(record))
        return target

    def _masks(self, record: ImageRecord, insts: list) -> torch.Tensor:
        h, w = record.height, record.width
        out = np.zeros((len(insts), h, w), dtype=np.uint8)
        cache: dict = {}
        for k, o in enumerate(insts):
            if o.mask is None:
                # A box-only object still needs a mask of the right size; its box is the best we have.
                x1, y1, x2, y2 = (round(v) for v in o.box)
                out[k, y1:y2, x1:x2] = 1
                continue
            path = getattr(o.mask, "path", None)
            if path is not None:  # instance-id PNG: decode the file once for all its objects
                if path not in cache:
                    cache[path] = read_label_png(path)
                ids = cache[path]
                if ids.shape != (h, w):
                    raise DataError(f"mask is {ids.shape[1]}x{ids.shape[0]}, image is {w}x{h}", path)
                out[k] = ids == o.mask.value
            else:
                out[k] = mask_to_bitmap(o.mask, h, w)
        return torch.from_numpy(out)

    def _semantic(self, record: ImageRecord) -> torch.Tensor:
        h, w = record.height, record.width
        ignore = self.annotations.ignore_index
        if record.semantic is None:
            return torch.full((h, w), ignore, dtype=torch.int64)
        sem = record.semantic
        if not isinstance(sem, np.ndarray):
            sem = read_label_png(sem)
        if sem.shape != (h, w):
            raise DataError(f"label mask is {sem.shape[1]}x{sem.shape[0]}, image is {w}x{h}", record.semantic)
        sem = torch.from_numpy(np.asarray(sem, dtype=np.int64))
        bad = (sem >= len(self.annotations.semantic_classes)) & (sem != ignore) | (sem < 0)
        if bool(bad.any()):
            values = sorted(set(sem[bad].unique().tolist()))[:5]
            n = len(self.annotations.semantic_classes)
            raise DataError(
                f"label mask has values {values} outside the {n} classes",
                record.semantic if not isinstance(record.semantic, np.ndarray) else record.path,
            )
        return sem


def cached(dataset: SegDetDataset, cache: bool) -> SegDetDataset:
    """``dataset``, preloaded (:meth:`SegDetDataset.preload`) when ``cache``."""
    if cache:
        dataset.preload()
    return dataset

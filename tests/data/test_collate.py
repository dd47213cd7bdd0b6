"""Batch collation for detection (lists) and segmentation (stacked tensors).

Reference: the samples themselves (``torch.equal`` with the inputs, and ``torch.stack`` of them).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from segdet.data import shapes
from segdet.data import transforms as T
from segdet.data.collate import collate_detection, collate_segmentation
from segdet.data.dataset import SegDetDataset
from segdet.errors import ConfigError


def _sample(h: int, w: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    image = tv_tensors.Image(torch.rand(3, h, w, generator=g))
    target = {
        "boxes": tv_tensors.BoundingBoxes([[0, 0, 2, 2]], format="XYXY", canvas_size=(h, w)),
        "labels": torch.tensor([seed]),
        "semantic": T.SemanticMask(torch.randint(0, 5, (h, w), generator=g)),
    }
    return image, target


def test_collate_detection_keeps_sizes_and_order():
    """Images of different sizes come back as a list, in order, untouched (same objects)."""
    batch = [_sample(10, 12, 0), _sample(7, 5, 1)]
    images, targets = collate_detection(batch)
    assert [im is s[0] for im, s in zip(images, batch, strict=True)] == [True, True]
    assert [t is s[1] for t, s in zip(targets, batch, strict=True)] == [True, True]


def test_collate_segmentation_stacks():
    """N x 3 x H x W float images and N x H x W int64 labels equal torch.stack of the inputs; a bare
    tensor target works like a dict's "semantic"."""
    batch = [_sample(6, 9, 0), _sample(6, 9, 1)]
    x, y = collate_segmentation(batch)
    assert type(x) is torch.Tensor and x.shape == (2, 3, 6, 9)
    assert torch.equal(x, torch.stack([b[0].as_subclass(torch.Tensor) for b in batch]))
    assert y.dtype == torch.int64 and y.shape == (2, 6, 9)
    assert torch.equal(y, torch.stack([b[1]["semantic"].as_subclass(torch.Tensor) for b in batch]))
    x2, y2 = collate_segmentation([(b[0], b[1]["semantic"].to(torch.uint8)) for b in batch])
    assert torch.equal(x2, x) and torch.equal(y2, y)


def test_collate_segmentation_names_the_sizes():
    """Different sizes raise ConfigError naming both sizes."""
    with pytest.raises(ConfigError, match=r"6x9.*7x9"):
        collate_segmentation([_sample(6, 9, 0), _sample(7, 9, 1)])


def test_dataloader_with_presets(tmp_path):
    """A DataLoader over SegDetDataset: segmentation_train crops give a 2 x 3 x 32 x 32 batch;
    detection_eval keeps each image's own (resized) size."""
    ann = shapes.generate(tmp_path, 2, seed=0, size=(40, 48))
    seg = SegDetDataset(ann, T.segmentation_train(32), semantic=True)
    x, y = next(iter(DataLoader(seg, batch_size=2, collate_fn=collate_segmentation)))
    assert x.shape == (2, 3, 32, 32) and y.shape == (2, 32, 32) and y.dtype == torch.int64
    det = SegDetDataset(ann, T.detection_eval(60, 100))
    images, targets = next(iter(DataLoader(det, batch_size=2, collate_fn=collate_detection)))
    assert [tuple(im.shape) for im in images] == [(3, 60, 72)] * 2
    assert [t["image_id"] for t in targets] == [0, 1]

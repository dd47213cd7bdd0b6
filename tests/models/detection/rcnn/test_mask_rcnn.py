"""Mask R-CNN assembled from our parts against torchvision's ``maskrcnn_resnet50_fpn`` (random weights
converted by ``from_torchvision``), and its mask-specific training behaviour."""

from __future__ import annotations

import torch
from test_faster_rcnn import TINY, torchvision_parity

from segdet.models import build


def test_mask_rcnn_matches_torchvision(detector_helpers):
    """Boxes, scores and pasted masks ``[D, 1, H, W]`` equal torchvision's to 1e-4 (abs), labels + 1
    equal, for two images of different sizes (25 detections per image keep the mask head's CPU time
    low)."""
    torchvision_parity("maskrcnn_resnet50_fpn", detector_helpers, box_detections_per_img=25)


def test_mask_rcnn_trains_on_mixed_and_background_batches():
    """loss_mask is finite and positive with objects, exactly 0 (with a gradient) for a background-only
    batch, as are the two box-regression losses; tv_tensors.Mask targets are accepted."""
    from torchvision import tv_tensors

    model = build("maskrcnn_resnet50_fpn", num_classes=2, backbone="resnet18", **TINY).train()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 100, 90, generator=g)]
    mask = torch.zeros(1, 96, 128, dtype=torch.uint8)
    mask[0, 20:70, 30:90] = 1
    objects = {
        "boxes": torch.tensor([[30.0, 20.0, 90.0, 70.0]]),
        "labels": torch.tensor([1]),
        "masks": tv_tensors.Mask(mask),
    }
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 100, 90, dtype=torch.uint8),
    }
    losses = model(images, [objects, empty], generator=torch.Generator().manual_seed(1))
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_mask"].item() > 0
    empty0 = dict(empty, masks=torch.zeros(0, 96, 128, dtype=torch.uint8))
    losses = model(images, [empty0, empty], generator=torch.Generator().manual_seed(1))
    assert losses["loss_mask"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
    assert losses["loss_rpn_box_reg"].item() == 0.0
    sum(losses.values()).backward()

"""RetinaNet on EfficientDet's BiFPN (``neck="bifpn"``): training reaches every parameter, BatchNorm folding
keeps the detections."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segdet.models import build
from segdet.models.necks import BiFPN

# A narrow ResNet-18 RetinaNet v2 on a 32-channel BiFPN, images of about 100 px.
SMALL = {"backbone": "resnet18", "fpn_channels": 32, "neck": "bifpn", "min_size": 96, "max_size": 128}


def test_retinanet_on_a_bifpn_trains_every_parameter():
    """``neck="bifpn"``: finite losses; every trainable parameter (fusion weights included) has a
    gradient after one step; an unknown neck is refused."""
    torch.manual_seed(0)
    model = build("retinanet_resnet50_fpn_v2", 3, **SMALL).train()
    assert isinstance(model.backbone.fpn, BiFPN) and len(model.backbone.fpn.layers) == 3
    # Two images: BatchNorm in training needs more than one value per channel on the 1 x 2 level P7.
    target = {"boxes": torch.tensor([[10.0, 10, 50, 60]]), "labels": torch.tensor([1])}
    losses = model([torch.rand(3, 100, 130), torch.rand(3, 90, 120)], [target, target])
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    with pytest.raises(ValueError, match="neck"):
        build("retinanet_resnet50_fpn", 3, backbone="resnet18", neck="panet")


def test_folded_bifpn_keeps_detections(detector_helpers, paired_detections, random_batchnorm_fn):
    """BatchNorm folded into the separable convolutions (``fuse_for_inference``, without NNPACK) gives the
    same detections, paired: in float64 to 1e-8 (the folding is exact algebra; in float32 its rounding,
    through three BiFPN layers and the heads, moves boxes of ~100 px by ~1e-4 px). Random weights with
    non-trivial BatchNorm statistics."""
    structured_image, _ = detector_helpers
    torch.manual_seed(0)
    model = build("retinanet_resnet50_fpn_v2", 3, score_thresh=0.0, **SMALL)
    random_batchnorm_fn(model.backbone.fpn, 3)
    g = torch.Generator().manual_seed(1)
    images = [structured_image(96, 128, g).double(), structured_image(100, 90, g).double()]
    model.double().eval()
    with torch.no_grad():
        plain = model(images)
        fused = model.fuse_for_inference(nnpack=False)(images)
    assert not [m for m in model.backbone.fpn.modules() if isinstance(m, nn.BatchNorm2d)]
    paired_detections(fused, plain, atol=1e-8, label_shift=0)

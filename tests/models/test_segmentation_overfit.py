"""Every segmentation model must be able to learn: it overfits four synthetic shapes images.

The images come from :func:`segdet.data.shapes.render` (48 px, seed 1, 3 to 6 objects: all five
classes present with hundreds of pixels each); the target is the semantic mask. Each model is trained
with Adam on the full batch and evaluated in eval mode every 10 steps; it must reach a mean IoU of 0.9
over the five classes (computed here from a numpy confusion matrix) within ``max_steps`` steps. The
bounds are about 1.6-2x the steps each model needed when the test was written (50 for the
ResNet-18 models, 100 for the small U-Net).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segdet.data.shapes import render
from segdet.models import build

NUM_CLASSES = 5  # background + circle, rectangle, triangle, ellipse
TARGET_MIOU = 0.9


def _shapes(size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    samples = [render(i, seed=1, size=size, min_objects=3) for i in range(4)]
    x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    y = torch.from_numpy(np.stack([s.semantic for s in samples])).long()
    return x, y


def mean_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """Mean over classes present in target or prediction of TP / (TP + FP + FN) (Long et al. 2015)."""
    cm = np.bincount(target.ravel() * num_classes + pred.ravel(), minlength=num_classes**2)
    cm = cm.reshape(num_classes, num_classes)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    return float((tp[union > 0] / union[union > 0]).mean())


def test_mean_iou_reference():
    """The helper on a hand-computed case: IoUs 1/2 and 2/3 -> mean 7/12."""
    pred = np.array([0, 0, 1, 1])
    target = np.array([0, 1, 1, 1])
    assert mean_iou(pred, target, 2) == pytest.approx((1 / 2 + 2 / 3) / 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "options", "lr", "max_steps"),
    [
        ("fcn8s", {"backbone": "resnet18"}, 1e-3, 100),
        ("unet", {"base_channels": 8}, 3e-3, 160),
        ("unet_backbone", {"backbone": "resnet18", "decoder_channels": (64, 32, 32, 16, 16)}, 1e-3, 80),
        (
            "deeplabv3plus",
            {"backbone": "resnet18", "output_stride": 16, "aspp_channels": 64, "decoder_channels": 64},
            1e-3,
            80,
        ),
    ],
    ids=["fcn8s-resnet18", "unet", "unet-resnet18", "deeplabv3plus-resnet18-os16"],
)
def test_overfits_shapes(name, options, lr, max_steps):
    """Reaches mIoU >= 0.9 on its four training images (eval mode) within max_steps Adam steps."""
    torch.manual_seed(0)
    x, y = _shapes()
    model = build(name, num_classes=NUM_CLASSES, **options)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for step in range(1, max_steps + 1):
        model.train()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == max_steps:
            model.eval()
            with torch.no_grad():
                pred = model(x).argmax(1)
            history.append((step, round(mean_iou(pred.numpy(), y.numpy(), NUM_CLASSES), 3)))
            if history[-1][1] >= TARGET_MIOU:
                break
    assert history[-1][1] >= TARGET_MIOU, f"{name} did not overfit: (step, mIoU) = {history}"

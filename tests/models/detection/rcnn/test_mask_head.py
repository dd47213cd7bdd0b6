"""Mask R-CNN mask branch against torchvision.models.detection (mask_rcnn heads, roi_heads functions)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection import mask_rcnn as tv_mask_rcnn
from torchvision.models.detection import roi_heads as tv_roi_heads

from segdet.models.detection.rcnn.mask_head import (
    MaskRCNNHeads,
    MaskRCNNPredictor,
    maskrcnn_inference,
    maskrcnn_loss,
    project_masks_on_boxes,
)


def _randomise(module: nn.Module, seed: int) -> None:
    """Random weights and BatchNorm statistics (positive variances)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if t.is_floating_point():
                if "running_var" in name:
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)


@pytest.mark.parametrize(("dilation", "norm_layer"), [(1, None), (2, None), (1, nn.BatchNorm2d)])
def test_mask_heads_match_torchvision(dilation, norm_layer):
    """Same state-dict keys; outputs equal torchvision's MaskRCNNHeads / MaskRCNNPredictor to 1e-6."""
    tv_head = tv_mask_rcnn.MaskRCNNHeads(8, [6, 6, 6, 6], dilation, norm_layer=norm_layer)
    tv_pred = tv_mask_rcnn.MaskRCNNPredictor(6, 5, 3)
    _randomise(tv_head, 0)
    _randomise(tv_pred, 1)
    head = MaskRCNNHeads(8, (6, 6, 6, 6), dilation, norm_layer=norm_layer)
    pred = MaskRCNNPredictor(6, 5, 3)
    head.load_state_dict(tv_head.state_dict())
    pred.load_state_dict(tv_pred.state_dict())
    x = torch.randn(5, 8, 14, 14, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = tv_pred(tv_head.eval()(x))
        got = pred(head.eval()(x))
    assert got.shape == (5, 3, 28, 28)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_mask_heads_load_legacy_keys():
    """``mask_fcn{k}.weight`` (old checkpoints) lands in ``{k-1}.0.weight``."""
    head = MaskRCNNHeads(4, (3, 3))
    legacy = {
        f"mask_fcn{i + 1}.{kind}": torch.full_like(p, float(i + 1))
        for i in range(2)
        for kind, p in (("weight", head[i][0].weight), ("bias", head[i][0].bias))
    }
    head.load_state_dict(legacy)
    assert torch.all(head[1][0].weight == 2.0) and torch.all(head[0][0].bias == 1.0)


def _gt_masks(num: int, size: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rectangles with a random hole, as uint8 masks, and their boxes."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    masks = torch.zeros(num, h, w, dtype=torch.uint8)
    boxes = []
    for i in range(num):
        x0, y0 = (
            int(torch.randint(0, w // 2, (1,), generator=g)),
            int(torch.randint(0, h // 2, (1,), generator=g)),
        )
        x1, y1 = (
            x0 + int(torch.randint(8, w // 2, (1,), generator=g)),
            y0 + int(torch.randint(8, h // 2, (1,), generator=g)),
        )
        masks[i, y0:y1, x0:x1] = 1
        masks[i, y0 + 2 : y0 + 5, x0 + 3 : x0 + 6] = 0
        boxes.append([x0, y0, x1, y1])
    return masks, torch.tensor(boxes, dtype=torch.float32)


def test_mask_targets_and_loss_match_torchvision():
    """Targets equal torchvision's project_masks_on_boxes and the loss its maskrcnn_loss (1e-6), over
    two images, one of them without foreground RoIs."""
    g = torch.Generator().manual_seed(3)
    masks0, boxes0 = _gt_masks(3, (60, 70), 4)
    masks1, _ = _gt_masks(2, (50, 40), 5)
    proposals = [boxes0[[0, 2, 1, 0]] + torch.randn(4, 4, generator=g), torch.zeros(0, 4)]
    matched = [torch.tensor([0, 2, 1, 0]), torch.zeros(0, dtype=torch.int64)]
    labels = [torch.tensor([3, 1, 2]), torch.tensor([1, 1])]
    logits = torch.randn(4, 4, 28, 28, generator=g, requires_grad=True)

    torch.testing.assert_close(
        project_masks_on_boxes(masks0, proposals[0], matched[0], 28),
        tv_roi_heads.project_masks_on_boxes(masks0, proposals[0], matched[0], 28),
    )
    got = maskrcnn_loss(logits, proposals, [masks0, masks1], labels, matched)
    expected = tv_roi_heads.maskrcnn_loss(logits, proposals, [masks0, masks1], labels, matched)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    (grad,) = torch.autograd.grad(got, logits)
    # Only the ground-truth class's channel gets a gradient.
    assert grad[0, [0, 1, 2]].abs().sum() == 0 and grad[0, 3].abs().sum() > 0


def test_mask_loss_without_foreground_is_zero_with_graph():
    logits = torch.randn(0, 3, 28, 28, requires_grad=True)
    loss = maskrcnn_loss(
        logits,
        [torch.zeros(0, 4)],
        [torch.zeros(1, 20, 20)],
        [torch.tensor([1])],
        [torch.zeros(0, dtype=torch.int64)],
    )
    assert loss.item() == 0 and loss.requires_grad


def test_maskrcnn_inference_matches_torchvision():
    """Per image, the sigmoid of the predicted class's mask, as torchvision's maskrcnn_inference."""
    logits = torch.randn(5, 4, 28, 28, generator=torch.Generator().manual_seed(6))
    labels = [torch.tensor([1, 3]), torch.tensor([], dtype=torch.int64), torch.tensor([2, 2, 1])]
    got = maskrcnn_inference(logits, labels)
    expected = tv_roi_heads.maskrcnn_inference(logits, labels)
    assert [g.shape for g in got] == [(2, 1, 28, 28), (0, 1, 28, 28), (3, 1, 28, 28)]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)

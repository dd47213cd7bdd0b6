"""Mask pasting (``segdet.ops.masks``) against torchvision's ``paste_masks_in_image``."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import roi_heads as tv_roi_heads

from segdet.ops import paste_masks_in_image


@pytest.mark.parametrize("padding", [1, 0, 3])
def test_paste_masks_matches_torchvision(padding):
    """Random masks in boxes of every kind (tiny, thin, partly outside, larger than the image,
    fractional corners) pasted equal torchvision's per-mask loop to 2e-5 (its bilinear weights round
    differently by ~1e-6)."""
    g = torch.Generator().manual_seed(7)
    h, w = 57, 83
    n = 60
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w + 20.0, h + 20.0]) - 10
    wh = torch.exp(torch.empty(n, 2).uniform_(-2.0, 4.8, generator=g))
    boxes = torch.cat((xy, xy + wh), dim=1)
    # torchvision's loop fails (shape mismatch) for boxes wholly outside the image: keep overlapping ones.
    overlaps = (boxes[:, 0] < w - 3) & (boxes[:, 1] < h - 3) & (boxes[:, 2] > 3) & (boxes[:, 3] > 3)
    boxes = torch.cat(
        (
            boxes[overlaps],
            torch.tensor(
                [
                    [-30.0, -20.0, 120.0, 90.0],
                    [10.0, 10.0, 10.0, 10.0],
                    [0.0, 0.0, 0.4, 50.0],
                    [82.5, 56.5, 83.0, 57.0],
                ]
            ),
        )
    )
    masks = torch.rand(len(boxes), 1, 28, 28, generator=g)
    got = paste_masks_in_image(masks, boxes, (h, w), padding=padding)
    expected = tv_roi_heads.paste_masks_in_image(masks, boxes, (h, w), padding=padding)
    assert got.shape == (len(boxes), 1, h, w)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


def test_paste_masks_outside_image_is_empty():
    """A box wholly outside the image pastes nothing (torchvision's loop raises there)."""
    boxes = torch.tensor([[90.0, 5.0, 160.0, 20.0], [-50.0, -40.0, -20.0, -10.0], [5.0, 70.0, 20.0, 99.0]])
    out = paste_masks_in_image(torch.ones(3, 1, 28, 28), boxes, (57, 83))
    assert out.shape == (3, 1, 57, 83) and out.abs().sum() == 0


def test_paste_masks_empty():
    out = paste_masks_in_image(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (10, 12))
    assert out.shape == (0, 1, 10, 12)

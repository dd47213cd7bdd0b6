"""Matcher: the RPN rules on hand-checked cases, and equality with torchvision's Matcher."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import Matcher as TorchvisionMatcher

from segdet.models.detection.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, Matcher


def test_rpn_rules_by_hand():
    # 2 objects x 5 anchors
    iou = torch.tensor([[0.80, 0.50, 0.10, 0.00, 0.20], [0.10, 0.60, 0.25, 0.71, 0.20]])
    got = Matcher(0.7, 0.3)(iou)
    assert got.tolist() == [0, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD, 1, BELOW_LOW_THRESHOLD]


def test_low_quality_matches_keep_each_objects_best_anchor():
    # object 1's best anchor (0.4, anchor 2) is below 0.7 but becomes positive; ties are all kept
    iou = torch.tensor([[0.9, 0.1, 0.2, 0.05], [0.1, 0.4, 0.4, 0.05]])
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist() == [0, 1, 1, BELOW_LOW_THRESHOLD]
    assert Matcher(0.7, 0.3)(iou).tolist() == [0, BETWEEN_THRESHOLDS, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD]


def test_roi_head_rule():
    iou = torch.tensor([[0.5, 0.49999, 0.0]])
    assert Matcher(0.5, 0.5)(iou).tolist() == [0, BELOW_LOW_THRESHOLD, BELOW_LOW_THRESHOLD]


def test_no_ground_truth_is_all_background():
    assert Matcher(0.7, 0.3)(torch.zeros(0, 3)).tolist() == [BELOW_LOW_THRESHOLD] * 3


@pytest.mark.parametrize("allow", [False, True])
def test_equals_torchvision(allow):
    """Reference: torchvision.models.detection._utils.Matcher; exact equality (ties included)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        iou = torch.rand(4, 30, generator=g).round(decimals=1)
        assert torch.equal(Matcher(0.7, 0.3, allow)(iou), TorchvisionMatcher(0.7, 0.3, allow)(iou))

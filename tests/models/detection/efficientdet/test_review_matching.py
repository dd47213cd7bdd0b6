"""EfficientDet's anchor matching against rwightman's ``effdet`` (the paper's code's rule)."""

from __future__ import annotations

import warnings

import pytest
import torch

from segdet.models import build
from segdet.models.detection.matcher import match_to_targets

with warnings.catch_warnings():  # effdet scripts a few functions with torch.jit, which warns
    warnings.simplefilter("ignore")
    pytest.importorskip("effdet", reason="effdet (the reference, in segdet[dev]) is not installed")
    from effdet.anchors import AnchorLabeler, Anchors

SMALL = {"width": 32, "bifpn_layers": 2, "stochastic_depth_prob": 0.0, "min_size": 128, "max_size": 128}


def test_matching_has_no_ignored_band_as_effdets_labeler():
    """Reference: effdet's ``AnchorLabeler`` (google/automl's ``ArgMaxMatcher(0.5, unmatched_threshold=
    0.5, negatives_lower_than_unmatched=True, force_match_for_each_row=True)``): an anchor of IoU >= 0.5
    with an object is positive, every other one negative; there is no ignored 0.4-0.5 band (RetinaNet's).
    On effdet's anchors of a 128 x 128 input and five objects, each with a single best anchor (effdet
    forces one, ours keeps all tied ones), the model's matcher gives exactly effdet's positives with the
    same objects' labels, and its negatives. Exact (indices, no tolerance)."""
    model = build("efficientdet_d0", 3, **SMALL)
    anchors = Anchors(3, 7, 3, [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4)], 4.0, (128, 128))
    anchors.boxes = anchors.boxes.float()  # its labeler takes float32 (its anchors are float64)
    xyxy = anchors.boxes[:, [1, 0, 3, 2]]
    boxes = torch.tensor(
        [[3.0, 5, 40, 33], [50, 20, 121, 97], [10, 70, 31, 125], [58, 92, 92, 120], [2, 2, 126, 127]]
    )
    labels = torch.tensor([0, 2, 1, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labeler = AnchorLabeler(anchors, 3, match_threshold=0.5)
        cls_targets, _, _ = labeler.label_anchors(boxes[:, [1, 0, 3, 2]], labels + 1)
    expected = torch.cat([c.reshape(-1) for c in cls_targets])  # label 0..K-1, -1 negative
    assert (expected >= 0).sum() > 10
    matched = match_to_targets(model.matcher, xyxy, [{"boxes": boxes, "labels": labels}])[0]
    assert torch.equal(matched >= 0, expected >= 0)
    assert torch.equal(labels[matched[matched >= 0]], expected[expected >= 0])
    assert torch.equal(matched == -1, expected == -1)  # every non-positive anchor negative, none ignored

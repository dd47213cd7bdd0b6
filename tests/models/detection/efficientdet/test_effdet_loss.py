"""EfficientDet's training loss against rwightman's ``effdet`` (the paper's code's rule, google/automl)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from segdet.models import build
from segdet.models.detection.image_list import ImageList
from segdet.models.detection.matcher import match_to_targets

with warnings.catch_warnings():  # effdet scripts a few functions with torch.jit, which warns
    warnings.simplefilter("ignore")
    pytest.importorskip("effdet", reason="effdet (the reference, in segdet[dev]) is not installed")
    from effdet.anchors import AnchorLabeler, Anchors
    from effdet.config import get_efficientdet_config
    from effdet.loss import DetectionLoss

SMALL = {"width": 32, "bifpn_layers": 2, "stochastic_depth_prob": 0.0, "min_size": 128, "max_size": 128}
SIZES = (16, 8, 4, 2, 1)  # P3 ... P7 of a 128 x 128 input
A, K = 9, 3

# Image 0 holds one object, image 1 six: the two normalisations (per image, over the batch) differ.
# Every object has anchors of IoU >= 0.5 (so no forced low-quality match: effdet forces one anchor per
# object, we keep every tied one); no coordinate lies on an anchor's centre or size (effdet drops
# box-target coordinates that are exactly 0).
TARGETS = [
    {"boxes": torch.tensor([[21.3, 17.9, 77.1, 69.4]]), "labels": torch.tensor([2])},
    {
        "boxes": torch.tensor(
            [
                [3.3, 5.1, 40.2, 33.7],
                [57.4, 3.6, 121.3, 50.2],
                [9.7, 71.2, 31.4, 124.6],
                [61.2, 92.3, 94.1, 121.8],
                [30.7, 38.2, 61.4, 69.9],
                [100.2, 60.3, 124.9, 85.8],
            ]
        ),
        "labels": torch.tensor([0, 2, 1, 1, 0, 2]),
    },
]


class _FixedHead(nn.Module):
    """Returns the given per-level ``(logits, deltas)`` whatever the features."""

    def __init__(self, logits: list[Tensor], deltas: list[Tensor]) -> None:
        super().__init__()
        self.outputs = (logits, deltas)

    def forward(self, levels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return self.outputs


def _effdet_targets():
    anchors = Anchors(3, 7, 3, [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4)], 4.0, (128, 128))
    anchors.boxes = anchors.boxes.float()  # its labeler takes float32 (its anchors are float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labeler = AnchorLabeler(anchors, K, match_threshold=0.5)
        return labeler.batch_label_anchors(
            [t["boxes"][:, [1, 0, 3, 2]] for t in TARGETS], [t["labels"] + 1 for t in TARGETS]
        )


def test_losses_are_effdets_detection_loss():
    """Reference: effdet's ``DetectionLoss`` (``loss_fn``; google/automl's ``detection_loss``) with
    efficientdet_d0's config (focal α 0.25, γ 1.5, Huber δ 0.1, box weight 50), on the targets of its
    ``AnchorLabeler`` for a 128 x 128 batch of two images holding 1 and 6 objects, and the same random
    head outputs (per level ``N x A K x H x W`` logits, ``N x 4 A x H x W`` deltas: our ``(t_x, t_y,
    t_w, t_h)`` per anchor its ``(t_y, t_x, t_h, t_w)``). Its classification loss equals our
    ``classification``, 50 x its box loss our ``bbox_regression`` (1e-5 relative): both normalised by
    the batch's foreground anchors + 1, not per image."""
    cls_targets, box_targets, num_positives = _effdet_targets()
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(2, A * K, s, s, generator=gen) for s in SIZES]
    deltas = [torch.randn(2, A * 4, s, s, generator=gen) * 0.3 for s in SIZES]
    # Our matching gives its labels (the test's premise).
    model = build("efficientdet_d0", K, **SMALL).train()
    model.head = _FixedHead(logits, deltas)
    batch = ImageList(torch.zeros(2, 3, 128, 128), [(128, 128)] * 2)
    features = {str(i): torch.zeros(2, 32, s, s) for i, s in enumerate(SIZES)}
    anchors = model.anchor_generator(batch, list(features.values()))[0]
    matched = match_to_targets(model.matcher, anchors, TARGETS)
    expected = torch.stack([torch.cat([c[i].reshape(-1) for c in cls_targets]) for i in range(2)])
    assert torch.equal(matched >= 0, expected >= 0) and int((matched >= 0).sum()) == int(num_positives.sum())
    assert num_positives.tolist() == [40, 94]

    config = get_efficientdet_config("efficientdet_d0")
    config.num_classes = K
    assert (config.alpha, config.gamma, config.delta, config.box_loss_weight) == (0.25, 1.5, 0.1, 50.0)
    assert config.label_smoothing == 0 and not config.legacy_focal
    config.jit_loss = False
    their_box_outputs = [d.reshape(2, A, 4, *d.shape[-2:])[:, :, [1, 0, 3, 2]].flatten(1, 2) for d in deltas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, their_cls, their_box = DetectionLoss(config)(
            logits, their_box_outputs, cls_targets, box_targets, num_positives
        )

    _, ours = model.run_heads(batch, features, TARGETS, None)
    torch.testing.assert_close(ours["classification"], their_cls, rtol=1e-5, atol=0)
    torch.testing.assert_close(ours["bbox_regression"], 50 * their_box, rtol=1e-5, atol=0)

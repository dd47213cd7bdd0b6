"""EfficientDet against rwightman's ``effdet`` (efficientdet-pytorch, the PyTorch EfficientDet whose COCO
checkpoints users have): its D0 with random weights and non-trivial BatchNorm statistics, converted by
``convert_effdet_state_dict``, gives the same class logits and box deltas on every level.

Reference: ``effdet.create_model("efficientdet_d0")`` (timm's EfficientNet-B0, its BiFPN and heads), in
eval mode on a 512 x 512 batch (the input size its resamplings are built for). Tolerance 1e-5 on outputs
of magnitude ~5 (measured: at most 2e-6; float32 through 16 backbone blocks, 3 BiFPN layers and 3 head
layers computed in other orders, e.g. its fusion divides each input by the weight sum, ours the weights). The
anchor slots are paired by the anchors' shapes (effdet's own ``Anchors`` against our generator), not by
the converter's table, and the box deltas' order ``(t_y, t_x, t_h, t_w)`` by its decoder's definition.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from segdet.errors import DataError
from segdet.models import build
from segdet.models.detection.efficientdet.convert import convert_effdet_state_dict, load_effdet_weights

with warnings.catch_warnings():  # effdet scripts a few functions with torch.jit, which warns
    warnings.simplefilter("ignore")
    # installed by `.[dev]` (CI); a machine without it (the offline GPU one) skips with this reason
    pytest.importorskip("effdet", reason="effdet (the reference, in segdet[dev]) is not installed")
    from effdet import create_model
    from effdet.anchors import Anchors


def _slot_pairs(theirs: nn.Module, ours: nn.Module) -> list[int]:
    """For each of our 9 anchor slots on P3, the effdet slot of the nearest anchor shape ``(w, h)``."""
    their_boxes = Anchors.from_config(theirs.config).boxes[:9]  # y1 x1 y2 x2 at the first P3 location
    their_wh = torch.stack([their_boxes[:, 3] - their_boxes[:, 1], their_boxes[:, 2] - their_boxes[:, 0]], 1)
    base = ours.anchor_generator.cell_anchors[0]
    our_wh = torch.stack([base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]], 1)
    distance = torch.cdist(our_wh.float(), their_wh.float())
    pairs = distance.argmin(1).tolist()
    assert sorted(pairs) == list(range(9)) and float(distance.min(1).values.max()) < 2.0, distance
    return pairs


def test_effdet_d0_converts_to_the_same_network(tmp_path, random_batchnorm_fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = create_model("efficientdet_d0", pretrained=False, pretrained_backbone=False, num_classes=90)
    random_batchnorm_fn(theirs, 0)
    theirs.eval()
    ours = build("efficientdet_d0", 90).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    torch.save(theirs.state_dict(), tmp_path / "effdet_d0.pth")
    load_effdet_weights(ours, tmp_path / "effdet_d0.pth")

    x = torch.randn(2, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        their_logits, their_deltas = theirs(x)
        our_logits, our_deltas = ours.head(list(ours.backbone(x).values()))
    slots = _slot_pairs(theirs, ours)
    yx_to_xy = [1, 0, 3, 2]
    for level in range(5):
        n, _, h, w = their_logits[level].shape
        expected = their_logits[level].reshape(n, 9, 90, h, w)[:, slots].reshape(n, -1, h, w)
        torch.testing.assert_close(our_logits[level], expected, rtol=0, atol=1e-5)
        expected = their_deltas[level].reshape(n, 9, 4, h, w)[:, slots][:, :, yx_to_xy].reshape(n, -1, h, w)
        torch.testing.assert_close(our_deltas[level], expected, rtol=0, atol=1e-5)


def test_a_mismatched_checkpoint_is_one_clear_error(tmp_path):
    """An effdet D1 checkpoint into our D0: one DataError line naming the file and the mismatch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = create_model("efficientdet_d1", pretrained=False, pretrained_backbone=False, num_classes=90)
    path = tmp_path / "effdet_d1.pth"
    torch.save(theirs.state_dict(), path)
    with torch.device("meta"):
        ours = build("efficientdet_d0", 90)
    with pytest.raises(DataError, match=r"effdet_d1\.pth") as error:
        load_effdet_weights(ours, path)
    assert "\n" not in str(error.value) and "keys" in str(error.value)
    assert not [
        k for k in convert_effdet_state_dict(theirs.state_dict()) if not k.startswith(("backbone.", "head."))
    ]

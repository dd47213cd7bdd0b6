"""The RPN head (Ren et al., "Faster R-CNN", NeurIPS 2015, sec. 3.1): a small network slid over every
feature level, predicting for each of the ``A`` anchors of a location an objectness logit and four box
deltas ``(t_x, t_y, t_w, t_h)`` (see :mod:`segdet.ops.box_coder`).

Architecture (shared across FPN levels, Lin et al. 2017 sec. 4.1): ``conv_depth`` x (3x3 conv, C -> C,
+ ReLU), then two sibling 1x1 convs: ``cls_logits`` (C -> A) and ``bbox_pred`` (C -> 4A). Weights are
initialised from N(0, 0.01²) and biases to 0 (paper sec. 3.1.3).

Parameter names equal torchvision's ``RPNHead`` (``conv.{i}.0.weight``, ``conv.{i}.0.bias``,
``cls_logits.*``, ``bbox_pred.*``), so its state dicts load unchanged; the single-conv
``conv.weight`` / ``conv.bias`` of torchvision's older checkpoints load as ``conv.0.0.*``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class RPNHead(nn.Module):
    """Objectness logits and box deltas for every anchor of every level.

    Args:
        in_channels: channels ``C`` of every feature level (FPN: 256).
        num_anchors: anchors per location ``A`` (FPN: 3, C4: 9).
        conv_depth: number of 3x3 conv + ReLU blocks before the two predictors.
    """

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1) -> None:
        super().__init__()
        # Each block is a Sequential(conv, relu) so the names are conv.{i}.0.*, as torchvision's.
        self.conv = nn.Sequential(
            *(
                nn.Sequential(nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1), nn.ReLU())
                for _ in range(conv_depth)
            )
        )
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4 * num_anchors, kernel_size=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)
        self.register_load_state_dict_pre_hook(_rename_legacy_conv)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level features ``N x C x H_l x W_l`` -> objectness logits ``N x A x H_l x W_l`` and deltas
        ``N x 4A x H_l x W_l``.

        Channel ``4a + j`` of the deltas is coordinate ``j`` of anchor ``a``.
        """
        logits, deltas = [], []
        for feature in features:
            hidden = self.conv(feature)
            logits.append(self.cls_logits(hidden))
            deltas.append(self.bbox_pred(hidden))
        return logits, deltas


def _rename_legacy_conv(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    # torchvision < 0.13 saved the single 3x3 conv as ``conv.weight``; it is block 0's conv.
    for name in ("weight", "bias"):
        old = f"{prefix}conv.{name}"
        if old in state_dict:
            state_dict[f"{prefix}conv.0.0.{name}"] = state_dict.pop(old)

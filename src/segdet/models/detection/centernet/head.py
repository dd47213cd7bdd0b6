"""CenterNet's heads (Zhou et al. 2019, sec. 4): on the stride-4 map, one branch per output, each a 3x3
convolution (``head_channels``, 64 for ResNets), ReLU and a 1x1 convolution to

* ``heatmap``: ``C`` channels, one per class (sigmoid scores); its bias starts at ``-2.19``
  (``= -log((1 - 0.1) / 0.1)``, every score 0.1 at the start, the official initialisation, as
  RetinaNet's prior keeps the many negatives from swamping the first steps);
* ``size``: 2 channels, the box's ``(w, h)`` in output-map pixels;
* ``offset``: 2 channels, the centre's sub-pixel offset ``(δx, δy)``.

The size and offset branches start from ``N(0, 0.001²)`` weights (the official ``fill_fc_weights``).
"""

from __future__ import annotations

from torch import Tensor, nn

HEATMAP_BIAS = -2.19


def _branch(in_channels: int, head_channels: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, head_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(head_channels, outputs, 1),
    )


class CenterNetHead(nn.Module):
    """The three branches; ``forward(x)`` gives ``(heatmap logits, size, offset)`` maps."""

    def __init__(self, in_channels: int, num_classes: int, head_channels: int = 64) -> None:
        super().__init__()
        self.heatmap = _branch(in_channels, head_channels, num_classes)
        self.size = _branch(in_channels, head_channels, 2)
        self.offset = _branch(in_channels, head_channels, 2)
        nn.init.constant_(self.heatmap[-1].bias, HEATMAP_BIAS)
        for branch in (self.size, self.offset):
            for layer in branch:
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, std=0.001)
                    nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.heatmap(x), self.size(x), self.offset(x)

"""YOLO v1's detection head: feature map -> ``N x S x S x (5B + C)`` predictions.

Per grid cell, ``B`` boxes of five numbers each, then ``C`` class probabilities (sec. 2)::

    [x, y, sqrt(w), sqrt(h), confidence] x B,  Pr(class_1 | object) ... Pr(class_C | object)

``x, y``: the box centre relative to the cell's top-left corner in cell units (0..1 inside the cell);
``w, h``: the box size relative to the image. The network predicts ``sqrt(w)`` and ``sqrt(h)`` directly
(the loss compares square roots, sec. 2.2; Darknet's ``sqrt=1``), all outputs linear (the paper's
"linear activation function for the final layer").

Two kinds:

* ``"fc"`` -- the paper's: four 3x3 convolutions (the second strided), flatten, FC ``hidden`` (4096),
  Leaky ReLU, dropout 0.5, FC ``S S (5B + C)``. The flattened size is fixed by the input size (YOLO
  resizes every image to one size), and ``S`` is free of the feature map's size.
* ``"conv"`` -- fully convolutional: ``depth`` 3x3 convolutions at the backbone's resolution, average
  pooling to ``S x S`` when the map is larger, and a 1x1 convolution to the ``5B + C`` numbers per cell:
  far fewer parameters and the same per-cell predictions (used for the fast ResNet variants).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from segdet.models.detection.yolo.darknet import LeakyReLU, init_leaky
from segdet.models.layers import ConvNormAct

HEAD_KINDS = ("fc", "conv")


class YOLOv1Head(nn.Module):
    """See the module docstring.

    Args:
        in_channels: channels of the backbone's last feature map.
        feature_size: its ``(h, w)`` (``kind="fc"`` only: the flattened size).
        grid_size: ``S``.
        boxes_per_cell: ``B``.
        num_classes: ``C``.
        kind: ``"fc"`` or ``"conv"``.
        channels: width of the head's convolutions (the paper's 1024).
        hidden: the first fully connected layer's width (the paper's 4096).
        depth: convolutions of the ``"conv"`` head.
        norm_layer: after every head convolution (``None``: the paper's none).
        dropout: after the first fully connected layer (the paper's 0.5).
    """

    def __init__(
        self,
        in_channels: int,
        feature_size: tuple[int, int],
        grid_size: int,
        boxes_per_cell: int,
        num_classes: int,
        *,
        kind: str = "fc",
        channels: int = 1024,
        hidden: int = 4096,
        depth: int = 2,
        norm_layer: Callable[[int], nn.Module] | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"head must be one of {HEAD_KINDS}, got {kind!r}")
        self.kind = kind
        self.grid_size = grid_size
        self.per_cell = 5 * boxes_per_cell + num_classes

        def conv(c_in: int, stride: int = 1) -> ConvNormAct:
            return ConvNormAct(c_in, channels, 3, stride=stride, norm_layer=norm_layer, activation=LeakyReLU)

        if kind == "fc":
            self.convs = nn.Sequential(conv(in_channels), conv(channels, 2), conv(channels), conv(channels))
            h, w = ((s + 1) // 2 for s in feature_size)  # after the 3x3/2 convolution (padding 1)
            self.fc = nn.Sequential(
                nn.Flatten(),
                nn.Linear(channels * h * w, hidden),
                LeakyReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden, grid_size * grid_size * self.per_cell),
            )
            predictor: nn.Module = self.fc[-1]
        else:
            self.convs = nn.Sequential(conv(in_channels), *(conv(channels) for _ in range(depth - 1)))
            self.predictor = nn.Conv2d(channels, self.per_cell, 1)
            predictor = self.predictor
        init_leaky(self)
        # Outputs start near 0 (linear): small predictions, every box's IoU 0 (see targets.py).
        nn.init.normal_(predictor.weight, std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """``N x in_channels x h x w`` -> ``N x S x S x (5B + C)``."""
        s = self.grid_size
        x = self.convs(x)
        if self.kind == "fc":
            return self.fc(x).view(x.shape[0], s, s, self.per_cell)
        if x.shape[-2:] != (s, s):
            x = F.adaptive_avg_pool2d(x, s)
        return self.predictor(x).permute(0, 2, 3, 1)

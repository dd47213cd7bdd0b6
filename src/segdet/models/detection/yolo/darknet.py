"""YOLO v1's network (Redmon et al., "You Only Look Once", CVPR 2016, sec. 2.1 and Figure 3).

24 convolutional layers then 2 fully connected ones, Leaky ReLU (slope 0.1) after every layer but the
last, which is linear; 1x1 "reduction" layers between the 3x3 ones (as in GoogLeNet, without its
inception modules). The paper pre-trains the first 20 convolutions on ImageNet at 224 px
(:class:`Darknet20`, a :class:`~segdet.models.backbones.Backbone`) and adds for detection four
convolutions and the two fully connected layers (:class:`~.head.YOLOv1Head`, ``kind="fc"``)::

    c1  7x7/2 64                                   stride 2
    c2  maxpool 2x2/2, 3x3 192                     stride 4
    c3  maxpool, 1x1 128, 3x3 256, 1x1 256, 3x3 512        stride 8
    c4  maxpool, (1x1 256, 3x3 512) x 4, 1x1 512, 3x3 1024 stride 16
    c5  maxpool, (1x1 512, 3x3 1024) x 2                   stride 32
    head: 3x3 1024, 3x3/2 1024, 3x3 1024, 3x3 1024, FC 4096, dropout 0.5, FC S x S x (5B + C)

At 448 x 448 the head's last convolution is 7 x 7. The paper's network has no normalisation (BatchNorm
came with YOLO v2); ``batch_norm=True`` adds it after every convolution, which training from scratch
needs in practice. ``width`` scales every convolution's channels (tests use narrow networks).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from torch import nn

from segdet.models.backbones.base import Backbone
from segdet.models.layers import ConvNormAct

#: Leaky ReLU with the paper's slope 0.1 (eq. 2), called with ``inplace=True`` by ConvNormAct.
LeakyReLU = functools.partial(nn.LeakyReLU, 0.1)

# Per stage, its layers: "M" a 2x2/2 max-pool, (kernel, channels) a stride-1 convolution.
DARKNET20: dict[str, Sequence[object]] = {
    "c1": [],  # the 7x7/2 stem, built apart
    "c2": ["M", (3, 192)],
    "c3": ["M", (1, 128), (3, 256), (1, 256), (3, 512)],
    "c4": ["M", *[(1, 256), (3, 512)] * 4, (1, 512), (3, 1024)],
    "c5": ["M", *[(1, 512), (3, 1024)] * 2],
}


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 8."""
    return max(8, round(channels * width))


def init_leaky(module: nn.Module) -> None:
    """He initialisation for Leaky ReLU (slope 0.1) of every convolution and linear layer, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, a=0.1, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Darknet20(Backbone):
    """The first 20 convolutions of YOLO v1's network (module docstring), features ``c1`` ... ``c5``.

    Args:
        width: channel multiplier (1.0: the paper's).
        batch_norm: BatchNorm after every convolution (not in the paper).
    """

    def __init__(self, *, width: float = 1.0, batch_norm: bool = False) -> None:
        super().__init__()
        norm: Callable[[int], nn.Module] | None = nn.BatchNorm2d if batch_norm else None
        layers: list[nn.Module] = [
            ConvNormAct(3, scaled(64, width), 7, stride=2, norm_layer=norm, activation=LeakyReLU)
        ]
        layout = {"c1": ("features.0",)}
        channels = {"c1": scaled(64, width)}
        in_channels = channels["c1"]
        for name, spec in list(DARKNET20.items())[1:]:
            start = len(layers)
            for item in spec:
                if item == "M":
                    layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                else:
                    kernel, out = item  # type: ignore[misc]
                    out = scaled(out, width)
                    layers.append(
                        ConvNormAct(in_channels, out, kernel, norm_layer=norm, activation=LeakyReLU)
                    )
                    in_channels = out
            layout[name] = tuple(f"features.{i}" for i in range(start, len(layers)))
            channels[name] = in_channels
        self.features = nn.Sequential(*layers)
        self.stage_layout = layout
        self.out_channels = channels
        self.strides = {"c1": 2, "c2": 4, "c3": 8, "c4": 16, "c5": 32}
        init_leaky(self)
        self._finish(32, 0, False)

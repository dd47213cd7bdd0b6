"""SSD's VGG-16 feature maps (Liu et al. 2016, fig. 2 and sec. 3, "Base network"; SSD512 in sec. 3.6).

On VGG-16's convolutions (:class:`~segdet.models.backbones.VGGBackbone`):

* ``conv4_3`` (stride 8, 512 channels; 38 x 38 at 300 px), L2-normalised over channels at every
  location and rescaled by a learned per-channel scale initialised to 20 (ParseNet, Liu et al. 2015:
  conv4_3's activations are far larger than the later maps', which would dominate the loss);
* ``pool5`` becomes a ``3x3`` stride-1 pooling, and ``fc6`` / ``fc7`` become convolutions: ``fc6`` a
  ``3x3`` convolution of 1024 channels with dilation 6 ("atrous", keeping fc6's field of view after the
  stride is removed), ``fc7`` a ``1x1`` of 1024 (stride 16, 19 x 19);
* extra layers, each a ``1x1`` reduction and a ``3x3`` convolution: conv8_2 (512, stride 2), conv9_2
  (256, stride 2), conv10_2 and conv11_2 (256, unpadded: 3 x 3 and 1 x 1 at 300 px). SSD512 (the
  authors' Caffe model) pads conv10_2 and conv11_2 and strides them by 2 (4 x 4, 2 x 2) and adds
  conv12_2, a ``4x4`` convolution with padding 1 (1 x 1): seven maps 64² ... 1², 24564 boxes.
  (torchvision's unexposed ``highres`` variant keeps conv10_2 / conv11_2 unpadded instead: 24732.)

``pool3`` rounds up (Caffe's pooling: 75 -> 38 at 300 px); the other pools round down as torchvision's,
which at 300 and 512 px gives the same sizes as Caffe's. Parameter names are torchvision's
``SSDFeatureExtractorVGG`` (``features.{i}`` up to conv4_3, ``scale_weight``, ``extra.0`` = pool4 to
conv5_3 then fc6/fc7 at ``extra.0.7.{1,3}``, ``extra.{1..}``), so its checkpoints load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdet.models.backbones import VGGBackbone

# (1x1 channels, output channels, kernel, stride, padding) of conv8_2 .. conv11_2 (SSD512: .. conv12_2).
EXTRA_LAYERS = ((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 1, 0), (128, 256, 3, 1, 0))
EXTRA_LAYERS_512 = (*EXTRA_LAYERS[:2], (128, 256, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 4, 1, 1))
L2_SCALE_INIT = 20.0


def _xavier(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


class SSDVGGFeatures(nn.Module):
    """The SSD feature maps on a VGG-16 (module docstring): ``forward(x)`` gives ``{"0": conv4_3 (L2),
    "1": fc7, "2": conv8_2, ...}``; :attr:`out_channels` lists their widths.

    Args:
        vgg: a VGG-16 without BatchNorm (its convolutions and pools are taken over).
        highres: SSD512's extra ``conv12_2``.
    """

    def __init__(self, vgg: VGGBackbone, highres: bool = False) -> None:
        super().__init__()
        layers = list(vgg.features)
        pools = [i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
        if len(pools) != 5 or any(isinstance(layer, nn.BatchNorm2d) for layer in layers):
            raise ValueError("SSD needs VGG-16 without BatchNorm (five pools)")
        for i, pool in enumerate(pools):
            layers[pool].ceil_mode = i == 2  # pool3 rounds up (module docstring)
        self.scale_weight = nn.Parameter(torch.full((512,), L2_SCALE_INIT))
        self.features = nn.Sequential(*layers[: pools[3]])  # up to conv4_3 + ReLU
        fc = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),  # pool5, stride 1
            nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),  # fc6, atrous
            nn.ReLU(inplace=True),
            nn.Conv2d(1024, 1024, kernel_size=1),  # fc7
            nn.ReLU(inplace=True),
        )
        layout = EXTRA_LAYERS_512 if highres else EXTRA_LAYERS
        widths = [1024] + [c_out for _, c_out, *_ in layout]
        extra = [
            nn.Sequential(
                nn.Conv2d(c_in, c_mid, kernel_size=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_mid, c_out, kernel_size=k, stride=stride, padding=padding),
                nn.ReLU(inplace=True),
            )
            for c_in, (c_mid, c_out, k, stride, padding) in zip(widths, layout, strict=False)
        ]
        _xavier(fc)
        for block in extra:
            _xavier(block)
        # extra.0: pool4 .. conv5_3 + ReLU (pool5 dropped), then fc6 / fc7.
        self.extra = nn.ModuleList([nn.Sequential(*layers[pools[3] : pools[4]], fc), *extra])
        self.out_channels = [512, *widths]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.features(x)
        # F.normalize: x / max(||x||_2, 1e-12) over the channels of every location.
        outputs = [self.scale_weight.view(1, -1, 1, 1) * F.normalize(x)]
        for block in self.extra:
            x = block(x)
            outputs.append(x)
        return {str(i): out for i, out in enumerate(outputs)}

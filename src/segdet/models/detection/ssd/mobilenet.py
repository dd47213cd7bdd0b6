"""SSDLite's MobileNetV3-Large feature maps (Howard et al., "Searching for MobileNetV3", ICCV 2019,
sec. 6.3; SSDLite: Sandler et al., "MobileNetV2", CVPR 2018, sec. 6.2).

* map 0 (stride 16): the *expansion* layer of the last stride-16 block, i.e. inside block 13 after its
  ``1x1`` expansion (672 channels) and before its strided depthwise convolution, as the MobileNetV3
  paper attaches the first SSDLite head ("C4");
* map 1 (stride 32): the backbone's last layer (960 channels, 480 with the reduced tail);
* four extra blocks down to stride 512, each ``1x1`` to half the output width, ``3x3`` depthwise of
  stride 2, ``1x1`` to the output width (512, 256, 256, 128 at width multiplier 1), BatchNorm and ReLU6
  after each.

Parameter names are torchvision's ``SSDLiteFeatureExtractorMobileNet`` (``features.0`` = blocks 0-12
and block 13's expansion, ``features.1`` = the rest of block 13 and blocks 14-16, ``extra.{i}``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from segdet.models.backbones import MobileNetV3Backbone
from segdet.models.layers import ConvNormAct

EXTRA_WIDTHS = (512, 256, 256, 128)


def _extra_block(
    in_channels: int, out_channels: int, norm_layer: Callable[[int], nn.Module]
) -> nn.Sequential:
    mid = out_channels // 2
    return nn.Sequential(
        ConvNormAct(in_channels, mid, 1, norm_layer=norm_layer, activation=nn.ReLU6),
        ConvNormAct(mid, mid, 3, stride=2, groups=mid, norm_layer=norm_layer, activation=nn.ReLU6),
        ConvNormAct(mid, out_channels, 1, norm_layer=norm_layer, activation=nn.ReLU6),
    )


class SSDLiteMobileNetFeatures(nn.Module):
    """The six SSDLite maps on MobileNetV3-Large (module docstring): ``forward(x)`` gives ``{"0": ...,
    "5": ...}``; :attr:`out_channels` lists their widths.

    Args:
        body: the backbone (its ``features`` are taken over).
        norm_layer: after each extra convolution.
        width_mult, min_depth: the extra blocks' widths are ``max(min_depth, int(w * width_mult))``.
    """

    def __init__(
        self,
        body: MobileNetV3Backbone,
        norm_layer: Callable[[int], nn.Module],
        width_mult: float = 1.0,
        min_depth: int = 16,
    ) -> None:
        super().__init__()
        blocks = list(body.features)
        c4 = [i for i, block in enumerate(blocks) if getattr(block, "_is_cn", False)][-1]
        if blocks[c4].use_res_connect:
            raise ValueError("the split block must not be residual")
        expansion, rest = blocks[c4].block[0], blocks[c4].block[1:]
        self.features = nn.Sequential(
            nn.Sequential(*blocks[:c4], expansion), nn.Sequential(rest, *blocks[c4 + 1 :])
        )
        widths = [max(min_depth, int(w * width_mult)) for w in EXTRA_WIDTHS]
        last = blocks[-1].out_channels
        self.extra = nn.ModuleList(
            _extra_block(c_in, c_out, norm_layer)
            for c_in, c_out in zip([last, *widths], widths, strict=False)
        )
        for layer in self.extra.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, mean=0.0, std=0.03)
        self.out_channels = [expansion.out_channels, last, *widths]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outputs = []
        for block in [*self.features, *self.extra]:
            x = block(x)
            outputs.append(x)
        return {str(i): out for i, out in enumerate(outputs)}

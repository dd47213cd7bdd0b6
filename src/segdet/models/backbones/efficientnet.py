"""EfficientNet-B0 ... B7 backbones (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks", ICML 2019), torchvision's ``efficientnet_b{k}`` ``features`` with their parameter
names (torchvision's ImageNet weights load as they are).

The network is a stem (``3x3`` convolution, stride 2) and seven stages of MBConv blocks (inverted
residuals with squeeze-and-excitation and SiLU; a stage's first block may downsample), then a ``1x1``
"head" convolution to ``4 x`` the last width for the classifier. B1 ... B7 scale B0's depth by
``d = α^φ``, width by ``w = β^φ`` and resolution by ``γ^φ`` (compound scaling, paper eq. 3, ``α = 1.2``,
``β = 1.1``, ``γ = 1.15``); the ``(w, d)`` pairs are torchvision's, e.g. B3 = ``(1.2, 1.4)``.

Features (cut before each stage whose first block downsamples, like :mod:`.mobilenet`): ``c1`` = the stem
and stage 1 (stride 2; 16 channels for B0), ``c2`` = stage 2 (4; 24), ``c3`` = stage 3 (8; 40), ``c4`` =
stages 4-5 (16; 112), ``c5`` = stages 6-7 (32; 320). The head convolution (B0: 320 -> 1280) is left out,
as timm's ``features_only`` EfficientNets and EfficientDet's backbone do: it only widens the features
for ImageNet's classifier. Its weights and the classifier's are dropped on loading
(:attr:`EfficientNetBackbone.ignored_weight_prefixes`).

``stochastic_depth_prob``: the largest probability of skipping a residual block during training, grown
linearly with the block's depth (Huang et al. 2016; torchvision's default 0.2, the paper's ImageNet
setting; 0 turns it off). B5 ... B7 use BatchNorm's ``eps = 0.001`` (their weights were ported from
TensorFlow), which torchvision's constructors already set.

Output stride 16 / 8 removes the stride of the first block of ``c5`` / ``c4`` and ``c5`` and dilates the
stage's depthwise convolutions by the stride removed (:func:`~.base.dilate_stages_`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torchvision
from torch import nn

from segdet.models.backbones.base import Backbone, check_output_stride, dilate_stages_, nominal_strides

ARCHS: dict[str, Callable[..., torchvision.models.EfficientNet]] = {
    f"b{k}": getattr(torchvision.models, f"efficientnet_b{k}") for k in range(8)
}


def _downsamples(stage: nn.Module) -> bool:
    """Whether a torchvision EfficientNet stage (or the stem) contains a stride-2 convolution."""
    return any(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in stage.modules())


class EfficientNetBackbone(Backbone):
    """torchvision's EfficientNet-B``k`` (``arch = "b0"`` ... ``"b7"``) without its head convolution,
    returning ``c1`` ... ``c5`` (module docstring).

    Args: ``arch``, ``output_stride``, ``weights``, ``frozen_stages``, ``frozen_bn`` as
    :class:`~.resnet.ResNetBackbone`, and ``stochastic_depth_prob`` (module docstring).
    """

    def __init__(
        self,
        arch: str = "b0",
        *,
        output_stride: int = 32,
        weights: str | Path | None = None,
        frozen_stages: int = 0,
        frozen_bn: bool = False,
        stochastic_depth_prob: float = 0.2,
    ):
        super().__init__()
        check_output_stride(output_stride)
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
        self.arch = arch
        features = ARCHS[arch](weights=None, stochastic_depth_prob=stochastic_depth_prob).features
        head = len(features) - 1  # the 1x1 head convolution, dropped (module docstring)
        self.ignored_weight_prefixes = (f"features.{head}.", "classifier.")
        # nn.Sequential keeps the indices as names: features.0 ... features.{head - 1}, torchvision's.
        self.features = nn.Sequential(*list(features)[:head])
        starts = [0] + [i for i in range(1, head) if _downsamples(self.features[i])]
        assert len(starts) == 5, "torchvision's EfficientNets have five strided stages"
        self.stage_layout = {}
        self.out_channels = {}
        for k, (start, end) in enumerate(zip(starts, [*starts[1:], head], strict=True)):
            self.stage_layout[f"c{k + 1}"] = tuple(f"features.{i}" for i in range(start, end))
            self.out_channels[f"c{k + 1}"] = self.features[end - 1][-1].out_channels
        dilate_stages_(self, output_stride)
        self.strides = nominal_strides(output_stride)
        if weights is not None:
            from segdet.models.weights import load_weights

            load_weights(self, weights)
        self._finish(output_stride, frozen_stages, frozen_bn)

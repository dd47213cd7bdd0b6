"""BiFPN, the weighted bi-directional feature pyramid of EfficientDet (Tan, Pang, Le, "EfficientDet:
Scalable and Efficient Object Detection", CVPR 2020, sec. 3).

From backbone features ``C_3 .. C_5`` (strides 8 .. 32) it builds ``P_3 .. P_7``, ``d`` channels each.
**Inputs** (the paper's code): ``P_k^in = L_k(C_k)`` (a ``1x1`` convolution + norm, only where the widths
differ), ``P_6^in = maxpool(L_6(C_5))``, ``P_7^in = maxpool(P_6^in)``; ``maxpool`` is ``3x3``, stride
2, padding 1 (``ceil(H / 2)``, TensorFlow's "same"). In the first layer a backbone level that feeds both
a top-down and a bottom-up node (``C_4``, ``C_5``) enters the bottom-up one through a second ``1x1``
convolution of its own, ``L'_k`` (the paper's code, google/automl, and rwightman's ``effdet``: one
resampling per edge; ``separate_bottom_up_inputs=False`` shares ``L_k``). Then ``R`` **BiFPN layers**
(3 for D0), each (paper eq. for level 6, fig. 2d)::

    P_6^td  = Conv( Fuse(P_6^in, Up(P_7^in)) )                      top-down, from P_7 to P_3
    P_3^out = Conv( Fuse(P_3^in, Up(P_4^td)) )
    P_4^out = Conv( Fuse(P_4^in, P_4^td, Down(P_3^out)) )           bottom-up, from P_4 to P_7
    P_7^out = Conv( Fuse(P_7^in, Down(P_6^out)) )

with ``Up`` nearest-neighbour resizing to the finer level's size, ``Down`` the max-pool above, ``Conv`` a
depthwise-separable ``3x3`` convolution + norm after a swish (SiLU), and the **fast normalised fusion**
(sec. 3.3) of inputs ``I_i`` with one learnt scalar ``w_i`` each::

    Fuse(I_1 .. I_n) = Σ_i w_i' I_i / (ε + Σ_j w_j'),    w_i' = ReLU(w_i),  ε = 1e-4

(as accurate as a softmax over the ``w_i`` in the paper's ablation, 30 % faster on a GPU). Each layer's
outputs are the next layer's inputs; the last layer's are the pyramid. Compared with the FPN
(:mod:`.fpn`): a bottom-up path after the top-down one, the input of each level fed again to its
bottom-up node, learnt weights instead of plain sums, and repeated layers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdet.models.layers import ConvNormAct

EPSILON = 1e-4


def fast_normalized_fusion(inputs: list[Tensor], weights: Tensor, eps: float = EPSILON) -> Tensor:
    """``Σ_i ReLU(w_i) I_i / (eps + Σ_j ReLU(w_j))`` of equally shaped ``inputs`` (module docstring)."""
    w = F.relu(weights)
    w = w / (w.sum() + eps)
    fused = inputs[0] * w[0]
    for x, wi in zip(inputs[1:], w[1:], strict=True):
        fused = fused + x * wi
    return fused


def downsample(x: Tensor) -> Tensor:
    """``3x3`` max-pool of stride 2 and padding 1: ``H x W -> ceil(H / 2) x ceil(W / 2)``."""
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BiFPNLayer(nn.Module):
    """One BiFPN layer over ``L`` equally wide levels, finest first (module docstring).

    Parameters: ``top_down_weights.{i}`` (2 each) and ``top_down_convs.{i}`` for the nodes of levels
    ``L-2 .. 0``; ``bottom_up_weights.{i}`` (3 each, 2 for the coarsest) and ``bottom_up_convs.{i}`` for
    levels ``1 .. L-1``.
    """

    def __init__(self, channels: int, levels: int, norm_layer: Callable[[int], nn.Module] | None) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"a BiFPN layer needs at least 2 levels, got {levels}")

        def conv() -> nn.Module:
            return ConvNormAct(channels, channels, 3, separable=True, norm_layer=norm_layer, activation=None)

        self.top_down_weights = nn.ParameterList(nn.Parameter(torch.ones(2)) for _ in range(levels - 1))
        self.top_down_convs = nn.ModuleList(conv() for _ in range(levels - 1))
        self.bottom_up_weights = nn.ParameterList(
            nn.Parameter(torch.ones(3 if level < levels - 1 else 2)) for level in range(1, levels)
        )
        self.bottom_up_convs = nn.ModuleList(conv() for _ in range(levels - 1))

    def forward(self, inputs: list[Tensor], bottom_up_inputs: list[Tensor] | None = None) -> list[Tensor]:
        """``P_l^in`` per level (finest first) -> ``P_l^out`` per level; ``bottom_up_inputs`` (first layer
        only, module docstring) replace ``inputs`` in the bottom-up nodes."""
        levels = len(inputs)
        top_down = [inputs[-1]]  # P_{L-1}^td = P_{L-1}^in
        for i, level in enumerate(range(levels - 2, -1, -1)):
            coarser = F.interpolate(top_down[-1], size=inputs[level].shape[-2:], mode="nearest")
            fused = fast_normalized_fusion([inputs[level], coarser], self.top_down_weights[i])
            top_down.append(self.top_down_convs[i](F.silu(fused)))
        top_down.reverse()  # finest first; top_down[0] is P_0^out

        own = inputs if bottom_up_inputs is None else bottom_up_inputs
        outputs = [top_down[0]]
        for i, level in enumerate(range(1, levels)):
            finer = downsample(outputs[-1])
            parts = [own[level], top_down[level], finer] if level < levels - 1 else [own[level], finer]
            fused = fast_normalized_fusion(parts, self.bottom_up_weights[i])
            outputs.append(self.bottom_up_convs[i](F.silu(fused)))
        return outputs


class BiFPN(nn.Module):
    """BiFPN neck over backbone features given finest first; see the module docstring.

    Args:
        in_channels_list: channels of each input feature (``C_3 .. C_5``), finest first.
        out_channels: ``d`` (64 for EfficientDet-D0, 256 to replace a ResNet FPN).
        num_layers: ``R``, BiFPN layers stacked (3 for D0 ... 8 for D7).
        extra_levels: coarser levels added by max-pooling (2: ``P_6``, ``P_7``), named ``"p6"``, ``"p7"``
            (as :class:`~.fpn.LastLevelP6P7`'s).
        norm_layer: after every convolution (``nn.BatchNorm2d``, the paper's; ``None``: none, biases
            instead).
        separate_bottom_up_inputs: the first layer's ``L'_k`` (module docstring).

    ``forward(features)`` takes a dict ordered by increasing stride and returns a dict with the same names
    then the extra levels', ordered the same way (:class:`~.fpn.FeaturePyramidNetwork`'s interface).
    """

    def __init__(
        self,
        in_channels_list: list[int],
        out_channels: int,
        num_layers: int = 3,
        extra_levels: int = 2,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
        separate_bottom_up_inputs: bool = True,
    ) -> None:
        super().__init__()
        if not in_channels_list or any(c <= 0 for c in in_channels_list):
            raise ValueError(f"in_channels_list must be positive channel counts, got {in_channels_list}")
        if num_layers < 1 or extra_levels < 0:
            raise ValueError(f"need num_layers >= 1 and extra_levels >= 0, got {num_layers}, {extra_levels}")

        def lateral(channels: int) -> nn.Module:
            if channels == out_channels:
                return nn.Identity()
            return ConvNormAct(channels, out_channels, 1, norm_layer=norm_layer, activation=None)

        self.laterals = nn.ModuleList(lateral(c) for c in in_channels_list)
        self.extra_lateral = lateral(in_channels_list[-1]) if extra_levels else None
        self.extra_levels = extra_levels
        levels = len(in_channels_list) + extra_levels
        # Levels 1 .. L-2 have a three-input bottom-up node; those entering through a convolution get
        # a second one there (keyed by level).
        self.bottom_up_laterals = nn.ModuleDict(
            {
                str(level): lateral(c)
                for level, c in enumerate(in_channels_list)
                if separate_bottom_up_inputs and 0 < level < levels - 1 and c != out_channels
            }
        )
        self.layers = nn.ModuleList(BiFPNLayer(out_channels, levels, norm_layer) for _ in range(num_layers))
        self.out_channels = out_channels

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        if len(features) != len(self.laterals):
            raise ValueError(f"BiFPN built for {len(self.laterals)} inputs, got {len(features)}")
        names = list(features)
        inputs = [lateral(x) for lateral, x in zip(self.laterals, features.values(), strict=True)]
        if self.extra_levels:
            extra = downsample(self.extra_lateral(features[names[-1]]))  # P_6^in from C_5
            for level in range(self.extra_levels):
                inputs.append(extra)
                names.append(f"p{6 + level}")  # the FPN's names (LastLevelP6P7)
                extra = downsample(extra)
        bottom_up = None
        if self.bottom_up_laterals:
            bottom_up = list(inputs)
            raw = list(features.values())
            for level, lateral in self.bottom_up_laterals.items():
                bottom_up[int(level)] = lateral(raw[int(level)])
        inputs = self.layers[0](inputs, bottom_up)
        for layer in self.layers[1:]:
            inputs = layer(inputs)
        return dict(zip(names, inputs, strict=True))

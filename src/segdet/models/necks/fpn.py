"""Feature Pyramid Network (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017).

From backbone features ``C_2 ... C_5`` (strides 4 ... 32) the FPN builds ``P_2 ... P_5``, all with the
same number of channels ``d`` (256 in the paper)::

    M_5 = L_5(C_5)
    M_k = L_k(C_k) + Up_2(M_{k+1})        k = 4, 3, 2   (top-down pathway + lateral connection)
    P_k = O_k(M_k)

where ``L_k`` is a 1x1 convolution (lateral, ``C_k`` channels -> ``d``), ``Up_2`` nearest-neighbour
upsampling to the size of ``C_k`` (sizes, not a factor 2, so odd input sizes work), and ``O_k`` a 3x3
convolution that reduces the aliasing of the upsampling (paper sec. 3). The convolutions have no
activation; with ``norm_layer`` each is followed by a normalisation (torchvision's "v2" detectors use
BatchNorm there).

Extra coarser levels (:class:`ExtraFPNBlock`):

* :class:`LastLevelMaxPool` -- ``P_6 = maxpool_{1x1, stride 2}(P_5)``, i.e. a stride-2 subsampling of
  ``P_5``, used only by the RPN of Faster / Mask R-CNN (paper sec. 4.1);
* :class:`LastLevelP6P7` -- ``P_6 = conv3x3_{s2}(P_5 or C_5)``, ``P_7 = conv3x3_{s2}(ReLU(P_6))``
  (RetinaNet, Lin et al., ICCV 2017, sec. 4).

Parameter names are torchvision's (``inner_blocks.{i}.0`` lateral, ``layer_blocks.{i}.0`` output, the
norm at ``.1``; ``p6`` / ``p7``), and the legacy keys ``inner_blocks.{i}.weight`` of older checkpoints
are renamed on load.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from segdet.models.layers import ConvNormAct


class ExtraFPNBlock(nn.Module):
    """Adds coarser levels after the FPN.

    ``forward(results, inputs, names)`` receives the FPN outputs ``P_k``, the backbone inputs ``C_k`` and
    the names, all finest first, and returns the extended ``(results, names)`` (new lists).
    """

    def forward(
        self, results: list[Tensor], inputs: list[Tensor], names: list[str]
    ) -> tuple[list[Tensor], list[str]]:
        raise NotImplementedError


class LastLevelMaxPool(ExtraFPNBlock):
    """``P_6 = max_pool2d(P_5, kernel_size=1, stride=2)``, named ``"pool"`` (Faster / Mask R-CNN's RPN)."""

    def forward(
        self, results: list[Tensor], inputs: list[Tensor], names: list[str]
    ) -> tuple[list[Tensor], list[str]]:
        # A 1x1 max-pool of stride 2 takes every other pixel: ceil(H / 2) x ceil(W / 2).
        p6 = F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0)
        return [*results, p6], [*names, "pool"]


class LastLevelP6P7(ExtraFPNBlock):
    """RetinaNet's ``P_6 = conv3x3_{s2}(x)``, ``P_7 = conv3x3_{s2}(ReLU(P_6))``, named ``"p6"``, ``"p7"``.

    Args:
        in_channels: channels of ``x``: the FPN width when ``x = P_5``, the backbone's ``C_5`` width
            otherwise.
        out_channels: the FPN width.
        use_P5: ``x = P_5`` (True) or ``C_5`` (False, the original RetinaNet). ``None``: ``P_5`` exactly
            when ``in_channels == out_channels`` (torchvision's rule, so both RetinaNet v1 and v2 weights
            load).
    """

    def __init__(self, in_channels: int, out_channels: int, use_P5: bool | None = None) -> None:
        super().__init__()
        if use_P5 is None:
            use_P5 = in_channels == out_channels
        if use_P5 and in_channels != out_channels:
            raise ValueError(f"use_P5 needs in_channels == out_channels, got {in_channels} != {out_channels}")
        self.use_P5 = use_P5
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(
        self, results: list[Tensor], inputs: list[Tensor], names: list[str]
    ) -> tuple[list[Tensor], list[str]]:
        p6 = self.p6(results[-1] if self.use_P5 else inputs[-1])
        p7 = self.p7(F.relu(p6))
        return [*results, p6, p7], [*names, "p6", "p7"]


class FeaturePyramidNetwork(nn.Module):
    """FPN neck over backbone features given finest (smallest stride) first; see the module docstring.

    Args:
        in_channels_list: channels of each input feature, finest first.
        out_channels: ``d``, the channels of every output level.
        extra_blocks: optional coarser levels (:class:`LastLevelMaxPool`, :class:`LastLevelP6P7`).
        norm_layer: called with ``out_channels`` after every convolution (e.g. ``nn.BatchNorm2d``).

    ``forward(features)`` takes a dict ordered by increasing stride and returns a dict with the same
    names (then the extra levels), ordered the same way.
    """

    def __init__(
        self,
        in_channels_list: list[int],
        out_channels: int,
        extra_blocks: ExtraFPNBlock | None = None,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if not in_channels_list or any(c <= 0 for c in in_channels_list):
            raise ValueError(f"in_channels_list must be positive channel counts, got {in_channels_list}")
        if extra_blocks is not None and not isinstance(extra_blocks, ExtraFPNBlock):
            raise TypeError(f"extra_blocks must be an ExtraFPNBlock, got {type(extra_blocks).__name__}")
        self.inner_blocks = nn.ModuleList(
            ConvNormAct(c, out_channels, 1, norm_layer=norm_layer, activation=None) for c in in_channels_list
        )
        self.layer_blocks = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, norm_layer=norm_layer, activation=None)
            for _ in in_channels_list
        )
        for module in [*self.inner_blocks.modules(), *self.layer_blocks.modules()]:
            if isinstance(module, nn.Conv2d):
                # He-uniform with a=1 (the FPN reference initialisation, as in Detectron and torchvision).
                nn.init.kaiming_uniform_(module.weight, a=1)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.extra_blocks = extra_blocks
        self.out_channels = out_channels

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the blocks got a norm slot have "inner_blocks.0.weight"; the conv now
        # lives at "inner_blocks.0.0.weight".
        for block in ("inner_blocks", "layer_blocks"):
            for i in range(len(self.inner_blocks)):
                for kind in ("weight", "bias"):
                    old, new = f"{prefix}{block}.{i}.{kind}", f"{prefix}{block}.{i}.0.{kind}"
                    if old in state_dict and new not in state_dict:
                        state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        if len(features) != len(self.inner_blocks):
            raise ValueError(f"FPN built for {len(self.inner_blocks)} inputs, got {len(features)}")
        names = list(features)
        inputs = list(features.values())

        top_down = self.inner_blocks[-1](inputs[-1])  # M_5
        results = [self.layer_blocks[-1](top_down)]
        for idx in range(len(inputs) - 2, -1, -1):
            lateral = self.inner_blocks[idx](inputs[idx])
            top_down = lateral + F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")
            results.append(self.layer_blocks[idx](top_down))
        results.reverse()  # finest first

        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, inputs, names)
        return dict(zip(names, results, strict=True))

"""Backbone + FPN composition of the two-stage detectors, with torchvision's layer selection and freezing.

:class:`BackboneWithFPN` runs a :class:`~segdet.models.backbones.Backbone` (``body``) and a
:class:`~segdet.models.necks.FeaturePyramidNetwork` (``fpn``) and returns the levels named ``"0"``,
``"1"``, ... (finest first) and ``"pool"`` (the stride-2 subsampled coarsest level, RPN only), the names
torchvision's detectors use; state-dict keys are ``body.*`` and ``fpn.*``, so ``backbone.body.*`` of a
torchvision detector maps one-to-one (ResNet: ``conv1``, ``bn1``, ``layer1`` ... ``layer4``;
MobileNetV3: ``features.*``, where torchvision writes ``body.{i}.*``, see :mod:`.convert`).

Which layers feed the FPN (torchvision's ``returned_layers``):

* ResNet: stages ``1..4`` = ``layer1..layer4`` (strides 4..32; default all four);
* MobileNetV3-Large: torchvision cuts ``features`` at the blocks ``[0, 2, 4, 7, 13, 16]`` (the stem,
  each strided block, the last 1x1 convolution) and stage ``k`` is the *output of* block
  ``stage_indices[k]``; the default ``returned_layers = [4, 5]`` taps blocks 13 and 16, both at stride 32
  (160 and 960 channels). MobileNetV3-Small (``arch="small"``, YOLO v1 only): ``[0, 1, 2, 4, 9, 12]``.

Which parameters train (``trainable_layers``, torchvision's ``trainable_backbone_layers``):

* ResNet: the last ``t`` of ``layer4, layer3, layer2, layer1, conv1`` (``bn1`` too when ``t = 5``);
* MobileNetV3: blocks from ``stage_indices[6 - t]`` on (``t = 0``: none);

the others get ``requires_grad = False``. BatchNorm layers are frozen separately (``frozen_bn``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from segdet.models.backbones import Backbone, EfficientNetBackbone, MobileNetV3Backbone, ResNetBackbone
from segdet.models.necks.fpn import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool

RESNET_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


class BackboneWithFPN(nn.Module):
    """``fpn(body(x))`` with the FPN levels renamed ``"0"``, ``"1"``, ... and ``"pool"``.

    Args:
        body: a backbone whose :attr:`~Backbone.out_features` are the FPN inputs, finest first.
        out_channels: the FPN width ``d`` (256).
        extra_blocks: coarser levels (default :class:`LastLevelMaxPool`).
        norm_layer: normalisation after each FPN convolution (``nn.BatchNorm2d`` in torchvision's v2).
        neck: another pyramid with the FPN's interface (dict in, dict out, ``out_channels`` wide) used
            instead of building one, e.g. :class:`~segdet.models.necks.BiFPN`; it is still stored as
            ``fpn`` (the state-dict prefix torchvision's detectors use).
    """

    def __init__(
        self,
        body: Backbone,
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
        norm_layer: type[nn.Module] | None = None,
        neck: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        in_channels = [body.out_channels[name] for name in body.out_features]
        if neck is None:
            neck = FeaturePyramidNetwork(
                in_channels,
                out_channels,
                extra_blocks if extra_blocks is not None else LastLevelMaxPool(),
                norm_layer,
            )
        self.fpn = neck
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.body(x)
        named = {str(i): features[name] for i, name in enumerate(self.body.out_features)}
        return self.fpn(named)


def freeze_parameters(module: nn.Module, trainable_prefixes: Sequence[str]) -> None:
    """``requires_grad = False`` for every parameter of ``module`` whose name starts with none of
    ``trainable_prefixes``."""
    prefixes = tuple(trainable_prefixes)
    for name, param in module.named_parameters():
        if not name.startswith(prefixes):
            param.requires_grad_(False)


def resnet_body(
    depth: int,
    *,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    trainable_layers: int = 5,
    frozen_bn: bool = False,
    weights: object = None,
) -> ResNetBackbone:
    """A ResNet body returning ``layer{k}`` for ``k`` in ``returned_layers``, torchvision's freezing."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5] for a ResNet, got {trainable_layers}")
    if not returned_layers or min(returned_layers) < 1 or max(returned_layers) > 4:
        raise ValueError(f"returned_layers must be in [1, 4], got {list(returned_layers)}")
    body = ResNetBackbone(depth, weights=weights, frozen_bn=frozen_bn)
    body.out_features = tuple(f"c{k + 1}" for k in sorted(returned_layers))
    trainable = list(RESNET_TRAINABLE_ORDER[:trainable_layers]) + (["bn1"] if trainable_layers == 5 else [])
    freeze_parameters(body, trainable)
    return body


def mobilenet_stage_indices(body: MobileNetV3Backbone) -> list[int]:
    """torchvision's ``stage_indices``: the stem, every strided block, the last block."""
    strided = [i for i, block in enumerate(body.features) if getattr(block, "_is_cn", False)]
    return [0, *strided, len(body.features) - 1]


def tap_block_outputs(body: MobileNetV3Backbone, blocks: Sequence[int]) -> MobileNetV3Backbone:
    """Re-cut ``body``'s stages so that its features are the outputs of ``features[b]``, ``b`` in
    ``blocks`` (increasing), named ``"b{b}"``; blocks after the last one are not run.

    Strides follow from the strided blocks up to ``b`` (capped at the backbone's output stride).
    """
    blocks = sorted(blocks)
    strided = [i for i, block in enumerate(body.features) if getattr(block, "_is_cn", False)]
    cap = body.output_stride
    layout, channels, strides = {}, {}, {}
    start = 0
    for b in blocks:
        name = f"b{b}"
        layout[name] = tuple(f"features.{i}" for i in range(start, b + 1))
        channels[name] = body.features[b].out_channels
        strides[name] = min(2 * 2 ** sum(1 for s in strided if s <= b), cap)
        start = b + 1
    body.stage_layout, body.out_channels, body.strides = layout, channels, strides
    body.out_features = tuple(layout)
    return body


def mobilenet_body(
    *,
    returned_layers: Sequence[int] = (4, 5),
    trainable_layers: int = 6,
    frozen_bn: bool = False,
    weights: object = None,
    arch: str = "large",
) -> MobileNetV3Backbone:
    """MobileNetV3-Large (or ``arch="small"``) tapped at torchvision's ``mobilenet_backbone(fpn=True)``
    stages (module docstring), with its freezing rule."""
    body = MobileNetV3Backbone(arch, weights=weights, frozen_bn=frozen_bn)
    stages = mobilenet_stage_indices(body)
    if not 0 <= trainable_layers <= len(stages):
        raise ValueError(
            f"trainable_layers must be in [0, {len(stages)}] for MobileNetV3, got {trainable_layers}"
        )
    if not returned_layers or min(returned_layers) < 0 or max(returned_layers) >= len(stages):
        raise ValueError(f"returned_layers must be in [0, {len(stages) - 1}], got {list(returned_layers)}")
    tap_block_outputs(body, [stages[k] for k in returned_layers])
    first_trainable = len(body.features) if trainable_layers == 0 else stages[len(stages) - trainable_layers]
    freeze_parameters(body, [f"features.{i}." for i in range(first_trainable, len(body.features))])
    return body


def efficientnet_body(
    arch: str,
    *,
    trainable_layers: int = 5,
    frozen_bn: bool = False,
    weights: object = None,
    stochastic_depth_prob: float = 0.2,
) -> EfficientNetBackbone:
    """EfficientNet-B``k`` (``arch = "b0"`` ... ``"b7"``) returning ``c3, c4, c5`` (strides 8, 16, 32,
    EfficientDet's ``P3 .. P5`` inputs); its last ``trainable_layers`` of the stages ``c1 .. c5`` train,
    the others are frozen with their BatchNorms (:meth:`~segdet.models.backbones.Backbone.freeze_stages`,
    Detectron2's ``FREEZE_AT``; ResNet's ``trainable_layers`` counts stages the same way)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5] for an EfficientNet, got {trainable_layers}")
    body = EfficientNetBackbone(
        arch,
        weights=weights,
        frozen_bn=frozen_bn,
        frozen_stages=5 - trainable_layers,
        stochastic_depth_prob=stochastic_depth_prob,
    )
    body.out_features = ("c3", "c4", "c5")
    return body

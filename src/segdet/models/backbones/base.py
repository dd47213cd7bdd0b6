"""The backbone interface shared by every model, frozen BatchNorm and stage freezing.

A backbone maps an image batch ``N x 3 x H x W`` to a dict of feature maps named ``"c1"`` ... ``"c5"``,
the outputs of the network's stages whose nominal strides are 2, 4, 8, 16 and 32 (the ``C_k`` of the
FPN paper, Lin et al. 2017, extended with the stride-2 stem output that U-Net decoders use). The
channel count and stride of every feature are attributes (:attr:`Backbone.out_channels`,
:attr:`Backbone.strides`), known before the first forward, like timm's ``features_only`` models and
torchvision's ``IntermediateLayerGetter``.

With an output stride of 16 or 8 the last stages keep their resolution (the stride-2 convolutions become
stride 1 and the following 3x3 convolutions are dilated instead, "atrous convolution", Chen et al.
2017), so ``strides`` then reads e.g. ``{"c4": 16, "c5": 16}``.

Every stage downsamples with padding ``k // 2`` (ResNet, MobileNet) or ceil-mode pooling (VGG), so a
feature of stride ``s`` has size ``ceil(H / s) x ceil(W / s)`` for any input size, odd ones included.

Stages are listed by the *paths* of their submodules (e.g. ``"layer1"``, ``"features.4"``) rather than
by references, so that replacing a submodule (:func:`convert_frozen_batchnorm`) cannot leave a stale
copy in the forward, and so that parameter names stay torchvision's (its checkpoints load as is).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FEATURE_NAMES: tuple[str, ...] = ("c1", "c2", "c3", "c4", "c5")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers, none trained).

    ``y = (x - mu) * gamma / sqrt(sigma^2 + eps) + beta``, computed as one multiply-add with
    ``scale = gamma / sqrt(sigma^2 + eps)`` and ``shift = beta - mu * scale``. This is BatchNorm2d's
    eval-mode formula (Ioffe & Szegedy 2015); freezing it is standard when fine-tuning detectors and
    segmenters with small per-GPU batches, whose batch statistics would be too noisy (Detectron, He et al.
    2017). The state-dict keys are BatchNorm2d's, so BN checkpoints load into it.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A BatchNorm2d checkpoint also has num_batches_tracked, meaningless once frozen.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` (recursively) by a :class:`FrozenBatchNorm2d` holding
    the same statistics and affine parameters. Returns the module (a new one if ``module`` itself is a
    BatchNorm2d); the others are modified in place."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = convert_frozen_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def dilate_conv_(conv: nn.Conv2d, dilation: int) -> None:
    """Turn a stride-2 (or stride-1) convolution into a stride-1 convolution with ``dilation``, padded by
    ``dilation * (k - 1) / 2`` so that it keeps the spatial size ("atrous" convolution, DeepLab)."""
    conv.stride = (1, 1)
    if conv.kernel_size != (1, 1):
        conv.dilation = (dilation, dilation)
        conv.padding = tuple(dilation * (k - 1) // 2 for k in conv.kernel_size)


def dilate_stages_(backbone: Backbone, output_stride: int) -> None:
    """Make a backbone's ``stage_layout`` (``c1`` ... ``c5``, nominal strides 2 ... 32) reach only
    ``output_stride``: every convolution of a stage whose nominal stride ``s`` exceeds it gets stride 1
    and, when wider than ``1x1``, the dilation ``s / output_stride`` (:func:`dilate_conv_`). For the
    depthwise-separable blocks of MobileNets and EfficientNets, whose only spatial convolution is the
    depthwise one (torchvision's ``dilated=True`` of MobileNetV3 is the output-stride-16 case)."""
    for k, paths in enumerate(backbone.stage_layout.values()):
        stride = 2 ** (k + 1)
        if stride <= output_stride:
            continue
        for path in paths:
            for m in backbone.get_submodule(path).modules():
                if isinstance(m, nn.Conv2d):
                    dilate_conv_(m, stride // output_stride)


class Backbone(nn.Module):
    """Base class: a feature extractor returning ``{name: N x out_channels[name] x h x w}``.

    Subclasses register their layers under torchvision's names and set ``self.stage_layout``: an
    ordered ``{feature name: (submodule path, ...)}``, the paths run one after the other. The forward
    runs the stages in order and stops after the last feature in :attr:`out_features`.

    Attributes:
        out_channels: channels of every feature, e.g. ``{"c2": 256, ..., "c5": 2048}``.
        strides: the stride of every feature with respect to the input.
        out_features: the features the forward returns (default: all); set it to drop unused ones.
        ignored_weight_prefixes: state-dict prefixes of the source classifier that the backbone does
            not have (``"fc."``); :func:`segdet.models.weights.load_weights` drops them.
    """

    ignored_weight_prefixes: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.stage_layout: dict[str, tuple[str, ...]] = {}
        self.out_channels: dict[str, int] = {}
        self.strides: dict[str, int] = {}
        self.out_features: tuple[str, ...] = ()

    @property
    def output_stride(self) -> int:
        """Stride of the deepest feature."""
        return max(self.strides.values())

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features: dict[str, Tensor] = {}
        wanted = set(self.out_features)
        for name, paths in self.stage_layout.items():
            for path in paths:
                x = self.get_submodule(path)(x)
            if name in wanted:
                features[name] = x
                if len(features) == len(wanted):
                    break
        return features

    def stage_modules(self, name: str) -> list[nn.Module]:
        return [self.get_submodule(p) for p in self.stage_layout[name]]

    def freeze_stages(self, n: int) -> Backbone:
        """Freeze the first ``n`` stages (``c1`` = the stem, ... ``c5``; ``n = 0`` freezes nothing): their
        parameters stop requiring gradients and their BatchNorms become :class:`FrozenBatchNorm2d` (a
        frozen stage must not keep updating running statistics either). Detectron2's ``FREEZE_AT``."""
        if not 0 <= n <= len(self.stage_layout):
            raise ValueError(f"can freeze 0..{len(self.stage_layout)} stages, got {n}")
        for name in list(self.stage_layout)[:n]:
            for path in self.stage_layout[name]:
                parent, _, attr = path.rpartition(".")
                owner = self.get_submodule(parent) if parent else self
                module = convert_frozen_batchnorm(owner.get_submodule(attr))
                setattr(owner, attr, module)
                for p in module.parameters():
                    p.requires_grad_(False)
        return self

    def freeze_batchnorm(self) -> Backbone:
        """Replace every BatchNorm2d of the backbone by a :class:`FrozenBatchNorm2d`."""
        convert_frozen_batchnorm(self)
        return self

    def _finish(self, output_stride: int, frozen_stages: int, frozen_bn: bool) -> None:
        """Common end of the subclasses' constructors: default outputs, freezing."""
        self.out_features = tuple(self.stage_layout)
        if frozen_bn:
            self.freeze_batchnorm()
        if frozen_stages:
            self.freeze_stages(frozen_stages)


def check_output_stride(output_stride: int) -> None:
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")


def nominal_strides(output_stride: int) -> dict[str, int]:
    """``{"c1": 2, "c2": 4, "c3": 8, "c4": 16, "c5": 32}`` capped at ``output_stride``."""
    return {name: min(2 ** (i + 1), output_stride) for i, name in enumerate(FEATURE_NAMES)}

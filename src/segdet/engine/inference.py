"""Loading a trained model back from its checkpoint, and running it on images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from segdet.engine.checkpoint import load_checkpoint
from segdet.engine.config import Config, from_dict
from segdet.errors import SegdetError


@dataclass
class TrainedModel:
    model: nn.Module
    config: Config
    classes: list[str]
    epoch: int
    # The dataset's category id of each class (COCO's ids), when the run kept them; else 1..K.
    category_ids: list[int] | None = None

    @property
    def task(self) -> str:
        return self.config.task


def load_trained(
    path: str | Path, device: torch.device | str = "cpu", *, use_ema: bool = True
) -> TrainedModel:
    """Rebuild the model a checkpoint was trained with and load its weights (the EMA weights when the
    run kept an EMA and ``use_ema``), in eval mode."""
    from segdet.models import build

    ckpt = load_checkpoint(path, map_location=device)
    try:
        config = from_dict(ckpt["config"])
        classes = list(ckpt["classes"])
    except KeyError as e:
        raise SegdetError(f"{path}: not a training checkpoint (no {e.args[0]!r})") from None
    num_classes = config.model.num_classes or len(classes)
    model = build(config.model.name, num_classes=num_classes, **config.model.kwargs)
    state = ckpt["ema"]["module"] if use_ema and ckpt.get("ema") else ckpt["model"]
    model.load_state_dict(state)
    ids = ckpt.get("category_ids") or list(range(1, len(classes) + 1))
    return TrainedModel(model.to(device).eval(), config, classes, int(ckpt.get("epoch", 0)), list(ids))


PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Autocast(nn.Module):
    """``model`` run under ``torch.autocast(device_type, dtype)``: reduced-precision inference, opt-in."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.device_type = device_type

    def forward(self, *args: object, **kwargs: object) -> object:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(*args, **kwargs)


def _prefers_channels_last(model: nn.Module) -> bool:
    """Channels-last pays on CPUs for dense convolutions (U-Net ResNet-34 at 512 px: 0.81x the time)
    but not for grouped / depthwise ones, whose channels-last CPU kernels are slower (DeepLabv3+ with
    separable convolutions: 1.13x); measured on a 2-core AVX2 host."""
    return not any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())


def prepare_for_inference(
    model: nn.Module,
    *,
    fuse: bool = True,
    precision: str = "fp32",
    device_type: str = "cpu",
    channels_last: bool | None = None,
    nnpack: bool | None = None,
) -> nn.Module:
    """The model set up for fast inference, in eval mode.

    ``fuse``: every BatchNorm folded into the convolution before it (R-CNN models through their
    ``fuse_for_inference``; others through :func:`segdet.models.fuse.fold_batchnorm`): the
    same outputs up to float32 rounding, one pass less over every feature map. The model is changed in
    place and can no longer be trained. ``nnpack`` (with ``fuse``): the wide 3x3 convolutions run
    through NNPACK's Winograd / FFT kernels (:mod:`segdet.ops.nnpack_conv`: the same outputs up to
    float32 rounding); ``None`` chooses it where it was measured faster: the R-CNN detectors on AVX2
    CPUs (not the segmentation models, which run faster channels-last). ``channels_last``: weights
    (and so activations) stored channels-last; ``None`` chooses it unless the model has grouped /
    depthwise convolutions or runs on NNPACK.
    ``precision``: ``"fp32"``, or ``"bf16"`` / ``"fp16"`` autocast (faster where the hardware has fast
    reduced-precision arithmetic; the change in accuracy is the user's to check, e.g. with
    ``segdet eval --precision bf16``).
    """
    from segdet.models.fuse import fold_batchnorm
    from segdet.ops.nnpack_conv import use_nnpack

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    model.eval()
    if fuse and hasattr(model, "fuse_for_inference"):
        if precision != "fp32":
            nnpack = False  # under autocast the convolutions are autocast's (NNPACK is float32 only)
        # nnpack None: fuse_for_inference chooses it from the model's device and the CPU
        model.fuse_for_inference(channels_last=channels_last, nnpack=nnpack)
    elif fuse:
        fold_batchnorm(model)
        if nnpack:
            use_nnpack(model)
        if channels_last is None:
            channels_last = not nnpack and _prefers_channels_last(model)
        if channels_last:
            model.to(memory_format=torch.channels_last)
    dtype = PRECISIONS[precision]
    return model if dtype is None else Autocast(model, dtype, device_type).eval()

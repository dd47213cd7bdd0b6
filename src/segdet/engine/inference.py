"""Loading a trained model back from its checkpoint, and running it on images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from segdet.engine.checkpoint import load_checkpoint
from segdet.engine.config import Config, from_dict
from segdet.errors import ConfigError, SegdetError


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
    run kept an EMA and ``use_ema``), in eval mode. ``segdet train``'s checkpoints and ``segdet rcnn``'s
    ``rcnn.safetensors`` (R-CNN's network, SVMs and box regressors, with its run's config) alike.

    Nothing but ``path`` is read: pretrained weights the saved config names (``backbone_weights``) are
    not fetched, the checkpoint's own weights replace them. A checkpoint that does not fit (keys, shapes,
    classes, task) or holds NaN / infinite weights is a one-line :class:`SegdetError`.
    """
    from segdet.models.build import build_from_config
    from segdet.models.weights import FROM_CHECKPOINT

    ckpt = load_checkpoint(path, map_location=device)
    for key in ("config", "classes", "model"):
        if key not in ckpt:
            rcnn = ckpt.get("kind") == "rcnn"
            what = "an incomplete R-CNN checkpoint" if rcnn else "not a training checkpoint"
            raise SegdetError(f"{path}: {what} (no {key!r})")
    try:
        config = from_dict(ckpt["config"])
    except ConfigError as e:
        raise SegdetError(f"{path}: the saved config is not valid: {e}") from None
    classes, ids = _classes(ckpt, path)
    if ckpt.get("task", config.task) != config.task:
        raise SegdetError(
            f"{path}: the checkpoint's task {ckpt['task']!r} is not its config's {config.task!r}"
        )
    kwargs = dict(config.model.kwargs)
    if kwargs.get("backbone_weights") is not None:
        kwargs["backbone_weights"] = FROM_CHECKPOINT
    num_classes = config.model.num_classes or len(classes)
    if num_classes < len(classes):
        raise SegdetError(
            f"{path}: model.num_classes={num_classes} but the checkpoint has {len(classes)} classes"
        )
    try:
        model = build_from_config(config.model.name, num_classes, kwargs)
    except SegdetError as e:
        raise SegdetError(f"{path}: cannot rebuild the model: {e}") from None
    _check_task(model, config.task, path)
    ema = ckpt.get("ema")
    state = ema.get("module") if use_ema and isinstance(ema, dict) and ema.get("module") else ckpt["model"]
    _load_state(model, state, path)
    epoch = ckpt.get("epoch", 0)
    epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0
    return TrainedModel(model.to(device).eval(), config, classes, epoch, ids)


def _classes(ckpt: dict, path: str | Path) -> tuple[list[str], list[int]]:
    """The checkpoint's class names and their dataset ids (``1..K`` when it kept none), checked."""
    classes = ckpt["classes"]
    if not isinstance(classes, list | tuple) or not classes or not all(isinstance(c, str) for c in classes):
        raise SegdetError(f"{path}: 'classes' is not a non-empty list of class names")
    ids = ckpt.get("category_ids") or list(range(1, len(classes) + 1))
    if (
        not isinstance(ids, list | tuple)
        or len(ids) != len(classes)
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    ):
        raise SegdetError(f"{path}: 'category_ids' is not one integer id per class")
    return list(classes), list(ids)


def _check_task(model: nn.Module, task: str, path: str | Path) -> None:
    """Detectors (torchvision's interface: ``forward(images, targets=None)``) for detection and instance
    segmentation, dense predictors (``forward(x)``) for segmentation."""
    import inspect

    detector = "targets" in inspect.signature(model.forward).parameters
    if detector != (task != "segmentation"):
        kind = "a detector" if detector else "a segmentation model"
        raise SegdetError(f"{path}: task {task!r} but the model {type(model).__name__} is {kind}")


def _load_state(model: nn.Module, state: object, path: str | Path) -> None:
    """``model.load_state_dict(state)`` after checking that it fits and that every weight is finite."""
    from segdet.models.weights import mismatch

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SegdetError(f"{path}: the model weights are not a mapping of names to tensors")
    problem = mismatch(model.state_dict(), state)
    if problem:
        raise SegdetError(f"{path}: the weights do not fit the model {type(model).__name__}: {problem}")
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise SegdetError(
                f"{path}: weight {name!r} has NaN or infinite values; the checkpoint is unusable"
            )
    model.load_state_dict(state)


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
    float32 rounding); ``None`` chooses it where it was measured faster: the detectors without depthwise
    convolutions on AVX2 CPUs, those with an FPN or SSD on AMD Zen 4
    (:func:`~segdet.models.memory_format.nnpack_pays`; not the segmentation models, which run faster
    channels-last).
    ``channels_last``: weights (and so activations) stored channels-last; ``None`` chooses it unless the
    model has depthwise convolutions dilated 5 or more (:mod:`segdet.models.memory_format`) or runs on
    NNPACK, and never in float32 on CUDA (it made R-CNN evaluation slower there;
    :meth:`~segdet.models.detection.detector.Detector.fuse_for_inference`).

    On CUDA, PyTorch runs float32 convolutions on TF32 tensor cores by default
    (``torch.backends.cudnn.allow_tf32 = True``): inputs and weights are rounded to 10 mantissa bits
    (relative error ~2⁻¹¹ ≈ 5e-4 per operand, float32 accumulation) before each convolution, 1000 times
    coarser than float32. segdet leaves that default as it is (it is what torchvision and Detectron2
    users get, and it is 2-8x faster on Ampere and Hopper GPUs) and matrix products in full float32
    (``torch.backends.cuda.matmul.allow_tf32 = False``, PyTorch's default). Consequence: an *untrained*
    network, whose random detections sit on near-ties, can give visibly different detections after any
    change of weights as small as BatchNorm folding; on trained models the change in COCO AP / mIoU is
    what ``tests/engine/test_default_inference.py`` and ``benchmarks/fused_agreement.py`` measure.
    ``precision``: ``"fp32"``, or ``"bf16"`` / ``"fp16"`` autocast (faster where the hardware has fast
    reduced-precision arithmetic; the change in accuracy is the user's to check, e.g. with
    ``segdet eval --precision bf16``).
    """
    from segdet.models.fuse import fold_batchnorm
    from segdet.models.memory_format import channels_last_pays
    from segdet.ops.nnpack_conv import use_nnpack

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    model.eval()
    if fuse and hasattr(model, "fuse_for_inference"):
        if precision != "fp32":
            nnpack = False  # under autocast the convolutions are autocast's (NNPACK is float32 only)
            # bf16/fp16 dense convolutions run channels-last on CPUs and on tensor cores
            channels_last = channels_last_pays(model) if channels_last is None else channels_last
        # None: fuse_for_inference chooses from the model's device (and NNPACK from the CPU)
        model.fuse_for_inference(channels_last=channels_last, nnpack=nnpack)
    elif fuse:
        fold_batchnorm(model)
        if nnpack:
            use_nnpack(model)
        if channels_last is None:
            # float32 on CUDA stays NCHW (see Detector.fuse_for_inference)
            on_cpu_or_autocast = device_type == "cpu" or precision != "fp32"
            channels_last = not nnpack and on_cpu_or_autocast and channels_last_pays(model)
        if channels_last:
            model.to(memory_format=torch.channels_last)
    dtype = PRECISIONS[precision]
    return model if dtype is None else Autocast(model, dtype, device_type).eval()

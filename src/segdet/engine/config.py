"""Run configuration: a YAML file validated against typed dataclasses before anything runs.

Every section is a plain dataclass whose fields are the only keys allowed. :func:`load_config` reads a
YAML file, applies ``key.sub=value`` overrides from the command line, and validates the result: an
unknown or mistyped key, or a value of the wrong type, is a :class:`~segdet.errors.ConfigError` naming
its dotted path and, for a near-miss key, the key that was probably meant; then every value is checked
against its range (:mod:`segdet.engine.config_ranges`). The resolved config is
saved with every run (:func:`save_config`) so a run can always be reproduced.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from segdet.engine.atomic import write_text_atomic
from segdet.engine.config_ranges import check_values
from segdet.errors import ConfigError


@dataclass
class DataSplit:
    """Where one split of a dataset is (see ``segdet.data.formats``)."""

    path: str = ""
    images: str | None = None
    labels: str | None = None
    split: str | None = None


@dataclass
class DataConfig:
    """The dataset and how it is loaded."""

    format: str = "coco"
    train: DataSplit = field(default_factory=DataSplit)
    val: DataSplit | None = None
    # When ``val`` is not given, this fraction of the training images is held out (deterministically).
    val_fraction: float = 0.0
    # Train on this fraction of the training images (a seeded choice, after the hold-out above; 1: all),
    # for a quick try on part of a set, as Ultralytics' ``fraction``. The validation set is unchanged.
    fraction: float = 1.0
    # Synthetic shapes instead of files: number of training images (0 = use ``train``).
    synthetic: int = 0
    synthetic_size: int = 128
    # Validation images of the synthetic set, drawn with another seed (0: a quarter of ``synthetic``,
    # at least 4), and the set's difficulty (a name of ``segdet.data.shapes.DIFFICULTIES``: "standard",
    # or "easy": 1-3 large, wholly visible shapes on plain backgrounds).
    synthetic_val: int = 0
    synthetic_difficulty: str = "standard"
    batch_size: int = 4
    val_batch_size: int | None = None
    workers: int = 0
    # Decode every image (and its masks) once and keep them in memory: only the transforms run per
    # step. For datasets that fit in memory (Penn-Fudan, CamVid, COCO128: 0.1-0.6 GB).
    cache: bool = False
    strict: bool = False
    # Segmentation: training crop size and random scale range. Detection and instance segmentation
    # leave resizing to the model's own transform (torchvision's GeneralizedRCNNTransform: the model
    # options ``min_size``, a list for multi-scale training, and ``max_size``), so these three are unused.
    size: int = 512
    max_size: int = 1333
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip: float = 0.5
    photometric: bool = False

    @property
    def validation_batch_size(self) -> int:
        """Images per validation batch: ``val_batch_size``, else ``batch_size``. The trainer's validation
        and ``segdet eval`` both batch so: a detector pads a batch's images to one size, which moves its
        detections a little (a Penn-Fudan Mask R-CNN after 12 minutes of training: box AP 0.2712 at
        batch 1 against 0.2528 at its run's batch 2), so only the same batches give the logged metrics."""
        return self.val_batch_size or self.batch_size


@dataclass
class ModelConfig:
    """``segdet.models.build(name, num_classes=..., **kwargs)``.

    Keys of the ``model`` section other than these fields are the constructor's keyword arguments
    (``backbone: resnet34``); ``segdet.models.build`` checks them against the constructor's signature.
    """

    name: str = "unet"
    num_classes: int | None = None  # None: taken from the dataset
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # torchvision weights name, local file or URL


@dataclass
class LossConfig:
    """Segmentation loss: cross-entropy (``ce``), ``ce_dice`` (CE + soft Dice), ``dice`` or ``focal``
    (softmax form), with optional per-class weights (one per class)."""

    name: Literal["ce", "ce_dice", "dice", "focal"] = "ce"
    class_weights: list[float] | None = None
    dice_weight: float = 1.0
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    nesterov: bool = False


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warm-up, then cosine, step or poly decay (per optimiser step)."""

    name: Literal["cosine", "step", "poly", "constant"] = "cosine"
    warmup_steps: int = 0
    warmup_factor: float = 0.001
    milestones: list[float] = field(default_factory=lambda: [0.67, 0.89])  # fractions of the run (step)
    gamma: float = 0.1
    power: float = 0.9  # poly
    min_lr_ratio: float = 0.0  # cosine floor


@dataclass
class TrainConfig:
    epochs: int = 10
    # Stop after this many minutes of training even if epochs remain (a fixed compute budget); the
    # model is evaluated and saved at that point. The schedule still spans ``epochs``.
    max_minutes: float | None = None
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["none", "bf16", "fp16"] = "none"
    accumulate: int = 1
    clip_grad_norm: float | None = None
    ema_decay: float | None = None  # e.g. 0.9998; None disables EMA
    eval_every: int = 1  # epochs
    # The validation metric that picks ``best.safetensors``. None: the task's main metric, i.e. ``mIoU``
    # for segmentation and COCO box ``AP`` (AP@[.5:.95]) for detection and instance segmentation.
    best_metric: str | None = None
    best_mode: Literal["max", "min"] = "max"
    log_every: int = 10  # steps
    # Also write last.safetensors inside an epoch, every this many optimiser steps and/or minutes, with
    # the position in the epoch: --resume then continues at the next batch, with the weights an
    # uninterrupted run would have (bit for bit on the CPU). None: at the end of every epoch only.
    checkpoint_every: int | None = None
    checkpoint_minutes: float | None = None
    progress: bool = True
    # Weights and batches channels-last. None: resolved by the trainer (and saved so): on the CPU for
    # models with depthwise convolutions, whose steps are 0.72-0.84 of the NCHW ones there, and for
    # dense models where NNPACK does not train them (0.86-0.93 on AVX-512: on Zen 4 those without an FPN
    # or SSD, every model on other AVX-512 CPUs; segdet.engine.devices.training_uses_channels_last); NCHW
    # otherwise.
    channels_last: bool | None = None
    # Wide 3x3 convolutions through NNPACK (forward, input gradient) and segdet's Winograd weight
    # gradient (segdet.ops.nnpack_conv, "Training"): float32 on the CPU, the same training up to float
    # rounding, 8-28 % faster steps (README). None: on where that was measured faster (every model on
    # AVX2 CPUs, those with an FPN or SSD on AMD Zen 4: segdet.models.memory_format.nnpack_pays), for
    # float32 NCHW training on the CPU.
    nnpack: bool | None = None


@dataclass
class Config:
    """A whole run."""

    task: Literal["segmentation", "detection", "instance"] = "segmentation"
    name: str = "run"
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (``None``: the defaults), apply ``key.sub=value`` overrides, validate."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if path.suffix == ".safetensors":
            raise ConfigError(
                f"{path}: not a config: a segdet checkpoint (segdet eval, predict and export take it; "
                "a config is YAML text)"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a config: a binary file (a config is YAML text)") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}:{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}"
            )
    for item in overrides:
        apply_override(raw, item)
    return from_dict(raw)


def apply_override(raw: dict, item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (``lr=0.1``, ``amp=bf16``)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=0.01)")
    try:
        parsed = yaml.safe_load(value) if value else None
    except yaml.YAMLError:
        parsed = value
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = parsed


def from_dict(raw: dict) -> Config:
    """Validate a nested dict against :class:`Config`: keys and types, then value ranges."""
    config = _build(Config, raw, "")
    check_values(config)
    return config


def to_dict(config: Config) -> dict:
    def convert(v):
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(config)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def _build(cls: type, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if cls is ModelConfig:  # the model's own keyword arguments sit beside name / num_classes
        extra = {k: v for k, v in raw.items() if k not in names}
        raw = {k: v for k, v in raw.items() if k in names}
        raw["kwargs"] = {**dict(raw.get("kwargs") or {}), **extra}
    for key in raw:
        if key not in names:
            guess = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"{_join(where, key)}: unknown key{hint}")
    values = {k: _coerce(hints[k], v, _join(where, k)) for k, v in raw.items()}
    return cls(**values)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if tp is Any:
        return value
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(
                _coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        item = args[0] if args else Any
        return origin(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        return dict(value)
    if tp is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 (PyYAML) reads 1e-4, without a dot, as a string
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"config type {tp} at {where} is not supported")
    raise ConfigError(f"{where}: expected {tp.__name__}, got {_describe(value)}")


#: a number in exponent notation as YAML 1.2 and Python read it (``1e-4``, ``5E3``, ``-2.5e-3``)
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)

"""The allowed range of every config value, in one table (:data:`RANGES`), and the check that applies it
(:func:`check_values`) after :mod:`segdet.engine.config` has checked keys and types."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from segdet.errors import ConfigError

if TYPE_CHECKING:
    from segdet.engine.config import Config


def _unit(v: float) -> bool:
    return 0.0 <= v < 1.0


def _each(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda values: all(test(v) for v in values)


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
NAME = re.compile(r"[^/\\\x00-\x1f]+")
# dotted key -> (test of a value that is not None, what the value must be). One table of every range.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (lambda v: NAME.fullmatch(v) is not None and v not in (".", ".."), "must be a folder name"),
    "output_dir": (bool, "must not be empty"),
    "model.num_classes": (lambda v: v >= 1, "must be at least 1"),
    "data.val_fraction": (_unit, "must be in [0, 1)"),
    "data.fraction": (lambda v: 0 < v <= 1, "must be in (0, 1]: the fraction of the training images"),
    "data.synthetic": (lambda v: v >= 0, "must be 0 (files) or a number of images"),
    "data.synthetic_size": (lambda v: 16 <= v <= 4096, "must be in [16, 4096] pixels"),
    "data.synthetic_val": (lambda v: v >= 0, "must be 0 (a quarter of data.synthetic) or a number of images"),
    "data.synthetic_difficulty": (lambda v: v in ("standard", "easy"), "must be standard or easy"),
    "data.batch_size": (lambda v: v >= 1, "must be at least 1"),
    "data.val_batch_size": (lambda v: v >= 1, "must be at least 1"),
    "data.workers": (lambda v: v >= 0, "must be 0 (load in the main process) or more"),
    "data.size": (lambda v: v >= 1, "must be at least 1 pixel"),
    "data.max_size": (lambda v: v >= 1, "must be at least 1 pixel"),
    "data.scale_range": (lambda v: 0 < v[0] <= v[1], "must be [low, high] with 0 < low <= high"),
    "data.hflip": (lambda v: 0 <= v <= 1, "must be a probability in [0, 1]"),
    "loss.class_weights": (_each(lambda v: v >= 0), "must all be >= 0"),
    "loss.dice_weight": (lambda v: v >= 0, "must be >= 0"),
    "loss.focal_gamma": (lambda v: v >= 0, "must be >= 0"),
    "loss.label_smoothing": (_unit, "must be in [0, 1)"),
    "optim.lr": (lambda v: v > 0, "must be > 0"),
    "optim.momentum": (_unit, "must be in [0, 1)"),
    "optim.weight_decay": (lambda v: v >= 0, "must be >= 0"),
    "optim.betas": (_each(_unit), "must both be in [0, 1)"),
    "schedule.warmup_steps": (lambda v: v >= 0, "must be >= 0"),
    "schedule.warmup_factor": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "schedule.milestones": (_each(lambda v: 0 <= v <= 1), "must be fractions of the run in [0, 1]"),
    "schedule.gamma": (lambda v: v > 0, "must be > 0"),
    "schedule.power": (lambda v: v >= 0, "must be >= 0"),
    "schedule.min_lr_ratio": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "train.epochs": (lambda v: v >= 1, "must be at least 1 (to evaluate a checkpoint use segdet eval)"),
    "train.max_minutes": (lambda v: v > 0, "must be > 0"),
    "train.seed": (lambda v: 0 <= v < 2**63, "must be in [0, 2**63)"),
    "train.device": (lambda v: DEVICE.fullmatch(v) is not None, "must be auto, cpu, mps, cuda or cuda:N"),
    "train.accumulate": (lambda v: v >= 1, "must be at least 1"),
    "train.clip_grad_norm": (lambda v: v > 0, "must be > 0"),
    "train.ema_decay": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "train.eval_every": (lambda v: v >= 1, "must be at least 1"),
    "train.log_every": (lambda v: v >= 1, "must be at least 1"),
    "train.checkpoint_every": (lambda v: v >= 1, "must be at least 1 (optimiser steps)"),
    "train.checkpoint_minutes": (lambda v: v > 0, "must be > 0"),
}


def check_values(config: Config) -> None:
    """Every value in its range (:data:`RANGES`); no NaN or infinity, no NUL byte anywhere. Raises a
    :class:`ConfigError` naming the first key whose value is out of range."""
    _check_plain(dataclasses.asdict(config), "")
    for key, (test, must) in RANGES.items():
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        if value is not None and not test(value):
            raise ConfigError(f"{key}: {value!r} {must}")


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    elif isinstance(value, str) and "\x00" in value:
        raise ConfigError(f"{where}: {value!r} has a NUL byte")

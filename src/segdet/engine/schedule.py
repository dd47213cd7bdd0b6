"""Learning-rate schedules: linear warm-up followed by cosine, step or poly decay.

All are multipliers of the base learning rate as a function of the optimiser step ``t`` of ``T``:

* warm-up (Goyal et al. 2017): ``f + (1 - f) t / W`` for ``t < W``, with ``f = warmup_factor``;
* cosine (Loshchilov & Hutter 2017): ``m + (1 - m) (1 + cos(pi t' / T')) / 2``, ``t'`` counted after the
  warm-up, ``m = min_lr_ratio``;
* step: ``gamma ** k`` where ``k`` is the number of milestones (fractions of ``T``) passed;
* poly (DeepLab, Chen et al. 2017): ``(1 - t / T) ** power``;
* constant: 1.
"""

from __future__ import annotations

import math

import torch

from segdet.engine.config import ScheduleConfig


def lr_multiplier(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """The factor applied to the base learning rate at optimiser step ``step`` (0-based)."""
    total = max(1, total_steps)
    if step < cfg.warmup_steps:
        alpha = step / max(1, cfg.warmup_steps)
        warm = cfg.warmup_factor + (1.0 - cfg.warmup_factor) * alpha
    else:
        warm = 1.0
    if cfg.name == "constant":
        decay = 1.0
    elif cfg.name == "cosine":
        span = max(1, total - cfg.warmup_steps)
        progress = min(1.0, max(0, step - cfg.warmup_steps) / span)
        decay = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif cfg.name == "step":
        passed = sum(step >= m * total for m in cfg.milestones)
        decay = cfg.gamma**passed
    elif cfg.name == "poly":
        decay = max(0.0, 1.0 - step / total) ** cfg.power
    else:
        raise ValueError(f"unknown schedule {cfg.name!r}")
    return warm * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, cfg: ScheduleConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping once per optimiser step. Its state dict holds no function, so it goes
    into a checkpoint as plain numbers."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, cfg))

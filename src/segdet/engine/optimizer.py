"""The optimiser a run's ``optim`` section names."""

from __future__ import annotations

import torch
from torch import nn

from segdet.engine.config import Config


def build_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW. Weight decay is not applied to biases and
    normalisation parameters (1-D tensors), as in timm and most detection recipes: decaying them
    only fights the normalisation."""
    cfg = config.optim
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)

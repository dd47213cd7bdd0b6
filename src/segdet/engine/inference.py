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

"""Resuming a run: where it stands (:class:`TrainState`, saved in every checkpoint) and what must match
for it to continue from a checkpoint (:func:`check_resumable`, :func:`load_model_state`): its task, its
model and its class list. ``segdet train --resume`` reads the run's config and overrides again, so an edited
config or dataset can meet a checkpoint it no longer fits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from segdet.engine.config import Config
from segdet.errors import SegdetError


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    position: int = 0  # batches of epoch ``epoch`` already trained (a checkpoint inside an epoch)
    step: int = 0  # optimiser steps done
    best: float | None = None
    best_epoch: int | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> TrainState:
        return cls(
            epoch=ckpt["epoch"],
            position=int(ckpt.get("position") or 0),
            step=ckpt["step"],
            best=ckpt["best"],
            best_epoch=ckpt["best_epoch"],
            last_metrics=ckpt.get("last_metrics") or {},
        )


def check_resumable(ckpt: dict[str, Any], config: Config, classes: list[str], path: Path) -> None:
    """Refuse, in one line, to resume from a checkpoint of another task, model or class list: the
    weights would not fit, or (classes renamed or reordered, same count) would silently mean others."""
    saved_model = (ckpt.get("config") or {}).get("model", {}).get("name")
    for what, theirs, ours in (
        ("task", ckpt.get("task"), config.task),
        ("model", saved_model, config.model.name),
        ("classes", ckpt.get("classes"), classes),
    ):
        if theirs is not None and theirs != ours:
            raise SegdetError(
                f"{path}: cannot resume: the checkpoint's {what} {_short(theirs)} differs from this run's "
                f"{_short(ours)} (start a new run, or train from it with model.weights)"
            )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def load_model_state(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    """``model.load_state_dict(state)``, its refusal one line naming the checkpoint (a model of another
    width or depth under the same name: PyTorch lists every mismatched key)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()[:200]
        raise SegdetError(
            f"{path}: cannot resume: the checkpoint's weights do not fit this config's model ({first})"
        ) from None

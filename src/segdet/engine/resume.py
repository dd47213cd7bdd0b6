"""Resuming a run: where it stands (:class:`TrainState`, saved in every checkpoint) and what must match
for it to continue from a checkpoint (:func:`check_resumable`, :func:`load_model_state`): its task, its
model and its class list. ``segdet train --resume`` reads the run's config and overrides again, so an edited
config or dataset can meet a checkpoint it no longer fits."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from segdet.engine.config import Config, to_dict
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
    """Refuse, in one line, to resume from a checkpoint of another task, model, class list or optimiser:
    the weights or the optimiser's state would not fit, or (classes renamed or reordered, same count)
    would silently mean others."""
    saved = ckpt.get("config") or {}
    saved_model = saved.get("model", {}).get("name")
    for what, theirs, ours in (
        ("task", ckpt.get("task"), config.task),
        ("model", saved_model, config.model.name),
        ("classes", ckpt.get("classes"), classes),
        # another optimiser's state does not fit (SGD's momentum buffers are no AdamW moments)
        ("optimiser", saved.get("optim", {}).get("name"), config.optim.name),
    ):
        if theirs is not None and theirs != ours:
            raise SegdetError(
                f"{path}: cannot resume: the checkpoint's {what} {_short(theirs)} differs from this run's "
                f"{_short(ours)} (start a new run, or train from it with model.weights)"
            )


#: What resuming does with a setting edited since the checkpoint (config paths, a section's name for all
#: of its fields). PyTorch's ``load_state_dict`` of the optimiser and the scheduler restores their saved
#: hyper-parameters and base rates; the schedule's shape is a function of the config, rebuilt.
RESUME_EFFECTS = {
    "train.epochs": "the learning-rate schedule is rebuilt for the new length and goes on from the "
    "checkpoint's step (the rate may jump)",
    "schedule": "the learning-rate schedule is rebuilt and goes on from the checkpoint's step (the rate may "
    "jump)",
    "data.batch_size": "an epoch has another number of steps, and the schedule is rebuilt for them",
    "optim": "no effect: the optimiser resumes with the checkpoint's settings (start a new run with "
    "model.weights to change them)",
}


def resume_changes(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """One line per setting of :data:`RESUME_EFFECTS` whose value in ``config`` (``to_dict`` of this
    run's) differs from ``saved`` (the checkpoint's config): the setting, both values, and the effect."""
    lines = []
    for key, effect in RESUME_EFFECTS.items():
        theirs, ours = saved, config
        for part in key.split("."):
            theirs, ours = (theirs or {}).get(part), (ours or {}).get(part)
        if theirs is None or theirs == ours:
            continue
        if isinstance(ours, dict):
            changed = [k for k in ours if ours[k] != theirs.get(k)]
            values = ", ".join(f"{key}.{k} {theirs.get(k)!r} -> {ours[k]!r}" for k in changed)
        else:
            values = f"{key} {theirs!r} -> {ours!r}"
        lines.append(f"resuming with {values}: {effect}")
    return lines


def warn_resume_changes(ckpt: dict[str, Any], config: Config, main: bool = True) -> None:
    """Say on stderr (on the ``main`` process) what resuming does with each setting edited since the
    checkpoint (:func:`resume_changes`); the run goes on."""
    for line in resume_changes(ckpt.get("config") or {}, to_dict(config)) if main else []:
        print(f"segdet: warning: {line}", file=sys.stderr)


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

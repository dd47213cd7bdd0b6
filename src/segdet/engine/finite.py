"""Stopping a run at a non-finite loss without stalling an accelerator every step.

Reading a CUDA tensor on the host (``loss.item()``, ``float(loss)``, ``if torch.isnan(loss)``) waits for
every kernel queued before it: the host can no longer run ahead and prepare the next step while the
GPU computes, and small models become bound by launch latency. So on an accelerator the check is
deferred: each step appends ``~isfinite(loss)`` to a list *on the device* (no transfer), and
:meth:`FiniteGuard.check` reads the whole list at once, every ``log_every`` steps and before every
evaluation and checkpoint. A bad step there has already updated the weights, but the run stops before
they are evaluated or saved: ``last.safetensors`` keeps the last good state. On the CPU nothing runs
ahead of the host, so every loss is checked at once, before its backward pass: the weights never see it.

Under DDP every process learns of a bad loss at the same check (one all-reduce), so none is left waiting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segdet.engine import distributed as dist_utils
from segdet.errors import SegdetError


@dataclass(frozen=True)
class StepInfo:
    """Where a loss was computed, for the error message."""

    step: int
    epoch: int  # 1-based
    batch: int
    image_ids: list


class FiniteGuard:
    """See the module docstring. ``deferred``: check at :meth:`check` only (accelerators); otherwise at
    every :meth:`observe`. ``checkpoint``: the path named in the message as the last good state."""

    def __init__(self, *, deferred: bool, distributed: bool, checkpoint: str) -> None:
        self.deferred, self.distributed, self.checkpoint = deferred, distributed, checkpoint
        self._flags: list[torch.Tensor] = []
        self._where: list[StepInfo] = []

    def observe(self, loss: torch.Tensor, where: StepInfo) -> None:
        bad = (~torch.isfinite(loss.detach())).any()
        self._flags.append(bad)
        self._where.append(where)
        if not self.deferred:
            self.check(loss)

    def check(self, loss: torch.Tensor | None = None) -> None:
        """Raise :class:`SegdetError` naming the first bad step since the last check, if any."""
        if not self._flags:
            return
        flags = torch.stack(self._flags).to(torch.float32)
        any_bad = flags.amax().reshape(1)
        if self.distributed:
            dist_utils.all_reduce_sum(any_bad)
        where, self._flags, self._where = self._where, [], []
        if float(any_bad) == 0:
            return
        local = torch.nonzero(flags).flatten()
        info = where[int(local[0])] if len(local) else where[-1]  # another process saw it
        value = f" {float(loss.detach())}" if loss is not None else " non-finite"
        saved = "were not updated" if not self.deferred else "are not saved"
        raise SegdetError(
            f"the loss became{value} at step {info.step} (epoch {info.epoch}, batch {info.batch}, images "
            f"{info.image_ids}); the weights {saved} and {self.checkpoint} holds the last good state: "
            "lower optim.lr or set train.clip_grad_norm"
        )

"""Distributed data parallel: process-group set-up from torchrun's environment and small collectives.

``torchrun --nproc_per_node N -m segdet train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`init_distributed` then joins the group (nccl on GPUs, gloo on CPU). Without those variables
everything here is a no-op for a single process, so the trainer has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from segdet.errors import SegdetError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and local >= torch.cuda.device_count():
        raise SegdetError(
            f"torchrun started process {local} on this machine but it has {torch.cuda.device_count()} "
            "GPU(s): use --nproc_per_node <= the GPU count, or train.device=cpu (gloo)"
        )
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every process, in place (no-op alone).

    DDP copies them from rank 0 only at the start of each training forward; the last step then
    updates each process's copy with its own batch (and an EMA averages each process's copy), so
    before evaluation they differ. Rank 0's are the ones its checkpoint saves: evaluating every share
    of the validation set with them makes the logged metrics (and the choice of ``best``) those of the
    model on disk."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def broadcast_object(value):
    """Rank 0's ``value`` on every process."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

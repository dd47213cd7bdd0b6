"""Data loading for the trainer: order and augmentation as pure functions of ``(seed, epoch, index)``, and
loaders that keep an accelerator fed.

**Order.** :class:`EpochSampler` draws the permutation of epoch ``e`` from a generator seeded with
``seed + e`` (the permutation ``DistributedSampler`` draws, so N processes see the same global batches
as one).

**Augmentation.** Every training sample's random transforms draw from torch's generator seeded with
``SeedSequence([seed, epoch, index])`` (:class:`SeededSamples`), inside ``torch.random.fork_rng`` so that
the process's own generator is untouched. A sample therefore gets the same augmentation whichever
worker loads it, however many workers there are, and after a resume at any point of the run. Persistent
workers keep the copy of the dataset they were started with, so the epoch cannot be set on the dataset:
it travels with the index instead, as ``epoch * N + i`` (:class:`EpochTagged`).

**Throughput** (:func:`build_loader`). On CUDA the batches are put in page-locked memory
(``pin_memory``), which lets the tasks' ``to(device, non_blocking=True)`` copies overlap with the
computation; workers persist across epochs (no re-spawn, no re-import each epoch) and each keeps
``prefetch_factor`` batches ready. Decoding and transforms run in the workers. An optional in-memory
cache of decoded samples (``data.cache``, :meth:`segdet.data.dataset.SegDetDataset.preload`) removes the
decoding for datasets that fit in memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler

from segdet.engine.distributed import DistInfo


class EpochSampler(Sampler[int]):
    """A shuffled order that is a pure function of ``(seed, epoch)``: resuming at an epoch boundary
    replays exactly the order the uninterrupted run would have used. It is the permutation
    ``DistributedSampler`` draws, so N processes see, batch for batch, the same global batches as one."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())

    def __len__(self) -> int:
        return self.size


class EpochTagged(Sampler[int]):
    """``sampler``'s indices ``i`` as ``epoch * size + i``, for :class:`SeededSamples`; ``set_epoch`` is
    passed on to ``sampler`` (an :class:`EpochSampler` or a ``DistributedSampler``). ``skip``: leave out
    the epoch's first indices (a run resumed inside an epoch continues with the next batch)."""

    def __init__(self, sampler: Sampler[int], size: int) -> None:
        self.sampler, self.size, self.epoch, self.skip = sampler, size, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * self.size
        return (offset + i for i in itertools.islice(self.sampler, self.skip, None))

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation: NumPy's ``SeedSequence`` hash of the three numbers (well
    mixed: neighbouring samples and epochs get unrelated streams)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32).view(np.uint64)[0])


class SeededSamples(Dataset):
    """``dataset[i]`` computed with torch's generator seeded by :func:`sample_seed` ``(seed, epoch, i)``,
    for the tagged index ``epoch * len(dataset) + i`` (:class:`EpochTagged`; a plain index is epoch 0)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, tagged: int):
        epoch, index = divmod(int(tagged), len(self.dataset))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]


class ShardSampler(Sampler[int]):
    """Process ``rank``'s share of ``0..size-1`` for evaluation in a DDP group: every ``world_size``-th
    index from ``rank``, each index on exactly one process. Unlike ``DistributedSampler`` it does not
    repeat images to even out the shares (shares differ by at most one): metrics summed over processes
    (a segmentation confusion matrix) would count a repeated image twice. Detectron2's
    ``InferenceSampler`` does the same. Evaluation runs the unwrapped model, so the unequal numbers of
    batches meet no collective before the final reduction."""

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


def sampler_for(dataset: Dataset, dist: DistInfo, seed: int, *, train: bool) -> Sampler[int]:
    """The order of ``dataset``: in a DDP group each process's share (``DistributedSampler``, shuffled,
    for training; :class:`ShardSampler`, each image once, for evaluation); alone, :class:`EpochSampler`
    for training and the dataset's order for evaluation."""
    if dist.enabled and train:
        return DistributedSampler(
            dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed, drop_last=False
        )
    if dist.enabled:
        return ShardSampler(len(dataset), dist.rank, dist.world_size)
    return EpochSampler(len(dataset), seed) if train else SequentialSampler(dataset)


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    sampler: Sampler[int],
    collate: Callable,
    workers: int,
    device: torch.device,
    seed: int | None = None,
) -> DataLoader:
    """A ``DataLoader`` set up as the module docstring says. ``seed``: training (augmentation seeded per
    sample, :class:`SeededSamples`); ``None``: evaluation (no random transforms)."""
    if seed is not None:
        dataset = SeededSamples(dataset, seed)
        sampler = EpochTagged(sampler, len(dataset))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=False,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        # the loader draws its workers' base seed from this generator, not from the global one (which
        # then stays the model's alone: the same runs with 0 or N workers)
        generator=torch.Generator().manual_seed(seed or 0),
    )

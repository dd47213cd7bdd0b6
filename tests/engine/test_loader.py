"""The trainer's data loading (segdet.engine.loader) and its non-finite loss guard (segdet.engine.finite).

References: the same samples loaded in the main process without cache (exact: torch.equal) and
hand-made loss sequences."""

from __future__ import annotations

import pytest
import torch

from segdet.data import shapes
from segdet.data import transforms as T
from segdet.data.collate import collate_segmentation
from segdet.data.dataset import SegDetDataset
from segdet.engine.finite import FiniteGuard, StepInfo
from segdet.engine.loader import EpochSampler, build_loader, sample_seed
from segdet.errors import SegdetError


@pytest.fixture(scope="module")
def annotations(tmp_path_factory):
    return shapes.generate(tmp_path_factory.mktemp("shapes"), 6, seed=3, size=40)


def _dataset(annotations) -> SegDetDataset:
    # random scale, crop and flip: every sample's augmentation is random
    return SegDetDataset(annotations, T.segmentation_train(32, scale_range=(0.5, 1.5)), semantic=True)


def _epochs(dataset, workers: int, epochs: int = 2) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    sampler = EpochSampler(len(dataset), seed=5)
    loader = build_loader(
        dataset,
        batch_size=2,
        sampler=sampler,
        collate=collate_segmentation,
        workers=workers,
        device=torch.device("cpu"),
        seed=7,
    )
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        out.append(list(loader))
    return out


def _assert_equal(a, b) -> None:
    assert len(a) == len(b)
    for epoch_a, epoch_b in zip(a, b, strict=True):
        for (xa, ya), (xb, yb) in zip(epoch_a, epoch_b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_augmentation_does_not_depend_on_workers(annotations):
    """Two worker processes give bit for bit the batches the main process gives (the sample's seed is
    a function of (seed, epoch, index), not of the worker that loads it); epochs differ."""
    main_process = _epochs(_dataset(annotations), workers=0)
    in_workers = _epochs(_dataset(annotations), workers=2)
    _assert_equal(main_process, in_workers)
    first, second = main_process
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))


def test_cache_gives_the_same_samples(annotations):
    """preload(): the decoded images are reused, untouched by the transforms, over several epochs."""
    cached = _dataset(annotations)
    cached.preload(threads=2)
    _assert_equal(_epochs(cached, workers=0, epochs=3), _epochs(_dataset(annotations), workers=0, epochs=3))


def test_loading_leaves_the_global_generator_alone(annotations):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _epochs(_dataset(annotations), workers=0, epochs=1)
    assert torch.equal(torch.rand(3), expected)


def test_sample_seeds_differ():
    seeds = {sample_seed(0, e, i) for e in range(3) for i in range(100)}
    assert len(seeds) == 300 and sample_seed(0, 1, 2) == sample_seed(0, 1, 2)


def test_loader_settings_follow_the_device(annotations):
    dataset = _dataset(annotations)
    sampler = EpochSampler(len(dataset), 0)
    options = {"batch_size": 2, "sampler": sampler, "collate": collate_segmentation}
    cpu = build_loader(dataset, workers=2, device=torch.device("cpu"), **options)
    assert cpu.persistent_workers and not cpu.pin_memory
    gpu = build_loader(dataset, workers=0, device=torch.device("cuda"), **options)
    assert gpu.pin_memory and not gpu.persistent_workers


def _where(step: int) -> StepInfo:
    return StepInfo(step=step, epoch=1, batch=step, image_ids=[step])


def test_deferred_guard_names_the_first_bad_step():
    guard = FiniteGuard(deferred=True, distributed=False, checkpoint="run/last.safetensors")
    for step, value in enumerate([1.0, 2.0, float("nan"), float("inf"), 3.0]):
        guard.observe(torch.tensor(value), _where(step))  # nothing is read yet
    with pytest.raises(SegdetError, match=r"at step 2 .*images \[2\].*are not saved.*run/last"):
        guard.check()
    guard.check()  # the flags were consumed


def test_immediate_guard_stops_at_once():
    guard = FiniteGuard(deferred=False, distributed=False, checkpoint="last.safetensors")
    guard.observe(torch.tensor(1.0), _where(0))
    with pytest.raises(SegdetError, match=r"became inf at step 1 .*were not updated"):
        guard.observe(torch.tensor(float("inf")), _where(1))


@pytest.mark.parametrize(("size", "world"), [(5, 2), (7, 3), (2, 4), (8, 2)])
def test_evaluation_shares_score_every_image_once(size, world):
    """Under DDP each process evaluates a share of the validation set; together they are the set, each
    image once (``DistributedSampler`` repeats images to even out the shares, and a summed confusion
    matrix would count them twice). Reference: Detectron2's ``InferenceSampler``; exact."""
    from segdet.engine.distributed import DistInfo
    from segdet.engine.loader import sampler_for

    dataset = list(range(size))
    shares = [list(sampler_for(dataset, DistInfo(rank, world), 0, train=False)) for rank in range(world)]
    assert sorted(i for share in shares for i in share) == dataset
    assert [len(share) for share in shares] == [
        len(sampler_for(dataset, DistInfo(r, world), 0, train=False)) for r in range(world)
    ]
    # training keeps DistributedSampler: equal shares, so every process takes the same number of steps
    train = [len(sampler_for(dataset, DistInfo(rank, world), 0, train=True)) for rank in range(world)]
    assert len(set(train)) == 1

"""Balanced sampler: counts by the paper's rule, never draws ignored predictions, reproducible."""

from __future__ import annotations

import torch

from segdet.models.detection.rcnn.sampler import BalancedPositiveNegativeSampler


def test_counts_follow_the_fraction():
    labels = torch.tensor([1] * 200 + [0] * 1000 + [-1] * 50)
    pos, neg = BalancedPositiveNegativeSampler(256, 0.5)([labels])
    assert pos[0].sum() == 128 and neg[0].sum() == 128
    assert bool((labels[pos[0]] >= 1).all()) and bool((labels[neg[0]] == 0).all())


def test_few_positives_filled_with_negatives():
    labels = torch.tensor([2] * 10 + [0] * 1000)
    pos, neg = BalancedPositiveNegativeSampler(512, 0.25)([labels])
    assert pos[0].sum() == 10 and neg[0].sum() == 502


def test_ignored_never_drawn_and_small_pools():
    labels = torch.tensor([1, 0, -1, -1])
    pos, neg = BalancedPositiveNegativeSampler(256, 0.5)([labels])
    assert pos[0].tolist() == [True, False, False, False]
    assert neg[0].tolist() == [False, True, False, False]


def test_seeded_generator_is_reproducible():
    labels = torch.tensor([1] * 100 + [0] * 100)
    s = BalancedPositiveNegativeSampler(64, 0.5)
    a = s([labels], torch.Generator().manual_seed(3))
    b = s([labels], torch.Generator().manual_seed(3))
    assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[1][0], b[1][0])

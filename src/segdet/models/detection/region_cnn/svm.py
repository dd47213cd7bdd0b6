"""R-CNN's per-class linear SVMs with hard negative mining (Girshick et al. 2014, sec. 2.3 and appendix B).

**The SVM** of one class is ``f(x) = wᵀx + b`` minimising the L2-regularised hinge loss (liblinear's
``-s 3``, which the paper's code calls with ``C = 0.001``, positives weighted 2, bias multiplier 10)::

    1/2 (||w||^2 + b'^2) + C Σ_i c_i max(0, 1 - y_i (wᵀx_i + B b'))        b = B b'

with ``y_i = ±1``, ``c_i`` the class weight (``positive_weight`` for positives, 1 for negatives) and
``B`` the bias multiplier (the bias is an extra feature of value ``B``, regularised like the others).
It is solved in the dual by coordinate descent (Hsieh et al., "A dual coordinate descent method for
large-scale linear SVM", ICML 2008, Algorithm 1; liblinear's solver): with ``Q_ii = ||x_i||^2 + B^2``,
each ``α_i`` in turn is set to ``clip(α_i - (y_i f(x_i) - 1) / Q_ii, 0, C c_i)`` and ``w`` updated,
until the largest projected gradient is under ``tol`` (liblinear's default 0.1). Examples at a bound
whose gradient pushes them outward are skipped until the active ones converge, then a full pass
checks them all (liblinear's shrinking, simplified).

**Examples** (appendix B): positives are the ground-truth boxes of the class only, negatives the
proposals with IoU < 0.3 with every object of the class (those in between are ignored).

**Hard negative mining** (Felzenszwalb et al. 2010; the paper's ``rcnn_train.m``): negatives are far
too many to train on at once, so a cache of them is grown image by image. Before the first training
every negative of the images visited is cached; afterwards only *hard* negatives (``f(x) > -1.0001``,
inside the margin or misclassified) are added, and after each retraining the *easy* ones
(``f(x) < -1.2``) are evicted. The SVM is retrained whenever ``retrain_limit`` negatives were added
since the last training and after the last image of each pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class SVMSettings:
    """The SVM and mining constants of the module docstring (the R-CNN code's values)."""

    C: float = 0.001
    positive_weight: float = 2.0
    bias_multiplier: float = 10.0
    hard_thresh: float = -1.0001
    evict_thresh: float = -1.2
    retrain_limit: int = 2000
    passes: int = 1
    tol: float = 0.1
    max_iter: int = 1000
    seed: int = 0


def train_linear_svm(
    x: np.ndarray, y: np.ndarray, costs: np.ndarray, settings: SVMSettings
) -> tuple[np.ndarray, float]:
    """``(w, b)`` of the hinge-loss SVM on ``x [N, D]`` with labels ``y`` (±1) and per-example upper
    bounds ``costs = C c_i`` (module docstring), by dual coordinate descent in float64."""
    rng = np.random.default_rng(settings.seed)
    big_b = settings.bias_multiplier
    xa = np.concatenate([np.asarray(x, np.float64), np.full((len(x), 1), big_b)], axis=1)
    q = np.einsum("nd,nd->n", xa, xa)
    alpha = np.zeros(len(xa))
    w = np.zeros(xa.shape[1])
    everything = np.arange(len(xa))
    active = everything
    for _ in range(settings.max_iter):
        largest, kept = 0.0, []
        for i in rng.permutation(active):
            g = y[i] * (w @ xa[i]) - 1.0
            # the projected gradient: zero where the bound stops the step
            pg = min(g, 0.0) if alpha[i] == 0 else max(g, 0.0) if alpha[i] == costs[i] else g
            if pg == 0.0 and (alpha[i] == 0 or alpha[i] == costs[i]):
                continue  # at its bound and pushed outward: shrunk until the next full pass
            kept.append(i)
            largest = max(largest, abs(pg))
            old = alpha[i]
            alpha[i] = min(max(old - g / q[i], 0.0), costs[i])
            w += (alpha[i] - old) * y[i] * xa[i]
        if largest < settings.tol:
            if len(active) == len(everything):
                break
            active = everything  # converged on the active set: check every example again
        else:
            active = np.asarray(kept, dtype=np.int64)
    return w[:-1], float(w[-1] * big_b)


def svm_objective(x: np.ndarray, y: np.ndarray, costs: np.ndarray, w: np.ndarray, b: float, big_b: float):
    """The primal objective of the module docstring (for tests and logs)."""
    margins = np.maximum(0.0, 1.0 - y * (np.asarray(x, np.float64) @ w + b))
    return 0.5 * (w @ w + (b / big_b) ** 2) + float(costs @ margins)


def mine_and_train(
    positives: Tensor,
    negatives: Sequence[Tensor],
    settings: SVMSettings,
    on_image: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, float, dict]:
    """One class's SVM by hard negative mining over the images' negative features (module docstring).

    Args:
        positives: ``[P, D]`` features of the class's ground-truth boxes.
        negatives: per image ``[N_i, D]`` features of its negatives.
        settings: constants.
        on_image: called with ``(image index, cache size)`` after each image (progress).

    Returns:
        ``(w [D], b, stats)``; stats: trainings, final cache size, hard negatives added.
    """
    pos = positives.double().numpy()
    cached = [np.zeros(len(n), dtype=bool) for n in negatives]
    w, b, trained, added_total, added = None, 0.0, 0, 0, 0

    def train() -> tuple[np.ndarray, float]:
        neg = np.concatenate(
            [n.double().numpy()[c] for n, c in zip(negatives, cached, strict=True)]
            + [np.zeros((0, pos.shape[1]))]
        )
        x = np.concatenate([pos, neg])
        y = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
        costs = settings.C * np.where(y > 0, settings.positive_weight, 1.0)
        return train_linear_svm(x, y, costs, settings)

    for _ in range(settings.passes):
        for i, feats in enumerate(negatives):
            if len(feats):
                if w is None:  # before the first training: every negative
                    new = ~cached[i]
                else:
                    scores = feats.double().numpy() @ w + b
                    new = (scores > settings.hard_thresh) & ~cached[i]
                cached[i] |= new
                added += int(new.sum())
            last = i == len(negatives) - 1
            if added > settings.retrain_limit or (last and (added or w is None)):
                w, b = train()
                trained += 1
                added_total += added
                added = 0
                for n, c in zip(negatives, cached, strict=True):  # evict the easy negatives
                    if c.any():
                        c[c] = n.double().numpy()[c] @ w + b >= settings.evict_thresh
            if on_image is not None:
                on_image(i, int(sum(c.sum() for c in cached)))
    if w is None:
        w, b = train()
    stats = {"trainings": trained, "cache": int(sum(c.sum() for c in cached)), "added": added_total}
    return torch.from_numpy(w).float(), b, stats

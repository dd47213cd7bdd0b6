"""Where a run's training and validation annotation sets come from, for every task.

``data.synthetic: N`` draws the built-in shapes set; otherwise ``data.train`` (and ``data.val``) are
read with the format reader ``data.format``. Without ``data.val``, ``data.val_fraction`` of the
training images is held out by a seeded permutation, so the split is the same on every run with the
same ``train.seed``. ``data.fraction`` then keeps that fraction of the training images, for a quick try.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from segdet.data.structures import AnnotationSet
from segdet.engine.config import Config
from segdet.errors import ConfigError

# The synthetic validation set's seed is ``train.seed + VAL_SEED_OFFSET``: image i of seed s is drawn
# from ``default_rng([s, i])`` alone, so no validation image repeats a training image.
VAL_SEED_OFFSET = 1_000_003
# ``data.fraction``'s choice is drawn from ``default_rng([train.seed, FRACTION_SEED])``: a stream of its
# own, so the held-out validation images do not depend on it.
FRACTION_SEED = 7


def absolute_data_paths(cfg: Config) -> None:
    """Make ``data.train`` / ``data.val``'s paths absolute, from the current folder (where the run was
    started), in place: the config saved with the run and its checkpoints then finds the data from any
    folder (``segdet eval RUN/best.safetensors`` run elsewhere)."""
    for split in (cfg.data.train, cfg.data.val):
        if split is None:
            continue
        for key in ("path", "images", "labels"):
            value = getattr(split, key)
            if value:
                setattr(split, key, os.path.abspath(value))


def load_split(cfg: Config, which: str, *, report: bool = True) -> AnnotationSet | None:
    """The annotation set of ``data.train`` / ``data.val`` (``None`` when that split is not given);
    ``report``: :func:`report_problems` (``segdet eval`` reports them itself, refusing such a set)."""
    from segdet.data.formats import read_dataset

    split = getattr(cfg.data, which)
    if split is None or not split.path:
        return None
    options = {k: getattr(split, k) for k in ("images", "labels", "split") if getattr(split, k) is not None}
    dataset = read_dataset(cfg.data.format, Path(split.path), strict=cfg.data.strict, **options)
    if report:
        report_problems(dataset, split.path)
    return dataset


def report_problems(dataset: AnnotationSet, path: str) -> None:
    """One line on stderr (rank 0) when reading ``dataset`` left records out or repaired them: training
    goes on without them, and the reader's own lines are logged only with ``segdet -v``."""
    errors = sum(p.severity == "error" for p in dataset.problems)
    warnings = len(dataset.problems) - errors
    if not dataset.problems or os.environ.get("RANK", "0") != "0":
        return
    print(
        f"segdet: {path}: {errors} records left out as unusable and {warnings} warnings (boxes clipped, "
        f"files ignored) while reading; `segdet data check {path}` lists them, data.strict: true refuses "
        "the set",
        file=sys.stderr,
    )


def synthetic_split(cfg: Config, which: str) -> AnnotationSet:
    """Synthetic shapes of ``data.synthetic_difficulty``: ``data.synthetic`` training images, and
    ``data.synthetic_val`` (default a quarter as many, at least 4) validation images drawn with another
    seed (so never seen in training), written under the run folder."""
    from segdet.data import shapes

    if which == "train":
        n, seed = cfg.data.synthetic, cfg.train.seed
    else:
        n = cfg.data.synthetic_val or max(4, cfg.data.synthetic // 4)
        seed = cfg.train.seed + VAL_SEED_OFFSET
    options = shapes.DIFFICULTIES[cfg.data.synthetic_difficulty]
    return shapes.generate(
        cfg.run_dir / "synthetic" / which,
        n,
        seed=seed,
        size=cfg.data.synthetic_size,
        **options,  # type: ignore[arg-type]
    )


def holdout(dataset: AnnotationSet, fraction: float, seed: int) -> tuple[AnnotationSet, AnnotationSet]:
    """Split off ``fraction`` of the images, chosen by a seeded permutation, as a validation set."""
    order = np.random.default_rng(seed).permutation(len(dataset.images))
    n_val = max(1, round(fraction * len(order)))
    return _subset(dataset, order[n_val:]), _subset(dataset, order[:n_val])


def keep_fraction(dataset: AnnotationSet, fraction: float, seed: int) -> AnnotationSet:
    """``fraction`` of the images (at least one), chosen by a seeded permutation of their own seed, in
    their order: ``data.fraction``, a quick try on part of a set (Ultralytics' ``fraction``)."""
    if fraction >= 1.0:
        return dataset
    order = np.random.default_rng([seed, FRACTION_SEED]).permutation(len(dataset.images))
    return _subset(dataset, order[: max(1, round(fraction * len(order)))])


def _subset(dataset: AnnotationSet, indices) -> AnnotationSet:
    """The images of ``dataset`` at ``indices``, in the dataset's order; no problems carried over."""
    return AnnotationSet(
        [dataset.images[i] for i in sorted(int(i) for i in indices)],
        dataset.classes,
        dataset.category_ids,
        dataset.semantic_classes,
        dataset.ignore_index,
        [],
        dataset.source,
    )


def train_val_splits(cfg: Config, *, report: bool = True) -> tuple[AnnotationSet, AnnotationSet | None]:
    """The run's training set and validation set (``None`` when there is none); ``report`` as
    :func:`load_split`'s."""
    if cfg.data.synthetic:
        train, val = synthetic_split(cfg, "train"), synthetic_split(cfg, "val")
        return keep_fraction(train, cfg.data.fraction, cfg.train.seed), val
    train = load_split(cfg, "train", report=report)
    if train is None:
        raise ConfigError("data.train.path: no training data given (or set data.synthetic: N)")
    val = load_split(cfg, "val", report=report)
    if val is None and cfg.data.val_fraction > 0:
        train, val = holdout(train, cfg.data.val_fraction, cfg.train.seed)
    return keep_fraction(train, cfg.data.fraction, cfg.train.seed), val

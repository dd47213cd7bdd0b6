"""Tests of segdet.metrics.confusion against a numpy reference written here with explicit loops over
classes, and hand-computed tiny cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from segdet.metrics.confusion import ConfusionMatrix


def reference_metrics(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int | None) -> dict:
    """Straight definitions, one class at a time, on the flattened pixels (no confusion matrix)."""
    pred, target = pred.reshape(-1), target.reshape(-1)
    if ignore is not None:
        keep = target != ignore
        pred, target = pred[keep], target[keep]
    iou, dice, acc, freq = [], [], [], []
    for c in range(num_classes):
        tp = int(np.sum((pred == c) & (target == c)))
        fp = int(np.sum((pred == c) & (target != c)))
        fn = int(np.sum((pred != c) & (target == c)))
        iou.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
        dice.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan)
        acc.append(tp / (tp + fn) if tp + fn else math.nan)
        freq.append((tp + fn) / len(target))
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t in range(num_classes):
        for p in range(num_classes):
            matrix[t, p] = np.sum((target == t) & (pred == p))
    fw = sum(f * i for f, i in zip(freq, iou, strict=True) if f > 0)
    return {
        "matrix": matrix,
        "iou": np.array(iou),
        "dice": np.array(dice),
        "class_accuracy": np.array(acc),
        "pixel_accuracy": float(np.mean(pred == target)),
        "mean_iou": float(np.nanmean(iou)),
        "mean_dice": float(np.nanmean(dice)),
        "mean_class_accuracy": float(np.nanmean(acc)),
        "fw_iou": fw,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_arrays_match_reference(seed: int) -> None:
    """Every score equals the loop-over-classes numpy reference to 1e-12 (random labels, some ignored,
    one class never present so its NaN handling is exercised, updates split over two batches)."""
    rng = np.random.default_rng(seed)
    c = 6
    target = rng.integers(0, c - 1, size=(4, 17, 23))  # class 5 never in the truth...
    pred = rng.integers(0, c - 1, size=target.shape)  # ...nor predicted: NaN, left out of the means
    target[rng.random(target.shape) < 0.1] = 255
    ref = reference_metrics(pred, target, c, 255)

    cm = ConfusionMatrix(c, ignore_index=255)
    cm.update(torch.from_numpy(pred[:2]), torch.from_numpy(target[:2]))
    cm.update(torch.from_numpy(pred[2:]), torch.from_numpy(target[2:]))
    m = cm.compute()

    np.testing.assert_array_equal(cm.matrix.numpy(), ref["matrix"])
    for key in ("iou", "dice", "class_accuracy"):
        np.testing.assert_allclose(getattr(m, key), ref[key], rtol=0, atol=1e-12, equal_nan=True)
    for key in ("pixel_accuracy", "mean_iou", "mean_dice", "mean_class_accuracy", "fw_iou"):
        assert getattr(m, key) == pytest.approx(ref[key], abs=1e-12), key
    assert math.isnan(m.iou[5]) and math.isnan(m.dice[5]) and math.isnan(m.class_accuracy[5])


def test_tiny_hand_computed_case() -> None:
    """A 2x3 image worked out by hand.

    truth  [[0, 0, 1],    pred [[0, 1, 1],
            [1, 2, 2]]          [1, 2, 0]]
    class 0: TP 1, FP 1, FN 1 -> IoU 1/3, Dice 2/4, acc 1/2
    class 1: TP 2, FP 1, FN 0 -> IoU 2/3, Dice 4/5, acc 1
    class 2: TP 1, FP 0, FN 1 -> IoU 1/2, Dice 2/3, acc 1/2
    pixel acc 4/6; fwIoU = 2/6*1/3 + 2/6*2/3 + 2/6*1/2 = 1/2.
    """
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 1, 1], [1, 2, 0]]), torch.tensor([[0, 0, 1], [1, 2, 2]]))
    m = cm.compute()
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    np.testing.assert_allclose(m.iou, [1 / 3, 2 / 3, 1 / 2])
    np.testing.assert_allclose(m.dice, [1 / 2, 4 / 5, 2 / 3])
    np.testing.assert_allclose(m.class_accuracy, [1 / 2, 1, 1 / 2])
    assert m.pixel_accuracy == pytest.approx(4 / 6)
    assert m.mean_iou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m.mean_dice == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert m.mean_class_accuracy == pytest.approx(2 / 3)
    assert m.fw_iou == pytest.approx(1 / 2)


def test_logits_are_reduced_by_argmax() -> None:
    """N x C x H x W scores give the same matrix as their argmax over dim 1 (exact)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=g)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(logits, target)
    b.update(logits.argmax(1), target)
    assert torch.equal(a.matrix, b.matrix)


def test_ignore_handling() -> None:
    """Ignored pixels are not counted whatever is predicted there (even an out-of-range value); with
    ignore_index=None the value 255 is an error instead."""
    cm = ConfusionMatrix(2, ignore_index=255)
    cm.update(torch.tensor([0, 1, 7, 1]), torch.tensor([0, 1, 255, 255]))
    assert cm.matrix.tolist() == [[1, 0], [0, 1]]
    with pytest.raises(ValueError, match="255"):
        ConfusionMatrix(2, ignore_index=None).update(torch.tensor([0]), torch.tensor([255]))


def test_out_of_range_values_are_named() -> None:
    """Targets or predictions outside [0, C) raise ValueError naming the value."""
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target value 3"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="target value -1"):
        cm.update(torch.tensor([0, 1]), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="pred value 5"):
        cm.update(torch.tensor([5, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))
    assert int(cm.matrix.sum()) == 0  # a refused batch leaves no trace


def test_absent_classes_are_nan_and_left_out_of_means() -> None:
    """Class 2 (in neither pred nor truth) is NaN; class 3 (predicted, not true) has IoU 0 and counts."""
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 1, 3]), torch.tensor([0, 1, 1]))
    m = cm.compute()
    assert math.isnan(m.iou[2]) and math.isnan(m.dice[2])
    assert m.iou[3] == 0.0 and math.isnan(m.class_accuracy[3])
    assert m.mean_iou == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert m.mean_class_accuracy == pytest.approx((1 + 1 / 2) / 2)
    d = m.as_dict(["a", "b", "c", "d"])
    assert d["per_class"]["c"]["iou"] is None and d["per_class"]["d"]["iou"] == 0.0


def test_empty_matrix_is_all_nan() -> None:
    """Nothing counted: every score NaN, no warning or error."""
    m = ConfusionMatrix(3).compute()
    assert all(math.isnan(x) for x in (m.pixel_accuracy, m.mean_iou, m.fw_iou, m.mean_dice))


def test_merge_equals_single_update_on_concatenation() -> None:
    """a + b, a.merge(b) and one update on the concatenated batches give the same matrix (exact)."""
    rng = np.random.default_rng(3)
    p1, t1 = rng.integers(0, 5, (2, 9, 9)), rng.integers(0, 5, (2, 9, 9))
    p2, t2 = rng.integers(0, 5, (3, 9, 9)), rng.integers(0, 5, (3, 9, 9))
    a, b, whole = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    a.update(p1, t1)
    b.update(p2, t2)
    whole.update(np.concatenate([p1, p2]), np.concatenate([t1, t2]))
    assert torch.equal((a + b).matrix, whole.matrix)
    assert torch.equal(a.merge(b).matrix, whole.matrix)
    with pytest.raises(ValueError):
        a.merge(ConfusionMatrix(4))


def test_all_reduce_without_process_group_is_a_no_op() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    assert cm.all_reduce().matrix.tolist() == [[1, 1], [0, 0]]


def _rank_data(rank: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 + rank)
    return rng.integers(0, 4, (2, 16, 16)), rng.integers(0, 4, (2, 16, 16))


def _all_reduce_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        cm = ConfusionMatrix(4)
        cm.update(*_rank_data(rank))
        cm.all_reduce()
        np.save(f"{out_dir}/rank{rank}.npy", cm.matrix.numpy())
    finally:
        dist.destroy_process_group()


def test_all_reduce_with_two_gloo_processes(tmp_path) -> None:
    """After all_reduce in a real 2-process gloo group, each rank holds the merge of both ranks'
    matrices (exact)."""
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    expected = ConfusionMatrix(4)
    for rank in range(2):
        part = ConfusionMatrix(4)
        part.update(*_rank_data(rank))
        expected.merge(part)
    for rank in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"rank{rank}.npy"), expected.matrix.numpy())


def test_means_leave_out_an_ignored_class_and_unscored_outputs() -> None:
    """An ignore value inside 0..C-1 (an ``ignore`` class kept in the middle of classes.txt) never has
    truth; a prediction of it is an error of the true class (its FN) but its own IoU 0 is no class of
    the set, so the means average over the other classes, as mmsegmentation's do; ``scored`` names the
    averaged classes explicitly. Reference: the hand-computed counts below, exactly."""
    cm = ConfusionMatrix(3, ignore_index=1)
    # truth 0,0,2,2,1 ; predicted 0,1,2,0,2 -> class 0: TP 1 FN 1 FP 1; class 2: TP 1 FN 1
    cm.update(torch.tensor([0, 1, 2, 0, 2]), torch.tensor([0, 0, 2, 2, 1]))
    m = cm.compute()
    assert m.iou[1] == 0.0  # predicted once, never true: kept in the per-class array
    assert m.mean_iou == pytest.approx((1 / 3 + 1 / 2) / 2, abs=1e-12)
    assert m.mean_class_accuracy == pytest.approx(0.5, abs=1e-12)
    assert cm.compute(scored=[0]).mean_iou == pytest.approx(1 / 3, abs=1e-12)
    assert cm.compute(scored=[0, 1, 2]).mean_iou == pytest.approx((1 / 3 + 0 + 1 / 2) / 3, abs=1e-12)
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        cm.compute(scored=[3])

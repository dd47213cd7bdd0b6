"""segdet.ops NMS: hard NMS against torchvision.ops, Soft-NMS against a loop reference written from the
paper's pseudo-code (Bodla et al., ICCV 2017, Algorithm 1) and hand-computed cases."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
import torchvision.ops as tvo

from segdet.ops import batched_nms, nms, soft_nms


def clustered_boxes(
    n: int, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` xyxy boxes jittered around a few centres (so many overlap) and distinct random scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(6, 2, generator=g, dtype=torch.float64) * 100
    jitter = torch.randn(n, 2, generator=g, dtype=torch.float64) * 6
    centre = centres[torch.randint(0, 6, (n,), generator=g)] + jitter
    half = 5 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 15
    boxes = torch.cat((centre - half, centre + half), dim=1)
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    return boxes.to(dtype), scores.to(dtype)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two xyxy boxes, 0 when the union is 0 (segdet's documented rule)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_soft_nms(boxes, scores, method, iou_threshold, sigma, score_threshold, idxs=None):
    """Algorithm 1 of the paper, one class at a time, literally: take the highest score M, move it to
    D, rescore every remaining b_i by f(iou(M, b_i)); stop when the best remaining score is below
    score_threshold. Classes are merged by decreasing score."""
    boxes, scores = np.asarray(boxes, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    idxs = np.zeros(len(boxes), dtype=np.int64) if idxs is None else np.asarray(idxs)
    kept: list[tuple[float, int]] = []
    for cls in np.unique(idxs):
        remaining = [int(i) for i in np.flatnonzero(idxs == cls)]
        s = {i: float(scores[i]) for i in remaining}
        while remaining:
            m = max(remaining, key=lambda i: (s[i], -i))
            if s[m] < score_threshold:
                break
            kept.append((s[m], m))
            remaining.remove(m)
            for i in remaining:
                iou = _iou(boxes[m], boxes[i])
                if method == "linear":
                    s[i] *= 1 - iou if iou >= iou_threshold else 1.0
                else:
                    s[i] *= math.exp(-(iou * iou) / sigma)
    kept.sort(key=lambda t: -t[0])
    return [i for _, i in kept], [score for score, _ in kept]


@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_nms_and_batched_nms_equal_torchvision(iou_threshold):
    """nms / batched_nms return exactly torchvision.ops.nms / batched_nms, on both of torchvision's
    batched code paths (coordinate offsets below 4000 elements, per-class loop above)."""
    for n in (300, 1500):
        boxes, scores = clustered_boxes(n, seed=n, dtype=torch.float32)
        idxs = torch.randint(0, 7, (n,), generator=torch.Generator().manual_seed(1))
        assert torch.equal(nms(boxes, scores, iou_threshold), tvo.nms(boxes, scores, iou_threshold))
        ours = batched_nms(boxes, scores, idxs, iou_threshold)
        assert torch.equal(ours, tvo.batched_nms(boxes, scores, idxs, iou_threshold))
        assert len(ours) > len(tvo.nms(boxes, scores, iou_threshold))  # classes do not suppress each other


@pytest.mark.parametrize("seed", range(6))
def test_batched_nms_first_keeps_what_batched_nms_keeps_first(seed, monkeypatch):
    """Reference: torchvision's batched_nms over all boxes. batched_nms_first's first ``count`` kept
    indices are exactly its first ``count`` (distinct scores): with clustered boxes the prefix of
    ``16 count`` boxes often keeps fewer, so the prefix grows (or falls back to all boxes); also for
    ``count`` above what NMS keeps at all (then every kept box, as batched_nms). The calls' sizes show
    the prefix at work: 16 boxes for the best one, all 1500 when the prefix would hold them all."""
    from segdet.ops.nms import PREFIX_FACTOR, batched_nms_first

    nms_module = importlib.import_module("segdet.ops.nms")  # segdet.ops.nms is also the function nms
    boxes, scores = clustered_boxes(1500, seed)
    groups = torch.randint(0, 3, (1500,), generator=torch.Generator().manual_seed(seed))
    expected = tvo.batched_nms(boxes, scores, groups, 0.5)
    sizes = []  # the number of boxes of each NMS call: the prefix is really used
    calls = nms_module.batched_nms

    def counted(b, *args):
        sizes.append(len(b))
        return calls(b, *args)

    monkeypatch.setattr(nms_module, "batched_nms", counted)
    for count in (1, 5, 20, 60, len(expected), len(expected) + 10):
        sizes.clear()
        got = batched_nms_first(boxes, scores, groups, 0.5, count)
        n = min(count, len(expected))
        assert torch.equal(got[:n], expected[:n]), count
        assert len(got) >= n
        if PREFIX_FACTOR * count >= 1500:
            assert torch.equal(got, expected) and sizes == [1500]
        if count == 1:
            assert sizes == [PREFIX_FACTOR]  # one prefix of 16 boxes decides the best box


def test_batched_nms_first_with_tied_scores():
    """Boxes of equal score (a tie across the prefix's cut): the first ``count`` kept are the same
    boxes as batched_nms keeps first, up to the order of equal scores."""
    from segdet.ops.nms import batched_nms_first

    boxes, scores = clustered_boxes(800, 7)
    scores = (scores * 20).floor() / 20  # 20 score levels: many ties
    groups = torch.zeros(800, dtype=torch.int64)
    expected = tvo.batched_nms(boxes, scores, groups, 0.5)
    for count in (3, 10, 30):
        got = batched_nms_first(boxes, scores, groups, 0.5, count)
        n = min(count, len(expected))
        cut = scores[expected[n - 1]]  # every box scoring above the n-th kept one is kept the same
        above = set(expected[scores[expected] > cut].tolist())
        assert above == set(got[scores[got] > cut].tolist())
        assert torch.equal(scores[got[:n]], scores[expected[:n]])


@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("classwise", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_soft_nms_matches_reference(method, classwise, dtype):
    """soft_nms == the paper's loop (float64 numpy): same kept indices in the same order, rescored
    scores to 1e-12 (float64) / 1e-6 (float32); single class and class-wise (idxs)."""
    boxes, scores = clustered_boxes(150, seed=3, dtype=dtype)
    idxs = torch.randint(0, 4, (150,), generator=torch.Generator().manual_seed(4)) if classwise else None
    params = {"iou_threshold": 0.4, "sigma": 0.5, "score_threshold": 0.01}
    keep, new_scores = soft_nms(boxes, scores, method=method, idxs=idxs, **params)
    ref_idxs = None if idxs is None else idxs.numpy()
    ref_keep, ref_scores = reference_soft_nms(
        boxes.double().numpy(), scores.double().numpy(), method, idxs=ref_idxs, **params
    )
    assert keep.dtype == torch.int64 and new_scores.dtype == dtype
    assert keep.tolist() == ref_keep
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(new_scores, torch.tensor(ref_scores, dtype=dtype), rtol=tol, atol=tol)
    assert 20 < len(keep) < 150  # rescoring both kept and dropped boxes in this data


# Three boxes by hand: A = [0,0,10,10], B = [0,5,10,15], C = [0,12,10,22].
# IoU(A,B) = 50/150 = 1/3, IoU(B,C) = 30/170 = 3/17, IoU(A,C) = 0.
HAND_BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 5.0, 10.0, 15.0], [0.0, 12.0, 10.0, 22.0]])
HAND_SCORES = torch.tensor([0.9, 0.8, 0.7])


def test_soft_nms_linear_hand_computed():
    """Linear, N_t = 0.3: A first; B decays to 0.8 (1 - 1/3); C (IoU 0) stays 0.7 and comes next; IoU(C,B)
    = 3/17 < 0.3 leaves B. With N_t = 0.5 nothing decays; with score_threshold 0.6 B is dropped."""
    keep, scores = soft_nms(HAND_BOXES, HAND_SCORES, method="linear", iou_threshold=0.3)
    assert keep.tolist() == [0, 2, 1]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7, 0.8 * 2 / 3]))
    keep, scores = soft_nms(HAND_BOXES, HAND_SCORES, method="linear", iou_threshold=0.5)
    assert keep.tolist() == [0, 1, 2] and torch.equal(scores, HAND_SCORES)
    keep, _ = soft_nms(HAND_BOXES, HAND_SCORES, method="linear", iou_threshold=0.3, score_threshold=0.6)
    assert keep.tolist() == [0, 2]


def test_soft_nms_gaussian_hand_computed():
    """Gaussian, sigma = 0.5: B -> 0.8 exp(-(1/3)^2 / 0.5) = 0.6406 after A, C unchanged (0.7) is next,
    then B -> 0.6406 exp(-(3/17)^2 / 0.5). Class-wise with idxs [0, 1, 1]: A does not touch B; B first
    in its class, C -> 0.7 exp(-(3/17)^2 / 0.5)."""
    decay_ab, decay_bc = math.exp(-(1 / 9) / 0.5), math.exp(-((3 / 17) ** 2) / 0.5)
    keep, scores = soft_nms(HAND_BOXES.double(), HAND_SCORES.double(), method="gaussian", sigma=0.5)
    assert keep.tolist() == [0, 2, 1]
    expected = torch.tensor([0.9, 0.7, 0.8 * decay_ab * decay_bc], dtype=torch.float64)
    torch.testing.assert_close(scores, expected, rtol=1e-7, atol=0)  # HAND_SCORES were float32
    idxs = torch.tensor([0, 1, 1])
    keep, scores = soft_nms(HAND_BOXES.double(), HAND_SCORES.double(), method="gaussian", idxs=idxs)
    assert keep.tolist() == [0, 1, 2]
    expected = torch.tensor([0.9, 0.8, 0.7 * decay_bc], dtype=torch.float64)
    torch.testing.assert_close(scores, expected, rtol=1e-7, atol=0)


@pytest.mark.parametrize("iou_threshold", [0.3, 0.5])
def test_linear_soft_nms_prunes_to_hard_nms(iou_threshold):
    """Documented equivalence: with scores in [0.9, 1] and score_threshold 0.85 > 1 * (1 - N_t), every
    decayed box drops out, so linear Soft-NMS keeps exactly torchvision.ops.nms's boxes in its order
    (and batched_nms's with idxs), with unchanged scores."""
    boxes, scores = clustered_boxes(400, seed=5, dtype=torch.float32)
    scores = 0.9 + 0.1 * scores
    params = {"method": "linear", "iou_threshold": iou_threshold, "score_threshold": 0.85}
    keep, new_scores = soft_nms(boxes, scores, **params)
    assert torch.equal(keep, tvo.nms(boxes, scores, iou_threshold))
    assert torch.equal(new_scores, scores[keep])
    idxs = torch.randint(0, 5, (400,), generator=torch.Generator().manual_seed(6))
    keep, _ = soft_nms(boxes, scores, idxs=idxs, **params)
    assert torch.equal(keep, tvo.batched_nms(boxes, scores, idxs, iou_threshold))


def test_soft_nms_edge_cases():
    """Empty input; inputs left unmodified; everything below score_threshold -> nothing kept; exact
    duplicates with tied scores keep the lower index; degenerate boxes give no NaN; fp16 scores come back
    fp16; unknown method / bad sigma raise."""
    keep, scores = soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert keep.shape == (0,) and keep.dtype == torch.int64 and scores.shape == (0,)

    boxes, scores = clustered_boxes(50, seed=7, dtype=torch.float32)
    boxes_before, scores_before = boxes.clone(), scores.clone()
    soft_nms(boxes, scores, method="gaussian")
    assert torch.equal(boxes, boxes_before) and torch.equal(scores, scores_before)

    assert len(soft_nms(boxes, scores * 1e-4, score_threshold=0.001)[0]) == 0

    twins = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.0]])
    keep, scores2 = soft_nms(twins, torch.tensor([0.5, 0.5]), method="linear")
    assert keep.tolist() == [0] and scores2.tolist() == [0.5]  # the twin decays by (1 - 1) to 0

    points = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 5.0, 0.0]])
    keep, scores3 = soft_nms(points, torch.tensor([0.9, 0.8, 0.7]), method="gaussian")
    assert keep.tolist() == [0, 1, 2] and torch.equal(scores3, torch.tensor([0.9, 0.8, 0.7]))

    keep, scores4 = soft_nms(boxes, scores.half(), method="gaussian")
    assert scores4.dtype == torch.float16 and len(keep) > 0

    with pytest.raises(ValueError, match="method"):
        soft_nms(boxes, scores, method="hard")
    with pytest.raises(ValueError, match="sigma"):
        soft_nms(boxes, scores, method="gaussian", sigma=0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_on_cuda_equals_cpu(method):
    """Class-wise Soft-NMS on a CUDA device keeps the same boxes in the same order as on the CPU, with
    the same scores (1e-12, float64), and returns CUDA tensors."""
    boxes, scores = clustered_boxes(300, seed=8)
    idxs = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(9))
    keep, new_scores = soft_nms(boxes, scores, method=method, idxs=idxs)
    cuda_keep, cuda_scores = soft_nms(boxes.cuda(), scores.cuda(), method=method, idxs=idxs.cuda())
    assert cuda_keep.is_cuda and cuda_scores.is_cuda
    assert torch.equal(cuda_keep.cpu(), keep)
    torch.testing.assert_close(cuda_scores.cpu(), new_scores, rtol=1e-12, atol=1e-12)

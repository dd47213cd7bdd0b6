"""R-CNN's three training stages, run in order (Girshick et al. 2014, sec. 2.3 and appendices B, C):

1. **Fine-tuning** the CNN on warped regions (proposals and ground-truth boxes) for ``K + 1``-way
   classification: a region is a positive of the class of the object it overlaps most when
   ``IoU >= 0.5``, background otherwise; each mini-batch draws 32 positives (over all classes) and 96
   background regions uniformly from all training images; cross-entropy.
2. **SVMs** per class on ``fc7`` features (:mod:`.svm`): positives the class's ground-truth boxes,
   negatives the regions with ``IoU < 0.3`` with every object of the class (the other classes'
   ground-truth boxes included), hard negative mining.
3. **Box regression** per class on pool features (:mod:`.ridge`): proposals with ``IoU >= 0.6`` with
   an object of the class (the one they overlap most), ridge with ``λ = 1000``.

Features are extracted once after stage 1 (no gradient) and scaled so that their mean L2 norm over the
training regions is 20 (the paper code's ``feat_norm_mean``, which its ``C`` and ``λ`` are tuned for);
the scales are stored in the model. Each stage shows a progress bar.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from segdet.engine.logs import Progress
from segdet.models.detection.region_cnn.model import RCNN
from segdet.models.detection.region_cnn.ridge import fit_ridge
from segdet.models.detection.region_cnn.svm import SVMSettings, mine_and_train
from segdet.models.detection.region_cnn.warp import warp_regions
from segdet.ops.boxes import box_iou

Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # float [0, 1] image, boxes [G, 4], labels [G]


@dataclass(frozen=True)
class RCNNTrainSettings:
    """Stage 1: ``finetune_steps`` AdamW steps of ``lr`` (``weight_decay``; or fewer when
    ``finetune_seconds`` run out: a training budget), ``positives`` and
    ``background`` regions per batch, ``fg_iou``. Stage 2: ``svm`` constants, ``svm_negative_iou``.
    Stage 3: ``regression_iou``, ``ridge_lambda``. ``feature_norm``: the mean feature norm."""

    finetune_steps: int = 2000
    finetune_seconds: float | None = None
    lr: float = 1e-4
    weight_decay: float = 5e-4
    positives: int = 32
    background: int = 96
    fg_iou: float = 0.5
    svm: SVMSettings = field(default_factory=SVMSettings)
    svm_negative_iou: float = 0.3
    regression_iou: float = 0.6
    ridge_lambda: float = 1000.0
    feature_norm: float = 20.0
    seed: int = 0


def training_samples(annotations) -> list[Sample]:
    """The ``(image, boxes, labels)`` of every image of an annotation set (crowd regions left out),
    decoded as the training pipeline decodes them (:class:`segdet.data.dataset.SegDetDataset`)."""
    from segdet.data.dataset import SegDetDataset

    dataset = SegDetDataset(annotations, None)
    samples = []
    for i in range(len(dataset)):
        image, target = dataset.load(i)
        boxes = target["boxes"].as_subclass(torch.Tensor)
        samples.append((image.as_subclass(torch.Tensor), boxes, target["labels"]))
    return samples


def _best_overlap(regions: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per region its largest IoU with ``boxes`` and the index of that box (0 and 0 without boxes)."""
    if len(boxes) == 0:
        return regions.new_zeros(len(regions)), torch.zeros(len(regions), dtype=torch.int64)
    return box_iou(regions, boxes.to(regions.dtype)).max(dim=1)


def _is_gt(regions: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The ground-truth rows of :func:`_regions`' list (its last ``len(boxes)``)."""
    flags = torch.zeros(len(regions), dtype=torch.bool)
    flags[len(regions) - len(boxes) :] = True
    return flags


def _regions(model: RCNN, samples: Sequence[Sample]) -> list[torch.Tensor]:
    """Per image its proposals (training count) and its ground-truth boxes."""
    proposals = model.proposals([s[0] for s in samples], training=True)
    return [torch.cat([p, s[1].to(p.dtype)]) for p, s in zip(proposals, samples, strict=True)]


def finetune(
    model: RCNN,
    samples: Sequence[Sample],
    regions: list[torch.Tensor],
    s: RCNNTrainSettings,
    *,
    progress: bool = True,
) -> list[float]:
    """Stage 1 (module docstring); returns the losses."""
    g = torch.Generator().manual_seed(s.seed)
    index, labels = [], []
    for i, (r, (_, boxes, cls)) in enumerate(zip(regions, samples, strict=True)):
        best, match = _best_overlap(r, boxes)
        label = torch.where(best >= s.fg_iou, cls[match] + 1, 0) if len(cls) else torch.zeros_like(match)
        index.append(torch.stack([torch.full_like(label, i), torch.arange(len(r))], dim=1))
        labels.append(label)
    index, labels = torch.cat(index), torch.cat(labels)
    fg, bg = torch.nonzero(labels > 0).flatten(), torch.nonzero(labels == 0).flatten()
    net = model.network.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    bar = Progress(s.finetune_steps, "R-CNN 1/3 fine-tune", enabled=progress)
    normalized = [model.normalize(x[0]) for x in samples]
    losses = []
    start = time.perf_counter()
    for step in range(1, s.finetune_steps + 1):
        if s.finetune_seconds is not None and time.perf_counter() - start > s.finetune_seconds:
            break
        pick = torch.cat(
            [
                fg[torch.randint(len(fg), (s.positives,), generator=g)] if len(fg) else fg,
                bg[torch.randint(len(bg), (s.background,), generator=g)] if len(bg) else bg,
            ]
        )
        per_image = [pick[index[pick, 0] == i] for i in range(len(samples))]
        crops = warp_regions(
            normalized,
            [regions[i][index[p, 1]] for i, p in enumerate(per_image)],
            model.input_size,
            model.context,
        )
        target = torch.cat([labels[p] for p in per_image])
        loss = F.cross_entropy(net(crops), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.update(step, loss=losses[-1])
    bar.close()
    net.eval()
    return losses


@torch.no_grad()
def extract(
    model: RCNN,
    samples: Sequence[Sample],
    regions: list[torch.Tensor],
    keep_pool: list[torch.Tensor],
    *,
    progress: bool = True,
) -> tuple[list[torch.Tensor], list[torch.Tensor], float]:
    """Unscaled features (the model's scales set to 1): per image the pool features of the regions
    ``keep_pool`` selects (box regression needs only those: all of them would take ``C p^2`` floats per
    region), the ``fc7`` features of every region, and the mean norm of *all* pool features."""
    model.feature_scale.fill_(1.0)
    bar = Progress(len(samples), "R-CNN features", enabled=progress, every=1)
    pools, fc7s, norm_sum, count = [], [], 0.0, 0
    for i, (sample, r, keep) in enumerate(zip(samples, regions, keep_pool, strict=True), 1):
        pool, fc7 = model.region_features([sample[0]], [r])
        norm_sum += float(pool.norm(dim=1).sum())
        count += len(pool)
        pools.append(pool[keep])
        fc7s.append(fc7)
        bar.update(i)
    bar.close()
    return pools, fc7s, norm_sum / max(count, 1)


def _mean_norm(features: list[torch.Tensor]) -> float:
    return float(torch.cat(features).norm(dim=1).mean().clamp(min=1e-12))


def fit_svms(
    model: RCNN, samples, regions, fc7s, s: RCNNTrainSettings, *, progress: bool = True
) -> list[dict]:
    """Stage 2 (module docstring): one SVM per class into the model's buffers."""
    stats = []
    bar = Progress(model.num_classes, "R-CNN 2/3 SVMs", enabled=progress, every=1)
    for c in range(model.num_classes):
        positives, negatives = [], []
        for (_, boxes, cls), r, f in zip(samples, regions, fc7s, strict=True):
            is_gt = _is_gt(r, boxes)
            positives.append(f[is_gt][cls == c])
            best, _ = _best_overlap(r, boxes[cls == c])
            negatives.append(f[best < s.svm_negative_iou])  # other classes' objects included
        w, b, st = mine_and_train(torch.cat(positives), negatives, s.svm)
        model.svm_weight[c] = w
        model.svm_bias[c] = b
        stats.append({"class": c, "positives": int(sum(len(p) for p in positives)), **st})
        bar.update(c + 1)
    bar.close()
    return stats


def regression_targets(
    model: RCNN, samples: Sequence[Sample], regions: list[torch.Tensor], s: RCNNTrainSettings
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image ``(which regions, their Δ targets [N, 4], their class)``: the regions with
    ``IoU >= regression_iou`` with an object, encoded against the object they overlap most."""
    out = []
    for (_, boxes, cls), r in zip(samples, regions, strict=True):
        best, match = _best_overlap(r, boxes)
        keep = best >= s.regression_iou if len(boxes) else torch.zeros(len(r), dtype=torch.bool)
        targets = model.box_coder.encode_single(boxes[match[keep]].to(r.dtype), r[keep])
        out.append((keep, targets, cls[match[keep]] if len(boxes) else match[keep]))
    return out


def fit_regressors(
    model: RCNN,
    targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    pools: list[torch.Tensor],
    s: RCNNTrainSettings,
    *,
    progress: bool = True,
) -> list[int]:
    """Stage 3 (module docstring): one ridge regressor per class into the model's buffers, from the
    pool features of :func:`regression_targets`' regions; returns the number of training regions of
    each class (a class without any keeps zeros: the proposal's own box)."""
    x = torch.cat(pools)
    t = torch.cat([tg for _, tg, _ in targets])
    owner = torch.cat([o for _, _, o in targets])
    counts = []
    bar = Progress(model.num_classes, "R-CNN 3/3 box regression", enabled=progress, every=1)
    for c in range(model.num_classes):
        mine = owner == c
        counts.append(int(mine.sum()))
        if counts[-1]:
            w, b = fit_ridge(x[mine], t[mine], s.ridge_lambda)
            model.reg_weight[c] = w.float()
            model.reg_bias[c] = b.float()
        bar.update(c + 1)
    bar.close()
    return counts


def train_rcnn(
    model: RCNN, samples: Sequence[Sample], s: RCNNTrainSettings, *, progress: bool = True
) -> dict:
    """The three stages in order on ``samples`` (float ``[0, 1]`` images, boxes, labels ``0 .. K-1``);
    the model ends in eval mode, ready to detect. Returns each stage's statistics and seconds."""
    torch.manual_seed(s.seed)
    seconds = {}
    start = time.perf_counter()
    regions = _regions(model, samples)
    seconds["proposals"] = time.perf_counter() - start
    losses = finetune(model, samples, regions, s, progress=progress)
    seconds["finetune"] = time.perf_counter() - start - seconds["proposals"]
    targets = regression_targets(model, samples, regions, s)
    pools, fc7s, pool_norm = extract(model, samples, regions, [k for k, _, _ in targets], progress=progress)
    scale = torch.tensor([s.feature_norm / max(pool_norm, 1e-12), s.feature_norm / _mean_norm(fc7s)])
    pools = [p * scale[0] for p in pools]
    fc7s = [f * scale[1] for f in fc7s]
    mark = time.perf_counter()
    with torch.no_grad():
        model.feature_scale.copy_(scale)
        svms = fit_svms(model, samples, regions, fc7s, s, progress=progress)
        regression = fit_regressors(model, targets, pools, s, progress=progress)
    seconds["svms_and_regression"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - start
    model.eval()
    return {"finetune_loss": losses, "svms": svms, "regression_samples": regression, "seconds": seconds}

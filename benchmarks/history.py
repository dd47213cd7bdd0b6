"""The lecture's history measured (issue 15): R-CNN, Fast R-CNN (+ truncated SVD) and Faster R-CNN with
the same backbone, trained for the same budget on the same images, timed and scored on the same
held-out images.

**Same network.** All three use ResNet (``--backbone``, random init unless ``--backbone-weights``) cut
after ``layer3`` (stride 16) and ``fc6``/``fc7`` of ``--representation-size``: R-CNN runs it on each
warped ``S x S`` region (``S = 16 x 7``: its map is the 7 x 7 the others pool), Fast R-CNN and Faster
R-CNN once per image and RoI-max-pool 7 x 7 (``fastrcnn_resnet50_c4``;
``fasterrcnn_resnet50_c4(box_head="2fc", pool="pool")``). Images are resized to ``--min-size`` /
``--max-size`` for the one-pass detectors.

**Same data and budget.** ``--data`` is read (``--format``), split as ``segdet train`` splits it
(``val_fraction`` 0.2, seed 0; ``--max-train`` / ``--max-val`` keep the first images of each part).
Selective search (fast mode) is computed once for every image and cached (the seconds it took are
stored and counted). Each method then trains for ``--budget-minutes`` of wall clock from the same
initial weights: Fast and Faster R-CNN with AdamW on batches of 2 images (the Fast R-CNN paper's N =
2); R-CNN's fine-tuning (stage 1) gets the budget, its SVMs and regressors (stages 2-3, which need the
features of every training region; ``--rcnn-train-proposals`` regions per image) come on top and are
reported apart.

**Timing.** One image at a time (batch 1), on ``--threads`` threads: the network's seconds measured,
the proposals' seconds those selective search took for that image (the table's "proposals" column),
both summed in "s / image". ``--test-proposals`` (the papers' 2000) per image for R-CNN and Fast
R-CNN; Faster R-CNN keeps its RPN's 300 (the paper's test setting). Box AP and AP50 from our COCO
evaluator (equal to pycocotools). Run from the project root::

    python benchmarks/history.py --data ../shared/data/pennfudan --budget-minutes 3 --max-train 40 --max-val 8
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from segdet.data.formats import detect_format, read_dataset
from segdet.engine.data_splits import holdout
from segdet.engine.timed_eval import evaluate_timed
from segdet.models import build
from segdet.models.detection.proposals import SelectiveSearchProposals, SelectiveSearchSettings
from segdet.models.detection.proposals.dataset import dataset_proposals
from segdet.models.detection.region_cnn.model import rcnn_resnet_c4
from segdet.models.detection.region_cnn.stages import RCNNTrainSettings, train_rcnn, training_samples


def train_for(model: torch.nn.Module, samples, minutes: float, lr: float, seed: int) -> dict:
    """AdamW on batches of 2 images (random order, horizontal flips) for ``minutes`` of wall clock."""
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4
    )
    model.train()
    start, steps, last = time.perf_counter(), 0, float("nan")
    while time.perf_counter() - start < minutes * 60:
        order = torch.randperm(len(samples), generator=g).tolist()
        for i in range(0, len(order) - 1, 2):
            images, targets = [], []
            for j in order[i : i + 2]:
                image, boxes, labels = samples[j]
                target = {"boxes": boxes, "labels": labels}
                if torch.rand((), generator=g) < 0.5:
                    width = image.shape[-1]
                    image = image.flip(-1)
                    boxes = target["boxes"].clone()
                    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
                    target = {**target, "boxes": boxes}
                images.append(image)
                targets.append(target)
            losses = model(images, targets, generator=g)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            steps += 1
            last = float(loss.detach())
            if time.perf_counter() - start >= minutes * 60:
                break
    model.eval()
    return {"steps": steps, "last_loss": last, "seconds": time.perf_counter() - start}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/pennfudan"))
    parser.add_argument("--format")
    parser.add_argument("--out", type=Path, default=Path("runs/history"))
    parser.add_argument("--cache", type=Path, help="proposal cache root (default: segdet's)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--backbone-weights")
    parser.add_argument("--representation-size", type=int, default=512)
    parser.add_argument("--min-size", type=int, default=400)
    parser.add_argument("--max-size", type=int, default=666)
    parser.add_argument("--budget-minutes", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-train", type=int, default=0, help="first N training images (0: all)")
    parser.add_argument("--max-val", type=int, default=0, help="first N held-out images (0: all)")
    parser.add_argument("--test-proposals", type=int, default=2000)
    parser.add_argument("--rcnn-train-proposals", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def run_rcnn(args, k: int, samples, val, report: dict) -> dict:
    """R-CNN: stage 1 for the budget, stages 2-3 on top; its row."""
    torch.manual_seed(args.seed)
    rcnn = rcnn_resnet_c4(
        k,
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        input_size=112,  # 16 x 7: the layer3 map of a region is the others' 7 x 7 pooled map
        pool_size=7,
        representation_size=args.representation_size,
        proposal_cache=args.cache,
        proposals_train=args.rcnn_train_proposals,
        proposals_test=args.test_proposals,
    )
    settings = RCNNTrainSettings(finetune_seconds=args.budget_minutes * 60, finetune_steps=10**9, lr=args.lr)
    stats = train_rcnn(rcnn, samples, settings)
    report["rcnn_train"] = {"steps": len(stats["finetune_loss"]), **stats["seconds"]}
    return evaluate_timed(rcnn, val, desc="R-CNN")


def run_fast(args, k: int, samples, val, report: dict) -> dict[str, dict]:
    """Fast R-CNN, then the same weights with fc6 / fc7 compressed (the paper's 1024 / 256 of 4096)."""
    torch.manual_seed(args.seed)
    width = args.representation_size
    fast = build(
        "fastrcnn_resnet50_c4",
        k,
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        min_size=args.min_size,
        max_size=args.max_size,
        representation_size=width,
        proposal_cache=args.cache,
        proposals_test=args.test_proposals,
    )
    report["fast_rcnn_train"] = train_for(fast, samples, args.budget_minutes, args.lr, args.seed)
    rows = {"Fast R-CNN": evaluate_timed(fast, val, desc="Fast R-CNN")}
    fast.compress_fc((width // 4, width // 16))
    rows["Fast R-CNN + SVD"] = evaluate_timed(fast, val, desc="Fast R-CNN + SVD")
    return rows


def run_faster(args, k: int, samples, val, report: dict) -> dict:
    """Faster R-CNN on the same trunk and head, 300 RPN proposals at test time."""
    torch.manual_seed(args.seed)
    faster = build(
        "fasterrcnn_resnet50_c4",
        k,
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        min_size=args.min_size,
        max_size=args.max_size,
        box_head="2fc",
        pool="pool",
        representation_size=args.representation_size,
        rpn_post_nms_top_n_test=300,
    )
    report["faster_rcnn_train"] = train_for(faster, samples, args.budget_minutes, args.lr, args.seed)
    return evaluate_timed(faster, val, desc="Faster R-CNN")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache = str(args.cache) if args.cache else None
    dataset = read_dataset(args.format or detect_format(args.data), args.data)
    train, val = holdout(dataset, 0.2, 0)
    if args.max_train:
        train.images = train.images[: args.max_train]
    if args.max_val:
        val.images = val.images[: args.max_val]
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "load_average": [os.getloadavg()]}
    source = SelectiveSearchProposals(SelectiveSearchSettings(), args.cache)
    for part in (train, val):
        dataset_proposals(part, source)
    samples = training_samples(train)
    k = len(train.classes)
    rows = {"R-CNN": run_rcnn(args, k, samples, val, report)}
    rows.update(run_fast(args, k, samples, val, report))
    rows["Faster R-CNN"] = run_faster(args, k, samples, val, report)
    report["rows"] = rows
    report["load_average"].append(os.getloadavg())
    (args.out / "history.json").write_text(json.dumps(report, indent=1))
    print(
        f"\n{len(val.images)} held-out images of {args.data} ({len(samples)} training images, "
        f"{args.budget_minutes:g} min of training each, {args.backbone} C4, {args.threads} threads)"
    )
    print("| method | proposals s/image | network s/image | s/image | box AP | AP50 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m in rows.items():
        print(
            f"| {name} | {m['proposal_seconds_per_image']:.2f} | {m['network_seconds_per_image']:.2f} | "
            f"{m['seconds_per_image']:.2f} | {m['AP']:.3f} | {m['AP50']:.3f} |"
        )
    print(f"R-CNN training beyond the budget (features, SVMs, regression): {report['rcnn_train']}")


if __name__ == "__main__":
    main()

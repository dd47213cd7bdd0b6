"""The accuracy half of :mod:`benchmarks.detection`'s ``--bf16``: COCO AP of a *trained* small detector in
float32 and under bf16 autocast (:func:`bf16_ap_change`), printed as one line (:func:`bf16_ap_line`)."""

from __future__ import annotations

import torch

from segdet.engine.inference import Autocast

# Small Mask R-CNN / Faster R-CNN trained by ``bf16_ap_change``: ResNet-18 FPN with the narrow heads of the
# convergence test (tests/engine/test_detection_convergence.py), anchors scaled to the shapes' sizes.
SMALL_MODEL = {
    "backbone": "resnet18",
    "fpn_channels": 64,
    "representation_size": 256,
    "mask_channels": 64,
    "anchor_sizes": [[8], [16], [32], [64], [128]],
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 64,
}


def bf16_ap_change(kind: str, steps: int, num_train: int, num_val: int, size: int, seed: int) -> dict:
    """COCO AP of float32 and bf16 inference of one *trained* model against the true ground truth.

    A small model (``SMALL_MODEL``) is trained for ``steps`` AdamW steps (batch 4) on ``num_train``
    synthetic shapes images of ``size`` px, then fused (:meth:`fuse_for_inference`) and evaluated on
    ``num_val`` held-out shapes images by our COCO evaluator (equal to pycocotools), once in float32 and
    once under bf16 autocast. Returns ``{"fp32": metrics, "bf16": metrics}``.
    """
    import tempfile

    from torch.utils.data import DataLoader

    from segdet.data import shapes
    from segdet.data.collate import collate_detection
    from segdet.engine.config import from_dict
    from segdet.engine.detection import DetectionTask
    from segdet.engine.optimizer import build_optimizer
    from segdet.engine.schedule import build_scheduler

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        train_set = shapes.generate(f"{tmp}/train", num_train, seed=seed, size=size)
        val_set = shapes.generate(f"{tmp}/val", num_val, seed=seed + 1, size=size)
        model_name = "maskrcnn_resnet50_fpn" if kind == "mask" else "fasterrcnn_resnet50_fpn"
        cfg = from_dict(
            {
                "task": "instance" if kind == "mask" else "detection",
                "output_dir": f"{tmp}/runs",
                "model": {"name": model_name, "min_size": size, "max_size": size, **SMALL_MODEL},
                "data": {"batch_size": 4},
                "optim": {"name": "adamw", "lr": 0.001, "weight_decay": 0.0001},
                "schedule": {"name": "cosine", "warmup_steps": 20},
            }
        )
        task = DetectionTask(cfg, splits=(train_set, val_set))
        net = task.build_model()
        optimizer = build_optimizer(net, cfg)
        scheduler = build_scheduler(optimizer, steps, cfg.schedule)
        train = task.train_dataset()
        generator = torch.Generator().manual_seed(seed)
        net.train()
        for _ in range(steps):
            picks = torch.randint(len(train), (4,), generator=generator).tolist()
            batch = task.to_device(collate_detection([train[i] for i in picks]), torch.device("cpu"))
            loss, _ = task.loss(net, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        # NNPACK stays out: autocast runs every convolution in bf16 anyway, and bf16 wants channels-last.
        fused = net.fuse_for_inference(nnpack=False)
        loader = DataLoader(task.val_dataset(), batch_size=1, collate_fn=task.val_collate)
        with torch.inference_mode():
            return {
                "fp32": task.evaluate(fused, loader, torch.device("cpu")),
                "bf16": task.evaluate(Autocast(fused, torch.bfloat16, "cpu"), loader, torch.device("cpu")),
            }


def bf16_ap_line(kind: str, name: str, args) -> str:
    """:func:`bf16_ap_change` with ``--ap-*``'s settings, as one line: each AP in float32 -> bf16."""
    change = bf16_ap_change(
        kind, args.ap_steps, args.ap_train_images, args.ap_images, args.ap_size, args.seed
    )
    keys = ["AP", "AP50", "AP75"] + (["mask_AP", "mask_AP50", "mask_AP75"] if kind == "mask" else [])
    return (
        f"{name}: bf16 inference on a trained small model (ResNet-18 FPN, {args.ap_steps} steps "
        f"on {args.ap_train_images} shapes images, {args.ap_images} held-out images of "
        f"{args.ap_size} px): "
        + ", ".join(
            f"{k} {change['fp32'][k]:.4f} -> {change['bf16'][k]:.4f} "
            f"({change['bf16'][k] - change['fp32'][k]:+.4f})"
            for k in keys
        )
    )

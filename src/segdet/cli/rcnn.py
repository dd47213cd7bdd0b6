"""``segdet rcnn``: train R-CNN (Girshick et al. 2014) stage by stage on a dataset, then evaluate it.

The three stages (:mod:`segdet.models.detection.region_cnn.stages`) run in order, each with a progress
bar: fine-tuning the CNN on warped proposals, per-class SVMs with hard negative mining, class-specific
ridge box regression. The proposals come from the selective-search cache (``segdet proposals`` fills it
beforehand; missing ones are computed on the way). Written to ``--out``: ``rcnn.safetensors`` (the
network, SVMs and regressors, with the options and classes; never unpickled), ``stages.json`` (each
stage's statistics) and, when there is a validation split, ``metrics.json`` (COCO box AP, AP50 and the
seconds per image, the proposals' included). ``rcnn.safetensors`` also holds the run's config (the model
``rcnn_resnet_c4`` with its options: backbone, sizes, proposal settings; the data and its split), so
``segdet eval OUT/rcnn.safetensors`` (same AP on the same held-out images) and ``segdet predict`` need
nothing else.
"""

from __future__ import annotations

import argparse
import json

from segdet.cli.paths import add_overwrite, path_arg
from segdet.data.formats import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=path_arg, nargs="?", help="training dataset (omit with --synthetic)")
    parser.add_argument("--format", choices=list(FORMATS), help="annotation format (default: recognised)")
    parser.add_argument("--val", type=path_arg, help="validation dataset (same format)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="without --val: images held out for validation"
    )
    parser.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="train on this fraction of the training images (a seeded choice; a quick try: selective "
        "search then runs on fewer images)",
    )
    parser.add_argument("--synthetic", type=int, default=0, help="train on N synthetic shapes images")
    parser.add_argument("--synthetic-size", type=int, default=96)
    parser.add_argument("--out", type=path_arg, required=True, help="output folder (absent or empty)")
    add_overwrite(parser)
    m = parser.add_argument_group("network")
    m.add_argument(
        "--backbone", default="resnet50", choices=["resnet18", "resnet34", "resnet50", "resnet101"]
    )
    m.add_argument("--backbone-weights", help="ImageNet weights: a torchvision weights name or a file")
    m.add_argument("--trainable-layers", type=int, help="ResNet stages trained (default: 3 if pretrained)")
    m.add_argument("--input-size", type=int, default=224, help="warped region side S")
    m.add_argument("--pool-size", type=int, default=7, help="pooled map side (pool features)")
    m.add_argument("--representation-size", type=int, default=1024, help="fc6 / fc7 width")
    p = parser.add_argument_group("proposals")
    p.add_argument("--mode", choices=["fast", "quality"], default="fast")
    p.add_argument("--cache", type=path_arg, help="proposal cache root (default: segdet's)")
    p.add_argument("--proposals", type=int, default=2000, help="proposals per image")
    p.add_argument("--min-side", type=int, default=128, help="shorter image side searched at least")
    s = parser.add_argument_group("stages")
    s.add_argument("--steps", type=int, default=2000, help="stage 1 fine-tuning steps")
    s.add_argument("--lr", type=float, default=1e-4, help="stage 1 AdamW learning rate")
    s.add_argument("--positives", type=int, default=32, help="stage 1 positives per batch (3x background)")
    s.add_argument("--svm-c", type=float, default=0.001, help="stage 2 SVM C (the paper's code: 0.001)")
    s.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def run_config(args: argparse.Namespace, options: dict):
    """The run as a :class:`~segdet.engine.config.Config`: the model (``rcnn_resnet_c4`` and its options)
    and the data. Its splits are :func:`~segdet.engine.data_splits.train_val_splits`'s, and it is saved
    in ``rcnn.safetensors``, so ``segdet eval`` without ``--data`` evaluates on the same held-out images."""
    from segdet.data.formats import detect_format
    from segdet.engine.config import Config, DataConfig, DataSplit, ModelConfig, TrainConfig
    from segdet.errors import ConfigError

    if args.path is None and not args.synthetic:
        raise ConfigError("give a training dataset PATH or --synthetic N")
    out = args.out.resolve()
    if not 0 < args.fraction <= 1:
        raise ConfigError(f"--fraction must be in (0, 1], got {args.fraction}")
    data = DataConfig(synthetic=args.synthetic, synthetic_size=args.synthetic_size, fraction=args.fraction)
    if not args.synthetic:
        data.format = args.format or detect_format(args.path)
        data.train = DataSplit(path=str(args.path.resolve()))
        data.val = None if args.val is None else DataSplit(path=str(args.val.resolve()))
        data.val_fraction = args.val_fraction
    return Config(
        task="detection",
        name=out.name,
        output_dir=str(out.parent),
        model=ModelConfig(name="rcnn_resnet_c4", kwargs=options),
        data=data,
        train=TrainConfig(seed=args.seed),
    )


def _model_options(args: argparse.Namespace) -> dict:
    return {
        "backbone": args.backbone,
        "backbone_weights": args.backbone_weights,
        "trainable_layers": args.trainable_layers,
        "input_size": args.input_size,
        "pool_size": args.pool_size,
        "representation_size": args.representation_size,
        "proposal_mode": args.mode,
        # absolute: segdet eval / predict read the same cache from any working directory
        "proposal_cache": str(args.cache.resolve()) if args.cache is not None else None,
        "proposal_min_side": args.min_side,
        "proposals_train": args.proposals,
        "proposals_test": args.proposals,
    }


def run(args: argparse.Namespace) -> int:
    import torch

    from segdet.cli.paths import output_dir
    from segdet.engine.checkpoint import save_checkpoint
    from segdet.engine.config import to_dict
    from segdet.engine.data_splits import train_val_splits
    from segdet.engine.timed_eval import evaluate_timed
    from segdet.errors import ConfigError
    from segdet.models.detection.region_cnn.model import rcnn_resnet_c4
    from segdet.models.detection.region_cnn.stages import RCNNTrainSettings, train_rcnn, training_samples
    from segdet.models.detection.region_cnn.svm import SVMSettings

    if (
        min(args.steps, args.positives, args.proposals, args.input_size, args.pool_size) < 1
        or args.svm_c <= 0
    ):
        raise ConfigError(
            "--steps, --positives, --proposals, --input-size, --pool-size and --svm-c must be > 0"
        )
    options = _model_options(args)
    cfg = run_config(args, options)  # checked before the output folder is made
    output_dir(args.out, overwrite=args.overwrite, sources=[args.path, args.val])
    train, val = train_val_splits(cfg)
    torch.manual_seed(args.seed)
    model = rcnn_resnet_c4(len(train.classes), **options)
    samples = training_samples(train)
    settings = RCNNTrainSettings(
        finetune_steps=args.steps,
        lr=args.lr,
        positives=args.positives,
        background=3 * args.positives,
        svm=SVMSettings(C=args.svm_c),
        seed=args.seed,
    )
    stats = train_rcnn(model, samples, settings, progress=not args.no_progress)
    save_checkpoint(
        args.out / "rcnn.safetensors",
        {
            "model": model.state_dict(),
            "config": to_dict(cfg),
            "classes": list(train.classes),
            "category_ids": list(train.category_ids),
            "task": cfg.task,
            "kind": "rcnn",
        },
    )
    (args.out / "stages.json").write_text(json.dumps(stats, indent=2))
    loss = stats["finetune_loss"]
    print(f"R-CNN trained on {len(samples)} images: fine-tuning loss {loss[0]:.3f} -> {loss[-1]:.3f}")
    print(f"wrote {args.out / 'rcnn.safetensors'}")
    if val is not None and val.images:
        metrics = evaluate_timed(model, val, progress=not args.no_progress, desc="R-CNN eval")
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(
            f"{len(val.images)} validation images: box AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}; "
            f"{metrics['seconds_per_image']:.2f} s/image ({metrics['proposal_seconds_per_image']:.2f} "
            "proposals)"
        )
    return 0

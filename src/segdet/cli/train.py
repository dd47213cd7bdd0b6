"""``segdet train CONFIG [key=value ...]``: train a model as a YAML config says."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (see configs/); omit to use only overrides")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. optim.lr=0.01 train.epochs=5",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")


def build_task(cfg):
    """The task object of ``cfg.task`` (segmentation, detection or instance)."""
    if cfg.task == "segmentation":
        from segdet.engine.segmentation import SegmentationTask

        return SegmentationTask(cfg)
    from segdet.engine.detection import DetectionTask

    return DetectionTask(cfg)


def run(args: argparse.Namespace) -> int:
    from segdet.engine.config import load_config
    from segdet.engine.trainer import Trainer

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # only overrides were given
        config, overrides = None, [config, *overrides]
    cfg = load_config(config, overrides)
    trainer = Trainer(cfg, build_task(cfg), resume=args.resume)
    summary = trainer.fit()
    if trainer.dist.is_main:
        best = summary["best"]
        shown = "n/a" if best is None else f"{best:.4f}"
        print(
            f"done: {summary['epochs']} epochs, best {cfg.train.best_metric} {shown} "
            f"(epoch {summary['best_epoch']}); run folder {summary['run_dir']}"
        )
    return 0

"""``segdet train CONFIG [key=value ...]``: train a model as a YAML config says."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        nargs="?",
        help="YAML config (see configs/), or with --resume a run folder (its config.yaml); omit to use "
        "only overrides",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. optim.lr=0.01 train.epochs=5",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="reuse the run folder output_dir/name, deleting the earlier run's checkpoints and logs "
        "(without it, a run whose folder holds an earlier run goes to a new numbered folder, name-2 ...)",
    )


def run(args: argparse.Namespace) -> int:
    from segdet.engine import distributed
    from segdet.engine.config import load_config
    from segdet.engine.data_splits import absolute_data_paths
    from segdet.engine.devices import select_device
    from segdet.engine.run_folder import claim_run_dir, release_run_dir
    from segdet.engine.tasks import build_task
    from segdet.engine.trainer import Trainer

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # only overrides were given
        config, overrides = None, [config, *overrides]
    config, overrides = _resumed_config(config, overrides, args.resume)
    cfg = load_config(config, overrides)
    absolute_data_paths(cfg)
    # The run folder is chosen once (by rank 0 under torchrun) before anything is written into it.
    dist = distributed.init_distributed(select_device(cfg.train.device))
    if dist.is_main:
        claim_run_dir(cfg, resume=args.resume, overwrite=args.overwrite)
    cfg.name = distributed.broadcast_object(cfg.name)
    try:
        trainer = Trainer(cfg, build_task(cfg), resume=args.resume)
    except BaseException:  # a wrong data path, an unknown model...: no run happened in the folder
        if dist.is_main and not args.resume:
            release_run_dir(cfg.run_dir)
        raise
    summary = trainer.fit()
    if trainer.dist.is_main:
        best = summary["best"]
        shown = "n/a" if best is None else f"{best:.4f}"
        epochs, inside = summary["epochs"], summary.get("position", 0)
        parts = [f"{epochs} {'epoch' if epochs == 1 else 'epochs'}"] if epochs or not inside else []
        if inside:  # stopped by train.max_minutes inside an epoch
            parts.append(f"{inside} {'batch' if inside == 1 else 'batches'} of epoch {epochs + 1}")
        trained = " and ".join(parts)
        print(
            f"done: {trained}, best {cfg.train.best_metric} {shown} (epoch {summary['best_epoch']}); "
            f"run folder {summary['run_dir']}"
        )
        return report_unreadable(trainer.train_set, trainer.val_set)
    return 0


def report_unreadable(*datasets) -> int:
    """Say on stderr how many images the datasets skipped as unreadable (training went on without
    them); 0 always: the run itself succeeded."""
    import sys

    skipped = sorted({str(p) for d in datasets if hasattr(d, "unreadable") for p in d.unreadable()})
    if skipped:
        shown = ", ".join(skipped[:5]) + (f", ... (+{len(skipped) - 5} more)" if len(skipped) > 5 else "")
        print(
            f"segdet: {len(skipped)} unreadable images were skipped: {shown} "
            "(`segdet data check` says why; data.strict: true refuses them)",
            file=sys.stderr,
        )
    return 0


def _resumed_config(config: str | None, overrides: list[str], resume: bool) -> tuple[str | None, list[str]]:
    """The config and overrides to read: as given, or with ``--resume`` a run folder's ``config.yaml``
    (the run's settings as resolved, paths absolute) placed in that folder wherever it now is. Without a
    config ``--resume`` cannot know which run."""
    from pathlib import Path

    from segdet.errors import ConfigError

    if config is not None and Path(config).is_dir():
        folder = Path(config).resolve()
        if not (folder / "config.yaml").is_file():
            raise ConfigError(f"{config}: a folder without config.yaml (give a YAML config, or a run folder)")
        if not resume:
            raise ConfigError(f"{config}: a run folder; to continue it add --resume, else give a YAML config")
        # the user's overrides come last and win
        return str(folder / "config.yaml"), [f"output_dir={folder.parent}", f"name={folder.name}", *overrides]
    if config is None and resume:
        raise ConfigError(
            "--resume needs the run: its folder (segdet train runs/NAME --resume) or the config and "
            "overrides it was started with"
        )
    return config, overrides

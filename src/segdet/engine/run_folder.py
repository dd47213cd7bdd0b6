"""Choosing a run's folder so that a run never writes over another.

``output_dir/name`` is the run folder. A new run takes it when it is absent or empty; when it holds an
earlier run, the new run takes ``name-2`` (``name-3``...) instead and says so, as Ultralytics numbers
its ``exp`` folders. Taking a folder is atomic (an ``O_EXCL`` marker file), so two runs started at the
same moment with the same name get two folders instead of interleaving their logs. ``resume`` continues
the run in ``output_dir/name``; ``overwrite`` reuses it after deleting the earlier run's outputs (only
the files and folders a run writes, never anything else the folder holds). A run that fails before
training gives its folder back (:func:`release_run_dir`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from pathlib import Path

from segdet.engine.config import Config
from segdet.errors import ConfigError

MARKER = ".segdet-run"
RUN_FILES = (
    "config.yaml",
    "last.safetensors",
    "best.safetensors",
    "metrics.jsonl",
    "metrics.csv",
    "summary.json",
)
RUN_FOLDERS = ("tensorboard", "plots", "synthetic", "predictions")


def claim_run_dir(config: Config, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Take the run folder for a run of ``config`` (see the module docstring); may change ``config.name``
    to the numbered folder's name. Returns the folder."""
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: give one of them")
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {out} is a file, not a folder")
    if config.run_dir.exists() and not config.run_dir.is_dir():
        raise ConfigError(f"name: the run folder {config.run_dir} is a file, not a folder")
    if resume:
        return config.run_dir
    if overwrite:
        clear_run(config.run_dir)
        _take(config.run_dir)
        return config.run_dir
    first = config.run_dir
    for n in itertools.count(1):
        name = config.name if n == 1 else f"{config.name}-{n}"
        if _take(out / name):
            if n > 1:
                config.name = name
                print(f"{first} holds an earlier run; this run goes to {config.run_dir}", flush=True)
            return config.run_dir
    raise AssertionError("unreachable")


def _take(folder: Path) -> bool:
    """Whether this process took ``folder``: it was absent or empty, and the marker file is ours."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if any(folder.iterdir()):
            return False
        fd = os.open(folder / MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except NotADirectoryError:
        raise ConfigError(f"output_dir: {folder} (or a folder above it) is a file, not a folder") from None
    os.write(fd, f"pid {os.getpid()}\n".encode())
    os.close(fd)
    return True


def clear_run(folder: Path) -> None:
    """Delete what a run wrote in ``folder`` (checkpoints, logs, curves, synthetic data, the marker, and
    the temporary files of a write a kill interrupted)."""
    for name in (*RUN_FILES, MARKER):
        (folder / name).unlink(missing_ok=True)
        for tmp in folder.glob(f".{name}.tmp-*"):  # left by a run killed while writing ``name``
            tmp.unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)


def release_run_dir(folder: Path) -> None:
    """Give back a folder :func:`claim_run_dir` took for a run that failed before training (a wrong data
    path, an unknown model): what the run wrote is deleted (:func:`clear_run`) and so is the folder when
    nothing else is left in it, so that the next run gets the name instead of ``name-2``."""
    if not folder.is_dir():
        return
    clear_run(folder)
    with contextlib.suppress(OSError):  # not empty: something else is there, and it stays
        folder.rmdir()

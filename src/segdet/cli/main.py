"""``segdet`` entry point: a table of sub-commands, each a module with ``add_arguments`` and ``run``.

Sub-command modules are imported only when their command runs, so ``segdet --help`` stays fast
(importing torchvision alone costs about a second).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

from segdet.engine.perf import tune_malloc
from segdet.errors import ConfigError, SegdetError

# command -> (module, one-line help). Each module defines add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("segdet.cli.demo", "train a U-Net and a detector on synthetic shapes, show them (the main job)"),
    "data": ("segdet.cli.data", "check, describe, draw and convert datasets"),
    "train": ("segdet.cli.train", "train a model from a YAML config (torchrun for several processes)"),
    "eval": ("segdet.cli.evaluate", "evaluate a trained checkpoint on a dataset"),
    "predict": ("segdet.cli.predict", "run a trained checkpoint on images: label PNGs and overlays"),
    "export": (
        "segdet.cli.export",
        "a trained model as an ONNX file or a torch.export program (checked against PyTorch)",
    ),
    "metrics": ("segdet.cli.metrics", "evaluate predictions: COCO / VOC detection AP, segmentation IoU"),
    "models": ("segdet.cli.models", "list the models with parameter counts and GFLOPs"),
    "proposals": (
        "segdet.cli.proposals",
        "selective-search proposals of a dataset: cache them, report recall",
    ),
    "rcnn": (
        "segdet.cli.rcnn",
        "train R-CNN (2014) stage by stage: fine-tune, SVMs, box regression; evaluate "
        "(segdet eval / predict read its rcnn.safetensors)",
    ),
}

# How an error that no check anticipated starts (the CLI fuzz test makes sure bad input never gets here).
UNEXPECTED = "unexpected"

# Commands that run models keep freed memory for reuse instead of returning it to the OS and faulting it in
# again on every pass (glibc malloc thresholds, see segdet.engine.perf: 7-25% faster on our CPU).
MODEL_COMMANDS = ("train", "eval", "predict")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segdet",
        description="Semantic segmentation, object detection and instance segmentation toolkit.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log every skipped record; tracebacks with errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    if extra and command == "train" and all("=" in a and not a.startswith("-") for a in extra):
        # argparse stops reading positionals at the first option: `train C.yaml --resume k=v` is fine
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command in MODEL_COMMANDS:
        tune_malloc()
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except ConfigError as e:
        # Under torchrun every process reads the same config and meets the same error: rank 0 says it.
        return 1 if int(os.environ.get("RANK", "0") or 0) > 0 else _fail(str(e), args.verbose)
    except SegdetError as e:
        return _fail(str(e), args.verbose)
    except BrokenPipeError:  # `segdet data stats ... | head`: the reader has what it wanted
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell tool killed by the closed pipe returns
    except OSError as e:  # the machine's side: a full disk, a permission, a vanished file
        where = e.filename if e.filename is not None else "segdet"
        return _fail(f"{where}: {e.strerror or e}", args.verbose)
    except KeyboardInterrupt:
        print("segdet: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the last resort: still one line; the tests hold us to the cases above
        return _fail(
            f"{UNEXPECTED} {type(e).__name__}: {e} (a bug, or an input segdet does not check yet; "
            "-v prints the traceback)",
            args.verbose,
        )


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not raise the broken pipe again
    (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # no real stdout (a test's capture): nothing to flush
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _fail(message: str, verbose: bool) -> int:
    """One line on stderr (``-v`` adds the traceback above it); exit status 1."""
    if verbose:
        traceback.print_exc()
    print(f"segdet: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""The options ``segdet eval`` and ``segdet predict`` share: the device, the precision, BatchNorm folding,
NNPACK convolutions, and loading the checkpoint set up accordingly."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--precision",
        # segdet.engine.inference.PRECISIONS, spelled out so that building the parser imports no torch
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="bf16/fp16: run the model under autocast (opt-in; faster on hardware with fast bf16/fp16)",
    )
    parser.add_argument(
        "--no-fuse",
        action="store_true",
        help="keep BatchNorm layers (by default they are folded into the convolutions: same outputs up to "
        "float rounding, faster)",
    )
    parser.add_argument(
        "--no-nnpack",
        action="store_true",
        help="detectors on AVX2 CPUs (on AMD Zen 4: with an FPN or SSD): keep the wide 3x3 convolutions off "
        "NNPACK's Winograd/FFT kernels (used by default there: same outputs up to float rounding, ~1.2x "
        "faster)",
    )


def load(args: argparse.Namespace):
    """The checkpoint ``args.checkpoint`` on ``args.device``, prepared for inference as the options say."""
    from segdet.engine.devices import select_device
    from segdet.engine.inference import load_trained, prepare_for_inference

    device = select_device(args.device)
    trained = load_trained(args.checkpoint, device)
    trained.model = prepare_for_inference(
        trained.model,
        fuse=not args.no_fuse,
        precision=args.precision,
        device_type=device.type,
        nnpack=False if args.no_nnpack else None,
    )
    return trained, device


def timing(num_images: int, seconds: float, device, verb: str) -> str:
    """The closing line of ``segdet eval`` / ``predict``: images, wall time and seconds per image (reading,
    the model, and writing or scoring included; on CUDA every image's outputs are read back on the host,
    so the time is the device's too)."""
    per = seconds / max(num_images, 1)
    return f"{verb} {num_images} images in {seconds:.2f} s: {per:.4f} s per image on {device}"


def refuse_detector_options(options: dict[str, object], checkpoint, task: str) -> None:
    """A one-line :class:`ConfigError` when a segmentation checkpoint is given options that only detectors
    use (``options``: each option's name and value, ``None`` when not given), instead of ignoring them."""
    if task == "segmentation":
        _refuse_given(options, checkpoint, "detectors only; this is a segmentation checkpoint")


def refuse_segmentation_options(options: dict[str, object], checkpoint, task: str) -> None:
    """The mirror of :func:`refuse_detector_options`: options only segmentation models use, given with a
    detector's checkpoint (a detector resizes as its own ``min_size`` / ``max_size`` say)."""
    if task != "segmentation":
        _refuse_given(
            options,
            checkpoint,
            f"segmentation models only; this is a {task} checkpoint (a detector resizes as its "
            "model.min_size / model.max_size say)",
        )


def refuse_without(options: dict[str, object], needed: str, present: bool, why: str) -> None:
    """A one-line :class:`ConfigError` "--a and --b need <needed> (<why>)" when option ``needed`` is
    absent and options that only act on it are given (``options`` as for :func:`refuse_detector_options`),
    instead of ignoring them."""
    from segdet.errors import ConfigError

    given = _given(options)
    if given and not present:
        verb = "needs" if len(given) == 1 else "need"
        raise ConfigError(f"{_names(given)} {verb} {needed} ({why})")


def _refuse_given(options: dict[str, object], checkpoint, applies_to: str) -> None:
    """Raise "<checkpoint>: --a and --b apply to <applies_to>" for the options given (value not None)."""
    from segdet.errors import ConfigError

    given = _given(options)
    if not given:
        return
    verb = "applies" if len(given) == 1 else "apply"
    raise ConfigError(f"{checkpoint}: {_names(given)} {verb} to {applies_to}")


def _given(options: dict[str, object]) -> list[str]:
    return [name for name, value in options.items() if value is not None]


def _names(given: list[str]) -> str:
    """``--a``, ``--a and --b``, ``--a, --b and --c``."""
    return given[0] if len(given) == 1 else f"{', '.join(given[:-1])} and {given[-1]}"

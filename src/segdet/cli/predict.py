"""``segdet predict CHECKPOINT IMAGES_OR_DIR --out DIR``: run a trained model on images.

Segmentation: a label PNG and an overlay per image. Detection / instance segmentation: an overlay per
image (boxes, class names, scores and masks of the detections scoring at least ``--score-thresh``) and
``predictions.json``, every detection scoring at least ``--json-thresh`` in COCO's results format
(``image_id``, ``category_id``, ``bbox`` xywh, ``score``, ``segmentation`` RLE) plus ``file_name``
(the image's base name), ``path`` (the image file as read) and ``category_name``, which COCO evaluators
ignore. R-CNN's scores (``segdet rcnn``'s ``rcnn.safetensors``) are SVM margins, not probabilities: its
default thresholds are 0 (drawn) and none (written).

Outputs are named by the image's stem, made distinct where two images share one (``a.png`` beside
``a.jpg``: ``a_png.png``, ``a_jpg.png``; ``x/a.png`` and ``y/a.png``: ``a_png.png``, ``a_png_2.png``);
``sources.json`` maps each output's file name to the image it was made from, so that such outputs can be
told apart. Which images are read (folders, patterns) is :mod:`segdet.cli.image_inputs`' business; an
image that cannot be read or whose prediction fails is skipped, the others predicted
(:mod:`segdet.cli.image_log`).
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

from segdet.cli import inference_options
from segdet.cli.image_inputs import input_roots, list_images
from segdet.cli.image_log import ImageLog
from segdet.cli.paths import add_overwrite, output_dir, path_arg
from segdet.engine.atomic import write_text_atomic

SOURCES = "sources.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        type=path_arg,
        help="a .safetensors checkpoint: segdet train's (RUN/best.safetensors, last.safetensors) or "
        "segdet rcnn's (OUT/rcnn.safetensors: R-CNN's network, SVMs and box regressors)",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        type=path_arg,
        help="image files, folders of images (their top level; images in sub-folders are counted, not "
        "read) or quoted glob patterns, expanded recursively: 'imgs/**/*.jpg'",
    )
    parser.add_argument(
        "--out",
        type=path_arg,
        required=True,
        help=f"output folder (absent or empty; never an input folder or inside one). Outputs are named by "
        f"the image's file name, made distinct where two share one (a_png.png, a_png_2.png); {SOURCES} "
        "maps each output name to its image's path; each predictions.json record's 'path' names its "
        "image too",
    )
    add_overwrite(parser)
    inference_options.add_arguments(parser)
    parser.add_argument(
        "--max-size",
        type=int,
        help="segmentation: an image whose longer side is above this many pixels is run at that size and "
        "its label map scaled back (default: the run's data.max_size, 1333); detectors, which resize as "
        "their own min_size / max_size options say, refuse it",
    )
    parser.add_argument(
        "--score-thresh",
        type=float,
        help="detectors: detections drawn: those scoring at least this (default 0.5; R-CNN, whose scores "
        "are SVM margins: 0)",
    )
    parser.add_argument(
        "--json-thresh",
        type=float,
        help="detectors: detections in predictions.json: score at least this (default 0.05; R-CNN: all it "
        "returns)",
    )
    parser.add_argument(
        "--coco-gt",
        type=path_arg,
        help="detectors: COCO ground-truth JSON whose image ids predictions.json uses (an image's is that of "
        "the file_name its path ends with, else of its base name); without it images are numbered 0, 1, ... "
        "in the order read",
    )


def run(args: argparse.Namespace) -> int:
    from segdet.data.paths import distinct_stems
    from segdet.engine.tasks import task_class

    images = list_images(args.inputs)
    trained, device = inference_options.load(args)
    detector_only = {
        "--coco-gt": args.coco_gt,
        "--score-thresh": args.score_thresh,
        "--json-thresh": args.json_thresh,
    }
    inference_options.refuse_detector_options(detector_only, args.checkpoint, trained.config.task)
    inference_options.refuse_segmentation_options(
        {"--max-size": args.max_size}, args.checkpoint, trained.config.task
    )
    output_dir(args.out, overwrite=args.overwrite, sources=input_roots(args.inputs))
    names = distinct_stems(images)  # a.png and a.jpg must not write the same labels/a.png
    start = time.perf_counter()
    write = _writers()[task_class(trained.config.task)]
    log = ImageLog(len(images), verbose=getattr(args, "verbose", False))
    written = write(trained, images, args, device, names, log)
    write_sources(args.out, written)
    print(inference_options.timing(log.done, time.perf_counter() - start, device, "predicted"))
    return log.report()


def write_sources(out: Path, written: dict[str, Path]) -> None:
    """``sources.json``: ``{output file name: image path}`` of the images predicted (module docstring)."""
    text = json.dumps({f"{name}.png": str(path) for name, path in written.items()}, indent=1)
    write_text_atomic(out / SOURCES, text + "\n")


def predict_segmentation(
    trained, images: list[Path], args: argparse.Namespace, device, names: list[str], log: ImageLog
) -> dict[str, Path]:
    """Label PNGs (class indices) and overlays (named ``names``) of ``trained`` on ``images``; returns
    ``{name: image}`` of those written."""
    import numpy as np
    from PIL import Image

    from segdet.engine.segmentation import SegmentationTask
    from segdet.errors import SegdetError
    from segdet.ops.draw import overlay_semantic, save_png

    max_size = args.max_size if args.max_size is not None else trained.config.data.max_size
    if max_size < 1:
        raise SegdetError(f"--max-size must be at least 1, got {max_size}")
    (args.out / "labels").mkdir(parents=True, exist_ok=True)
    num_classes = len(trained.classes)
    written: dict[str, Path] = {}

    def predict(raw, name: str) -> bool:
        pred = SegmentationTask.infer(trained.model, raw, device, max_size)
        overlay = overlay_semantic(raw, pred, num_classes, 255, alpha=0.5)
        Image.fromarray(pred.numpy().astype(np.uint8 if num_classes <= 256 else np.uint16)).save(
            args.out / "labels" / f"{name}.png"
        )
        save_png(overlay, args.out / "overlays" / f"{name}.png")
        return True

    for path, name in zip(images, names, strict=True):
        raw = log.load(path)
        if raw is not None and log.attempt(path, partial(predict, raw, name)):
            written[name] = path
    print(
        f"predicted {log.done} images: label PNGs in {args.out / 'labels'}, "
        f"overlays in {args.out / 'overlays'}"
    )
    return written


def image_ids(images: list[Path], coco_gt: Path | None) -> list[int]:
    """The id of each image: its position, or the ground truth's image whose ``file_name`` the image's path
    ends with (``sub1/a.png`` for ``data/sub1/a.png``; the longest such name), else the one of the same
    base name; DataError when none, or several but none by a longer name (two ``a.png`` in folders)."""
    from segdet.errors import DataError

    if coco_gt is None:
        return list(range(len(images)))
    try:
        entries = json.loads(coco_gt.read_text())["images"]
        by_name = {str(e["file_name"]).replace("\\", "/"): int(e["id"]) for e in entries}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"not a COCO ground-truth file with images ({e})", coco_gt) from None
    by_base: dict[str, list[str]] = {}
    for name in by_name:
        by_base.setdefault(name.rsplit("/", 1)[-1], []).append(name)
    ids = []
    for path in images:
        parts = path.as_posix().split("/")
        tails = ("/".join(parts[-k:]) for k in range(len(parts), 0, -1))
        found = next((by_name[t] for t in tails if t in by_name), None)
        same_base = by_base.get(path.name, [])
        if found is None and len(same_base) > 1:
            raise DataError(
                f"image {path} has the base name of {len(same_base)} ground-truth images "
                f"({', '.join(same_base[:3])}{', ...' if len(same_base) > 3 else ''}) and its path ends as "
                "none of them: give it by a path that ends as its file_name does",
                coco_gt,
            )
        if found is None and not same_base:
            raise DataError(f"image {path.name} is not in the ground truth's images", coco_gt)
        ids.append(by_name[same_base[0]] if found is None else found)
    return ids


def score_thresholds(model, drawn: float | None, written: float | None) -> tuple[float, float]:
    """The ``(drawn, written)`` score thresholds: those given, else the model's own defaults
    (``predict_score_thresholds``: R-CNN's, whose scores are SVM margins), else 0.5 and 0.05 (scores
    that are probabilities)."""
    from segdet.engine.inference import Autocast

    inner = model.model if isinstance(model, Autocast) else model
    default = getattr(inner, "predict_score_thresholds", (0.5, 0.05))
    return (default[0] if drawn is None else drawn), (default[1] if written is None else written)


def predict_detections(
    trained, images: list[Path], args: argparse.Namespace, device, names: list[str], log: ImageLog
) -> dict[str, Path]:
    """Detections of ``trained`` on ``images``: overlays (named ``names``) and ``predictions.json`` (of
    the images predicted, whatever the others did); returns ``{name: image}`` of those written."""
    from segdet.engine.detection import DetectionTask, detections_to_coco
    from segdet.ops.draw import draw_detections, save_png

    masks = trained.config.task == "instance"
    drawn, written = score_thresholds(trained.model, args.score_thresh, args.json_thresh)
    ids = image_ids(images, args.coco_gt)
    results: list[dict] = []
    done: dict[str, Path] = {}

    def predict(raw, path: Path, image_id: int, name: str) -> list[dict]:
        output = DetectionTask.infer(trained.model, raw, device)
        entries = []
        for entry in detections_to_coco(
            output, image_id, trained.category_ids, masks=masks, score_thresh=written
        ):
            label = trained.category_ids.index(entry["category_id"])
            about = {"file_name": path.name, "path": str(path), "category_name": trained.classes[label]}
            entries.append({**entry, **about})
        shown = output["scores"] >= drawn
        picture = draw_detections(
            raw,
            output["boxes"][shown],
            output["labels"][shown],
            output["scores"][shown],
            masks=output["masks"][shown] if masks and "masks" in output else None,
            class_names=trained.classes,
        )
        save_png(picture, args.out / "overlays" / f"{name}.png")
        return entries

    for path, image_id, name in zip(images, ids, names, strict=True):
        raw = log.load(path)
        if raw is None:
            continue
        entries = log.attempt(path, partial(predict, raw, path, image_id, name))
        if entries is not None:
            results += entries
            done[name] = path
    write_text_atomic(args.out / "predictions.json", json.dumps(results))
    print(
        f"predicted {log.done} images: {len(results)} detections (score >= {written:g}) in "
        f"{args.out / 'predictions.json'}, overlays (score >= {drawn:g}) in "
        f"{args.out / 'overlays'}"
    )
    return done


def _writers() -> dict:
    from segdet.engine.detection import DetectionTask
    from segdet.engine.segmentation import SegmentationTask

    return {SegmentationTask: predict_segmentation, DetectionTask: predict_detections}

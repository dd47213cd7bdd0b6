"""``segdet predict CHECKPOINT IMAGES_OR_DIR --out DIR``: run a trained model on images.

Segmentation: a label PNG and an overlay per image. Detection / instance segmentation: an overlay per
image (boxes, class names, scores and masks of the detections scoring at least ``--score-thresh``) and
``predictions.json``, every detection scoring at least ``--json-thresh`` in COCO's results format
(``image_id``, ``category_id``, ``bbox`` xywh, ``score``, ``segmentation`` RLE) plus ``file_name`` and
``category_name``, which COCO evaluators ignore. R-CNN's scores (``segdet rcnn``'s ``rcnn.safetensors``)
are SVM margins, not probabilities: its default thresholds are 0 (drawn) and none (written).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from segdet.cli import inference_options
from segdet.cli.paths import add_overwrite, output_dir, path_arg
from segdet.engine.atomic import write_text_atomic

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        type=path_arg,
        help="a .safetensors checkpoint: segdet train's (RUN/best.safetensors, last.safetensors) or "
        "segdet rcnn's (OUT/rcnn.safetensors: R-CNN's network, SVMs and box regressors)",
    )
    parser.add_argument("inputs", nargs="+", type=path_arg, help="image files or folders of images")
    parser.add_argument(
        "--out",
        type=path_arg,
        required=True,
        help="output folder (absent or empty; never an input folder or inside one)",
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
        help="detectors: COCO ground-truth JSON whose image ids (matched by file name) predictions.json "
        "uses; without it images are numbered 0, 1, ... in the order read",
    )


def list_images(inputs: list[Path]) -> list[Path]:
    from segdet.errors import DataError

    found: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise DataError("no such image file or folder", p)
    if not found:
        raise DataError("no images found", ", ".join(map(str, inputs)))
    return found


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
    output_dir(args.out, overwrite=args.overwrite, sources=args.inputs)
    names = distinct_stems(images)  # a.png and a.jpg must not write the same labels/a.png
    start = time.perf_counter()
    write = _writers()[task_class(trained.config.task)]
    skipped = write(trained, images, args, device, names)
    print(inference_options.timing(skipped.done, time.perf_counter() - start, device, "predicted"))
    return skipped.report()


def predict_segmentation(
    trained, images: list[Path], args: argparse.Namespace, device, names: list[str]
) -> Skipped:
    """Label PNGs (class indices) and overlays (named ``names``) of ``trained`` on ``images``."""
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
    skipped = Skipped(len(images))
    for path, name in zip(images, names, strict=True):
        raw = skipped.load(path)
        if raw is None:
            continue
        pred = SegmentationTask.infer(trained.model, raw, device, max_size)
        Image.fromarray(pred.numpy().astype(np.uint8 if num_classes <= 256 else np.uint16)).save(
            args.out / "labels" / f"{name}.png"
        )
        save_png(
            overlay_semantic(raw, pred, num_classes, 255, alpha=0.5),
            args.out / "overlays" / f"{name}.png",
        )
    print(
        f"predicted {skipped.done} images: label PNGs in {args.out / 'labels'}, "
        f"overlays in {args.out / 'overlays'}"
    )
    return skipped


class Skipped:
    """Images that could not be read: each reported on stderr when met, all counted at the end."""

    def __init__(self, total: int) -> None:
        self.total, self.problems = total, []

    @property
    def done(self) -> int:
        return self.total - len(self.problems)

    def load(self, path: Path):
        """The image as ``load_image`` gives it, or None (reported) when it cannot be read."""
        import sys

        from segdet.data.io import load_image
        from segdet.errors import DataError

        try:
            return load_image(path)
        except DataError as e:
            self.problems.append(str(e))
            print(f"segdet: skipped: {e}", file=sys.stderr)
            return None

    def report(self) -> int:
        """The exit status: 1 when some image was skipped (said on stderr), else 0."""
        import sys

        if not self.problems:
            return 0
        print(
            f"segdet: {len(self.problems)} of {self.total} images could not be read and were skipped "
            "(listed above)",
            file=sys.stderr,
        )
        return 1


def image_ids(images: list[Path], coco_gt: Path | None) -> list[int]:
    """The id of each image: the ground truth's (by file name, then by base name) or its position."""
    import json

    from segdet.errors import DataError

    if coco_gt is None:
        return list(range(len(images)))
    try:
        entries = json.loads(coco_gt.read_text())["images"]
        by_name = {str(e["file_name"]): int(e["id"]) for e in entries}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"not a COCO ground-truth file with images ({e})", coco_gt) from None
    by_base = {Path(name).name: i for name, i in by_name.items()}
    ids = []
    for path in images:
        found = by_base.get(path.name) if path.name not in by_name else by_name[path.name]
        if found is None:
            raise DataError(f"image {path.name} is not in the ground truth's images", coco_gt)
        ids.append(found)
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
    trained, images: list[Path], args: argparse.Namespace, device, names: list[str]
) -> Skipped:
    """Detections of ``trained`` on ``images``: overlays (named ``names``) and ``predictions.json``."""
    import json

    from segdet.engine.detection import DetectionTask, detections_to_coco
    from segdet.ops.draw import draw_detections, save_png

    masks = trained.config.task == "instance"
    drawn, written = score_thresholds(trained.model, args.score_thresh, args.json_thresh)
    ids = image_ids(images, args.coco_gt)
    results: list[dict] = []
    skipped = Skipped(len(images))
    for path, image_id, name in zip(images, ids, names, strict=True):
        raw = skipped.load(path)
        if raw is None:
            continue
        output = DetectionTask.infer(trained.model, raw, device)
        for entry in detections_to_coco(
            output, image_id, trained.category_ids, masks=masks, score_thresh=written
        ):
            label = trained.category_ids.index(entry["category_id"])
            results.append({**entry, "file_name": path.name, "category_name": trained.classes[label]})
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
    write_text_atomic(args.out / "predictions.json", json.dumps(results))
    print(
        f"predicted {skipped.done} images: {len(results)} detections (score >= {written:g}) in "
        f"{args.out / 'predictions.json'}, overlays (score >= {drawn:g}) in "
        f"{args.out / 'overlays'}"
    )
    return skipped


def _writers() -> dict:
    from segdet.engine.detection import DetectionTask
    from segdet.engine.segmentation import SegmentationTask

    return {SegmentationTask: predict_segmentation, DetectionTask: predict_detections}

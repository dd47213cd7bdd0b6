"""``segdet predict CHECKPOINT IMAGES_OR_DIR --out DIR``: run a trained model on images.

Segmentation: a label PNG and an overlay per image. Detection / instance segmentation: an overlay per
image (boxes, class names, scores and masks of the detections scoring at least ``--score-thresh``) and
``predictions.json``, every detection scoring at least ``--json-thresh`` in COCO's results format
(``image_id``, ``category_id``, ``bbox`` xywh, ``score``, ``segmentation`` RLE) plus ``file_name`` and
``category_name``, which COCO evaluators ignore.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from segdet.cli import inference_options

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a .safetensors checkpoint written by segdet train")
    parser.add_argument("inputs", nargs="+", type=Path, help="image files or folders of images")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    inference_options.add_arguments(parser)
    parser.add_argument(
        "--score-thresh", type=float, default=0.5, help="detections drawn: those scoring at least this"
    )
    parser.add_argument(
        "--json-thresh", type=float, default=0.05, help="detections in predictions.json: score at least this"
    )
    parser.add_argument(
        "--coco-gt",
        type=Path,
        help="COCO ground-truth JSON whose image ids (matched by file name) predictions.json uses; "
        "without it images are numbered 0, 1, ... in the order read",
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
    trained, device = inference_options.load(args)
    images = list_images(args.inputs)
    start = time.perf_counter()
    if trained.config.task != "segmentation":
        predict_detections(trained, images, args, device)
    else:
        predict_segmentation(trained, images, args, device)
    print(inference_options.timing(len(images), time.perf_counter() - start, device, "predicted"))
    return 0


def predict_segmentation(trained, images: list[Path], args: argparse.Namespace, device) -> None:
    """Label PNGs (class indices) and overlays of ``trained`` on ``images``."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    from segdet.data import transforms as T
    from segdet.data.io import load_image
    from segdet.ops.draw import overlay_semantic, save_png

    # the evaluation preset's image steps: float [0, 1], then ImageNet normalisation
    preprocess = v2.Normalize(mean=list(T.IMAGENET_MEAN), std=list(T.IMAGENET_STD))
    (args.out / "labels").mkdir(parents=True, exist_ok=True)
    num_classes = len(trained.classes)
    for path in images:
        raw = load_image(path)
        x = preprocess(raw.float().div(255.0))
        with torch.no_grad():
            pred = trained.model(x.unsqueeze(0).to(device)).argmax(1)[0].cpu()
        Image.fromarray(pred.numpy().astype(np.uint8 if num_classes <= 256 else np.uint16)).save(
            args.out / "labels" / f"{path.stem}.png"
        )
        save_png(
            overlay_semantic(raw, pred, num_classes, 255, alpha=0.5),
            args.out / "overlays" / f"{path.stem}.png",
        )
    print(
        f"predicted {len(images)} images: label PNGs in {args.out / 'labels'}, "
        f"overlays in {args.out / 'overlays'}"
    )


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


def predict_detections(trained, images: list[Path], args: argparse.Namespace, device) -> None:
    """Detections of ``trained`` on ``images``: overlays and ``predictions.json``."""
    import json

    import torch

    from segdet.data.io import load_image
    from segdet.engine.detection import detections_to_coco
    from segdet.ops.draw import draw_detections, save_png

    masks = trained.config.task == "instance"
    ids = image_ids(images, args.coco_gt)
    results: list[dict] = []
    for path, image_id in zip(images, ids, strict=True):
        raw = load_image(path)
        with torch.no_grad():
            output = trained.model([raw.float().div(255.0).to(device)])[0]
        for entry in detections_to_coco(
            output, image_id, trained.category_ids, masks=masks, score_thresh=args.json_thresh
        ):
            label = trained.category_ids.index(entry["category_id"])
            results.append({**entry, "file_name": path.name, "category_name": trained.classes[label]})
        shown = output["scores"] >= args.score_thresh
        picture = draw_detections(
            raw,
            output["boxes"][shown],
            output["labels"][shown],
            output["scores"][shown],
            masks=output["masks"][shown] if masks and "masks" in output else None,
            class_names=trained.classes,
        )
        save_png(picture, args.out / "overlays" / f"{path.stem}.png")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "predictions.json").write_text(json.dumps(results))
    print(
        f"predicted {len(images)} images: {len(results)} detections (score >= {args.json_thresh:g}) in "
        f"{args.out / 'predictions.json'}, overlays (score >= {args.score_thresh:g}) in "
        f"{args.out / 'overlays'}"
    )

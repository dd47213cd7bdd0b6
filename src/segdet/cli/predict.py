"""``segdet predict CHECKPOINT IMAGES_OR_DIR --out DIR``: run a trained model on images."""

from __future__ import annotations

import argparse
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a .safetensors checkpoint written by segdet train")
    parser.add_argument("inputs", nargs="+", type=Path, help="image files or folders of images")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--device", default="auto")


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
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    from segdet.data import transforms as T
    from segdet.data.io import load_image
    from segdet.engine.inference import load_trained
    from segdet.engine.trainer import select_device
    from segdet.errors import ConfigError
    from segdet.ops.draw import overlay_semantic, save_png

    device = select_device(args.device)
    trained = load_trained(args.checkpoint, device)
    if trained.config.task != "segmentation":
        raise ConfigError(f"task {trained.config.task!r}: prediction is not available yet")
    # the evaluation preset's image steps: float [0, 1], then ImageNet normalisation
    preprocess = v2.Normalize(mean=list(T.IMAGENET_MEAN), std=list(T.IMAGENET_STD))
    (args.out / "labels").mkdir(parents=True, exist_ok=True)
    images = list_images(args.inputs)
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
    return 0

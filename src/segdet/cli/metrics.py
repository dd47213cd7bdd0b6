"""``segdet metrics``: evaluate saved predictions against ground truth.

* ``segdet metrics coco --gt GT.json --dt DT.json --iou-type bbox|segm`` -- COCO AP/AR (pycocotools),
  printed in pycocotools' 12-line layout.
* ``segdet metrics voc --gt ROOT [--format voc] --dt DT.json [--metric 07|10]`` -- Pascal VOC AP per
  class and mAP; detections in COCO results form (``image_id`` may also be the image's file stem).
* ``segdet metrics seg --gt DIR --pred DIR --num-classes N`` -- IoU, Dice and accuracies of label PNGs
  paired by file stem (``X.png``, else the one prediction ``X.*``).

Each takes ``--out FILE.json`` (the numbers as JSON) and ``--plots DIR`` (PNG figures). Heavy imports
(torch, pycocotools, matplotlib) happen inside the commands so ``segdet metrics --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segdet.cli.paths import add_overwrite, output_dir, output_file, path_arg
from segdet.engine.atomic import write_text_atomic
from segdet.errors import DataError

#: Most classes ``metrics seg`` takes: its confusion matrix has ``N * N`` int64 cells (128 MiB here).
MAX_SEG_CLASSES = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="metrics_kind", metavar="KIND", required=True)

    coco = sub.add_parser("coco", help="COCO AP/AR of detections or instance masks (pycocotools)")
    coco.add_argument("--gt", type=path_arg, required=True, help="ground truth, COCO instances JSON")
    coco.add_argument("--dt", type=path_arg, required=True, help="detections, COCO results JSON")
    coco.add_argument("--iou-type", choices=("bbox", "segm"), default="bbox")
    _add_outputs(coco)

    voc = sub.add_parser("voc", help="Pascal VOC AP per class and mAP")
    voc.add_argument(
        "--gt", type=path_arg, required=True, help="ground-truth dataset (a VOC root by default)"
    )
    voc.add_argument("--format", default="voc", help="format of --gt: voc, coco, yolo, ... (default voc)")
    voc.add_argument("--dt", type=path_arg, required=True, help="detections, COCO results JSON")
    voc.add_argument(
        "--metric",
        choices=("07", "10"),
        default="10",
        help="07: VOC2007 11-point AP at exact recall thresholds k/10 (the devkit's MATLAB VOCap); the "
        "Python voc_eval.py's np.arange(0, 1.1, 0.1) thresholds differ by float rounding, which can change "
        "the result (e.g. 0.626 vs 0.621 mAP on one set). 10: all-point AP (default)",
    )
    voc.add_argument("--iou-threshold", type=float, default=0.5, help="match when IoU > this (default 0.5)")
    _add_outputs(voc)

    seg = sub.add_parser("seg", help="semantic segmentation IoU / Dice / accuracy of label PNGs")
    seg.add_argument("--gt", type=path_arg, required=True, help="folder of ground-truth label PNGs")
    seg.add_argument(
        "--pred",
        type=path_arg,
        required=True,
        help="folder of predicted label images, paired with the ground truth by file stem: X.png, else the "
        "one file named X.* (several are an error)",
    )
    seg.add_argument("--num-classes", type=int, required=True)
    seg.add_argument("--ignore", type=int, default=255, help="ground-truth value not counted (default 255)")
    seg.add_argument("--class-names", type=path_arg, help="text file with one class name per line")
    _add_outputs(seg)


def _add_outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=path_arg, help="write the numbers to this JSON file (absent)")
    parser.add_argument("--plots", type=path_arg, help="write PNG figures into this folder (absent or empty)")
    add_overwrite(parser, "an existing --out file or --plots folder")


def run(args: argparse.Namespace) -> int:
    commands = {"coco": _run_coco, "voc": _run_voc, "seg": _run_seg}
    inputs = [args.gt, getattr(args, "dt", None), getattr(args, "pred", None)]
    if args.out:
        output_file(args.out, overwrite=args.overwrite, sources=inputs)
    if args.plots:
        output_dir(args.plots, overwrite=args.overwrite, sources=inputs, what="--plots")
    return commands[args.metrics_kind](args)


# ---------------------------------------------------------------------------------------------- coco


def _run_coco(args: argparse.Namespace) -> int:
    from segdet.metrics.coco_eval import evaluate_coco

    for path, kind in ((args.gt, "COCO instances"), (args.dt, "COCO results")):
        if path.is_dir():
            raise DataError(f"is a folder; a {kind} JSON file is expected", path)
        if not path.is_file():
            raise DataError("no such file", path)
    result = evaluate_coco(args.gt, args.dt, args.iou_type)
    print(result.summary())
    _print_coverage(result.num_detections, result.num_images_with_detections, result.num_images)
    if args.out:
        _write_json(args.out, result.as_dict())
    if args.plots:
        from segdet.metrics.plots import plot_pr_curves, pr_curves_from_coco

        names = getattr(result, "category_names", None) or list(result.per_class_ap)
        curves = pr_curves_from_coco(result.precision, names, iou_index=0)
        out = plot_pr_curves(
            curves, args.plots / "pr_curves_iou50.png", title=f"COCO {args.iou_type}, IoU 0.5"
        )
        print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------------------------- voc


def _run_voc(args: argparse.Namespace) -> int:
    from segdet.data.formats import read_dataset
    from segdet.metrics.voc_eval import evaluate_voc

    # Strict: evaluating against a ground truth with silently dropped records would give wrong numbers.
    ground_truth = read_dataset(args.format, args.gt, strict=True)
    detections = _load_json(args.dt)
    if not isinstance(detections, list):
        raise DataError(f"expected a JSON list of detections, got {type(detections).__name__}", args.dt)
    try:
        result = evaluate_voc(ground_truth, detections, args.iou_threshold, use_07_metric=args.metric == "07")
    except DataError as e:
        raise DataError(e.problem, args.dt, e.record) from None
    print(format_voc_table(result))
    _print_coverage(len(detections), result.num_images_with_detections, result.num_images)
    if args.out:
        _write_json(args.out, result.as_dict())
    if args.plots:
        from segdet.metrics.plots import plot_pr_curves

        curves = {k: v for k, v in result.curves().items() if result.npos[k] > 0}
        out = plot_pr_curves(
            curves, args.plots / "pr_curves.png", title="Pascal VOC precision-recall", ap=result.ap
        )
        print(f"wrote {out}")
    return 0


def _print_coverage(num_detections: int, images_with_detections: int, num_images: int) -> None:
    """A note (not an error) when there are no detections or they cover only some ground-truth images."""
    if num_detections == 0:
        print("note: 0 detections")
    elif images_with_detections < num_images:
        print(f"note: detections for {images_with_detections} of {num_images} ground-truth images")


def format_voc_table(result) -> str:
    """Per-class AP, positives and detections, then the mAP line."""
    width = max([5, *(len(n) for n in result.ap)])
    lines = [f"{'class':<{width}}  {'AP':>7}  {'npos':>6}  {'dets':>6}"]
    for name, ap in result.ap.items():
        lines.append(
            f"{name:<{width}}  {_fmt(ap):>7}  {result.npos[name]:>6}  {result.num_detections.get(name, 0):>6}"
        )
    metric = "VOC2007 11-point" if result.use_07_metric else "VOC2010 all-point"
    lines.append(f"mAP ({metric}, IoU > {result.iou_threshold:g}): {_fmt(result.map)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- seg


def _run_seg(args: argparse.Namespace) -> int:
    from segdet.data.masks import read_label_png
    from segdet.metrics.confusion import ConfusionMatrix

    if not 1 <= args.num_classes <= MAX_SEG_CLASSES:
        size = f"{args.num_classes**2 * 8 / 2**30:.3g} GiB"
        why = f" (the confusion matrix has num_classes**2 cells: {size})" if args.num_classes > 1 else ""
        raise DataError(f"--num-classes must be in [1, {MAX_SEG_CLASSES}], got {args.num_classes}{why}")
    names = _class_names(args.class_names, args.num_classes, args.ignore)
    pairs = _pair_label_pngs(args.gt, args.pred)
    cm = ConfusionMatrix(args.num_classes, ignore_index=args.ignore)
    for gt_path, pred_path in pairs:
        target, pred = read_label_png(gt_path), read_label_png(pred_path)
        if target.shape != pred.shape:
            raise DataError(
                f"prediction is {pred.shape[1]}x{pred.shape[0]} but ground truth {gt_path} is "
                f"{target.shape[1]}x{target.shape[0]}",
                pred_path,
            )
        counted = target != args.ignore
        bad = _first_out_of_range(target[counted], args.num_classes)
        if bad is not None:
            raise DataError(
                f"label value {bad} is outside [0, {args.num_classes}) and is not --ignore", gt_path
            )
        bad = _first_out_of_range(pred[counted], args.num_classes)
        if bad is not None:
            raise DataError(f"predicted value {bad} is outside [0, {args.num_classes})", pred_path)
        cm.update(pred, target)

    metrics = cm.compute()
    print(format_seg_table(metrics, names))
    print(f"({len(pairs)} images, {int(cm.matrix.sum())} pixels counted)")
    if args.out:
        report = metrics.as_dict(names)
        report["num_images"] = len(pairs)
        report["confusion_matrix"] = cm.matrix.tolist()
        _write_json(args.out, report)
    if args.plots:
        from segdet.metrics.plots import plot_confusion_matrix

        out = plot_confusion_matrix(cm.matrix.numpy(), names, args.plots / "confusion_matrix.png")
        print(f"wrote {out}")
    return 0


def format_seg_table(metrics, names: Sequence[str]) -> str:
    """Per-class IoU / Dice / accuracy, then the means (4 decimals, ``-`` for undefined)."""
    width = max([5, *(len(n) for n in names)])
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'Dice':>7}  {'Acc':>7}"]
    for i, name in enumerate(names):
        lines.append(
            f"{name:<{width}}  {_fmt(metrics.iou[i]):>7}  {_fmt(metrics.dice[i]):>7}  "
            f"{_fmt(metrics.class_accuracy[i]):>7}"
        )
    lines.append(
        f"{'mean':<{width}}  {_fmt(metrics.mean_iou):>7}  {_fmt(metrics.mean_dice):>7}  "
        f"{_fmt(metrics.mean_class_accuracy):>7}"
    )
    lines.append(f"pixel accuracy: {_fmt(metrics.pixel_accuracy)}")
    lines.append(f"frequency-weighted IoU: {_fmt(metrics.fw_iou)}")
    return "\n".join(lines)


def _pair_label_pngs(gt_dir: Path, pred_dir: Path) -> list[tuple[Path, Path]]:
    """Ground-truth PNGs and their predictions, paired by file stem: ``X.png``, else the one file
    ``X.*`` of the prediction folder (several are an error); a file without its pair is an error."""
    for folder in (gt_dir, pred_dir):
        if not folder.is_dir():
            raise DataError("not a folder", folder)
    gt = {p.stem: p for p in sorted(gt_dir.glob("*.png"))}
    pred = {p.stem: p for p in sorted(pred_dir.glob("*.png"))}
    if not gt:
        raise DataError("no .png label images in the folder", gt_dir)
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(pred_dir.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            by_stem.setdefault(p.stem, []).append(p)
    for stem, path in gt.items():
        if stem in pred:
            continue
        found = by_stem.get(stem, [])
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise DataError(f"several predictions for it in {pred_dir} ({names}); keep one", path)
        if not found:
            raise DataError(f"no prediction {stem}.png (or other {stem}.*) for it in {pred_dir}", path)
        pred[stem] = found[0]
    for stem, path in pred.items():
        if stem not in gt:
            raise DataError(f"no ground truth {stem}.png for it in {gt_dir}", path)
    return [(gt[stem], pred[stem]) for stem in gt]


def _first_out_of_range(values: np.ndarray, num_classes: int) -> int | None:
    bad = values[(values < 0) | (values >= num_classes)]
    return int(bad[0]) if bad.size else None


def _class_names(path: Path | None, num_classes: int, ignore: int) -> list[str]:
    """The names of ``--class-names``, one per class; a last line naming the ignore value (CamVid's
    ``classes.txt``: 11 classes, then ``Unlabelled`` for value 11 with ``--ignore 11``) is dropped."""
    from segdet.data.formats.masks import IGNORE_NAMES

    if path is None:
        return [str(i) for i in range(num_classes)]
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read class names ({e})", path) from None
    if len(names) == num_classes + 1 and ignore == num_classes and names[-1].lower() in IGNORE_NAMES:
        names = names[:-1]
    if len(names) != num_classes:
        raise DataError(f"{len(names)} class names for --num-classes {num_classes}", path)
    return names


# ------------------------------------------------------------------------------------------- helpers


def _fmt(x: float) -> str:
    return "-" if math.isnan(float(x)) else f"{float(x):.4f}"


def _load_json(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("no such file", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read ({e})", path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg})", path) from None


def _json_safe(obj: object) -> object:
    """Plain JSON types: numpy scalars and arrays unwrapped, NaN and infinities as ``None`` (JSON has
    no NaN; Python's ``NaN`` token breaks strict parsers)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}")

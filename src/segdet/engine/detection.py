"""Object detection (``task: detection``) and instance segmentation (``task: instance``) for the trainer.

The models follow torchvision's detection interface with our label convention (object classes
``0..K-1``, the model adds its background class itself): in training ``model(images, targets)`` returns
a dict of losses, whose sum is minimised; in evaluation ``model(images)`` returns, per image,
``boxes`` (xyxy, original image pixels), ``labels``, ``scores`` and, for instance segmentation,
``masks`` (``N x 1 x H x W`` probabilities). Images enter as float ``[0, 1]`` at their own size: the
model normalises and resizes them itself (its ``min_size``/``max_size`` options), so the data pipeline
only flips (and optionally distorts colours).

Evaluation is COCO's protocol (Lin et al., ECCV 2014) computed by :func:`segdet.metrics.coco_eval.
evaluate_coco` against the validation annotation set written as COCO ground truth: box AP@[.5:.95],
AP50, AP75, AP small/medium/large and AR@100 (``bbox``), and for instance segmentation the same AP on
masks binarised at probability 0.5 (``segm``, reported as ``mask_AP``...), as in torchvision's and
Detectron2's evaluation. Under DDP each process predicts its share of the images and the predictions
are gathered on every process (``all_gather_object``) before one COCO evaluation, so all processes
return the same numbers (the trainer's choice of the best checkpoint must agree everywhere).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from segdet.data import transforms as T
from segdet.data.collate import collate_detection
from segdet.data.dataset import SegDetDataset, cached
from segdet.data.structures import AnnotationSet
from segdet.engine.config import Config
from segdet.engine.data_splits import train_val_splits
from segdet.errors import ConfigError, SegdetError

#: Mask probability above which a pixel belongs to the object (torchvision's and Detectron2's 0.5).
MASK_THRESHOLD = 0.5
#: COCO summary numbers reported for boxes, by their index in ``CocoEvalResult.stats``.
BOX_METRICS = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}
#: ... and for masks (prefixed ``mask_``).
MASK_METRICS = {"mask_AP": 0, "mask_AP50": 1, "mask_AP75": 2}
# The mask loss of each instance segmentation model (Mask R-CNN's, YOLACT's): its presence tells a model
# that predicts masks.
MASK_LOSSES = {"loss_mask", "mask"}


def detections_to_coco(
    output: dict[str, torch.Tensor],
    image_id: int,
    category_ids: list[int],
    *,
    masks: bool,
    score_thresh: float = 0.0,
) -> list[dict]:
    """One image's model output as COCO results: ``image_id``, ``category_id``
    (``category_ids[label]``), ``bbox`` ``[x, y, w, h]``, ``score`` and, with ``masks``,
    ``segmentation`` as compressed RLE of ``mask > MASK_THRESHOLD`` (pycocotools' encoder)."""
    from pycocotools import mask as mask_utils

    keep = output["scores"] >= score_thresh
    boxes = output["boxes"][keep].detach().float().cpu()
    labels = output["labels"][keep].cpu().tolist()
    scores = output["scores"][keep].detach().float().cpu().tolist()
    rles: list = [None] * len(labels)
    if masks and labels:
        if "masks" not in output:
            raise ConfigError(
                "task: instance needs a model that predicts masks: maskrcnn_resnet50_fpn, yolact_resnet50_fpn"
            )
        bits = (output["masks"][keep][:, 0] > MASK_THRESHOLD).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(bits.transpose(1, 2, 0)))
    results = []
    for (x1, y1, x2, y2), label, score, rle in zip(boxes.tolist(), labels, scores, rles, strict=True):
        entry = {
            "image_id": int(image_id),
            "category_id": int(category_ids[label]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score,
        }
        if rle is not None:
            entry["segmentation"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}
        results.append(entry)
    return results


def check_finite_output(output: dict[str, torch.Tensor], image_id: int) -> None:
    """A :class:`SegdetError` when the boxes, scores or masks of one image's output are not finite."""
    for key in ("boxes", "scores", "masks"):
        value = output.get(key)
        if value is not None and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise SegdetError(
                f"the model's {key} for image {image_id} have NaN or infinite values: its weights or its "
                "numerics are broken (e.g. fp16 overflow); no metrics are computed"
            )


def coco_metrics(gt: dict, results: list[dict], *, masks: bool) -> dict[str, float]:
    """:data:`BOX_METRICS` (and :data:`MASK_METRICS`) of ``results`` against the ground truth ``gt``,
    plus ``AP/<class>`` (box AP@[.5:.95] per class with ground truth)."""
    from segdet.metrics.coco_eval import evaluate_coco

    box = evaluate_coco(gt, results, "bbox")
    out = {k: float(box.stats[i]) for k, i in BOX_METRICS.items()}
    if masks:
        segm = evaluate_coco(gt, results, "segm")
        out.update({k: float(segm.stats[i]) for k, i in MASK_METRICS.items()})
    for name, ap in box.per_class_ap.items():
        if np.isfinite(ap):
            out[f"AP/{name}"] = float(ap)
    return out


def gather_results(results: dict[int, list[dict]]) -> dict[int, list[dict]]:
    """Every process's ``{image_id: results}`` merged, on every process (identity without DDP).
    Each image is evaluated on one process (:class:`segdet.engine.loader.ShardSampler`); keying by
    image would also count a repeated one once."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return results
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, results)
    merged: dict[int, list[dict]] = {}
    for part in parts:
        merged.update(part)
    return merged


class DetectionTask:
    """Plugs detection / instance segmentation into :class:`segdet.engine.trainer.Trainer`.

    ``splits``: ``(train, val)`` annotation sets to use instead of the config's data section (``segdet
    eval`` passes the set to evaluate on).
    """

    best_metric = "AP"

    def __init__(
        self, cfg: Config, *, splits: tuple[AnnotationSet, AnnotationSet | None] | None = None
    ) -> None:
        if cfg.task not in ("detection", "instance"):
            raise ConfigError(f"task: {cfg.task!r} is not a detection task (detection, instance)")
        self.cfg = cfg
        self.masks = cfg.task == "instance"
        self.train_ann, self.val_ann = splits if splits is not None else train_val_splits(cfg)
        self.classes = list(self.train_ann.classes)
        self.category_ids = list(self.train_ann.category_ids)
        if not self.classes:
            raise ConfigError(f"{self.train_ann.source}: the dataset has no object classes")
        if self.val_ann is not None and list(self.val_ann.classes) != self.classes:
            raise ConfigError(
                f"data.val: its classes {self.val_ann.classes} differ from the training set's {self.classes}"
            )
        self.num_classes = cfg.model.num_classes or len(self.classes)
        if self.num_classes < len(self.classes):
            raise ConfigError(
                f"model.num_classes={self.num_classes} but the dataset has {len(self.classes)} classes"
            )
        self._gt: dict | None = None

    # ------------------------------------------------------------------------------------ components
    def build_model(self) -> nn.Module:
        from segdet.models.build import build_from_config

        model = build_from_config(self.cfg.model.name, self.num_classes, self.cfg.model.kwargs)
        if self.cfg.model.weights:
            # Whole-detector weights: torchvision's released files or names, effdet's for an EfficientDet
            # (converted to our keys).
            from segdet.models.detection.convert import load_detector_weights

            load_detector_weights(model, self.cfg.model.weights)
        return model

    def train_dataset(self) -> Dataset:
        d = self.cfg.data
        # The detectors resize their inputs themselves (min_size / max_size): the pipeline only flips
        # and, optionally, distorts colours.
        tf = T.detection_train(None, hflip=d.hflip, photometric=d.photometric)
        return cached(SegDetDataset(self.train_ann, tf, masks=self.masks, strict=d.strict), d.cache)

    def val_dataset(self) -> Dataset | None:
        if self.val_ann is None or not self.val_ann.images:
            return None
        # Only the images matter: evaluation compares with the annotation set itself (crowd included).
        dataset = SegDetDataset(
            self.val_ann, None, include_crowd=True, strict=self.cfg.data.strict, substitute=False
        )
        return cached(dataset, self.cfg.data.cache)

    def collate(self, batch: list) -> Any:
        return collate_detection(batch)

    def val_collate(self, batch: list) -> Any:
        """:func:`collate_detection` of the readable samples (unreadable ones are ``None``); ``None``
        when there is none."""
        batch = [s for s in batch if s is not None]
        return collate_detection(batch) if batch else None

    def to_device(self, batch: Any, device: torch.device) -> Any:
        images, targets = batch
        keys = ("boxes", "labels", "masks") if self.masks else ("boxes", "labels")
        # Plain tensors: the model sees no tv_tensor types (their ops would keep re-wrapping results).
        images = [im.as_subclass(torch.Tensor).to(device, non_blocking=True) for im in images]
        moved = [
            {
                **{k: t[k].as_subclass(torch.Tensor).to(device, non_blocking=True) for k in keys if k in t},
                "image_id": t["image_id"],
            }
            for t in targets
        ]
        return images, moved

    def batch_image_ids(self, batch: Any) -> list:
        return [t["image_id"] for t in batch[1]]

    # ------------------------------------------------------------------------------------------ loss
    @staticmethod
    def infer(model: nn.Module, image: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """The detections of one ``uint8`` ``3 x H x W`` image (float ``[0, 1]``: the detector normalises
        and resizes it itself), in the image's pixels."""
        with torch.no_grad():
            return model([image.float().div(255.0).to(device)])[0]

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The sum of the model's losses (Mask R-CNN: RPN objectness and box regression, RoI
        classification, box regression and mask; YOLACT: class, box, mask and semantic), and each of them
        detached (left on the device: the trainer reads them only when it logs)."""
        images, targets = batch
        losses = model(images, targets)
        if self.masks and not MASK_LOSSES & losses.keys():
            raise ConfigError(
                f"task: instance but model {self.cfg.model.name!r} predicts no masks; use a Mask R-CNN "
                "(e.g. maskrcnn_resnet50_fpn), a YOLACT (yolact_resnet50_fpn) or task: detection"
            )
        total = sum(losses.values())
        return total, {k: v.detach() for k, v in losses.items()}

    # ------------------------------------------------------------------------------------ evaluation
    def ground_truth(self) -> dict:
        """The validation set as a COCO ground-truth dict (built once)."""
        from segdet.data.formats.coco_write import to_coco_dict

        if self._gt is None:
            if self.val_ann is None:
                raise ConfigError("no validation set to evaluate on")
            self._gt = to_coco_dict(self.val_ann)
        return self._gt

    @torch.no_grad()
    def predict(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[int, list[dict]]:
        """COCO results of every image ``loader`` yields, by image id (this process's share)."""
        results: dict[int, list[dict]] = {}
        for batch in loader:
            if batch is None:  # every image of the batch was unreadable
                continue
            images, targets = self.to_device(batch, device)
            outputs = model(images)
            for target, output in zip(targets, outputs, strict=True):
                image_id = int(target["image_id"])
                check_finite_output(output, image_id)
                # every detection is scored: R-CNN's SVM margins are negative for most of them
                results[image_id] = detections_to_coco(
                    output, image_id, self.category_ids, masks=self.masks, score_thresh=-math.inf
                )
        return results

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        per_image = gather_results(self.predict(model, loader, device))
        results = [r for image_id in sorted(per_image) for r in per_image[image_id]]
        gt = self.ground_truth()
        if len(per_image) < len(gt["images"]):
            # Images that could not be read were left out: so is their ground truth (else every object
            # on them would count as missed).
            gt = {**gt, "images": [im for im in gt["images"] if im["id"] in per_image]}
            gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in per_image]
        return coco_metrics(gt, results, masks=self.masks)

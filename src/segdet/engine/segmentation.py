"""The semantic segmentation task: data, loss and evaluation for the trainer.

Data come from any format reader (``data.format`` + ``data.train``/``data.val``) or from the synthetic
shapes generator (``data.synthetic: N``). Training samples are randomly scaled, cropped to
``data.size`` and flipped; evaluation runs on whole images (padded within a batch, the padding
labelled ``ignore`` so it is never counted). Metrics come from a streaming confusion matrix, summed
over processes under DDP: mIoU, mean Dice, pixel accuracy, mean class accuracy, frequency-weighted
IoU, and per-class IoU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from segdet.data.collate import collate_segmentation
from segdet.data.dataset import SegDetDataset, cached
from segdet.data.structures import AnnotationSet
from segdet.engine.config import Config
from segdet.engine.data_splits import train_val_splits
from segdet.errors import ConfigError, SegdetError


def collate_padded(batch: list, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Stack whole images of different sizes: pad images with 0 and labels with ``ignore_index`` at
    the bottom/right (so padding is never scored), and keep the image ids."""
    h = max(s[0].shape[-2] for s in batch)
    w = max(s[0].shape[-1] for s in batch)
    images = torch.zeros(len(batch), batch[0][0].shape[0], h, w)
    labels = torch.full((len(batch), h, w), ignore_index, dtype=torch.int64)
    for k, (image, target) in enumerate(batch):
        ih, iw = image.shape[-2:]
        images[k, :, :ih, :iw] = image
        labels[k, :ih, :iw] = target["semantic"]
    return images, labels, [t["image_id"] for _, t in batch]


def same_semantic_classes(checkpoint: list[str], dataset: list[str], ignore_index: int) -> bool:
    """Whether a model of the semantic classes ``checkpoint`` can be scored on a set of the semantic
    classes ``dataset`` whose labels ignore ``ignore_index``: every label value the set scores must be the
    model's class of that index, by the same name. An ignore class is no class to compare: at the set's
    ignore value, and past the end of the set's list, the checkpoint may list an ignore class
    (``Unlabelled``, ``void``, ...: :data:`segdet.data.formats.masks.IGNORE_NAMES`) or nothing. A class
    the set scores and the model has not (or the reverse) makes them differ, ignore-named or not."""
    from segdet.data.formats.masks import IGNORE_NAMES

    for value in range(max(len(checkpoint), len(dataset))):
        model = checkpoint[value] if value < len(checkpoint) else None
        scored = dataset[value] if value < len(dataset) else None
        if model == scored:
            continue
        if model is None or (scored is not None and value != ignore_index):
            return False  # the set scores (or lists) a value the model has no output or another class for
        if model.lower() not in IGNORE_NAMES:
            return False  # a class of the model that the set does not have
    return True


class SegmentationTask:
    """Plugs semantic segmentation into :class:`segdet.engine.trainer.Trainer`.

    ``splits``: ``(train, val)`` annotation sets to use instead of the config's data section (``segdet
    eval`` passes the set to evaluate on).
    """

    best_metric = "mIoU"

    def __init__(
        self, cfg: Config, *, splits: tuple[AnnotationSet, AnnotationSet | None] | None = None
    ) -> None:
        self.cfg = cfg
        self.train_ann, self.val_ann = splits if splits is not None else train_val_splits(cfg)
        self.ignore_index = self.train_ann.ignore_index
        self.classes = list(self.train_ann.semantic_classes)
        self.num_classes = cfg.model.num_classes or len(self.classes)
        if self.num_classes < len(self.classes):
            raise ConfigError(
                f"model.num_classes={self.num_classes} but the dataset has {len(self.classes)} classes"
            )
        weights = cfg.loss.class_weights
        if weights is not None and len(weights) != self.num_classes:
            raise ConfigError(f"loss.class_weights: {len(weights)} weights for {self.num_classes} classes")
        self.class_weights = None if weights is None else torch.tensor(weights, dtype=torch.float32)

    # ------------------------------------------------------------------------------------ components
    def build_model(self) -> nn.Module:
        from segdet.models.build import build_from_config

        model = build_from_config(self.cfg.model.name, self.num_classes, self.cfg.model.kwargs)
        if self.cfg.model.weights:
            from segdet.models.weights import load_weights

            load_weights(model, self.cfg.model.weights)
        return model

    def train_dataset(self) -> Dataset:
        from segdet.data import transforms as T

        d = self.cfg.data
        tf = T.segmentation_train(
            d.size,
            scale_range=d.scale_range,
            hflip=d.hflip,
            photometric=d.photometric,
            ignore_index=self.ignore_index,
        )
        return cached(SegDetDataset(self.train_ann, tf, semantic=True, strict=d.strict), d.cache)

    def val_dataset(self) -> Dataset | None:
        from segdet.data import transforms as T

        if self.val_ann is None or not self.val_ann.images:
            return None
        d = self.cfg.data
        dataset = SegDetDataset(
            self.val_ann, T.segmentation_eval(), semantic=True, strict=d.strict, substitute=False
        )
        return cached(dataset, d.cache)

    def collate(self, batch: list) -> Any:
        images, labels = collate_segmentation(batch)
        return images, labels, [t["image_id"] for _, t in batch]

    def val_collate(self, batch: list) -> Any:
        """:func:`collate_padded` of the readable samples (unreadable ones are ``None``); ``None`` when
        there is none."""
        batch = [s for s in batch if s is not None]
        return collate_padded(batch, self.ignore_index) if batch else None

    def to_device(self, batch: Any, device: torch.device) -> Any:
        images, labels, ids = batch
        memory = torch.channels_last if self.cfg.train.channels_last else torch.contiguous_format
        return (
            images.to(device, non_blocking=True, memory_format=memory),
            labels.to(device, non_blocking=True),
            ids,
        )

    def batch_image_ids(self, batch: Any) -> list:
        return list(batch[2])

    # ------------------------------------------------------------------------------------- inference
    @staticmethod
    def infer(model: nn.Module, image: torch.Tensor, device: torch.device, max_size: int) -> torch.Tensor:
        """The label map (``H x W`` class indices, on the CPU) of one ``uint8`` ``3 x H x W`` image,
        pre-processed as in evaluation (:func:`segdet.data.transforms.segmentation_eval`). An image whose
        longer side exceeds ``max_size`` runs at that size (antialiased resize) and its label map is scaled
        back to ``H x W`` (nearest): memory and time stay bounded whatever the image's size."""
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        from segdet.data import transforms as T

        image = T.segmentation_eval()(tv_tensors.Image(image)).as_subclass(torch.Tensor)
        h, w = image.shape[-2:]
        scale = max_size / max(h, w)
        if scale < 1:
            image = TF.resize(image, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)
        with torch.no_grad():
            labels = model(image.unsqueeze(0).to(device)).argmax(1, keepdim=True)
        if labels.shape[-2:] != (h, w):
            labels = F.interpolate(labels.float(), size=(h, w), mode="nearest").long()
        return labels[0, 0].cpu()

    # ------------------------------------------------------------------------------------------ loss
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels, _ = batch
        logits = model(images)
        return self.criterion(logits, labels), {}

    def criterion(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from segdet import losses

        cfg = self.cfg.loss
        logits = logits.float()  # losses in float32 under autocast
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        if cfg.name == "ce":
            return losses.cross_entropy_loss(
                logits,
                labels,
                weight=weight,
                ignore_index=self.ignore_index,
                label_smoothing=cfg.label_smoothing,
            )
        if cfg.name == "focal":
            return losses.softmax_focal_loss(
                logits, labels, gamma=cfg.focal_gamma, weight=weight, ignore_index=self.ignore_index
            )
        if cfg.name == "dice":
            return losses.dice_loss(logits, labels, mode="multiclass", ignore_index=self.ignore_index)
        return losses.ce_dice_loss(
            logits,
            labels,
            mode="multiclass",
            dice_weight=cfg.dice_weight,
            class_weight=weight,
            ignore_index=self.ignore_index,
        )

    # ------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        from segdet.metrics.confusion import ConfusionMatrix

        cm = ConfusionMatrix(self.num_classes, self.ignore_index, device)
        for batch in loader:
            if batch is None:  # every image of the batch was unreadable
                continue
            images, labels, ids = self.to_device(batch, device)
            logits = model(images)
            if not bool(torch.isfinite(logits).all()):
                raise SegdetError(
                    f"the model's output has NaN or infinite values on images {ids}: its weights or its "
                    "numerics are broken (e.g. fp16 overflow); no metrics are computed"
                )
            if logits.shape[-2:] != labels.shape[-2:]:
                logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            cm.update(logits.argmax(1), labels)
        cm.all_reduce()
        # The means average over the set's classes only: not over an output the set never scores.
        m = cm.compute(scored=[c for c in range(len(self.classes)) if c != self.ignore_index])
        out = {
            "mIoU": float(m.mean_iou),
            "mDice": float(m.mean_dice),
            "pixel_acc": float(m.pixel_accuracy),
            "mean_class_acc": float(m.mean_class_accuracy),
            "fwIoU": float(m.fw_iou),
        }
        for name, iou in zip(self.classes, np.asarray(m.iou)[: len(self.classes)], strict=True):
            out[f"IoU/{name}"] = float(iou)
        return out

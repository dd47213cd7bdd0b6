"""COCO box AP of a detector on an annotation set, image by image, with the seconds per image split
into the proposals' and the network's (for R-CNN and Fast R-CNN against Faster R-CNN).

A detector with a selective-search proposal source (``model.proposals``) gets its proposals looked up
first: their seconds are those the search took when it was computed (stored with the cache entry), so
the number is the same whether the cache was warm or not; the network's seconds are measured here,
one image at a time (batch 1, the papers' test setting). A detector without one (Faster R-CNN) has
only network seconds. Every detection is scored (no score threshold: R-CNN's SVM margins are
negative for most boxes).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from segdet.data.dataset import SegDetDataset
from segdet.data.formats.coco_write import to_coco_dict
from segdet.data.structures import AnnotationSet
from segdet.engine.detection import coco_metrics, detections_to_coco
from segdet.engine.logs import Progress


@torch.no_grad()
def evaluate_timed(
    model: nn.Module, annotations: AnnotationSet, *, progress: bool = True, desc: str = "eval"
) -> dict[str, float]:
    """COCO box metrics (:func:`~segdet.engine.detection.coco_metrics`) plus
    ``proposal_seconds_per_image``, ``network_seconds_per_image`` and their sum
    ``seconds_per_image`` (module docstring)."""
    from segdet.models.detection.proposals.source import image_pixels, keep_proposals

    model.eval()
    dataset = SegDetDataset(annotations, None, include_crowd=True, substitute=False)
    source = getattr(model, "proposals", None)
    device = next(model.parameters()).device
    results, proposal_s, network_s = [], [], []
    bar = Progress(len(dataset), desc, enabled=progress, every=1)
    for i in range(len(dataset)):
        image, target = dataset.load(i)
        image = image.as_subclass(torch.Tensor).to(device)
        kwargs = {}
        if source is not None:
            entry, _ = source.lookup(image_pixels(image))
            boxes = keep_proposals(entry.boxes, source.num_proposals[1], source.min_size)
            kwargs["proposals"] = [torch.from_numpy(np.ascontiguousarray(boxes)).to(device)]
            proposal_s.append(entry.seconds)
        start = time.perf_counter()
        output = model([image], **kwargs)[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        network_s.append(time.perf_counter() - start)
        results += detections_to_coco(
            output,
            int(target["image_id"]),
            list(annotations.category_ids),
            masks=False,
            score_thresh=-math.inf,
        )
        bar.update(i + 1)
    bar.close()
    metrics = coco_metrics(to_coco_dict(annotations), results, masks=False)
    n = max(len(network_s), 1)
    metrics["proposal_seconds_per_image"] = float(sum(proposal_s) / n)
    metrics["network_seconds_per_image"] = float(sum(network_s) / n)
    metrics["seconds_per_image"] = (
        metrics["proposal_seconds_per_image"] + metrics["network_seconds_per_image"]
    )
    return metrics

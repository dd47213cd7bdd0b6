"""The detectors :mod:`benchmarks.detection` compares: torchvision's with seeded, calibrated random
weights and ours converted from them (the set-up is described in that module's docstring), the
synthetic *shapes* batches they run on, and how their detections are compared (paired, not by position).
Also used by ``fused_agreement.py`` and ``profile_step.py``."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from segdet.data.shapes import render
from segdet.models.detection.convert import from_torchvision

# Standard deviation given to the random classifiers' logits: each R-CNN RoI then has a few classes above
# the 0.05 score threshold, scores are spread (no ties), and every image gets its 100 detections; a few
# percent of RetinaNet's (anchor, class) pairs pass its 0.05 threshold (the top 1000 per level are
# kept); SSD's softmax scores spread over (0, 1).
LOGIT_STD = {"faster": 3.0, "mask": 3.0, "retinanet": 0.5, "ssd300": 2.0, "ssdlite": 2.0}
# --models name -> (torchvision builder, row label, whether --size sets the processed size)
KINDS = {
    "faster": ("fasterrcnn_resnet50_fpn", "Faster R-CNN R50-FPN", True),
    "mask": ("maskrcnn_resnet50_fpn", "Mask R-CNN R50-FPN", True),
    "retinanet": ("retinanet_resnet50_fpn", "RetinaNet R50-FPN", True),
    "ssd300": ("ssd300_vgg16", "SSD300 VGG-16", False),
    "ssdlite": ("ssdlite320_mobilenet_v3_large", "SSDLite320 MNv3-L", False),
}


# ------------------------------------------------------------------------------------------ models
def synthetic_batch(num: int, size: int, seed: int, first: int = 0) -> tuple[list[Tensor], list[dict]]:
    """``num`` synthetic *shapes* images (``3 x size x size`` in [0, 1]) and their targets (boxes xyxy,
    labels 0..3 in our convention, uint8 masks)."""
    images, targets = [], []
    for i in range(first, first + num):
        sample = render(i, seed=seed, size=size, min_objects=2, max_objects=6)
        images.append(torch.from_numpy(sample.image).permute(2, 0, 1).float().div_(255))
        targets.append(
            {
                "boxes": torch.tensor([list(b) for b in sample.boxes], dtype=torch.float32),
                "labels": torch.tensor(sample.labels, dtype=torch.int64),
                "masks": torch.from_numpy(np.stack(sample.masks)).to(torch.uint8),
            }
        )
    return images, targets


def _freeze_like_pretrained(model: nn.Module, kind: str) -> None:
    """torchvision's fine-tuning set-up (module docstring): ResNets get FrozenBatchNorm2d everywhere in
    the backbone and conv1 / layer1 frozen (``trainable_backbone_layers = 3``); SSD300's VGG its first
    block frozen (4 trainable stages); SSDLite nothing."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    if kind == "ssd300":
        for param in model.backbone.features[:4].parameters():
            param.requires_grad_(False)
        return
    if kind == "ssdlite":
        return
    body = model.backbone.body
    for parent in list(body.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key).detach())
                setattr(parent, name, frozen)
    for name, param in body.named_parameters():
        if not name.startswith(("layer2", "layer3", "layer4")):
            param.requires_grad_(False)


def _classifiers(model: nn.Module, kind: str) -> list[nn.Module]:
    """The layers whose outputs are the class logits."""
    if kind in ("faster", "mask"):
        return [model.roi_heads.box_predictor.cls_score]
    if kind == "retinanet":
        return [model.head.classification_head.cls_logits]
    return [m if isinstance(m, nn.Conv2d) else m[-1] for m in model.head.classification_head.module_list]


@torch.no_grad()
def torchvision_model(kind: str, size: int, seed: int) -> nn.Module:
    """torchvision's model, set up as described in the module docstring, in eval mode."""
    from torchvision.models import detection

    torch.manual_seed(seed)
    builder, _, sized = KINDS[kind]
    model = getattr(detection, builder)(
        weights=None, weights_backbone=None, **({"min_size": size, "max_size": size} if sized else {})
    )
    # Calibrate BatchNorm: cumulative statistics (momentum None) over a few synthetic images.
    images, _ = synthetic_batch(4, min(size, 320), seed, first=1000)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    batch, _ = model.transform(images)
    features = model.backbone(batch.tensors)
    if hasattr(model, "head"):
        model.head(list(features.values()))
    _freeze_like_pretrained(model, kind)
    # Spread the class logits (random heads give nearly constant scores) to a standard deviation of
    # LOGIT_STD, measured on one image.
    model.eval()
    layers = _classifiers(model, kind)
    seen: list[Tensor] = []
    hooks = [layer.register_forward_hook(lambda module, args, out: seen.append(out)) for layer in layers]
    model(images[:1])
    for hook in hooks:
        hook.remove()
    for layer, out in zip(layers, seen[: len(layers)], strict=True):
        layer.weight.mul_(LOGIT_STD[kind] / float(out.std()))
    if kind == "retinanet":
        classes = model.head.classification_head.num_classes
        layers[0].bias.view(-1, classes)[:, 0] = -100.0
    return model


def build_pair(kind: str, size: int, seed: int) -> tuple[nn.Module, nn.Module]:
    """(ours, torchvision's) with the same weights, both in eval mode, ours not yet fused."""
    theirs = torchvision_model(kind, size, seed)
    ours = from_torchvision(theirs)
    return ours.eval(), theirs


# ---------------------------------------------------------------------------------------- checks
def output_difference(ours: list[dict], theirs: list[dict]) -> dict[str, float]:
    """Our detections against torchvision's: each of ours is paired with torchvision's detection of the
    same class whose box is nearest (largest coordinate difference; near-tied scores may swap places in
    the lists, and boxes clipped to zero area have no IoU); returns max |Δ| of boxes, scores and masks
    over the pairs and the number of detections without a counterpart within 1 px."""
    result = {"boxes": 0.0, "scores": 0.0, "masks": 0.0, "unmatched": 0}
    for o, t in zip(ours, theirs, strict=True):
        result["unmatched"] += abs(len(o["boxes"]) - len(t["boxes"]))
        if len(o["boxes"]) == 0 or len(t["boxes"]) == 0:
            continue
        distance = torch.cdist(o["boxes"].double(), t["boxes"].double(), p=float("inf"))
        distance[(o["labels"] + 1)[:, None] != t["labels"][None, :]] = float("inf")
        best, pair = distance.min(dim=1)
        ok = best < 1.0
        result["unmatched"] += int((~ok).sum())
        ok, pair = torch.nonzero(ok).flatten(), pair[ok]
        if len(ok) == 0:
            continue
        result["boxes"] = max(result["boxes"], float((o["boxes"][ok] - t["boxes"][pair]).abs().max()))
        result["scores"] = max(result["scores"], float((o["scores"][ok] - t["scores"][pair]).abs().max()))
        if "masks" in o:
            delta = (o["masks"][ok].float() - t["masks"][pair]).abs().max()
            result["masks"] = max(result["masks"], float(delta))
    return result


def describe_difference(diff: dict[str, float], masks: bool) -> str:
    text = f"max |Δ| boxes {diff['boxes']:.1e} px, scores {diff['scores']:.1e}"
    if masks:
        text += f", masks {diff['masks']:.1e}"
    return text + f", unmatched {diff['unmatched']}"

"""What a model costs: parameters and floating-point operations of one forward pass (``segdet models``).

Operations are counted op by op by ``torch.utils.flop_counter.FlopCounterMode``: a multiply-add counts
2; convolutions, matmuls and their kind only (elementwise ops, pooling and interpolation are not
counted, as in fvcore). Models are built on the ``meta`` device where they can be: only shapes
propagate, nothing is allocated or computed, and the count cannot depend on weights.

A two-stage detector's cost depends on how many proposals reach its box head and how many detections
its mask head, which the data decide (top-k, NMS, score threshold). It is counted at fixed numbers
instead: the backbone, FPN and RPN head on the image, then the box head on ``proposals`` RoIs and the
mask head on ``detections`` RoIs, by default the most the model keeps
(``rpn_post_nms_top_n_test``: 1000 and ``box_detections_per_img``: 100 at torchvision's defaults).
One-stage detectors (RetinaNet, SSD, YOLO, CenterNet) run every layer densely on the image, so their
count does not depend on the data; their post-processing (top-k, NMS) needs values, so they are counted
on one real forward pass with seeded random weights on a blank image. R-CNN (2014) runs its CNN on
every warped proposal whatever the image size: it is counted as that network on a batch of as many
``S x S`` crops as it keeps proposals at test time (2000 by default; the SVMs and regressors are
matmuls counted too, warping and NMS are not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from segdet.models.build import build, model_options
from segdet.models.detection.rcnn.generalized_rcnn import GeneralizedRCNN
from segdet.models.detection.region_cnn.model import RCNN


def count_flops(
    model: nn.Module, input_size: tuple[int, int], batch: int = 1, *, random_input: bool = False
) -> int:
    """Floating-point operations of ``model(x)`` for ``x`` of ``batch x 3 x H x W`` on the model's device
    (zeros, or uniform noise with ``random_input``)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    make = torch.rand if random_input else torch.zeros
    x = make(batch, 3, *input_size, device=device)
    return _counted(lambda: model(x))


def rcnn_flops(
    model: GeneralizedRCNN,
    input_size: tuple[int, int],
    proposals: int | None = None,
    detections: int | None = None,
) -> int:
    """Floating-point operations of a two-stage detector on one ``H x W`` image at ``proposals`` RoIs
    for the box head (default: the model's ``post_nms_top_n`` in inference) and ``detections`` RoIs
    for the mask head (default: its ``detections_per_img``; no mask head, nothing counted).

    Counted: the transform (a resize is not an op of the count), the backbone (with FPN), the RPN head
    on every level, the box head and predictor on ``[proposals, C, m, m]`` pooled features, the mask
    head and predictor on ``[detections, C, m', m']``, both per branch for a TridentNet (its backbone
    gives one feature batch per branch). RoI pooling, box decoding and NMS are not counted
    (none is a convolution or matmul). Shape-only: works on the ``meta`` device.
    """
    heads = model.roi_heads
    was_training = model.training
    model.eval()
    if proposals is None:
        proposals = model.rpn.post_nms_top_n()
    if detections is None:
        detections = heads.detections_per_img
    device = next(model.parameters()).device

    def forward() -> None:
        batch, _ = model.transform(torch.zeros(1, 3, *input_size, device=device))
        features = model.backbone(batch.tensors)
        # One image gives one feature batch, or one per branch (TridentNet): each has its own RoIs.
        copies = next(iter(features.values())).shape[0]
        model.rpn.head(list(features.values()))
        heads.box_predictor(heads.box_head(_pooled(heads.box_pooler, features, proposals * copies)))
        if heads.has_mask:
            heads.mask_predictor(heads.mask_head(_pooled(heads.mask_pooler, features, detections * copies)))

    try:
        with torch.no_grad():
            return _counted(forward)
    finally:
        model.train(was_training)


def rcnn_2014_flops(model: RCNN, proposals: int) -> int:
    """Floating-point operations of R-CNN (2014) on one image with ``proposals`` regions: its CNN on
    ``[proposals, 3, S, S]`` warped crops, then every class's SVM on ``fc7`` and regressor on the pool
    features. Shape-only: works on the ``meta`` device."""
    param = next(model.parameters())
    crops = torch.zeros(proposals, 3, model.input_size, model.input_size, device=param.device)

    def forward() -> None:
        pool, fc7 = model.network.features(crops)
        _ = fc7 @ model.svm_weight.T, torch.einsum("rp,kpc->rkc", pool, model.reg_weight)

    return _counted(forward)


def _pooled(pooler: nn.Module, features: dict[str, torch.Tensor], rois: int) -> torch.Tensor:
    """A stand-in for ``pooler``'s output on ``rois`` boxes: ``[rois, C, *output_size]``."""
    first = features[pooler.featmap_names[0]]
    return first.new_zeros((rois, first.shape[1], *pooler.output_size))


def _counted(forward: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        forward()
    return counter.get_total_flops()


@dataclass(frozen=True)
class Cost:
    """Parameters and GFLOPs of one forward pass; for a two-stage detector also the RoIs its heads were
    counted at (``proposals`` for the box head, ``detections`` for the mask head; 0 without one)."""

    params: int
    gflops: float
    proposals: int | None = None
    detections: int | None = None


def model_cost(name: str, input_size: int | tuple[int, int] = 512, **kwargs) -> Cost:
    """The :class:`Cost` of model ``name`` at ``input_size`` (batch 1); two-stage detectors at the most
    proposals and detections they keep (see the module docstring)."""
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if "min_size" in model_options(name):
        # detectors resize internally: process the image at the size asked for, not at 800 px
        kwargs = {"min_size": min(size), "max_size": max(size), **kwargs}
    with torch.device("meta"):
        model = build(name, **kwargs).eval()
    params = sum(p.numel() for p in model.parameters())
    if isinstance(model, RCNN):
        proposals = model.proposals.num_proposals[1]
        return Cost(params, rcnn_2014_flops(model, proposals) / 1e9, proposals, 0)
    if isinstance(model, GeneralizedRCNN):
        proposals = model.rpn.post_nms_top_n()
        detections = model.roi_heads.detections_per_img if model.roi_heads.has_mask else 0
        return Cost(params, rcnn_flops(model, size, proposals, detections) / 1e9, proposals, detections)
    try:
        return Cost(params, count_flops(model, size) / 1e9)
    except (NotImplementedError, RuntimeError):
        # One-stage detectors: their post-processing needs values (top-k, NMS), their counted layers
        # do not (see the module docstring).
        torch.manual_seed(0)
        model = build(name, **kwargs).eval()
        if hasattr(model, "proposals"):
            # Fast R-CNN: its heads counted at a fixed grid of proposals; searching the input's pixels
            # would take seconds and fill the proposal cache with noise.
            model.proposals.stand_in = True
            return Cost(params, count_flops(model, size) / 1e9, model.proposals.num_proposals[1], 0)
        return Cost(params, count_flops(model, size) / 1e9)


def model_summary(name: str, input_size: int | tuple[int, int] = 512, **kwargs) -> tuple[int, float]:
    """``(parameters, GFLOPs)`` of :func:`model_cost`."""
    cost = model_cost(name, input_size, **kwargs)
    return cost.params, cost.gflops

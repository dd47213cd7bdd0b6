"""torchvision's detectors -> ours: :func:`from_torchvision` and :func:`load_torchvision_weights` for every
family, and the helpers their converters share.

* :func:`from_torchvision` converts a built torchvision detector into the equivalent segdet model: the
  same architecture, weights (and BatchNorm eps), inference and training settings, trainable
  parameters, train/eval mode and device. Faster / Mask R-CNN: :mod:`.rcnn.convert`; RetinaNet:
  :mod:`.retinanet.convert`; SSD and SSDLite: :mod:`.ssd.convert`.
* :func:`load_torchvision_weights` loads a torchvision checkpoint (file, URL or weights enum, e.g. the
  released COCO models) into one of our models built by name.

Labels: torchvision's ``num_classes`` counts the background (class 0, never an object); ours does not,
so a 91-class torchvision model becomes ``num_classes = 90`` and our label ``l`` is torchvision's
``l + 1``, for every family.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from segdet.errors import DataError, SegdetError


def from_torchvision(tv_model: nn.Module) -> nn.Module:
    """Our model equivalent to the torchvision detector ``tv_model`` (see the module docstring):
    ``FasterRCNN`` / ``MaskRCNN`` (ResNet or MobileNetV3 FPN), ``RetinaNet`` (ResNet FPN, v1 and v2),
    ``SSD`` (``ssd300_vgg16``, ``ssdlite320_mobilenet_v3_large``)."""
    from torchvision.models.detection import FasterRCNN, RetinaNet
    from torchvision.models.detection.ssd import SSD

    if isinstance(tv_model, FasterRCNN):
        from segdet.models.detection.rcnn.convert import rcnn_from_torchvision

        return rcnn_from_torchvision(tv_model)
    if isinstance(tv_model, RetinaNet):
        from segdet.models.detection.retinanet.convert import retinanet_from_torchvision

        return retinanet_from_torchvision(tv_model)
    if isinstance(tv_model, SSD):
        from segdet.models.detection.ssd.convert import ssd_from_torchvision

        return ssd_from_torchvision(tv_model)
    raise SegdetError(
        f"expected a torchvision FasterRCNN, MaskRCNN, RetinaNet or SSD, got {type(tv_model).__name__}"
    )


def load_torchvision_weights(model: nn.Module, source: object, *, bn_eps: float | None = None) -> None:
    """Load torchvision weights of the same detector into ``model`` (built with the same design and
    ``num_classes`` = torchvision's minus one, e.g. 90 for the COCO files).

    Args:
        model: e.g. ``build("maskrcnn_resnet50_fpn", num_classes=90)`` or
            ``build("retinanet_resnet50_fpn", num_classes=90)``.
        source: a torchvision weights enum or its name (``"MaskRCNN_ResNet50_FPN_Weights.COCO_V1"``), a
            URL or a local file (read with ``weights_only=True``, never unpickled otherwise).
        bn_eps: the eps to give the backbone's BatchNorms; ``None``: 0 for the released files trained
            that way (recognised by their file name, as torchvision's ``overwrite_eps``), unchanged
            otherwise.

    Raises :class:`~segdet.errors.DataError` naming the missing, unexpected or mis-shaped keys.
    """
    from segdet.models.detection.rcnn.convert import load_rcnn_weights
    from segdet.models.detection.rcnn.generalized_rcnn import GeneralizedRCNN
    from segdet.models.detection.retinanet.convert import load_retinanet_weights
    from segdet.models.detection.retinanet.model import RetinaNet
    from segdet.models.detection.ssd.convert import load_ssd_weights
    from segdet.models.detection.ssd.model import SSD
    from segdet.models.weights import load_state_dict

    label = str(getattr(source, "url", source))
    loaders = {GeneralizedRCNN: load_rcnn_weights, RetinaNet: load_retinanet_weights, SSD: load_ssd_weights}
    for kind, loader in loaders.items():
        if isinstance(model, kind):
            loader(model, load_state_dict(source), label, bn_eps)
            return
    raise SegdetError(f"no torchvision weights for a {type(model).__name__}")


def load_detector_weights(model: nn.Module, source: object) -> None:
    """Whole-detector weights in the released format of ``model``'s design: ``effdet``'s checkpoints for
    an EfficientDet (torchvision has none; :func:`~.efficientdet.convert.load_effdet_weights`),
    torchvision's otherwise (:func:`load_torchvision_weights`)."""
    from segdet.models.detection.efficientdet.convert import load_effdet_weights
    from segdet.models.detection.efficientdet.head import EfficientDetHead

    if isinstance(getattr(model, "head", None), EfficientDetHead):
        load_effdet_weights(model, source)
    else:
        load_torchvision_weights(model, source)


def transform_options(transform: nn.Module) -> dict[str, object]:
    """The :class:`~.settings.TransformSettings` fields of torchvision's ``GeneralizedRCNNTransform``
    (one that resizes by ``min_size`` / ``max_size``)."""
    if getattr(transform, "fixed_size", None) is not None:
        raise SegdetError("torchvision models with a transform fixed_size are not supported here")
    min_size = tuple(int(s) for s in transform.min_size)
    return {
        "min_size": min_size[0] if len(min_size) == 1 else min_size,
        "max_size": int(transform.max_size),
        "image_mean": tuple(float(m) for m in transform.image_mean),
        "image_std": tuple(float(s) for s in transform.image_std),
        "size_divisible": int(transform.size_divisible),
    }


def body_options(body: nn.Module) -> tuple[str, dict]:
    """``(kind, builder options)`` read from torchvision's ``backbone.body`` (an IntermediateLayerGetter)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    returns = dict(body.return_layers)
    frozen = any(type(m).__name__ == "FrozenBatchNorm2d" for m in body.modules())
    if hasattr(body, "layer1"):
        block = type(body.layer3[0])
        depths = {(BasicBlock, 2): 18, (BasicBlock, 6): 34, (Bottleneck, 6): 50, (Bottleneck, 23): 101}
        depth = depths.get((block, len(body.layer3)))
        if depth is None:
            raise SegdetError(f"unsupported torchvision ResNet body ({block.__name__} x {len(body.layer3)})")
        layers = sorted(int(name.removeprefix("layer")) for name in returns)
        return "resnet50", {
            "backbone": f"resnet{depth}",
            "returned_layers": tuple(layers),
            "frozen_bn": frozen,
        }
    blocks = list(body.children())
    strided = [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)]
    stages = [0, *strided, len(blocks) - 1]
    if len(blocks) != 17 or len(stages) != 6:
        raise SegdetError(
            "unsupported torchvision backbone: only ResNets and MobileNetV3-Large are converted"
        )
    layers = sorted(stages.index(int(name)) for name in returns)
    return "mobilenet_v3_large", {"returned_layers": tuple(layers), "frozen_bn": frozen}


def norms(model: nn.Module) -> dict[str, nn.Module]:
    """Every BatchNorm-like module (torch's, torchvision's frozen or ours) by name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d) or type(m).__name__ == "FrozenBatchNorm2d"
    }


def check_and_load(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Strict load with a one-line :class:`DataError` listing what does not match."""
    own = model.state_dict()
    # A source with frozen BatchNorm has no num_batches_tracked; a model with nn.BatchNorm2d keeps its own.
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    misshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = [
        f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
        for what, v in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("keys of another shape", misshaped),
        )
        if v
    ]
    if problems:
        raise DataError(f"weights do not match {type(model).__name__}: " + "; ".join(problems), file=source)
    model.load_state_dict({k: v for k, v in state.items() if k in own})


def load_converted(ours: nn.Module, state: dict[str, Tensor], family: str) -> None:
    """:func:`check_and_load` of a converted torchvision model's state dict, a mismatch reported as a
    torchvision variant of ``family`` that has no segdet equivalent."""
    try:
        check_and_load(ours, state, f"torchvision {family}")
    except DataError as e:
        raise SegdetError(f"unsupported torchvision {family} variant: {e}") from None


def copy_flags(ours: nn.Module, tv_model: nn.Module, our_name: Callable[[str], str]) -> nn.Module:
    """Give ``ours`` the BatchNorm eps, ``requires_grad`` flags, train/eval mode, device and dtype of
    ``tv_model``; ``our_name`` maps a torchvision parameter name to ours. Returns ``ours``."""
    our_norms = norms(ours)
    for tv_name, tv_norm in norms(tv_model).items():
        our_norms[our_name(tv_name + ".w")[: -len(".w")]].eps = tv_norm.eps
    our_params = dict(ours.named_parameters())
    for tv_name, param in tv_model.named_parameters():
        our_params[our_name(tv_name)].requires_grad_(param.requires_grad)
    first = next(tv_model.parameters())
    return ours.to(device=first.device, dtype=first.dtype).train(tv_model.training)

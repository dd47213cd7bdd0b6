"""Detector settings as keyword options: the transform's settings shared by every detector, and the
decorator that turns a settings dataclass into a builder's keyword options.

Each family keeps its non-structural settings (resizing, thresholds, counts) in a frozen dataclass
with torchvision's keyword names: :class:`TransformSettings` here, extended by
:class:`~.rcnn.settings.RCNNSettings`, :class:`~.retinanet.model.RetinaNetSettings` and
:class:`~.centernet.model.CenterNetSettings`; the fixed-size detectors extend :class:`FixedSizeSettings`
(:class:`~.ssd.model.SSDSettings`, :class:`~.yolo.model.YOLOv1Settings`). :func:`with_settings` lets a
builder take those fields as plain keyword options, so ``build("retinanet_resnet50_fpn", num_classes=K,
score_thresh=0.3)`` reads like ``torchvision.models.detection.retinanet_resnet50_fpn(score_thresh=0.3)``
and :func:`segdet.models.model_options` lists them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from segdet.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from segdet.models.detection.transform import DetectionTransform


@dataclass(frozen=True)
class TransformSettings:
    """How a detector resizes, normalises and batches its input (:class:`~.transform.DetectionTransform`).

    ``min_size`` (int, or a tuple drawn from in training), ``max_size``, ``image_mean``, ``image_std``
    and ``size_divisible``: torchvision's ``GeneralizedRCNNTransform`` arguments and defaults.
    """

    min_size: int | tuple[int, ...] = 800
    max_size: int = 1333
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    size_divisible: int = 32

    def transform(self) -> DetectionTransform:
        min_size = tuple(self.min_size) if isinstance(self.min_size, Sequence) else self.min_size
        return DetectionTransform(
            min_size, self.max_size, self.image_mean, self.image_std, self.size_divisible
        )


@dataclass(frozen=True)
class FixedSizeSettings:
    """A detector whose every image is resized to exactly ``size`` ``(H, W)`` (aspect ratio not kept, no
    padding), then normalised by ``image_mean`` / ``image_std``: SSD's 300 x 300, YOLO's 448 x 448."""

    size: tuple[int, int] = (300, 300)
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD

    def transform(self) -> DetectionTransform:
        """Resize to exactly ``size`` (no padding), then normalise."""
        size = (int(self.size[0]), int(self.size[1]))
        return DetectionTransform(
            min(size), max(size), self.image_mean, self.image_std, size_divisible=1, fixed_size=size
        )


def with_settings(settings_class: type, **defaults: object) -> Callable:
    """Decorate a builder ``fn(num_classes, *, <own options>, settings)`` so that it takes the fields of
    the dataclass ``settings_class`` as keyword options instead (``defaults`` overriding the class's),
    and so that its signature lists them (``segdet.models.model_options`` and ``build`` read it)."""
    names = tuple(f.name for f in dataclasses.fields(settings_class))
    unknown = set(defaults) - set(names)
    if unknown:
        raise ValueError(f"not {settings_class.__name__} fields: {sorted(unknown)}")

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)
        own = [p for name, p in signature.parameters.items() if name != "settings"]
        own_names = {p.name for p in own}
        extra = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(f.name, f.default))
            for f in dataclasses.fields(settings_class)
        ]

        @functools.wraps(fn)
        def builder(num_classes: int, **options: object):
            own_options = {k: v for k, v in options.items() if k in own_names}
            setting_options = {k: v for k, v in options.items() if k not in own_names}
            unknown = sorted(set(setting_options) - set(names))
            if unknown:
                raise TypeError(f"{fn.__name__}() got unexpected options {unknown}")
            settings = settings_class(**{**defaults, **setting_options})
            return fn(num_classes, **own_options, settings=settings)

        builder.__signature__ = signature.replace(parameters=own + extra)  # type: ignore[attr-defined]
        return builder

    return decorate


def pretrained_defaults(
    weights: object, trainable_layers: int | None, frozen_bn: bool | None, all_layers: int
) -> tuple[int, bool]:
    """torchvision's rule: with a pretrained backbone, 3 trainable stages and frozen BatchNorm (small
    detection batches give poor batch statistics); from scratch, everything trains with plain BatchNorm.
    Explicit values win."""
    pretrained = weights is not None
    trainable = trainable_layers if trainable_layers is not None else (3 if pretrained else all_layers)
    frozen = frozen_bn if frozen_bn is not None else pretrained
    return trainable, frozen


def check_num_classes(num_classes: object) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")

"""rwightman's ``effdet`` (efficientdet-pytorch) EfficientDet -> ours: the same network, its weights
renamed, so its released COCO checkpoints (``efficientdet_d0-f3276ba8.pth`` ...; the PyTorch-native
``efficientdet_d*`` models, not the ``tf_efficientdet_d*`` ports with TensorFlow's asymmetric padding)
load into :func:`~.builders.efficientdet_d0` ... with ``num_classes=90``.

Renaming (``effdet`` -> ours):

* backbone, timm's EfficientNet -> torchvision's: ``conv_stem`` / ``bn1`` -> ``features.0.{0,1}``;
  ``blocks.0.j`` (depthwise-separable: ``conv_dw``, ``bn1``, ``se``, ``conv_pw``, ``bn2``) ->
  ``features.1.j.block.{0,1,2}``; ``blocks.s.j`` (inverted residual: ``conv_pw``, ``bn1``, ``conv_dw``,
  ``bn2``, ``se``, ``conv_pwl``, ``bn3``) -> ``features.{s+1}.j.block.{0,1,2,3}``; ``se.conv_reduce`` /
  ``conv_expand`` -> ``fc1`` / ``fc2``;
* BiFPN: ``fpn.resample.3`` (``P6`` from ``C5``) -> ``extra_lateral``; in cell ``r``, node ``n`` =
  top-down nodes ``0 .. L-2`` then bottom-up nodes: ``combine.edge_weights`` -> ``*_weights``,
  ``after_combine.conv.{conv_dw, conv_pw, bn}`` -> ``*_convs.{0,1,2}``; the first cell's input
  resamplings ``combine.resample.{k}`` -> ``laterals.{k}`` (top-down nodes) and
  ``bottom_up_laterals.{k}`` (bottom-up nodes);
* head: ``conv_rep.{i}`` -> ``convs.{i}``, ``bn_rep.{i}.{level}.bn`` -> ``norms.{level}.{i}``,
  ``predict`` -> ``predictor``.

The anchors are the same (:mod:`.anchors`: effdet's, in its scale-major order), so the class predictor
is copied as it is; the box predictor's output channels are reordered, since effdet's deltas are
``(t_y, t_x, t_h, t_w)`` and ours ``(t_x, t_y, t_w, t_h)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from segdet.models.detection.convert import check_and_load
from segdet.models.detection.retinanet.model import RetinaNet
from segdet.models.weights import load_state_dict

_DELTAS_YX_TO_XY = (1, 0, 3, 2)

_STEM = {"conv_stem": "features.0.0", "bn1": "features.0.1"}
_SEPARABLE_BLOCK = {"conv_dw": "0.0", "bn1": "0.1", "se.conv_reduce": "1.fc1", "se.conv_expand": "1.fc2"}
_SEPARABLE_BLOCK |= {"conv_pw": "2.0", "bn2": "2.1"}
_INVERTED_BLOCK = {"conv_pw": "0.0", "bn1": "0.1", "conv_dw": "1.0", "bn2": "1.1"}
_INVERTED_BLOCK |= {"se.conv_reduce": "2.fc1", "se.conv_expand": "2.fc2", "conv_pwl": "3.0", "bn3": "3.1"}
_SEPARABLE_CONV = {"conv_dw": "0", "conv_pw": "1", "bn": "2"}

_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.(\d+)\.(.+)\.(\w+)$")
_NODE = re.compile(r"^fpn\.cell\.(\d+)\.fnode\.(\d+)\.(.+)$")
_HEAD = re.compile(r"^(class_net|box_net)\.(conv_rep|bn_rep|predict)\.(.+)$")


def _backbone_key(key: str) -> str | None:
    rest = key.removeprefix("backbone.")
    module, _, tensor = rest.rpartition(".")
    if module in _STEM:
        return f"backbone.body.{_STEM[module]}.{tensor}"
    match = _BLOCK.match(key)
    if not match:
        return None
    stage, block, module, tensor = int(match[1]), match[2], match[3], match[4]
    table = _SEPARABLE_BLOCK if stage == 0 else _INVERTED_BLOCK
    if module not in table:
        return None
    return f"backbone.body.features.{stage + 1}.{block}.block.{table[module]}.{tensor}"


def _fpn_key(key: str, levels: int) -> str | None:
    """``levels``: ``L``, the pyramid's (5); cell nodes ``0 .. L-2`` are top-down, the rest bottom-up."""
    if key.startswith("fpn.resample.") and ".conv." in key:
        conv = key.split(".conv.", 1)[1]  # "conv.weight" / "bn.running_mean"
        return "backbone.fpn.extra_lateral." + conv.replace("conv.", "0.", 1).replace("bn.", "1.", 1)
    match = _NODE.match(key)
    if not match:
        return None
    cell, node, rest = int(match[1]), int(match[2]), match[3]
    top_down = node < levels - 1
    index = node if top_down else node - (levels - 1)
    path = "top_down" if top_down else "bottom_up"
    if rest == "combine.edge_weights":
        return f"backbone.fpn.layers.{cell}.{path}_weights.{index}"
    if rest.startswith("after_combine.conv."):
        module, _, tensor = rest.removeprefix("after_combine.conv.").partition(".")
        return f"backbone.fpn.layers.{cell}.{path}_convs.{index}.{_SEPARABLE_CONV[module]}.{tensor}"
    resample = re.match(r"^combine\.resample\.(\d+)\.conv\.(conv|bn)\.(\w+)$", rest)
    if resample and cell == 0:
        lateral = "laterals" if top_down else "bottom_up_laterals"
        return f"backbone.fpn.{lateral}.{resample[1]}.{0 if resample[2] == 'conv' else 1}.{resample[3]}"
    return None


def _head_key(key: str) -> str | None:
    match = _HEAD.match(key)
    if not match:
        return None
    net, part, rest = match[1], match[2], match[3]
    if part == "conv_rep":  # conv_rep.{i}.conv_dw.weight
        i, module, tensor = rest.split(".")
        return f"head.{net}.convs.{i}.{_SEPARABLE_CONV[module]}.{tensor}"
    if part == "bn_rep":  # bn_rep.{i}.{level}.bn.weight
        i, level, _, tensor = rest.split(".")
        return f"head.{net}.norms.{level}.{i}.{tensor}"
    module, tensor = rest.split(".")  # predict.conv_pw.bias
    return f"head.{net}.predictor.{_SEPARABLE_CONV[module]}.{tensor}"


def _deltas_in_xy_order(value: Tensor) -> Tensor:
    """effdet's box predictor output channels (anchor-major, ``(t_y, t_x, t_h, t_w)`` each) in ours."""
    per_anchor = value.reshape(-1, 4, *value.shape[1:])
    return per_anchor[:, list(_DELTAS_YX_TO_XY)].reshape(value.shape)


def convert_effdet_state_dict(state: Mapping[str, Tensor], levels: int = 5) -> dict[str, Tensor]:
    """An ``effdet`` EfficientDet state dict with our keys and box-delta order (module docstring). Keys
    it cannot place are kept as they are, for the strict load to report."""
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        ours = _backbone_key(key) or _fpn_key(key, levels) or _head_key(key) or key
        if ours.startswith("head.box_net.predictor.1."):
            value = _deltas_in_xy_order(value)
        converted[ours] = value
    return converted


def load_effdet_weights(model: RetinaNet, source: object) -> None:
    """Load an ``effdet`` EfficientDet checkpoint (a file, a URL; read as tensors only) into ``model``, an
    :func:`~.builders.efficientdet_d0` ... built with the checkpoint's ``num_classes`` (90 for COCO).
    Strict: a mismatch raises a one-line :class:`~segdet.errors.DataError`."""
    if model.anchor_generator.num_anchors_per_location() != [9] * 5:
        raise ValueError("effdet checkpoints need 3 scales x 3 aspects on each of 5 levels (the default)")
    state = load_state_dict(source)
    with torch.no_grad():
        check_and_load(model, convert_effdet_state_dict(state), str(source))

"""The Fast R-CNN box head: pooled RoI features -> class scores and class-specific box deltas, and its loss.

Heads (the feature extractor run on every pooled RoI):

* :class:`TwoMLPHead` -- flatten, ``fc6`` and ``fc7`` of 1024 units with ReLU (the FPN paper's "2fc"
  head, Lin et al. 2017, sec. 4.2);
* :class:`ConvFCHead` -- four 3x3 convolutions (256 channels, BatchNorm) then one 1024-unit FC
  ("4conv1fc", Wu et al. / torchvision's Faster R-CNN v2, Li et al. 2021 "Benchmarking detection transfer
  learning with vision transformers").

:class:`FastRCNNPredictor` then gives ``K`` class logits (``K`` counting the background, class 0) and
``4 K`` box deltas, one ``(t_x, t_y, t_w, t_h)`` per class (class-specific regression, Girshick 2015).

Parameter names are torchvision's (``fc6``, ``fc7``; ``{0..3}.0`` / ``.1`` and ``5`` for the conv head;
``cls_score``, ``bbox_pred``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from segdet.losses import cross_entropy_loss, smooth_l1_loss
from segdet.models.layers import ConvNormAct


class TwoMLPHead(nn.Module):
    """``ReLU(fc7(ReLU(fc6(flatten(x)))))``.

    Args:
        in_channels: ``C * m * m`` of the pooled features (``256 * 7 * 7`` for FPN).
        representation_size: the width of both layers.
    """

    def __init__(self, in_channels: int, representation_size: int = 1024) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.out_channels = representation_size

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.fc6(x.flatten(start_dim=1)))
        return torch.relu(self.fc7(x))


class ConvFCHead(nn.Sequential):
    """``conv3x3-norm-ReLU`` x len(conv_layers), flatten, ``Linear-ReLU`` x len(fc_layers).

    Args:
        input_size: ``(C, h, w)`` of the pooled features, e.g. ``(256, 7, 7)``.
        conv_layers: output channels of each convolution.
        fc_layers: width of each fully connected layer.
        norm_layer: called with the channels after each convolution; ``None``: convolutions with bias.
    """

    def __init__(
        self,
        input_size: tuple[int, int, int],
        conv_layers: Sequence[int] = (256, 256, 256, 256),
        fc_layers: Sequence[int] = (1024,),
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
    ) -> None:
        channels, height, width = input_size
        blocks: list[nn.Module] = []
        for out in conv_layers:
            blocks.append(ConvNormAct(channels, out, 3, norm_layer=norm_layer))
            channels = out
        blocks.append(nn.Flatten())
        features = channels * height * width
        for out in fc_layers:
            blocks += [nn.Linear(features, out), nn.ReLU(inplace=True)]
            features = out
        super().__init__(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.out_channels = features


class FastRCNNPredictor(nn.Module):
    """``cls_score``: ``K`` logits and ``bbox_pred``: ``4 K`` class-specific deltas from a feature vector.

    Args:
        in_channels: width of the head's output (1024).
        num_classes: ``K``, including the background class 0.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() == 4 and x.shape[2:] != (1, 1):
            raise ValueError(f"expected [N, C] or [N, C, 1, 1] features, got {tuple(x.shape)}")
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


def fastrcnn_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    beta: float = 1 / 9,
) -> tuple[Tensor, Tensor]:
    """The Fast R-CNN multi-task loss (Girshick, ICCV 2015, eq. 1) over the ``N`` sampled RoIs::

        L = L_cls(p, u) + [u >= 1] L_loc(t^u, v)

    ``L_cls`` the cross-entropy of the true class ``u`` (mean over the ``N`` RoIs); ``L_loc`` the smooth L1
    loss (``beta``: torchvision's 1/9 by default; the Fast R-CNN paper's eq. 3 is ``beta = 1``) between
    the deltas ``t^u`` predicted *for the true class* and the targets ``v``, summed
    over the four coordinates and the foreground RoIs and divided by ``N`` (all sampled RoIs, not only
    the foreground ones: torchvision's / Detectron's normalisation, which weights the box loss by the
    foreground fraction).

    Args:
        class_logits: ``[N, K]``.
        box_regression: ``[N, 4 K]``.
        labels: int64 ``[N]`` in ``[0, K)``, 0 = background.
        regression_targets: ``[N, 4]`` encoded targets (meaningful for foreground RoIs only).

    Returns:
        ``(loss_classifier, loss_box_reg)``, both 0 (with gradients) when ``N = 0``.
    """
    loss_classifier = cross_entropy_loss(class_logits, labels)
    foreground = torch.nonzero(labels > 0).flatten()
    deltas = box_regression.reshape(box_regression.shape[0], -1, 4)[foreground, labels[foreground]]
    box_loss = smooth_l1_loss(deltas, regression_targets[foreground], beta=beta, reduction="sum")
    return loss_classifier, box_loss / max(labels.numel(), 1)

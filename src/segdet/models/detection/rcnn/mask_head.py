"""The Mask R-CNN mask branch (He et al., "Mask R-CNN", ICCV 2017, sec. 3 and fig. 4, FPN variant).

On each RoI's ``14 x 14`` RoIAlign features: four ``3x3`` convolutions with ReLU (:class:`MaskRCNNHeads`),
a ``2x2`` stride-2 transposed convolution with ReLU to ``28 x 28`` and a ``1x1`` convolution to one mask
logit map per class (:class:`MaskRCNNPredictor`): ``K`` masks of ``m x m``, ``m = 28``.

Loss (:func:`maskrcnn_loss`, paper sec. 3): for a foreground RoI matched to a ground-truth object of
class ``u``, only the ``u``-th mask counts -- the average binary cross-entropy with logits over its
``m^2`` pixels against the target, the ground-truth mask cropped and resized to the RoI by RoIAlign
(so classes do not compete, unlike a per-pixel softmax). The loss is averaged over all foreground RoIs.

Inference (:func:`maskrcnn_inference`): the sigmoid of the mask of the predicted class.
:func:`segdet.ops.masks.paste_masks_in_image` then resizes each ``m x m`` mask into its box in the image.

Parameter names are torchvision's (``{k}.0`` for the convolutions, ``{k}.1`` their optional norm;
``conv5_mask``, ``mask_fcn_logits``); the legacy keys ``mask_fcn{k+1}`` are renamed on load.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from segdet.losses import binary_cross_entropy_loss
from segdet.models.layers import ConvNormAct
from segdet.ops.roi_align import roi_align


class MaskRCNNHeads(nn.Sequential):
    """``conv3x3-[norm]-ReLU`` per entry of ``layers`` (four of 256 channels in Mask R-CNN).

    Args:
        in_channels: channels of the pooled features.
        layers: output channels of each convolution.
        dilation: dilation of every convolution (padding follows, so the size is kept).
        norm_layer: called with the channels after each convolution (v2 uses ``nn.BatchNorm2d``).
    """

    def __init__(
        self,
        in_channels: int,
        layers: Sequence[int] = (256, 256, 256, 256),
        dilation: int = 1,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        blocks = []
        for out in layers:
            blocks.append(ConvNormAct(in_channels, out, 3, dilation=dilation, norm_layer=norm_layer))
            in_channels = out
        super().__init__(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.out_channels = in_channels

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Older checkpoints name the convolutions "mask_fcn1".."mask_fcn4".
        for i in range(len(self)):
            for kind in ("weight", "bias"):
                old, new = f"{prefix}mask_fcn{i + 1}.{kind}", f"{prefix}{i}.0.{kind}"
                if old in state_dict and new not in state_dict:
                    state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MaskRCNNPredictor(nn.Sequential):
    """``mask_fcn_logits(ReLU(conv5_mask(x)))``: a 2x2 stride-2 transposed convolution doubling the size,
    then a 1x1 convolution to ``num_classes`` mask logit maps.

    Args:
        in_channels: channels of the mask head's output.
        dim_reduced: channels of the transposed convolution (256).
        num_classes: ``K``, including the background (its mask is never used).
    """

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int) -> None:
        super().__init__(
            OrderedDict(
                conv5_mask=nn.ConvTranspose2d(in_channels, dim_reduced, 2, stride=2, padding=0),
                relu=nn.ReLU(inplace=True),
                mask_fcn_logits=nn.Conv2d(dim_reduced, num_classes, 1),
            )
        )
        for name, param in self.named_parameters():
            if name.endswith("weight"):
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")


def project_masks_on_boxes(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, size: int) -> Tensor:
    """Mask targets: ground-truth mask ``matched_idxs[i]`` cropped to ``boxes[i]`` and resized to
    ``size x size`` by RoIAlign (bilinear, adaptive sampling, not aligned; torchvision's choice).

    Args:
        gt_masks: ``[G, H, W]`` binary masks of one image (any dtype).
        boxes: ``[P, 4]`` xyxy boxes in the masks' pixels.
        matched_idxs: int64 ``[P]`` in ``[0, G)``.
        size: ``m``.

    Returns:
        ``[P, m, m]`` in ``boxes``' dtype, values in ``[0, 1]``.
    """
    rois = torch.cat((matched_idxs.to(boxes)[:, None], boxes), dim=1)
    return roi_align(gt_masks[:, None].to(rois), rois, (size, size), 1.0)[:, 0]


def maskrcnn_loss(
    mask_logits: Tensor,
    proposals: list[Tensor],
    gt_masks: list[Tensor],
    gt_labels: list[Tensor],
    matched_idxs: list[Tensor],
) -> Tensor:
    """Mean binary cross-entropy of the ground-truth class's mask over all foreground RoIs and pixels.

    ``L_mask = mean_{i, p} BCE(sigmoid(x_{i, u_i, p}), t_{i, p})`` with ``u_i`` the class of the object
    RoI ``i`` is matched to and ``t_i`` its mask cropped to the RoI (:func:`project_masks_on_boxes`).

    Args:
        mask_logits: ``[P, K, m, m]`` for the foreground RoIs of all images, image 0's first.
        proposals: per image, the ``[P_i, 4]`` foreground RoIs.
        gt_masks: per image, ``[G_i, H, W]`` ground-truth masks.
        gt_labels: per image, int64 ``[G_i]`` classes.
        matched_idxs: per image, int64 ``[P_i]`` index of each RoI's ground-truth object.

    Returns:
        A scalar; 0 (with a gradient) when there is no foreground RoI.
    """
    size = mask_logits.shape[-1]
    labels = torch.cat([lab[idx] for lab, idx in zip(gt_labels, matched_idxs, strict=True)])
    targets = torch.cat(
        [
            project_masks_on_boxes(m, p, i, size)
            for m, p, i in zip(gt_masks, proposals, matched_idxs, strict=True)
        ]
    )
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    logits = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]
    return binary_cross_entropy_loss(logits, targets.to(logits.dtype))


def maskrcnn_inference(mask_logits: Tensor, labels: list[Tensor]) -> list[Tensor]:
    """Per image, ``[D_i, 1, m, m]`` probabilities ``sigmoid`` of the mask of each detection's class.

    Args:
        mask_logits: ``[ΣD_i, K, m, m]``.
        labels: per image, int64 ``[D_i]`` predicted classes.
    """
    all_labels = torch.cat(labels)
    index = torch.arange(all_labels.shape[0], device=all_labels.device)
    probs = mask_logits[index, all_labels][:, None].sigmoid()
    if len(labels) == 1:  # no split: nothing data-dependent for segdet export to trace
        return [probs]
    return list(probs.split([len(lab) for lab in labels], dim=0))

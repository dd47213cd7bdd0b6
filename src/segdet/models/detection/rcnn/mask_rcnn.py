"""Mask R-CNN builders (He et al., "Mask R-CNN", ICCV 2017): Faster R-CNN with FPN plus the mask branch
(RoIAlign 14x14, four 3x3 convolutions, a 2x2 transposed convolution and a 1x1 convolution to one
28x28 mask per class; see :mod:`.mask_head`).

* ``maskrcnn_resnet50_fpn`` / ``maskrcnn_resnet101_fpn``: torchvision's ``maskrcnn_resnet50_fpn``
  design;
* ``maskrcnn_resnet50_fpn_v2``: BatchNorm in the FPN, box and mask heads, a 2-conv RPN head and the
  4conv1fc box head (torchvision's ``maskrcnn_resnet50_fpn_v2``).

Options as the ResNet-FPN Faster R-CNN builders (:mod:`.faster_rcnn`). Targets need ``masks``; the
detections carry ``masks`` ``[D, 1, H, W]``, probabilities pasted in the original image.
"""

from __future__ import annotations

from segdet.models.detection.rcnn.faster_rcnn import _resnet_fpn_builder

maskrcnn_resnet50_fpn = _resnet_fpn_builder(
    "maskrcnn_resnet50_fpn", "resnet50", False, True, "Mask R-CNN, ResNet-50 + FPN (torchvision's v1)."
)
maskrcnn_resnet101_fpn = _resnet_fpn_builder(
    "maskrcnn_resnet101_fpn", "resnet101", False, True, "Mask R-CNN, ResNet-101 + FPN."
)
maskrcnn_resnet50_fpn_v2 = _resnet_fpn_builder(
    "maskrcnn_resnet50_fpn_v2",
    "resnet50",
    True,
    True,
    "Mask R-CNN v2, ResNet-50 + FPN with BatchNorm in the FPN and heads (torchvision's v2).",
)

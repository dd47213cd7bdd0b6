"""EfficientDet (Tan et al. 2020): EfficientNet + BiFPN + light class / box networks on RetinaNet's
anchors, focal loss and post-processing; rwightman's ``effdet`` checkpoints load (:mod:`.convert`)."""

from segdet.models.detection.efficientdet.builders import (
    SCALES,
    efficientdet_d0,
    efficientdet_d1,
    efficientdet_d2,
    efficientdet_d3,
    efficientdet_d4,
    efficientdet_d5,
    efficientdet_d6,
    efficientdet_d7,
)
from segdet.models.detection.efficientdet.convert import convert_effdet_state_dict, load_effdet_weights
from segdet.models.detection.efficientdet.head import EfficientDetHead

__all__ = [
    "SCALES",
    "EfficientDetHead",
    "convert_effdet_state_dict",
    "efficientdet_d0",
    "efficientdet_d1",
    "efficientdet_d2",
    "efficientdet_d3",
    "efficientdet_d4",
    "efficientdet_d5",
    "efficientdet_d6",
    "efficientdet_d7",
    "load_effdet_weights",
]

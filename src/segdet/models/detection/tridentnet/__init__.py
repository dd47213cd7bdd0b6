"""TridentNet (Li et al. 2019): weight-sharing branches of dilations 1, 2, 3 in the C4 Faster R-CNN's conv4
stage, each trained on its own object scales."""

from segdet.models.detection.tridentnet.builders import tridentnet_resnet50_c4, tridentnet_resnet101_c4
from segdet.models.detection.tridentnet.model import TridentRCNN, branch_targets, merge_branches
from segdet.models.detection.tridentnet.trident import TridentStage, trident_block

__all__ = [
    "TridentRCNN",
    "TridentStage",
    "branch_targets",
    "merge_branches",
    "trident_block",
    "tridentnet_resnet50_c4",
    "tridentnet_resnet101_c4",
]

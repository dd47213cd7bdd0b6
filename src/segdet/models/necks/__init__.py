"""segdet.models.necks: feature pyramids placed between a backbone and detection heads: the FPN
(Lin et al. 2017) and BiFPN (Tan et al. 2020)."""

from segdet.models.necks.bifpn import BiFPN, BiFPNLayer, fast_normalized_fusion
from segdet.models.necks.fpn import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

__all__ = [
    "BiFPN",
    "BiFPNLayer",
    "ExtraFPNBlock",
    "FeaturePyramidNetwork",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "fast_normalized_fusion",
]

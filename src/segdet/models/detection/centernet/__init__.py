"""CenterNet (Zhou et al. 2019, objects as points): a heatmap of object centres per class, with the box's
size and the centre's offset read at each peak; ResNet backbones upsampled to stride 4."""

from segdet.models.detection.centernet.builders import centernet_resnet18, centernet_resnet50
from segdet.models.detection.centernet.model import CenterNet, CenterNetSettings

__all__ = ["CenterNet", "CenterNetSettings", "centernet_resnet18", "centernet_resnet50"]

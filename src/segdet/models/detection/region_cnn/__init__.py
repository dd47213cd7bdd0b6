"""R-CNN (Girshick, Donahue, Darrell, Malik, "Rich feature hierarchies for accurate object detection and
semantic segmentation", CVPR 2014): a CNN run on every warped selective-search proposal, per-class
linear SVMs on its features, class-specific ridge box regression, greedy per-class NMS.

:mod:`.warp` crops and warps the regions, :mod:`.network` is the CNN, :mod:`.svm` the SVMs with hard
negative mining, :mod:`.ridge` the box regression, :mod:`.model` the detector, :mod:`.stages` the three
training stages run in order (``segdet rcnn``).
"""

from segdet.models.detection.region_cnn.model import RCNN
from segdet.models.detection.region_cnn.network import RegionNetwork
from segdet.models.detection.region_cnn.stages import RCNNTrainSettings, train_rcnn

__all__ = ["RCNN", "RCNNTrainSettings", "RegionNetwork", "train_rcnn"]

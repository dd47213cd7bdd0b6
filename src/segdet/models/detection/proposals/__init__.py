"""Region proposals computed outside the network: selective search (Uijlings et al. 2013) through
OpenCV's contrib module, cached on disk by image content and settings, and their recall.

R-CNN (Girshick et al. 2014) and Fast R-CNN (Girshick 2015) take these proposals; Faster R-CNN learns
its own (:mod:`segdet.models.detection.rcnn.rpn`).
"""

from segdet.models.detection.proposals.cache import ProposalCache, default_cache_dir, image_key
from segdet.models.detection.proposals.recall import proposal_recall
from segdet.models.detection.proposals.selective_search import (
    SelectiveSearchSettings,
    search_scale,
    selective_search,
)
from segdet.models.detection.proposals.source import SelectiveSearchProposals, image_pixels

__all__ = [
    "ProposalCache",
    "SelectiveSearchProposals",
    "SelectiveSearchSettings",
    "default_cache_dir",
    "image_key",
    "image_pixels",
    "proposal_recall",
    "search_scale",
    "selective_search",
]

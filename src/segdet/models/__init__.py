"""segdet.models: backbones, segmentation models and :func:`build` by name (table :data:`MODELS`)."""

from segdet.models.build import MODELS, available_models, build, model_options
from segdet.models.detection.convert import from_torchvision, load_detector_weights, load_torchvision_weights
from segdet.models.flops import model_summary
from segdet.models.weights import load_state_dict, load_weights

__all__ = [
    "MODELS",
    "available_models",
    "build",
    "from_torchvision",
    "load_detector_weights",
    "load_state_dict",
    "load_torchvision_weights",
    "load_weights",
    "model_options",
    "model_summary",
]

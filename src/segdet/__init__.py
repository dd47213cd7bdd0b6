"""segdet: semantic segmentation, object detection and instance segmentation in one PyTorch toolkit.

The package reads top to bottom along the data's path:
``data`` (formats, checks, synthetic shapes, transforms) -> ``models`` (backbones, necks, heads) with
``losses`` and ``ops`` beside them -> ``engine`` (config, trainer, checkpoints) -> ``metrics`` -> ``cli``.
"""

from segdet.errors import DataError, SegdetError

__version__ = "0.1.0"
__all__ = ["DataError", "SegdetError", "__version__"]

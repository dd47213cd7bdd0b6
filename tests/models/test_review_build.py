"""Review: options that configure the backbone are not silently dropped when a built one is passed."""

from __future__ import annotations

import pytest

from segdet.errors import SegdetError
from segdet.models import build
from segdet.models.backbones import build_backbone


@pytest.mark.parametrize(
    "options",
    [{"backbone_weights": "ResNet18_Weights.IMAGENET1K_V1"}, {"frozen_stages": 2}, {"frozen_bn": True}],
)
@pytest.mark.parametrize("name", ["fcn8s", "unet_backbone", "deeplabv3plus"])
def test_built_backbone_with_backbone_options_is_refused(name, options):
    """A built :class:`Backbone` together with ``backbone_weights`` / ``frozen_stages`` / ``frozen_bn``
    raises (reference: :func:`build_backbone`, which refuses options given with a built backbone);
    before, the model was built with the backbone as it was and the weights were never loaded (no
    download is attempted: the refusal comes first)."""
    backbone = build_backbone("resnet18", output_stride=16)
    with pytest.raises(SegdetError, match="already built backbone"):
        build(name, num_classes=2, backbone=backbone, **options)


def test_built_backbone_without_options_is_used_as_is():
    """Without those options the built backbone is the model's (same object)."""
    backbone = build_backbone("resnet18", output_stride=16)
    assert build("deeplabv3plus", num_classes=2, backbone=backbone).backbone is backbone

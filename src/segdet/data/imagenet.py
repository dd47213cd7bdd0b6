"""ImageNet's per-channel mean and standard deviation of RGB images in ``[0, 1]``.

Every pretrained backbone here (torchvision's ResNet, VGG, MobileNetV3) was trained on images normalised
``x' = (x - mean_c) / std_c`` with these values, so the segmentation presets (:mod:`.transforms`) and the
detectors' own transforms (:mod:`segdet.models.detection.transform`) normalise with them by default.
"""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

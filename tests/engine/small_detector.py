"""The small R-CNN set-up of the engine's training tests: ResNet-18 FPN with narrow heads (the architecture
is the same; only widths shrink), 64 px images at their own size, anchors scaled down 4x to the objects
(6-37 px), few sampled anchors and RoIs, so that a model learns in tens of steps on 2 cores."""

SMALL = {
    "backbone": "resnet18",
    "fpn_channels": 64,
    "representation_size": 256,
    "mask_channels": 64,
    "min_size": 64,
    "max_size": 64,
    "anchor_sizes": [[8], [16], [32], [64], [128]],
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 32,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 100,
}

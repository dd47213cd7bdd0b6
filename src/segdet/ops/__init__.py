"""segdet.ops: box geometry, the R-CNN box coder, NMS / Soft-NMS, RoI max pooling, mask pasting, the VOC
palette, drawing."""

from segdet.ops.box_coder import BoxCoder
from segdet.ops.boxes import (
    box_area,
    box_convert,
    box_inter_union,
    box_iou,
    box_iou_pairwise,
    clip_boxes_to_image,
    generalized_box_iou,
    generalized_box_iou_pairwise,
    remove_small_boxes,
)
from segdet.ops.draw import color_palette, colorize_semantic, draw_detections, overlay_semantic, save_png
from segdet.ops.masks import paste_masks_in_image
from segdet.ops.nms import batched_nms, nms, soft_nms
from segdet.ops.palette import voc_palette
from segdet.ops.roi_pool import roi_pool

__all__ = [
    "BoxCoder",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_inter_union",
    "box_iou",
    "box_iou_pairwise",
    "clip_boxes_to_image",
    "color_palette",
    "colorize_semantic",
    "draw_detections",
    "generalized_box_iou",
    "generalized_box_iou_pairwise",
    "nms",
    "overlay_semantic",
    "paste_masks_in_image",
    "remove_small_boxes",
    "roi_pool",
    "save_png",
    "soft_nms",
    "voc_palette",
]

"""segdet.models.segmentation."""

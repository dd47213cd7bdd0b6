"""segdet.models.detection."""

"""segdet.models."""

"""segdet.metrics."""

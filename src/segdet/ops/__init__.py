"""segdet.ops."""

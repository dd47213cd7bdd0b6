"""segdet.data."""

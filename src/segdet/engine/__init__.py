"""segdet.engine."""

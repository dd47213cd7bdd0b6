"""segdet.losses."""

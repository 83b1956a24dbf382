"""polyseg.data."""

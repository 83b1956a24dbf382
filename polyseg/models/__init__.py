"""polyseg.models."""

"""Polyphony stages 1 and 2: models trained before the segmenter, writing features for the next stage."""

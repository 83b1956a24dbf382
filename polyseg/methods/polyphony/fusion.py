"""Fusion of parallel feature streams (docs/methods/polyphony.md): Polyphony's cross-hand fusion.

Shapes: per-hand features `[B, T, F]`, mask `[B, T]` float (1 = valid frame); outputs are 0 on padded
frames.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from polyseg.nn import layers


class CrossHandFusion(nn.Module):
  """Each hand's features see the other hand's, with its own weights and a residual:

      H'_own = F_own(concat[H_own, H_other]) + H_own,   F = 1x1 conv 2F->F, ReLU, 1x1 conv F->F

  (a 1x1 conv over time is a Dense per frame). features {hand: [B, T, F]} for two hands, mask [B, T]
  -> {hand: [B, T, F]}, computed from the unfused inputs (the exchange is symmetric).
  """

  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: dict[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
    if len(features) != 2:
      raise ValueError(f'CrossHandFusion needs two hands, got {sorted(features)}')
    hands = sorted(features)
    valid = mask[..., None]
    fused = {}
    for own, other in (hands, hands[::-1]):
      x = features[own]
      width = x.shape[-1]
      h = layers.Dense(width, dtype=self.dtype, name=f'{own}_in')(
        jnp.concatenate([x, features[other]], axis=-1)
      )
      h = layers.Dense(width, dtype=self.dtype, name=f'{own}_out')(nn.relu(h))
      fused[own] = (h + x) * valid
    return fused

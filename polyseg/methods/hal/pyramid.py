"""HAL's hierarchical pyramid transformer (docs/methods/hal.md).

Level l of the pyramid works on bins of 2^l frames. Going up, each level runs ASFormer-style
layers (windowed self-attention + dilated convolution, `layers.ConvAttentionLayer`) and hands a
masked mean over pairs of bins to the level above. Coming down, each level adds the upsampled state
of the level above to its own bottom-up state (skip connections both ways) and runs one more layer.

The slow high-level action latent is the top-down state at `action_level` (bins of w = 2^a frames):
`action_logits` classify it, and it is aligned to the frames deterministically, frame t <- bin
t // w, so each frame's classifier sees its window's latent next to its own features.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from polyseg.nn import layers


def pool_pairs(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Masked mean over pairs of bins: x [B, T, F], mask [B, T] -> [B, T/2, F], mask [B, T/2]
  (a bin is valid when either half is)."""
  b, t, f = x.shape
  pairs, pair_mask = x.reshape(b, t // 2, 2, f), mask.reshape(b, t // 2, 2)
  count = pair_mask.sum(-1, keepdims=True)
  pooled = (pairs * pair_mask[..., None]).sum(2) / jnp.maximum(count, 1.0)
  return pooled, (count[..., 0] > 0).astype(mask.dtype)


def to_frames(x: jax.Array, factor: int) -> jax.Array:
  """[B, T/factor, ...] -> [B, T, ...]: each bin repeated for its `factor` frames."""
  return jnp.repeat(x, factor, axis=1)


def pool_mask(mask: jax.Array, factor: int) -> jax.Array:
  """[B, T] -> [B, T/factor]: a bin is valid when any of its frames is."""
  return mask.reshape(mask.shape[0], -1, factor).max(-1)


class PyramidTransformer(nn.Module):
  """features [B, T, D], mask [B, T] -> (frame_logits [B, T, C'], action_logits [B, T/w, C'] or
  None without a latent); T must be a multiple of 2^(num_levels - 1); C' = num_classes + extra.

  `action_level=None` keeps the same backbone without the latent (the NN-Viterbi-style baseline).
  `extra_outputs` adds classes after the real ones (1: CTC's blank)."""

  num_classes: int
  num_f_maps: int
  num_levels: int
  layers_per_level: int
  kernel_size: int
  action_level: int | None
  dropout: float
  channel_dropout: float
  extra_outputs: int = 0
  dtype: layers.Dtype = jnp.float32

  @property
  def window(self) -> int:
    """Frames per bin of the action latent (1 without one)."""
    return 1 if self.action_level is None else 2**self.action_level

  def _layer(self, name: str, dilation: int) -> layers.ConvAttentionLayer:
    return layers.ConvAttentionLayer(
      self.num_f_maps, self.kernel_size, dilation, self.dropout, dtype=self.dtype, name=name
    )

  @nn.compact
  def __call__(
    self, x: jax.Array, mask: jax.Array, train: bool
  ) -> tuple[jax.Array, jax.Array | None]:
    chex.assert_rank(x, 3)
    chex.assert_shape(mask, x.shape[:2])
    if self.action_level is not None and not 0 <= self.action_level < self.num_levels:
      raise ValueError(
        f'model.action_level={self.action_level} must be in [0, num_levels={self.num_levels})'
      )
    if x.shape[1] % 2 ** (self.num_levels - 1):
      raise ValueError(f'{x.shape[1]} frames: not a multiple of 2^(num_levels - 1)')
    outputs = self.num_classes + self.extra_outputs
    h = layers.channel_dropout(self.channel_dropout)(x * mask[..., None], deterministic=not train)
    h = layers.Dense(self.num_f_maps, dtype=self.dtype, name='input_proj')(h) * mask[..., None]
    masks, skips = [mask], []
    for level in range(self.num_levels):  # bottom-up
      if level:
        h, m = pool_pairs(h, masks[-1])
        masks.append(m)
      for i in range(self.layers_per_level):
        h = self._layer(f'up_{level}_{i}', 2**i)(h, masks[level], train)
      skips.append(h)
    states = {self.num_levels - 1: h}
    for level in reversed(range(self.num_levels - 1)):  # top-down
      above = layers.Dense(self.num_f_maps, dtype=self.dtype, name=f'from_above_{level}')(
        to_frames(states[level + 1], 2)
      )
      h = (skips[level] + above) * masks[level][..., None]
      states[level] = self._layer(f'down_{level}', 1)(h, masks[level], train)
    frame_input, action_logits = states[0], None
    if self.action_level is not None:
      latent = states[self.action_level]
      action_logits = layers.Dense(outputs, dtype=self.dtype, name='action_head')(latent)
      action_logits = action_logits.astype(jnp.float32) * masks[self.action_level][..., None]
      frame_input = jnp.concatenate([frame_input, to_frames(latent, self.window)], axis=-1)
    frame_logits = layers.Dense(outputs, dtype=self.dtype, name='frame_head')(frame_input)
    return frame_logits.astype(jnp.float32) * mask[..., None], action_logits

"""Causal dilated TCN with one projector per hand: Polyphony's stage-2 semantic encoder.

Shapes: `x [B, T, D]`, `mask [B, T]` float (1 = valid frame, padding at the end of each video), as
in `layers.py`. Causal: output frame t depends only on input frames <= t, so padding at the end
never changes valid frames, and features can be computed online.
"""

from typing import Any

import chex
import flax.linen as nn
import jax

from polyseg.nn import layers


class CausalConv(nn.Module):
  """Causal dilated 1-D convolution with bias: [B, T, Fin] -> [B, T, features].

  Output t = sum_j kernel[j] . x[t - (k - 1 - j) * dilation] + bias (frames before 0 are zeros). The
  input is masked first and the output is masked too.
  """

  features: int
  kernel_size: int
  dilation: int

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    chex.assert_rank(x, 3)
    chex.assert_shape(mask, x.shape[:2])
    if self.kernel_size < 1 or self.dilation < 1:
      raise ValueError(
        f'CausalConv: kernel_size and dilation must be >= 1, got {self.kernel_size}, '
        f'{self.dilation}'
      )
    kernel = self.param(
      'kernel', nn.initializers.lecun_normal(), (self.kernel_size, x.shape[-1], self.features)
    )
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    y = jax.lax.conv_general_dilated(
      x * mask[..., None],
      kernel,
      window_strides=(1,),
      padding=[((self.kernel_size - 1) * self.dilation, 0)],
      rhs_dilation=(self.dilation,),
      dimension_numbers=('NWC', 'WIO', 'NWC'),
    )
    return (y + bias) * mask[..., None]


class CausalResidualLayer(nn.Module):
  """MS-TCN's dilated residual layer made causal: x + Dense(dropout(relu(CausalConv(x)))).

  [B, T, F] -> [B, T, F], masked. In training the output goes through `layers.fusion_fence`, so that
  XLA:CPU does not recompute the residual-gradient sums of the layers above inside each layer's
  backward pass.
  """

  kernel_size: int
  dilation: int
  dropout: float

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
    h = nn.relu(CausalConv(x.shape[-1], self.kernel_size, self.dilation, name='conv')(x, mask))
    h = layers.Dropout(self.dropout)(h, deterministic=not train)
    out = (x + layers.Dense(x.shape[-1], name='pointwise')(h)) * mask[..., None]
    return layers.fusion_fence(out, train)


class SemanticTCN(nn.Module):
  """Shared features -> one semantic vector per hand: [B, T, D] -> [B, T, num_hands, semantic_dim].

  Dense D -> channels, `num_layers` causal residual layers with dilation 2^i (receptive field
  1 + (kernel_size - 1) (2^num_layers - 1) frames), then a linear projector per hand (one
  `DenseGeneral` whose weights [channels, num_hands, semantic_dim] are separate per hand).
  """

  num_layers: int
  channels: int
  semantic_dim: int
  num_hands: int = 2
  kernel_size: int = 3
  dropout: float = 0.0
  project: bool = True  # False: the projector's input, the last hidden state [B, T, channels]

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    chex.assert_rank(x, 3)
    chex.assert_shape(mask, x.shape[:2])
    mask = mask.astype(x.dtype)
    h = layers.Dense(self.channels, name='input')(x) * mask[..., None]
    for i in range(self.num_layers):
      h = CausalResidualLayer(self.kernel_size, 2**i, self.dropout, name=f'layer_{i}')(
        h, mask, train
      )
    if not self.project:
      return h
    out = layers.DenseGeneral((self.num_hands, self.semantic_dim), name='projector')(h)
    return out * mask[..., None, None]


def from_params(params: Any) -> SemanticTCN:
  """The (inference, dropout-free) `SemanticTCN` whose parameters are `params`, read from shapes."""
  num_layers = sum(name.startswith('layer_') for name in params)
  if 'input' not in params or 'projector' not in params or num_layers == 0:
    raise ValueError(
      f'tcn.from_params: not SemanticTCN params (top-level names {sorted(params)}); expected '
      "'input', 'layer_0'.. and 'projector'"
    )
  channels, num_hands, semantic_dim = params['projector']['kernel'].shape
  kernel_size = params['layer_0']['conv']['kernel'].shape[0]
  return SemanticTCN(num_layers, channels, semantic_dim, num_hands, kernel_size)


@jax.jit
def apply(params: Any, x: jax.Array, mask: jax.Array) -> jax.Array:
  """Inference with the TCN that `params` belong to: x [B, T, D], mask [B, T] -> [B, T, H, S]."""
  return from_params(params).apply({'params': params}, x, mask)


def receptive_field(num_layers: int, kernel_size: int = 3) -> int:
  """Frames an output frame sees (itself and the ones before): 1 + (k - 1)(2^L - 1)."""
  return 1 + (kernel_size - 1) * (2**num_layers - 1)

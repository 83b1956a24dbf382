"""HopaDIFF networks (METHODS.md section 2): two branches, HP-xLSTM, DFT condition, text path.

Branches are 'holistic' (whole-frame features) and 'partial' (the referred person's crop). Per branch:
an ASFormer encoder (own weights) gives logits and the temporal condition z [B, T, Fz]; HP-xLSTM turns
(z_holistic, z_partial) into zhat [B, T, F], exchanging information through cross-attention on the
input-gate pre-activations; `DFTCondition` gives the local spectrum of zhat. The condition of a branch's
decoder is

    cond = concat[z, zhat, DFT(zhat)]     [B, T, Fz + F + Fd]

(without HP-xLSTM: concat[z, DFT(z)]; without the DFT condition: concat[z, zhat]). The decoders denoise
multi-hot label sequences (sigmoid outputs). Optionally the reference text conditions the holistic
input features (`TextCondition`: FiLM from the pooled sentence embedding, or cross-attention to the
token states); it is off when the features are already cross-modal (BLIP-2 / CLIP with the text).

Shapes: features [B, T, D*], mask [B, T] float (1 = valid); outputs are 0 on padded frames. Per-branch
results are dicts keyed by branch name.
"""

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from polyseg.models import asformer
from polyseg.models import layers
from polyseg.models import xlstm

BRANCHES = ('holistic', 'partial')
TEXT_CONDITIONS = ('none', 'film', 'cross_attention')


class DFTCondition(nn.Module):
  """Local spectrum of a sequence: x [B, T, F] -> [B, T, channels * (window // 2 + 1) * parts].

  x is projected to `channels` (Dense), each frame's window of `window` frames centred on it
  (zero outside the valid frames) is Hann-weighted and transformed by `rfft` along time; 'magnitude'
  keeps log1p(|X| / sum(hann)), 'complex' keeps (Re X, Im X) / sum(hann). A global DFT of the whole
  video has no frame axis; the windowed one gives every frame the frequency content around it (the
  periodic motions of walking, waving, talking), which is what a per-frame condition needs.
  Normalised by a LayerNorm over the output features. O(T * window) memory.
  """

  channels: int = 8
  window: int = 33
  parts: str = 'magnitude'

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    chex.assert_rank(x, 3)
    if self.window % 2 != 1 or self.window < 3:
      raise ValueError(f'DFTCondition.window must be odd and >= 3, got {self.window}')
    if self.parts not in ('magnitude', 'complex'):
      raise ValueError(f"DFTCondition.parts must be 'magnitude' or 'complex', got {self.parts!r}")
    valid = mask[..., None]
    h = (nn.Dense(self.channels, name='proj')(x) * valid).astype(jnp.float32)  # FFT in float32
    windows = layers.dilated_windows(h, self.window, 1)  # [B, T, W, channels]
    hann = jnp.hanning(self.window + 2)[1:-1].astype(h.dtype)  # nonzero at both ends
    spectrum = jnp.fft.rfft(windows * hann[:, None], axis=2) / hann.sum()  # [B, T, K, channels]
    if self.parts == 'magnitude':
      spectral = jnp.log1p(jnp.abs(spectrum))
    else:
      spectral = jnp.concatenate([spectrum.real, spectrum.imag], axis=2)
    spectral = spectral.reshape(*spectral.shape[:2], -1).astype(x.dtype)
    return nn.LayerNorm(name='norm')(spectral) * valid


class TextCondition(nn.Module):
  """Conditions frame features on the reference text; identity at initialisation.

  'film': x * (1 + gamma) + beta with (gamma, beta) = Dense(pooled text [B, E]).
  'cross_attention': x + Dense(attention of every frame over the text tokens [B, L, E]).
  x [B, T, D], mask [B, T] -> [B, T, D].
  """

  kind: str
  attention_dim: int = 64

  @nn.compact
  def __call__(self, x, mask, text_pooled, text_tokens, text_mask):
    if self.kind == 'film':
      gamma_beta = nn.Dense(2 * x.shape[-1], kernel_init=nn.initializers.zeros, name='film')(
        text_pooled
      )
      gamma, beta = jnp.split(gamma_beta[:, None, :], 2, axis=-1)
      out = x * (1 + gamma) + beta
    elif self.kind == 'cross_attention':
      q = nn.Dense(self.attention_dim, name='query')(x)
      k = nn.Dense(self.attention_dim, name='key')(text_tokens)
      v = nn.Dense(self.attention_dim, name='value')(text_tokens)
      scores = jnp.einsum('btf,blf->btl', q, k) / jnp.sqrt(self.attention_dim)
      scores = jnp.where(text_mask[:, None, :] > 0, scores, jnp.finfo(scores.dtype).min)
      attended = jnp.einsum('btl,blf->btf', jax.nn.softmax(scores, axis=-1), v)
      out = x + nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros, name='out')(attended)
    else:
      raise ValueError(
        f'TextCondition.kind must be one of {TEXT_CONDITIONS[1:]}, got {self.kind!r}'
      )
    return out * mask[..., None]


class HopaDIFFModel(nn.Module):
  """Encoders, HP-xLSTM, DFT condition and decoders of HopaDIFF.

  `partial_encoder` / `partial_decoder` None = no partial branch; `hp_xlstm` None = no HP-xLSTM;
  `*_dft` None = no DFT condition; `text` None = no text path. Apply with
  `method=HopaDIFFModel.encode / project_condition / denoise`; `__call__` runs all (for `init`).
  """

  holistic_encoder: asformer.Encoder
  holistic_decoder: asformer.Decoder
  partial_encoder: asformer.Encoder | None = None
  partial_decoder: asformer.Decoder | None = None
  hp_xlstm: xlstm.HPxLSTM | None = None
  holistic_dft: DFTCondition | None = None
  partial_dft: DFTCondition | None = None
  text: TextCondition | None = None

  @property
  def branches(self) -> tuple[str, ...]:
    return BRANCHES if self.partial_encoder is not None else BRANCHES[:1]

  def _encoders(self) -> dict[str, asformer.Encoder]:
    return {'holistic': self.holistic_encoder, 'partial': self.partial_encoder}

  def _decoders(self) -> dict[str, asformer.Decoder]:
    return {'holistic': self.holistic_decoder, 'partial': self.partial_decoder}

  def _dfts(self) -> dict[str, DFTCondition | None]:
    return {'holistic': self.holistic_dft, 'partial': self.partial_dft}

  def encode(self, inputs: dict[str, Any], mask: jax.Array, train: bool):
    """inputs: 'holistic' [B, T, Dh], 'partial' [B, T, Dp] (if that branch exists), and for the text
    path 'text' [B, E], 'text_tokens' [B, L, E], 'text_mask' [B, L].
    Returns ({branch: encoder logits [B, T, C]}, {branch: decoder condition [B, T, Fc]})."""
    features = {branch: inputs[branch] for branch in self.branches}
    if self.text is not None:
      features['holistic'] = self.text(
        features['holistic'], mask, inputs['text'], inputs['text_tokens'], inputs['text_mask']
      )
    logits, temporal = {}, {}
    for branch in self.branches:
      logits[branch], temporal[branch] = self._encoders()[branch](features[branch], mask, train)
    if self.hp_xlstm is not None:
      zhat_h, zhat_p = self.hp_xlstm(temporal['holistic'], temporal.get('partial'), mask)
      reasoned = {'holistic': zhat_h, 'partial': zhat_p}
    else:
      reasoned = {branch: None for branch in self.branches}
    conditions = {}
    for branch in self.branches:
      parts = [temporal[branch]]
      if reasoned[branch] is not None:
        parts.append(reasoned[branch])
      dft = self._dfts()[branch]
      if dft is not None:
        source = temporal[branch] if reasoned[branch] is None else reasoned[branch]
        parts.append(dft(source, mask))
      conditions[branch] = jnp.concatenate(parts, axis=-1)
    return logits, conditions

  def project_condition(self, conditions: dict[str, jax.Array], train: bool):
    """{branch: condition [B, T, Fc]} -> {branch: per-decoder-layer Q/K terms}, reused across steps."""
    return {b: self._decoders()[b].project_condition(conditions[b], train) for b in self.branches}

  def denoise(self, x01: dict[str, jax.Array], t: dict[str, jax.Array], projections, mask, train):
    """{branch: noisy labels in [0, 1] [B, T, C]}, {branch: t [B] int} -> {branch: x0 logits}."""
    return {
      b: self._decoders()[b].denoise(x01[b], t[b], projections[b], mask, train)
      for b in self.branches
    }

  def __call__(self, inputs, x01, t, mask, train: bool):
    """-> ({branch: encoder logits}, {branch: decoder logits})."""
    logits, conditions = self.encode(inputs, mask, train)
    projections = self.project_condition(conditions, train)
    same = lambda x: dict.fromkeys(self.branches, x)
    return logits, self.denoise(same(x01), same(t), projections, mask, train)

"""HopaDIFF networks (docs/methods/hopadiff.md): two branches, HP-xLSTM, DFT condition, text path.

Branches are 'holistic' (whole-frame features) and 'partial' (the referred person's crop). Per branch:
an ASFormer encoder (own weights) gives logits and the temporal condition z [B, T, Fz]; HP-xLSTM turns
(z_holistic, z_partial) into zhat [B, T, F], exchanging information through cross-attention on the
input-gate pre-activations; `DFTCondition` gives the frequency content of zhat. The condition of a
branch's decoder is

    cond = concat[z, zhat, DFT(zhat)]     [B, T, Fz + F + Fd]

(without HP-xLSTM: concat[z, DFT(z)]; without the DFT condition: concat[z, zhat]). DFT(zhat) is one of
two kinds: 'global' (the default, the paper's Eq. 6): per channel, the DFT along time of each video's
whole valid length L, bin k on frame k (Fd = 2F: real and imaginary parts); 'windowed': the spectrum
of a window around every frame, of a few learned projections of zhat. The decoders denoise multi-hot
label sequences (sigmoid outputs). Optionally the reference text conditions the holistic input features
(`TextCondition`: FiLM from the pooled sentence embedding, or cross-attention to the token states); it
is off when the features are already cross-modal (BLIP-2 / CLIP with the text).

Shapes: features [B, T, D*], mask [B, T] float (1 = valid); outputs are 0 on padded frames. Per-branch
results are dicts keyed by branch name.
"""

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from polyseg.methods.hopadiff import xlstm
from polyseg.nn import asformer
from polyseg.nn import layers

BRANCHES = ('holistic', 'partial')
TEXT_CONDITIONS = ('none', 'film', 'cross_attention')
DFT_KINDS = ('global', 'windowed')
DFT_PARTS = ('complex', 'magnitude')


def _chirp(lengths: jax.Array, frames: int) -> jax.Array:
  """exp(-i pi m^2 / L) for m < frames, per video: lengths L [B] int32 >= 1 -> [B, frames] complex64.

  m^2 mod 2L is summed exactly in int32 from the odd numbers 2m - 1 (mod 2L), so the phase keeps
  float32 accuracy at any length (m^2 / L in float32 is off by 0.03 rad at 50,000 frames).
  """
  period = 2 * lengths[:, None]
  m = jnp.arange(frames, dtype=jnp.int32)
  odd = jnp.where(m > 0, 2 * m - 1, 0)[None, :] % period
  squares = jax.lax.associative_scan(lambda a, b: (a + b) % period, odd, axis=1)
  phase = jnp.pi * squares.astype(jnp.float32) / lengths[:, None].astype(jnp.float32)
  return jnp.exp(-1j * phase)


def dft_along_time(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Per channel, the DFT of every video's L valid frames, bin k on frame k: [B, T, F] -> complex64.

  out[b, k] = sum_{n < L} x[b, n] exp(-2 pi i n k / L) for k < L (numpy's `fft` of the unpadded
  video), 0 on padded frames; L = sum(mask[b]) varies per video (padding at the end). Bluestein's
  chirp-z algorithm: with c_m = exp(-i pi m^2 / L), nk = (n^2 + k^2 - (k - n)^2) / 2 gives
  out_k = c_k sum_n (x_n c_n) conj(c_{k-n}), a convolution computed with FFTs of one static size
  >= 2T - 1. Memory O(T * F), float32.
  """
  chex.assert_rank(x, 3)
  frames = mask.shape[1]
  lengths = jnp.maximum(jnp.sum(mask > 0, axis=1), 1).astype(jnp.int32)
  chirp = _chirp(lengths, frames)  # [B, T]
  size = 1 << (2 * frames - 2).bit_length()  # a power of two >= 2T - 1: no wrap-around
  lag = np.arange(size)
  lag = np.minimum(np.minimum(lag, size - lag), frames - 1)  # |k - n| (larger lags are never used)
  kernel = jnp.fft.fft(jnp.conj(chirp[:, lag]), axis=1)  # [B, size]
  signal = x.astype(jnp.float32) * mask[..., None] * chirp[..., None]
  convolved = jnp.fft.ifft(jnp.fft.fft(signal, size, axis=1) * kernel[..., None], axis=1)
  return convolved[:, :frames] * chirp[..., None] * mask[..., None]


def windowed_spectrum(x: jax.Array, window: int) -> jax.Array:
  """Hann-weighted `rfft` of every frame's centred window of `window` frames (x is 0 outside the
  valid frames), / sum(hann): x [B, T, C] -> [B, T, (window // 2 + 1) * C] complex64."""
  windows = layers.dilated_windows(x.astype(jnp.float32), window, 1)  # [B, T, W, C]
  hann = jnp.hanning(window + 2)[1:-1].astype(jnp.float32)  # nonzero at both ends
  spectrum = jnp.fft.rfft(windows * hann[:, None], axis=2) / hann.sum()  # [B, T, K, C]
  return spectrum.reshape(*spectrum.shape[:2], -1)


class DFTCondition(nn.Module):
  """Frequency condition of a sequence x [B, T, F] (0 on padded frames) -> [B, T, Fd].

  kind 'global' (the paper's Eq. 6): per channel of x, the DFT along time of each video's whole valid
  length L (`dft_along_time`), scaled by 1/sqrt(L) (unitary: the spectrum has the scale of x at any
  length); bin k of every channel goes to frame k. A real sequence's spectrum is conjugate-symmetric
  (bin L - k mirrors bin k), so frames k and L - k receive mirrored values. Fd = 2F ('complex') or F.
  kind 'windowed': x is projected to `channels` (Dense), and each frame gets the spectrum of the
  `window` frames centred on it (`windowed_spectrum`): the frequency content around that frame
  (periodic motions such as walking, waving, talking). Fd = channels * (window // 2 + 1) * (2 or 1).
  parts 'complex' keeps (Re X, Im X); 'magnitude' keeps log1p(|X|). Both kinds end in a LayerNorm
  over the output features. Memory O(T * F) ('global') or O(T * window * channels) ('windowed').
  """

  kind: str = 'global'
  parts: str = 'complex'
  channels: int = 8  # 'windowed' only
  window: int = 33  # 'windowed' only

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    chex.assert_rank(x, 3)
    if self.kind not in DFT_KINDS:
      raise ValueError(f'DFTCondition.kind must be one of {DFT_KINDS}, got {self.kind!r}')
    if self.parts not in DFT_PARTS:
      raise ValueError(f'DFTCondition.parts must be one of {DFT_PARTS}, got {self.parts!r}')
    valid = mask[..., None]
    if self.kind == 'global':
      lengths = jnp.maximum(jnp.sum(mask, axis=1), 1.0).astype(jnp.float32)
      spectrum = dft_along_time(x, mask) * jax.lax.rsqrt(lengths)[:, None, None]
    else:
      if self.window % 2 != 1 or self.window < 3:
        raise ValueError(f'DFTCondition.window must be odd and >= 3, got {self.window}')
      spectrum = windowed_spectrum(layers.Dense(self.channels, name='proj')(x) * valid, self.window)
    if self.parts == 'magnitude':
      spectral = jnp.log1p(jnp.abs(spectrum))
    else:
      spectral = jnp.concatenate([spectrum.real, spectrum.imag], axis=-1)
    return nn.LayerNorm(name='norm')(spectral.astype(x.dtype)) * valid


class TextCondition(nn.Module):
  """Conditions frame features on the reference text; identity at initialisation.

  'film': x * (1 + g gamma) + g beta with (gamma, beta) = Dense(pooled text [B, E]).
  'cross_attention': x + g Dense(attention of every frame over the text tokens [B, L, E]).
  The gate g is a scalar parameter that starts at 0 (Flamingo gates its cross-attention so, through
  tanh), so the module starts as the identity whichever initialisation (`model.init`) draws its
  Dense layers.
  x [B, T, D], mask [B, T] -> [B, T, D].
  """

  kind: str
  attention_dim: int = 64

  @nn.compact
  def __call__(self, x, mask, text_pooled, text_tokens, text_mask):
    gate = self.param('gate', nn.initializers.zeros, (), jnp.float32)
    if self.kind == 'film':
      gamma_beta = gate * layers.Dense(2 * x.shape[-1], name='film')(text_pooled)
      gamma, beta = jnp.split(gamma_beta[:, None, :], 2, axis=-1)
      out = x * (1 + gamma) + beta
    elif self.kind == 'cross_attention':
      q = layers.Dense(self.attention_dim, name='query')(x)
      k = layers.Dense(self.attention_dim, name='key')(text_tokens)
      v = layers.Dense(self.attention_dim, name='value')(text_tokens)
      scores = jnp.einsum('btf,blf->btl', q, k) / jnp.sqrt(self.attention_dim)
      scores = jnp.where(text_mask[:, None, :] > 0, scores, jnp.finfo(scores.dtype).min)
      attended = jnp.einsum('btl,blf->btf', jax.nn.softmax(scores, axis=-1), v)
      out = x + gate * layers.Dense(x.shape[-1], name='out')(attended)
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

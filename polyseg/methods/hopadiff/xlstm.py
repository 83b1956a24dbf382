"""Stabilised multi-head mLSTM and HopaDIFF's HP-xLSTM (holistic-partial cross-input-gate xLSTM).

The mLSTM cell (xLSTM paper, matrix memory) comes in three interchangeable forms that give the same
numbers: `mlstm_recurrent` (`lax.scan` over frames, the oracle), `mlstm_parallel` (a [T, T] decay
matrix, the test oracle for short sequences) and `mlstm_chunkwise` (`lax.scan` over chunks, memory
linear in T, the default). Cell shapes: q, k, v `[B, H, T, dh]`, gate pre-activations `[B, H, T]`,
mask `[B, T]` float (1 = valid frame, padding at the end of each row).

Per head, with m_0 = NEG (finite), C_0 = 0 [dh, dh], n_0 = 0 [dh]:
  m_t = max(log_f_t + m_{t-1}, i_t)
  f'_t = exp(log_f_t + m_{t-1} - m_t),  i'_t = exp(i_t - m_t)
  C_t = f'_t C_{t-1} + i'_t v_t k_t^T,  n_t = f'_t n_{t-1} + i'_t k_t
  h_t = C_t q_t / (max(|n_t . q_t|, exp(-m_t)) + eps)
Padded frames get i = NEG, log_f = 0 and k = v = 0, so they leave the state unchanged; their
outputs are 0. exp(-m_t) is evaluated with m_t clamped at -80 (exp(80) ~ 5.5e34): below that h_t is
under float32 resolution anyway, and the clamp keeps gradients finite on all-padded rows.
"""

import functools
import math
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from polyseg.nn import layers

Dtype = Any

NEG = -1e30  # m_0 and the input gate of padded frames: finite, so NEG - NEG = 0, never NaN
EPS = 1e-6
_MIN_STABILISER = -80.0
FORGET_GATES = ('sigmoid', 'exp')
CROSS_ATTENTION_KINDS = ('chunked', 'windowed', 'none')


def _error(message: str) -> ValueError:
  return ValueError(f'polyseg/methods/hopadiff/xlstm.py: {message}')


class _CellInputs(NamedTuple):
  """The cell's inputs in float32 with padding neutralised (see the module docstring)."""

  q: jax.Array  # [B, H, T, dh]
  k: jax.Array  # [B, H, T, dh]
  v: jax.Array  # [B, H, T, dh]
  i_pre: jax.Array  # [B, H, T]
  log_f: jax.Array  # [B, H, T]


def _cell_inputs(q, k, v, i_pre, log_f, mask) -> _CellInputs:
  chex.assert_rank([q, k, v, i_pre, log_f, mask], [4, 4, 4, 3, 3, 2])
  chex.assert_equal_shape([q, k, v])
  chex.assert_shape([i_pre, log_f], q.shape[:3])
  chex.assert_shape(mask, (q.shape[0], q.shape[2]))
  valid = (mask > 0)[:, None, :]  # [B, 1, T]
  f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
  return _CellInputs(
    q=f32(q),
    k=jnp.where(valid[..., None], f32(k), 0.0),
    v=jnp.where(valid[..., None], f32(v), 0.0),
    i_pre=jnp.where(valid, f32(i_pre), NEG),
    log_f=jnp.where(valid, f32(log_f), 0.0),
  )


def _normalise(numerator: jax.Array, n_dot_q: jax.Array, m: jax.Array) -> jax.Array:
  """h = numerator / (max(|n . q|, exp(-m)) + eps): [..., dh], [...], [...] -> [..., dh]."""
  lower_bound = jnp.exp(-jnp.maximum(m, _MIN_STABILISER))
  return numerator / (jnp.maximum(jnp.abs(n_dot_q), lower_bound) + EPS)[..., None]


def _segment_sums(log_f: jax.Array) -> jax.Array:
  """[..., L] -> [..., L, L]: entry (i, j) = sum of log_f over j < l <= i if j <= i, else -inf.

  Each entry is summed directly (masked cumsum), not as a difference of two long cumsums.
  """
  length = log_f.shape[-1]
  terms = jnp.broadcast_to(log_f[..., :, None], log_f.shape + (length,))  # [.., l, j] = log_f_l
  terms = jnp.where(jnp.tril(jnp.ones((length, length), bool), -1), terms, 0.0)
  sums = jnp.cumsum(terms, axis=-2)
  return jnp.where(jnp.tril(jnp.ones((length, length), bool)), sums, -jnp.inf)


def mlstm_recurrent(q, k, v, i_pre, log_f, mask) -> jax.Array:
  """The step-by-step cell, `lax.scan` over T: [B, H, T, dh] x3, [B, H, T] x2, [B, T] -> [B, H, T, dh]."""
  x = _cell_inputs(q, k, v, i_pre, log_f, mask)
  batch, heads, _, dh = x.q.shape

  def step(carry, frame):
    c, n, m = carry  # [B, H, dh, dh], [B, H, dh], [B, H]
    q_t, k_t, v_t, i_t, f_t = frame
    m_t = jnp.maximum(f_t + m, i_t)
    f_w = jnp.exp(f_t + m - m_t)
    i_w = jnp.exp(i_t - m_t)
    c = f_w[..., None, None] * c + i_w[..., None, None] * v_t[..., :, None] * k_t[..., None, :]
    n = f_w[..., None] * n + i_w[..., None] * k_t
    h_t = _normalise(jnp.einsum('bhij,bhj->bhi', c, q_t), jnp.sum(n * q_t, -1), m_t)
    return (c, n, m_t), h_t

  init = (
    jnp.zeros((batch, heads, dh, dh)),
    jnp.zeros((batch, heads, dh)),
    jnp.full((batch, heads), NEG),
  )
  time_major = [jnp.moveaxis(a, 2, 0) for a in (x.q, x.k, x.v, x.i_pre, x.log_f)]
  _, h = jax.lax.scan(step, init, time_major)
  h = jnp.moveaxis(h, 0, 2) * mask[:, None, :, None]
  return h.astype(q.dtype)


def mlstm_parallel(q, k, v, i_pre, log_f, mask) -> jax.Array:
  """All frames at once through the [T, T] decay matrix (memory O(T^2)): same shapes as recurrent.

  log D_ij = sum_{j<l<=i} log_f_l + i_j (j <= i), m_i = max(NEG, max_j log D_ij) (= the recurrent m_i),
  h_i = sum_j exp(log D_ij - m_i) (q_i . k_j) v_j / (max(|sum_j exp(log D_ij - m_i) q_i . k_j|,
  exp(-m_i)) + eps).
  """
  x = _cell_inputs(q, k, v, i_pre, log_f, mask)
  log_d = _segment_sums(x.log_f) + x.i_pre[..., None, :]  # [B, H, T, T]
  m = jnp.maximum(jnp.max(log_d, axis=-1), NEG)
  scores = jnp.einsum('bhid,bhjd->bhij', x.q, x.k) * jnp.exp(log_d - m[..., None])
  h = _normalise(scores @ x.v, scores.sum(-1), m) * mask[:, None, :, None]
  return h.astype(q.dtype)


def mlstm_chunkwise(q, k, v, i_pre, log_f, mask, chunk_size: int = 64) -> jax.Array:
  """`lax.scan` over chunks of chunk_size frames carrying (C, n, m): same shapes as recurrent.

  Within a chunk the [L, L] parallel form (L = min(chunk_size, T)); the carried state enters every
  frame with log weight m_prev + (sum of log_f from the chunk start). Memory O(T * L), never [T, T].
  T is padded internally to a multiple of L (as padding frames) and cut back.
  """
  if chunk_size < 1:
    raise _error(f'chunk_size must be >= 1, got {chunk_size}')
  x = _cell_inputs(q, k, v, i_pre, log_f, mask)
  batch, heads, num_frames, dh = x.q.shape
  length = min(chunk_size, num_frames)
  pad = -num_frames % length
  num_chunks = (num_frames + pad) // length

  def chunks(a, fill):  # [B, H, T, ...] -> [N, B, H, L, ...]
    a = jnp.pad(a, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 3), constant_values=fill)
    a = a.reshape((batch, heads, num_chunks, length) + a.shape[3:])
    return jnp.moveaxis(a, 2, 0)

  def step(carry, chunk):
    c, n, m_prev = carry  # [B, H, dh, dh], [B, H, dh], [B, H]
    q_c, k_c, v_c, i_c, f_c = chunk
    log_d = _segment_sums(f_c) + i_c[..., None, :]  # [B, H, L, L]
    log_carry = jnp.cumsum(f_c, axis=-1) + m_prev[..., None]  # [B, H, L]
    m = jnp.maximum(jnp.maximum(jnp.max(log_d, axis=-1), log_carry), NEG)
    carry_w = jnp.exp(log_carry - m)
    scores = jnp.einsum('bhid,bhjd->bhij', q_c, k_c) * jnp.exp(log_d - m[..., None])
    numerator = carry_w[..., None] * jnp.einsum('bhij,bhlj->bhli', c, q_c) + scores @ v_c
    n_dot_q = carry_w * jnp.einsum('bhj,bhlj->bhl', n, q_c) + scores.sum(-1)
    h = _normalise(numerator, n_dot_q, m)
    # State at the chunk's last frame: its stabiliser is m[..., -1], its weights the last row.
    m_end = m[..., -1]
    state_w = jnp.exp(log_d[..., -1, :] - m_end[..., None])  # [B, H, L]
    decay = jnp.exp(log_carry[..., -1] - m_end)
    c = decay[..., None, None] * c + jnp.einsum('bhl,bhli,bhlj->bhij', state_w, v_c, k_c)
    n = decay[..., None] * n + jnp.einsum('bhl,bhlj->bhj', state_w, k_c)
    return (c, n, m_end), h

  init = (
    jnp.zeros((batch, heads, dh, dh)),
    jnp.zeros((batch, heads, dh)),
    jnp.full((batch, heads), NEG),
  )
  xs = (
    chunks(x.q, 0.0),
    chunks(x.k, 0.0),
    chunks(x.v, 0.0),
    chunks(x.i_pre, NEG),
    chunks(x.log_f, 0.0),
  )
  _, h = jax.lax.scan(step, init, xs)  # [N, B, H, L, dh]
  h = jnp.moveaxis(h, 0, 2).reshape(batch, heads, num_chunks * length, dh)[:, :, :num_frames]
  return (h * mask[:, None, :, None]).astype(q.dtype)


MLSTM_FORMS: dict[str, Callable[..., jax.Array]] = {
  'recurrent': mlstm_recurrent,
  'parallel': mlstm_parallel,
  'chunkwise': mlstm_chunkwise,
}


def mlstm(form: str, q, k, v, i_pre, log_f, mask, chunk_size: int = 64) -> jax.Array:
  """The cell in the named form ('recurrent' | 'parallel' | 'chunkwise'); chunk_size is for chunkwise."""
  if form not in MLSTM_FORMS:
    raise _error(f'form must be one of {sorted(MLSTM_FORMS)}, got {form!r}')
  if form == 'chunkwise':
    return mlstm_chunkwise(q, k, v, i_pre, log_f, mask, chunk_size)
  return MLSTM_FORMS[form](q, k, v, i_pre, log_f, mask)


# ------------------------------------------------------------------------------------------------
# Cross-attention between two sequences on the same time axis, never T x T.


def _windowed_attention(q, k, v, mask_q, mask_kv, window):
  """Keys and values gathered per query (`layers.dilated_windows`, dilation 1): [B, T, w, H, d]."""
  keys = layers.dilated_windows(k, window, 1)  # [B, T, w, H, d]
  values = layers.dilated_windows(v, window, 1)
  key_valid = (layers.dilated_windows(mask_kv, window, 1) > 0)[..., None]  # [B, T, w, 1]
  scores = jnp.einsum('bthd,btjhd->btjh', q, keys) / math.sqrt(q.shape[-1])
  scores = jnp.where(key_valid, scores, NEG)
  weights = jax.nn.softmax(scores, axis=2) * key_valid
  return jnp.einsum('btjh,btjhd->bthd', weights, values) * mask_q[:, :, None, None]


def _key_chunks(a: jax.Array, chunk_size: int) -> jax.Array:
  """[B, T, ...] -> [N, B, c, ...], zero-padded to N * c frames."""
  pad = -a.shape[1] % chunk_size
  a = layers.pad_time(a, 0, pad)
  a = a.reshape((a.shape[0], a.shape[1] // chunk_size, chunk_size) + a.shape[2:])
  return jnp.moveaxis(a, 1, 0)


def _flash_forward(q, k, v, mask_q, mask_kv, chunk_size):
  """Online softmax over key chunks: -> out [B, T, H, d], log-sum-exp [B, T, H], has_keys [B, T, H]."""
  scale = 1.0 / math.sqrt(q.shape[-1])

  def step(carry, chunk):
    run_max, run_sum, acc = carry  # [B, T, H], [B, T, H], [B, T, H, d]
    k_c, v_c, valid_c = chunk  # [B, c, H, d], [B, c, H, d], [B, c]
    valid_c = (valid_c > 0)[:, None, :, None]  # [B, 1, c, 1]
    scores = jnp.where(valid_c, jnp.einsum('bthd,bshd->btsh', q, k_c) * scale, NEG)
    new_max = jnp.maximum(run_max, scores.max(axis=2))
    probs = jnp.exp(scores - new_max[:, :, None]) * valid_c
    correction = jnp.exp(run_max - new_max)
    run_sum = correction * run_sum + probs.sum(axis=2)
    acc = correction[..., None] * acc + jnp.einsum('btsh,bshd->bthd', probs, v_c)
    return (new_max, run_sum, acc), None

  init = (jnp.full(q.shape[:3], NEG), jnp.zeros(q.shape[:3]), jnp.zeros(q.shape))
  chunked = (
    _key_chunks(k, chunk_size),
    _key_chunks(v, chunk_size),
    _key_chunks(mask_kv, chunk_size),
  )
  (run_max, run_sum, acc), _ = jax.lax.scan(step, init, chunked)
  has_keys = (run_sum > 0) & (mask_q > 0)[:, :, None]
  safe_sum = jnp.where(has_keys, run_sum, 1.0)
  out = jnp.where(has_keys[..., None], acc / safe_sum[..., None], 0.0)
  return out, run_max + jnp.log(safe_sum), has_keys


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash_attention(q, k, v, mask_q, mask_kv, chunk_size):
  """Full attention over valid keys, forward by online softmax, backward by recomputation."""
  return _flash_forward(q, k, v, mask_q, mask_kv, chunk_size)[0]


def _flash_attention_fwd(q, k, v, mask_q, mask_kv, chunk_size):
  out, lse, has_keys = _flash_forward(q, k, v, mask_q, mask_kv, chunk_size)
  return out, (q, k, v, mask_q, mask_kv, out, lse, has_keys)


def _flash_attention_bwd(chunk_size, residuals, d_out):
  """Recomputes the probabilities chunk by chunk from the saved log-sum-exp: memory O(T * c)."""
  q, k, v, mask_q, mask_kv, out, lse, has_keys = residuals
  num_frames, scale = q.shape[1], 1.0 / math.sqrt(q.shape[-1])
  d_out = jnp.where(has_keys[..., None], d_out, 0.0)
  delta = jnp.sum(d_out * out, axis=-1)  # [B, T, H]

  def step(d_q, chunk):
    k_c, v_c, valid_c = chunk
    valid_c = (valid_c > 0)[:, None, :, None]
    scores = jnp.where(valid_c, jnp.einsum('bthd,bshd->btsh', q, k_c) * scale, NEG)
    probs = jnp.exp(scores - lse[:, :, None]) * valid_c  # [B, T, c, H]
    d_v = jnp.einsum('btsh,bthd->bshd', probs, d_out)
    d_scores = probs * (jnp.einsum('bthd,bshd->btsh', d_out, v_c) - delta[:, :, None])
    d_q = d_q + jnp.einsum('btsh,bshd->bthd', d_scores, k_c) * scale
    d_k = jnp.einsum('btsh,bthd->bshd', d_scores, q) * scale
    return d_q, (d_k, d_v)

  chunked = (
    _key_chunks(k, chunk_size),
    _key_chunks(v, chunk_size),
    _key_chunks(mask_kv, chunk_size),
  )
  d_q, (d_k, d_v) = jax.lax.scan(step, jnp.zeros_like(q), chunked)

  def unchunk(a):  # [N, B, c, H, d] -> [B, T, H, d]
    a = jnp.moveaxis(a, 0, 1)
    return a.reshape((a.shape[0], -1) + a.shape[3:])[:, :num_frames]

  return d_q, unchunk(d_k), unchunk(d_v), jnp.zeros_like(mask_q), jnp.zeros_like(mask_kv)


_flash_attention.defvjp(_flash_attention_fwd, _flash_attention_bwd)


def cross_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  mask_q: jax.Array,
  mask_kv: jax.Array,
  kind: str = 'chunked',
  window: int = 65,
  chunk_size: int = 64,
) -> jax.Array:
  """Multi-head softmax attention, scores scaled 1/sqrt(d): q, k, v [B, T, H, d] -> [B, T, H, d].

  kind 'windowed': query t sees the keys t - w//2 .. t + w//2 (w = window, odd), memory O(T * w).
  kind 'chunked': query t sees every key; flash-style `lax.scan` over key chunks of chunk_size with an
  online softmax, and a custom backward pass that recomputes the chunks, so memory is O(T * chunk)
  in both passes. Keys with mask_kv 0 are excluded; padded queries (and queries without any valid
  key) give 0. Masks [B, T] float.
  """
  chex.assert_rank([q, k, v, mask_q, mask_kv], [4, 4, 4, 2, 2])
  chex.assert_equal_shape([q, k, v])
  chex.assert_shape([mask_q, mask_kv], q.shape[:2])
  dtype = q.dtype
  q, k, v = (a.astype(jnp.float32) for a in (q, k, v))
  mask_q, mask_kv = mask_q.astype(jnp.float32), mask_kv.astype(jnp.float32)
  if kind == 'windowed':
    if window < 1 or window % 2 == 0:
      raise _error(f'cross-attention window must be a positive odd number, got {window}')
    out = _windowed_attention(q, k, v, mask_q, mask_kv, window)
  elif kind == 'chunked':
    if chunk_size < 1:
      raise _error(f'chunk_size must be >= 1, got {chunk_size}')
    out = _flash_attention(q, k, v, mask_q, mask_kv, min(chunk_size, q.shape[1]))
  else:
    raise _error(f"cross-attention kind must be 'windowed' or 'chunked', got {kind!r}")
  return out.astype(dtype)


# ------------------------------------------------------------------------------------------------
# Flax modules.


def _forget_bias_init(forget_gate: str) -> Callable[..., jax.Array]:
  """Forget-gate bias linspace(3, 6) over heads (xLSTM); for the exp gate log sigmoid of that, so
  both kinds start with the same forget factors f ~ 0.95 .. 0.998."""

  def init(key, shape, dtype=jnp.float32):
    del key
    bias = jnp.linspace(3.0, 6.0, shape[0])
    return (jax.nn.log_sigmoid(bias) if forget_gate == 'exp' else bias).astype(dtype)

  return init


def _reverse_within_length(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
  """Reverses each row's valid frames along `axis` (t -> len-1-t for t < len); padding stays put."""
  num_frames = mask.shape[1]
  lengths = jnp.sum(mask > 0, axis=1, keepdims=True)  # [B, 1]
  frames = jnp.arange(num_frames)[None, :]
  index = jnp.where(frames < lengths, lengths - 1 - frames, frames)  # [B, T]
  index = index.reshape(index.shape[:1] + (1,) * (axis - 1) + (num_frames,))
  index = index.reshape(index.shape + (1,) * (x.ndim - axis - 1))
  return jnp.take_along_axis(x, index, axis=axis)


class MLSTMLayer(nn.Module):
  """One HP-xLSTM branch: an mLSTM layer with matrix memory, split in two calls so the parent can
  mix the two branches' input-gate pre-activations in between.

  `embed(z)`: z [B, T, D] -> (u, g), u = LayerNorm(Dense_F(z)) the branch input (and residual path),
  g = Dense_F(u) the input-gate pre-activation features, both [B, T, F].
  `__call__(u, g, mask)` -> zhat [B, T, F]: q, k / sqrt(dh), v = Dense(u) in H heads; forget gate
  Dense_H(u) (sigmoid: log sigmoid; exp: the pre-activation itself); input gate i = Dense_H(g);
  the mLSTM cell in `form`; per-head LayerNorm over dh; h = sigmoid(Dense_F(u)) * that;
  zhat = (u + Dense_F(h)) * mask.
  bidirectional: the cell also runs on each row reversed within its valid length (same q, k, v and
  gates), mapped back; each direction has its own per-head norm, both are gated by the same output
  gate, concatenated ([B, T, 2F]) and projected by the output Dense.
  """

  features: int = 64
  num_heads: int = 4
  form: str = 'chunkwise'
  chunk_size: int = 64
  forget_gate: str = 'sigmoid'
  bidirectional: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.features % self.num_heads:
      raise _error(f'features ({self.features}) must be divisible by num_heads ({self.num_heads})')
    if self.forget_gate not in FORGET_GATES:
      raise _error(f'forget_gate must be one of {FORGET_GATES}, got {self.forget_gate!r}')
    if self.form not in MLSTM_FORMS:
      raise _error(f'form must be one of {sorted(MLSTM_FORMS)}, got {self.form!r}')
    dense = functools.partial(layers.Dense, self.features, dtype=self.dtype)
    self.input_proj = dense()
    self.input_norm = nn.LayerNorm(dtype=self.dtype)
    self.query, self.key, self.value = dense(), dense(), dense()
    self.forget_proj = layers.Dense(
      self.num_heads, dtype=self.dtype, bias_init=_forget_bias_init(self.forget_gate)
    )
    self.output_gate = dense()
    self.input_gate_features = dense()
    self.input_gate = layers.Dense(self.num_heads, dtype=self.dtype)
    self.head_norms = [
      nn.LayerNorm(reduction_axes=-1, feature_axes=(-2, -1), dtype=self.dtype)
      for _ in range(2 if self.bidirectional else 1)
    ]
    self.output_proj = dense()

  def embed(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """z [B, T, D] -> (u, g), both [B, T, F]."""
    chex.assert_rank(z, 3)
    u = self.input_norm(self.input_proj(z))
    return u, self.input_gate_features(u)

  def __call__(self, u: jax.Array, g: jax.Array, mask: jax.Array) -> jax.Array:
    """u, g [B, T, F], mask [B, T] -> zhat [B, T, F] (0 on padded frames)."""
    chex.assert_shape([u, g], (None, None, self.features))
    chex.assert_shape(mask, u.shape[:2])
    batch, num_frames, _ = u.shape
    dh = self.features // self.num_heads

    def heads(a):  # [B, T, F] -> [B, H, T, dh]
      return a.reshape(batch, num_frames, self.num_heads, dh).transpose(0, 2, 1, 3)

    q, k, v = heads(self.query(u)), heads(self.key(u)) / math.sqrt(dh), heads(self.value(u))
    f_pre = self.forget_proj(u).transpose(0, 2, 1)  # [B, H, T]
    log_f = jax.nn.log_sigmoid(f_pre) if self.forget_gate == 'sigmoid' else f_pre
    i_pre = self.input_gate(g).transpose(0, 2, 1)
    cell = functools.partial(mlstm, self.form, mask=mask, chunk_size=self.chunk_size)
    directions = [cell(q, k, v, i_pre, log_f)]
    if self.bidirectional:
      reverse = functools.partial(_reverse_within_length, mask=mask, axis=2)
      backward = cell(*(reverse(a) for a in (q, k, v, i_pre, log_f)))
      directions.append(reverse(backward))
    out_gate = nn.sigmoid(self.output_gate(u))
    gated = [
      out_gate * norm(h.transpose(0, 2, 1, 3)).reshape(batch, num_frames, self.features)
      for norm, h in zip(self.head_norms, directions)
    ]
    out = self.output_proj(jnp.concatenate(gated, axis=-1))
    return (u + out) * mask[..., None].astype(out.dtype)


class CrossAttention(nn.Module):
  """Multi-head attention from one branch to the other (same time axis): [B, T, F] x2 -> [B, T, F].

  Q = Dense(query_in), K, V = Dense(kv_in), then `cross_attention(kind)`, then an output Dense; 0 on
  padded frames.
  """

  features: int = 64
  num_heads: int = 4
  kind: str = 'chunked'
  window: int = 65
  chunk_size: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query_in: jax.Array, kv_in: jax.Array, mask: jax.Array) -> jax.Array:
    chex.assert_equal_shape([query_in, kv_in])
    chex.assert_shape(mask, query_in.shape[:2])
    batch, num_frames, _ = query_in.shape

    def heads(a):  # [B, T, F] -> [B, T, H, d]
      return a.reshape(batch, num_frames, self.num_heads, self.features // self.num_heads)

    dense = functools.partial(layers.Dense, self.features, dtype=self.dtype)
    attended = cross_attention(
      heads(dense(name='query')(query_in)),
      heads(dense(name='key')(kv_in)),
      heads(dense(name='value')(kv_in)),
      mask,
      mask,
      self.kind,
      self.window,
      self.chunk_size,
    )
    out = dense(name='out')(attended.reshape(batch, num_frames, self.features))
    return out * mask[..., None].astype(out.dtype)


class HPxLSTM(nn.Module):
  """HopaDIFF's holistic-partial aware xLSTM: (z_h [B, T, Dh], z_p [B, T, Dp], mask [B, T]) ->
  (zhat_h, zhat_p), both [B, T, F], 0 on padded frames.

  Two `MLSTMLayer` branches with separate weights. Bidirectional cross-attention on the input-gate
  pre-activation features (BCA): g_h' = g_h + CrossAttn_h(g_h -> g_p), g_p' = g_p + CrossAttn_p(g_p ->
  g_h), each direction with its own Q/K/V/out Dense; then i = Dense_H(g') per branch.
  cross_attention='none' skips BCA (the "w/o BCAF" ablation). z_p=None runs the holistic branch alone
  (the "w/o partial branch" ablation) and returns (zhat_h, None).
  """

  features: int = 64
  num_heads: int = 4
  form: str = 'chunkwise'
  chunk_size: int = 64
  forget_gate: str = 'sigmoid'
  cross_attention: str = 'chunked'
  window: int = 65
  bidirectional: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.cross_attention not in CROSS_ATTENTION_KINDS:
      raise _error(
        f'cross_attention must be one of {CROSS_ATTENTION_KINDS}, got {self.cross_attention!r}'
      )
    branch = functools.partial(
      MLSTMLayer,
      features=self.features,
      num_heads=self.num_heads,
      form=self.form,
      chunk_size=self.chunk_size,
      forget_gate=self.forget_gate,
      bidirectional=self.bidirectional,
      dtype=self.dtype,
    )
    self.holistic, self.partial = branch(), branch()
    if self.cross_attention != 'none':
      attention = functools.partial(
        CrossAttention,
        features=self.features,
        num_heads=self.num_heads,
        kind=self.cross_attention,
        window=self.window,
        chunk_size=self.chunk_size,
        dtype=self.dtype,
      )
      self.cross_holistic, self.cross_partial = attention(), attention()

  def __call__(
    self, z_h: jax.Array, z_p: jax.Array | None, mask: jax.Array
  ) -> tuple[jax.Array, jax.Array | None]:
    chex.assert_rank([z_h, mask], [3, 2])
    chex.assert_shape(mask, z_h.shape[:2])
    u_h, g_h = self.holistic.embed(z_h)
    if z_p is None:
      return self.holistic(u_h, g_h, mask), None
    chex.assert_shape(z_p, z_h.shape[:2] + (None,))
    u_p, g_p = self.partial.embed(z_p)
    if self.cross_attention != 'none':
      g_h, g_p = g_h + self.cross_holistic(g_h, g_p, mask), g_p + self.cross_partial(g_p, g_h, mask)
    return self.holistic(u_h, g_h, mask), self.partial(u_p, g_p, mask)

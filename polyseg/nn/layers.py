"""Building blocks of the ASFormer/DiffAct networks: masked, channels-last, memory linear in T.

Shapes: `x [B, T, F]`, `mask [B, T]` float (1 = valid frame, padding at the end of each video).
Every function here gives valid frames exactly what the unpadded video would get and returns 0 on
padded frames.
"""

import functools
import math
import zlib
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import ad_checkpoint
from jax.extend import random as jrandom

Dtype = Any
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str) -> Dtype:
  """`config.model.dtype` -> the dtype activations are computed in (params always stay float32;
  model outputs are returned in float32 so losses and sampling run in full precision)."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f'model.dtype={name!r}; choose one of {sorted(COMPUTE_DTYPES)}')
  return COMPUTE_DTYPES[name]


def _check_odd_kernel(kernel_size: int) -> None:
  if kernel_size < 1 or kernel_size % 2 == 0:
    raise ValueError(
      f"polyseg/nn/layers.py: kernel_size must be a positive odd number, got {kernel_size}"
    )


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree (arrays or `jax.ShapeDtypeStruct`s)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


INITS = ('flax', 'torch')
_CONDITION_SUFFIX = '_cond'


def _uniform(key: jax.Array, bound: jax.Array, shape, dtype) -> jax.Array:
  """U(-bound, bound) of `shape`, drawn flat and reshaped: jax's values for the shape, and on CPU
  quicker to compile (`diffusion.standard_normal` says why)."""
  return jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound).reshape(shape)


def torch_default_init(params: Any, rng: jax.Array) -> Any:
  """`params` re-drawn as PyTorch's default initialisation draws the same layers (DiffAct's and the
  other reference codes' init; `config.model.init='torch'`): every kernel (Dense [in, out], conv
  [k, in, out]) and its bias ~ U(-b, b), b = 1 / sqrt(fan_in), fan_in = prod(kernel.shape[:-1]):
  nn.Linear's and nn.Conv1d's kaiming_uniform(a=sqrt(5)) (the variance is a third of Flax's
  lecun_normal). A layer `x` with a sibling `x_cond` (a decoder layer's query or key on
  concat[x, condition], split in two) takes the fan-in of the concatenation, both parts. Other
  parameters (norm scales and offsets, embeddings, ...) keep their values."""

  def fan_in(layer: dict) -> int:
    return math.prod(layer['kernel'].shape[:-1])

  # Each leaf's own key and bound, grouped by (shape, dtype): one vmapped draw per group gives the
  # values of one draw per leaf from a fraction of the program to compile.
  groups: dict[tuple, list] = {}  # (shape, dtype) -> [(path names..., field), fold-in data, bound]

  def collect(tree: dict, path: tuple[str, ...]) -> None:
    for name, value in tree.items():
      if not isinstance(value, dict):
        continue
      if 'kernel' not in value:
        collect(value, (*path, name))
        continue
      base = name.removesuffix(_CONDITION_SUFFIX)
      partner = tree.get(name + _CONDITION_SUFFIX) if base == name else tree.get(base)
      fans = fan_in(value) + (
        fan_in(partner) if isinstance(partner, dict) and 'kernel' in partner else 0
      )
      for field in ('kernel', 'bias'):
        if field in value:
          where = (*path, name, field)
          data = zlib.crc32(('/' + '/'.join(where)).encode())
          group = groups.setdefault((value[field].shape, value[field].dtype), [])
          group.append((where, data, 1.0 / math.sqrt(fans)))

  collect(params, ())
  drawn = {}
  for (shape, dtype), members in groups.items():
    data = jnp.array([d for _, d, _ in members], jnp.uint32)
    bounds = jnp.array([b for _, _, b in members], dtype)
    keys = jax.vmap(lambda d: jax.random.fold_in(rng, d))(data)
    uniform = functools.partial(_uniform, shape=shape, dtype=dtype)
    for (where, _, _), value in zip(members, jax.vmap(uniform)(keys, bounds)):
      drawn[where] = value

  def rebuild(tree: dict, path: tuple[str, ...]) -> dict:
    return {
      name: rebuild(value, (*path, name))
      if isinstance(value, dict)
      else drawn.get((*path, name), value)
      for name, value in tree.items()
    }

  return rebuild(params, ())


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal diffusion-step embedding (DDPM / fairseq): t [B] int -> [B, dim] float32.

  Frequencies exp(-log(10000) * i / (dim/2 - 1)), i < dim/2; output concat[sin, cos] (zero-padded
  by one column when dim is odd).
  """
  chex.assert_rank(t, 1)
  half = dim // 2
  if half < 2:
    raise ValueError(f"polyseg/nn/layers.py: timestep_embedding needs dim >= 4, got {dim}")
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  return jnp.pad(emb, [(0, 0), (0, dim % 2)])


def instance_norm(x: jax.Array, mask: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Per video and channel normalisation over valid frames, no affine: [B, T, F] -> [B, T, F].

  torch InstanceNorm1d semantics (biased variance, eps inside the sqrt), restricted to the valid frames.
  """
  chex.assert_rank(x, 3)
  chex.assert_shape(mask, x.shape[:2])
  m = mask[..., None].astype(jnp.float32)
  x32 = x.astype(jnp.float32)
  count = jnp.maximum(m.sum(axis=1, keepdims=True), 1.0)
  mean = (x32 * m).sum(axis=1, keepdims=True) / count
  var = (jnp.square(x32 - mean) * m).sum(axis=1, keepdims=True) / count
  return ((x32 - mean) * jax.lax.rsqrt(var + eps) * m).astype(x.dtype)


FENCE_BLOCK = 16  # width of the identity matmul of `fusion_fence` on CPU


def _identity_matmul(x: jax.Array) -> jax.Array:
  width = math.gcd(x.size, FENCE_BLOCK)
  return (x.reshape(-1, width) @ jnp.eye(width, dtype=x.dtype)).reshape(x.shape)


def fusion_fence(x: jax.Array, train: bool) -> jax.Array:
  """The identity, [..., F] -> [..., F], as a value XLA:CPU computes once, forward and backward.

  A residual stack sums, layer after layer, the stream and each layer's output (forward) or the
  cotangent of the layer above and the layer's own dropout-masked input gradient (backward). Those
  sums are elementwise, and XLA:CPU fuses them into every consumer, so each layer recomputed the
  sums (and regenerated the dropout masks) of all the layers before it: quadratic in depth, 78% of
  a Breakfast train step. `optimization_barrier` does not stop it (XLA:CPU removes barriers before
  fusion); a matmul does. On CPU the value goes through a matmul with a 16 x 16 identity (exact:
  x * 1 plus zeros; its gradient is the same matmul); other backends get the plain identity.

  With `train` False, x itself: without a backward pass or dropout masks, the fusion costs less
  than the matmul (DDIM sampling 2-12% faster without it, `docs/benchmarks.md`).
  """
  if not train:
    return x
  return jax.lax.platform_dependent(x, cpu=_identity_matmul, default=lambda v: v)


def dilated_windows(x: jax.Array, kernel_size: int, dilation: int) -> jax.Array:
  """The dilated-conv grid around every frame: x [B, T, ...] -> [B, T, k, ...].

  Entry j of frame t is x[t + (j - k//2) * dilation], zero where that index is outside [0, T).
  Built from k static slices of a zero-padded copy: O(T * k) memory.
  """
  return jnp.stack(shifted_copies(x, kernel_size, dilation), axis=2)


def pad_time(x: jax.Array, before: int, after: int) -> jax.Array:
  """x [B, T, ...] zero-padded along T: [B, before + T + after, ...]."""
  return jnp.pad(x, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))


def shifted_copies(
  x: jax.Array, kernel_size: int, dilation: int | jax.Array, max_dilation: int | None = None
) -> list[jax.Array]:
  """The k copies x[t + (j - k//2) * dilation] of x [B, T, ...] along T, zero outside [0, T).

  A Python int `dilation`: static slices of a copy padded by the reach, with `_static_copies`'
  gradient. With `max_dilation` set, `dilation` may be traced (a layer of a scan over layers, up to
  max_dilation): dynamic slices of a copy padded by min(T, reach of max_dilation) (`_shift`).
  """
  _check_odd_kernel(kernel_size)
  if max_dilation is None:
    return list(_static_copies(x, kernel_size, dilation))
  half = kernel_size // 2
  return [_shift(x, (j - half) * dilation, half * max_dilation) for j in range(kernel_size)]


def _shift(x: jax.Array, offset: int | jax.Array, max_reach: int | None = None) -> jax.Array:
  """y[t] = x[t + offset] along axis 1 of x [B, T, ...], zero where t + offset is outside [0, T).

  `offset` a Python int, or, with `max_reach` set, a traced int with |offset| <= max_reach: a
  dynamic slice of x padded by min(T, max_reach) starting at pad + offset clipped to [0, 2 pad], so
  that an offset of T or more lands wholly in the padding (zeros). (Unclipped, dynamic_slice counts
  a start below 0 from the end, like a negative Python index: an offset below -2 T read frames.)"""
  num_frames = x.shape[1]
  if max_reach is not None:
    pad = min(num_frames, max_reach)
    start = jnp.clip(pad + offset, 0, 2 * pad)
    return jax.lax.dynamic_slice_in_dim(pad_time(x, pad, pad), start, num_frames, axis=1)
  reach = min(abs(offset), num_frames)
  if reach == 0:
    return x
  before, after = (0, reach) if offset > 0 else (reach, 0)
  padded = pad_time(x, before, after)
  return jax.lax.slice_in_dim(padded, after, after + num_frames, axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _static_copies(x: jax.Array, kernel_size: int, dilation: int) -> tuple[jax.Array, ...]:
  """`shifted_copies` for a Python int dilation: k static slices of x padded by the reach.

  Its gradient is the sum of the k cotangents shifted back, each [B, T, ...]. Differentiated
  through the slices instead, it would be the sum of k zero-padded [B, T + 2 reach, ...] arrays,
  which XLA:CPU summed, sliced and transposed for the weight gradients in one fusion: about a
  fifth of a train step (`docs/benchmarks.md`).
  """
  num_frames, reach = x.shape[1], (kernel_size // 2) * dilation
  padded = pad_time(x, reach, reach)
  starts = [j * dilation for j in range(kernel_size)]
  return tuple(jax.lax.slice_in_dim(padded, a, a + num_frames, axis=1) for a in starts)


def _static_copies_fwd(x, kernel_size, dilation):
  return _static_copies(x, kernel_size, dilation), None


def _static_copies_bwd(kernel_size, dilation, _, cotangents):
  return (_shifted_back_sum(cotangents, kernel_size, dilation),)


def _shifted_back_sum(cotangents, kernel_size: int, dilation: int) -> jax.Array:
  """sum_j of cotangent j shifted back by its offset (j - k//2) * dilation: [B, T, ...]."""
  half = kernel_size // 2
  return sum(_shift(g, -(j - half) * dilation) for j, g in enumerate(cotangents))


_static_copies.defvjp(_static_copies_fwd, _static_copies_bwd)


def window_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  mask: jax.Array,
  kernel_size: int,
  dilation: int | jax.Array,
  outside_logit: float | None = None,
  max_dilation: int | None = None,
) -> jax.Array:
  """Single-head dilated window attention: q, k, v [B, T, F] -> [B, T, F].

  Query t attends to the k keys t + j * dilation, j in -(k//2)..k//2, with scale 1/sqrt(F). Keys
  outside the video's valid frames are masked out of the softmax (`outside_logit` None), or enter
  it with the fixed logit `outside_logit` and a zero value, so that near the video's ends a query
  can give weight to nothing (the DiffAct reference's masking, `log(mask + 1e-6)`, is
  `outside_logit=log(1e-6)`). Queries whose keys are all masked and padded queries give 0. Memory
  O(T * k * F): each of the k key / value offsets is a shifted slice of a zero-padded copy, used
  directly (no window of keys or values, no T x T matrix; XLA may write the scores' [B, T, k, F]
  products before summing them). `max_dilation`: see `shifted_copies`.
  """
  chex.assert_rank(q, 3)
  chex.assert_equal_shape([q, k, v])
  chex.assert_shape(mask, q.shape[:2])
  _check_odd_kernel(kernel_size)
  mask = mask.astype(jnp.float32)
  if max_dilation is None:
    return _static_window_attention(q, k, v, mask, kernel_size, dilation, outside_logit)
  copies = functools.partial(
    shifted_copies, kernel_size=kernel_size, dilation=dilation, max_dilation=max_dilation
  )
  return _window_attention_forward(q, k, v, mask, copies, outside_logit)[0]


def _window_attention_forward(q, k, v, mask, copies, outside_logit):
  """`window_attention` with `copies(x)` the k shifted copies of x: (out [B, T, F], the softmax
  over the k keys [B, T, k] float32, key validity [B, T, k] bool)."""
  keys, values, valid = (copies(x) for x in (k, v, mask))
  # One reduction over F of the stacked products: k reductions joined by a stack made XLA:CPU
  # emit one loop unrolling all k reductions per entry, slow to compile (docs/benchmarks.md).
  products = jnp.stack([(q * key).astype(jnp.float32) for key in keys], -2)  # [B, T, k, F]
  scores = jnp.sum(products, -1) / math.sqrt(q.shape[-1])  # [B, T, k]
  key_valid = jnp.stack(valid, -1) > 0  # [B, T, k]
  fill = jnp.finfo(jnp.float32).min if outside_logit is None else outside_logit
  probs = jax.nn.softmax(jnp.where(key_valid, scores, fill), axis=-1)
  weights = (probs * key_valid).astype(v.dtype)
  out = sum(weights[..., j, None] * value for j, value in enumerate(values))
  return out * mask[..., None].astype(out.dtype), probs, key_valid


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _static_window_attention(q, k, v, mask, kernel_size, dilation, outside_logit):
  """`window_attention` for a Python int dilation, with a written-out gradient.

  Differentiated through the forward pass, the weights' gradient came as k [B, T, k] arrays (one
  per tap, zero but for its column), which XLA:CPU summed and took through the softmax's backward
  again for every channel of the keys' shifted sum: 3x the time of the values' sum. Here the
  weights' gradient is one [B, T, k] array (GTEA-size train step about 3% faster,
  `docs/benchmarks.md`).
  """
  return _static_window_attention_fwd(q, k, v, mask, kernel_size, dilation, outside_logit)[0]


def _static_window_attention_fwd(q, k, v, mask, kernel_size, dilation, outside_logit):
  copies = functools.partial(_static_copies, kernel_size=kernel_size, dilation=dilation)
  out, probs, _ = _window_attention_forward(q, k, v, mask, copies, outside_logit)
  return out, (q, k, v, mask, probs)


def _static_window_attention_bwd(kernel_size, dilation, outside_logit, residuals, g):
  """Softmax backward on [B, T, k], then dq = sum_j ds_j keys_j, dk and dv the shifted-back sums
  of ds_j q and w_j g (g the output's cotangent on valid frames)."""
  del outside_logit  # the fixed logit has no gradient; masked keys get none either
  q, k, v, mask, probs = residuals
  keys, values, valid = (_static_copies(x, kernel_size, dilation) for x in (k, v, mask))
  key_valid = jnp.stack(valid, -1) > 0
  g = g * mask[..., None].astype(g.dtype)
  dweights = jnp.stack([jnp.sum((g * value).astype(jnp.float32), -1) for value in values], -1)
  dweights = jnp.where(key_valid, dweights, 0.0)
  dscores = probs * (dweights - jnp.sum(probs * dweights, -1, keepdims=True))
  dscores = (jnp.where(key_valid, dscores, 0.0) / math.sqrt(q.shape[-1])).astype(q.dtype)
  weights = (probs * key_valid).astype(v.dtype)
  offsets = range(kernel_size)
  dq = sum(dscores[..., j, None] * keys[j] for j in offsets)
  dk = _shifted_back_sum([dscores[..., j, None] * q for j in offsets], kernel_size, dilation)
  dv = _shifted_back_sum([weights[..., j, None] * g for j in offsets], kernel_size, dilation)
  return dq, dk, dv, jnp.zeros_like(mask)


_static_window_attention.defvjp(_static_window_attention_fwd, _static_window_attention_bwd)


def bernoulli_mask(key: jax.Array, keep_prob: float, shape: Sequence[int]) -> jax.Array:
  """A bool array of `shape`, each entry True with probability `keep_prob` (to 1/65536), independent.

  Each entry compares a 16-bit uniform with round(keep_prob * 65536); one threefry2x32 block (its
  two 32-bit words) gives four of them. `jax.random.bernoulli` spends a block on every entry (it
  draws a 32-bit float and keeps one word of the two): a [1, 1024, 768] mask took 28 ms there and
  4 ms here on 2 CPU cores; the masks were a fifth of a GTEA-size train step's instruction time
  (`docs/benchmarks.md`).
  `key`: a threefry key, raw uint32 [2] or typed.
  """
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  if key.shape != (2,) or key.dtype != jnp.uint32:
    raise ValueError(
      f'bernoulli_mask needs a threefry key (uint32 [2]); got {key.dtype} {key.shape}'
    )
  size = math.prod(shape)
  counts = jax.lax.iota(jnp.uint32, -(-size // 4))
  high, low = jrandom.threefry2x32_p.bind(key[0], key[1], jnp.zeros_like(counts), counts)
  threshold = np.uint32(round(keep_prob * 65536))
  halves = [high & 0xFFFF, high >> 16, low & 0xFFFF, low >> 16]
  keep = jnp.stack([half < threshold for half in halves], -1)
  return keep.reshape(-1)[:size].reshape(shape)


class Dropout(nn.Module):
  """`flax.linen.Dropout` (same attributes and rescaling by 1/(1-rate)) with `bernoulli_mask`'s masks:
  entries along `broadcast_dims` share one draw."""

  rate: float
  broadcast_dims: Sequence[int] = ()
  deterministic: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
    deterministic = nn.merge_param('deterministic', self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep_prob = 1.0 - self.rate
    shape = list(x.shape)
    for dim in self.broadcast_dims:
      shape[dim] = 1
    mask = jnp.broadcast_to(bernoulli_mask(self.make_rng('dropout'), keep_prob, shape), x.shape)
    return jax.lax.select(mask, x / keep_prob, jnp.zeros_like(x))


def channel_dropout(rate: float) -> Dropout:
  """Dropout of whole channels per video ([B, T, D] mask shared over T), rescaled by 1/(1-rate)."""
  return Dropout(rate, broadcast_dims=(-2,))


def temporal_dropout(rate: float) -> Dropout:
  """Dropout of whole frames per video ([B, T, D] mask shared over D), rescaled by 1/(1-rate)."""
  return Dropout(rate, broadcast_dims=(-1,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_product(x: jax.Array, kernel: jax.Array, precision: Any) -> jax.Array:
  """x [..., Fin] @ kernel [Fin, Fout] -> [..., Fout], with `_dense_product_bwd`'s gradient."""
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _dense_product_fwd(x, kernel, precision):
  return _dense_product(x, kernel, precision), (x, kernel)


def _dense_product_bwd(precision, residuals, g):
  """dx = g kernel^T; dkernel = the sum over the leading dimension of x [B, ..., Fin] (the batch's
  videos; all of x when it is [N, Fin]) of each one's x^T g [Fin, Fout], in float32."""
  x, kernel = residuals
  dx = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
  per_example = lambda a: a.reshape(a.shape[0] if a.ndim > 2 else 1, -1, a.shape[-1])
  partial_sums = jnp.einsum(
    'brf,brg->bfg',
    per_example(x),
    per_example(g),
    precision=precision,
    preferred_element_type=jnp.float32,
  )
  return dx.astype(x.dtype), partial_sums.sum(0).astype(kernel.dtype)


_dense_product.defvjp(_dense_product_fwd, _dense_product_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`jax.lax.dot_general` for `Dense` and `DenseGeneral`: their contraction (lhs [..., Fin] with
  rhs [Fin, Fout] or [Fin, *features], flattened) goes through `_dense_product`, whose kernel
  gradient is one [Fin, Fout] product per video, summed.

  Autodiff's kernel gradient contracts x and g over all B x T frames in one dot, which XLA:CPU ran
  at about a third of the speed of the forward product ([4, 4096, 64] inputs: 1.9 against 0.6 ms);
  split per video, the GTEA-size 4-video train step runs about 8% faster (`docs/benchmarks.md`).
  With rhs [Fin, H, S] (Polyphony's semantic projector), autodiff's kernel gradient also
  transposed the [B, T, H, S] cotangent in a copy that took a third of stage 2's train step.
  Other contractions and a `preferred_element_type` go to `dot_general` unchanged."""
  dense = (((lhs.ndim - 1,), (0,)), ((), ()))
  if dimension_numbers != dense or rhs.ndim < 2 or preferred_element_type is not None:
    return jax.lax.dot_general(
      lhs, rhs, dimension_numbers, precision, preferred_element_type=preferred_element_type
    )
  product = _dense_product(lhs, rhs.reshape(rhs.shape[0], -1), precision)
  return product.reshape(lhs.shape[:-1] + rhs.shape[1:])


class Dense(nn.Dense):
  """`flax.linen.Dense` (same attributes, parameters and names) with `dense_dot_general`."""

  dot_general: Any = dense_dot_general


class DenseGeneral(nn.DenseGeneral):
  """`flax.linen.DenseGeneral` (same attributes, parameters and names) with `dense_dot_general`
  (which takes the default contraction, the last input axis, with `features` a tuple)."""

  dot_general: Any = dense_dot_general


class DilatedConv(nn.Module):
  """1-D convolution over T, zero 'same' padding, with bias: [B, T, Fin] -> [B, T, features].

  The input is masked first (padding acts like the zero padding of the unpadded video); the
  output is masked too. With `max_dilation` set, the dilation is a call argument that may be
  traced (a layer of a scan over layers): the sum of the k kernel taps over `shifted_copies`, each
  tap's kernel gradient a product per video as `Dense`'s (`_dense_product`).
  """

  features: int
  kernel_size: int
  dilation: int
  dtype: Dtype = jnp.float32
  max_dilation: int | None = None

  @nn.compact
  def __call__(
    self, x: jax.Array, mask: jax.Array, dilation: int | jax.Array | None = None
  ) -> jax.Array:
    chex.assert_rank(x, 3)
    chex.assert_shape(mask, x.shape[:2])
    _check_odd_kernel(self.kernel_size)
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (self.kernel_size, x.shape[-1], self.features)
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    x, kernel, bias = nn.dtypes.promote_dtype(x * mask[..., None], kernel, bias, dtype=self.dtype)
    dilation = self.dilation if dilation is None else dilation
    if self.max_dilation is not None:
      taps = shifted_copies(x, self.kernel_size, dilation, self.max_dilation)
      y = sum(_dense_product(tap, kernel[j], None) for j, tap in enumerate(taps))
    else:
      reach = (self.kernel_size // 2) * dilation
      y = jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1,),
        padding=[(reach, reach)],
        rhs_dilation=(dilation,),
        dimension_numbers=("NWC", "WIO", "NWC"),
      )
    return (y + bias) * mask[..., None].astype(y.dtype)


# The name of a ConvAttentionLayer's convolution output [B, T, F] for `jax.checkpoint` policies: the
# one activation a scan over layers keeps for the backward pass (`asformer.scan_layers`).
CONV_OUTPUT = 'conv_output'


class ConditionProjection(NamedTuple):
  """A decoder layer's projections of the condition, added to its queries, keys and (when the layer
  has `condition_in_value`) values: [B, T, F] each; value is None otherwise."""

  query: jax.Array
  key: jax.Array
  value: jax.Array | None = None


class ConvAttentionLayer(nn.Module):
  """One ASFormer/DiffAct layer: x + FFN(InstanceNorm(DilatedConv(x') + WindowAttention(x'))), x' = dropout(x).

  [B, T, F] -> [B, T, F]. FFN = Dense, ReLU, Dense; Q, K, V are Dense layers of x'. A decoder layer
  also takes the condition: Q and K see concat[x', cond'] (cond' = dropout(cond)), computed as
  Dense(x') + Dense_no_bias(cond'), where the second term comes from `project_condition` so it can be
  computed once and reused for every denoising step.

  `condition_in_value=True` (not in DiffAct) lets V see the condition too: with V of x' alone the
  condition reaches the output only through the attention weights. `outside_logit`: see
  `window_attention`. With `max_dilation` set, the call's `dilation` (traced, up to max_dilation)
  replaces the attribute: one layer of a scan over layers (`polyseg/nn/asformer.py`).
  """

  features: int
  kernel_size: int
  dilation: int
  dropout: float
  condition_in_value: bool = False
  outside_logit: float | None = None
  dtype: Dtype = jnp.float32
  max_dilation: int | None = None

  def setup(self):
    def dense(use_bias=True):
      return Dense(self.features, use_bias=use_bias, dtype=self.dtype)

    self.conv = DilatedConv(
      self.features, self.kernel_size, self.dilation, self.dtype, self.max_dilation
    )
    self.query, self.key, self.value = dense(), dense(), dense()
    self.query_cond, self.key_cond = dense(use_bias=False), dense(use_bias=False)
    self.value_cond = dense(use_bias=False) if self.condition_in_value else None
    self.ffn_hidden, self.ffn_out = dense(), dense()
    self.drop = Dropout(self.dropout)

  def project_condition(self, cond: jax.Array, train: bool) -> ConditionProjection:
    """cond [B, T, Fc] -> this layer's condition terms of Q, K (and V) (dropout on cond when train)."""
    chex.assert_rank(cond, 3)
    cond = self.drop(cond, deterministic=not train)
    value = self.value_cond(cond) if self.value_cond is not None else None
    return ConditionProjection(query=self.query_cond(cond), key=self.key_cond(cond), value=value)

  def __call__(
    self,
    x: jax.Array,
    mask: jax.Array,
    train: bool,
    cond_proj: ConditionProjection | None = None,
    dilation: int | jax.Array | None = None,
  ) -> jax.Array:
    """x [B, T, F], mask [B, T] -> [B, T, F]; cond_proj only for decoder layers."""
    chex.assert_shape(x, (None, None, self.features))
    chex.assert_shape(mask, x.shape[:2])
    x_drop = self.drop(x, deterministic=not train)
    q, k, v = self.query(x_drop), self.key(x_drop), self.value(x_drop)
    if cond_proj is not None:
      chex.assert_equal_shape([q, k, cond_proj.query, cond_proj.key])
      q, k = q + cond_proj.query, k + cond_proj.key
      if cond_proj.value is not None:
        v = v + cond_proj.value
    dilation = self.dilation if dilation is None else dilation
    attn = window_attention(
      q, k, v, mask, self.kernel_size, dilation, self.outside_logit, self.max_dilation
    )
    conv = ad_checkpoint.checkpoint_name(self.conv(x_drop, mask, dilation), CONV_OUTPUT)
    h = instance_norm(conv + attn, mask)
    out = self.ffn_out(nn.relu(self.ffn_hidden(h)))
    return fusion_fence((x + out) * mask[..., None].astype(out.dtype), train)

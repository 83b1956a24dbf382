"""Tests for polyseg.nn.layers against plain numpy / scipy references."""

import math
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import random as jrandom
from scipy import ndimage

from polyseg.nn import layers

LENGTHS = (11, 17)  # two videos of a padded batch
PADDED_T = 24


pytestmark = pytest.mark.usefixtures("fast_compile")


def padded_batch(rng: np.random.Generator, dim: int, lengths=LENGTHS, num_frames=PADDED_T):
  """Random [B, T, dim] features, zero after each length, and the matching [B, T] mask."""
  mask = (np.arange(num_frames)[None, :] < np.array(lengths)[:, None]).astype(np.float32)
  x = rng.normal(size=(len(lengths), num_frames, dim)).astype(np.float32) * mask[..., None]
  return x, mask


def np_instance_norm(x):
  """[T, F] -> [T, F], biased variance, eps 1e-5 (torch InstanceNorm1d)."""
  return (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)


def np_dilated_conv(x, kernel, bias, dilation):
  """x [T, Fin], kernel [k, Fin, Fout] -> [T, Fout], zero 'same' padding, via scipy correlate1d."""
  k, f_in, f_out = kernel.shape
  out = np.tile(np.asarray(bias, np.float64), (x.shape[0], 1))
  for i in range(f_in):
    for o in range(f_out):
      weights = np.zeros((k - 1) * dilation + 1)
      weights[::dilation] = kernel[:, i, o]
      out[:, o] += ndimage.correlate1d(x[:, i].astype(np.float64), weights, mode="constant")
  return out


def np_dense_window_attention(q, k, v, kernel_size, dilation):
  """One unpadded video [T, F]: full T x T attention with a band mask of the k dilated positions."""
  num_frames = q.shape[0]
  offsets = np.arange(num_frames)[None, :] - np.arange(num_frames)[:, None]
  allowed = (offsets % dilation == 0) & (np.abs(offsets) <= (kernel_size // 2) * dilation)
  scores = np.where(allowed, q @ k.T / math.sqrt(q.shape[1]), -np.inf)
  weights = np.exp(scores - scores.max(1, keepdims=True))
  return (weights / weights.sum(1, keepdims=True)) @ v


def test_timestep_embedding_hand_values():
  # dim 6: half 3, frequencies exp(-log(1e4) * [0, 1, 2] / 2) = [1, 1e-2, 1e-4].
  got = layers.timestep_embedding(jnp.array([0, 3]), 6)
  want = np.array(
    [
      [0, 0, 0, 1, 1, 1],
      [math.sin(3), math.sin(0.03), math.sin(3e-4), math.cos(3), math.cos(0.03), math.cos(3e-4)],
    ]
  )
  np.testing.assert_allclose(got, want, atol=1e-6)
  odd = layers.timestep_embedding(jnp.array([0, 3]), 7)
  np.testing.assert_allclose(odd[:, :6], want, atol=1e-6)
  np.testing.assert_array_equal(odd[:, 6], 0.0)
  with pytest.raises(ValueError, match="dim >= 4"):
    layers.timestep_embedding(jnp.array([1]), 3)


def test_instance_norm_matches_numpy_on_valid_frames():
  x, mask = padded_batch(np.random.default_rng(0), 5)
  x = x * 3.0 + 2.0 * mask[..., None]  # non-zero mean and non-unit scale on valid frames
  got = np.asarray(layers.instance_norm(jnp.asarray(x), jnp.asarray(mask)))
  for b, length in enumerate(LENGTHS):
    np.testing.assert_allclose(got[b, :length], np_instance_norm(x[b, :length]), atol=1e-5)
    np.testing.assert_array_equal(got[b, length:], 0.0)


def test_instance_norm_empty_video_is_zero_not_nan():
  got = layers.instance_norm(jnp.ones((1, 4, 3)), jnp.zeros((1, 4)))
  np.testing.assert_array_equal(got, 0.0)


@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_dilated_conv_matches_scipy_correlate(dilation):
  x, mask = padded_batch(np.random.default_rng(dilation), 4)
  x_garbage = x + 5.0 * (1 - mask[..., None])  # padded frames must not leak into valid ones
  conv = layers.DilatedConv(features=3, kernel_size=5, dilation=dilation)
  params = conv.init(jax.random.key(0), x, mask)
  params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias
  got = np.asarray(conv.apply(params, jnp.asarray(x_garbage), jnp.asarray(mask)))
  p = params["params"]
  for b, length in enumerate(LENGTHS):
    want = np_dilated_conv(x[b, :length], np.asarray(p["kernel"]), p["bias"], dilation)
    np.testing.assert_allclose(got[b, :length], want, atol=1e-5)
    np.testing.assert_array_equal(got[b, length:], 0.0)


def test_traced_dilation_conv_is_the_static_one_with_per_video_kernel_gradients():
  """With `max_dilation` (a layer of a scan over layers) the convolution takes its dilation as data:
  the static convolution's outputs and gradients, each tap's kernel gradient one product per video
  ([B, Fin, Fout], as `Dense`'s)."""
  x, mask = padded_batch(np.random.default_rng(5), 4)
  x, mask = jnp.asarray(x), jnp.asarray(mask)
  static = layers.DilatedConv(features=3, kernel_size=5, dilation=2)
  traced = layers.DilatedConv(features=3, kernel_size=5, dilation=1, max_dilation=8)
  params = jax.tree.map(lambda p: p + 0.1, static.init(jax.random.key(0), x, mask))
  g = jnp.asarray(np.random.default_rng(6).normal(size=(*mask.shape, 3)).astype(np.float32))
  loss_static = lambda p, x: jnp.sum(static.apply(p, x, mask) * g)
  loss_traced = lambda p, x, d: jnp.sum(traced.apply(p, x, mask, d) * g)
  np.testing.assert_allclose(
    traced.apply(params, x, mask, jnp.int32(2)), static.apply(params, x, mask), atol=1e-5
  )
  got = jax.grad(loss_traced, argnums=(0, 1))(params, x, jnp.int32(2))
  want = jax.grad(loss_static, argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  jaxpr = jax.make_jaxpr(jax.grad(loss_traced))(params, x, jnp.int32(2)).jaxpr
  products = [
    eqn.outvars[0].aval.shape
    for eqn in jaxpr.eqns
    if eqn.primitive.name == "dot_general" or "dot_general" in str(eqn.params.get("jaxpr", ""))
  ]
  assert products.count((x.shape[0], x.shape[-1], 3)) == 5, products


def test_even_kernel_is_rejected():
  with pytest.raises(ValueError, match="kernel_size must be a positive odd"):
    layers.dilated_windows(jnp.zeros((1, 4, 2)), 4, 1)


@pytest.mark.parametrize("max_dilation", [None, 16])
@pytest.mark.parametrize("kernel_size,dilation", [(1, 1), (3, 1), (5, 2), (3, 4), (5, 9), (3, 16)])
def test_shifted_copies_values_and_gradient_by_hand(kernel_size, dilation, max_dilation):
  """Copy j is x[t + (j - k//2) d], zero outside; the gradient of sum_j <w_j, copy_j> (static
  dilation: the custom rule, each cotangent shifted back) is, at frame s, sum_j w_j[s - (j - k//2) d]
  where that frame exists. (5, 9), (3, 16): the reach exceeds T = 7, by more than 2 T. max_dilation
  16: the dilation traced (inside jit), as a layer of a scan over layers gets it."""
  rng = np.random.default_rng(kernel_size * 10 + dilation)
  x = rng.normal(size=(2, 7, 3)).astype(np.float32)
  w = rng.normal(size=(kernel_size, 2, 7, 3)).astype(np.float32)
  if max_dilation is None:
    shifted = lambda x: layers.shifted_copies(x, kernel_size, dilation)
  else:
    traced = jax.jit(lambda x, d: layers.shifted_copies(x, kernel_size, d, max_dilation))
    shifted = lambda x: traced(x, dilation)
  copies = shifted(jnp.asarray(x))
  offsets = [(j - kernel_size // 2) * dilation for j in range(kernel_size)]
  want_grad = np.zeros_like(x)
  for j, offset in enumerate(offsets):
    want = np.zeros_like(x)
    for t in range(7):
      if 0 <= t + offset < 7:
        want[:, t] = x[:, t + offset]
        want_grad[:, t + offset] += w[j, :, t]
    np.testing.assert_array_equal(copies[j], want)
  grad = jax.grad(lambda x: sum(jnp.sum(wj * c) for wj, c in zip(w, shifted(x))))(jnp.asarray(x))
  np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (5, 1), (5, 2), (3, 4), (5, 3), (5, 8)])
def test_window_attention_equals_dense_band_attention(kernel_size, dilation):
  rng = np.random.default_rng(kernel_size * 10 + dilation)
  (q, mask), (k, _), (v, _) = [padded_batch(rng, 6) for _ in range(3)]
  got = np.asarray(
    layers.window_attention(
      jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), kernel_size, dilation
    )
  )
  for b, length in enumerate(LENGTHS):
    want = np_dense_window_attention(
      q[b, :length], k[b, :length], v[b, :length], kernel_size, dilation
    )
    np.testing.assert_allclose(got[b, :length], want, atol=1e-5)
    np.testing.assert_array_equal(got[b, length:], 0.0)


def np_reference_window_attention(q, k, v, kernel_size, dilation):
  """The DiffAct reference code's masking on one unpadded video [T, F]: zero-padded keys and values,
  log(valid + 1e-6) added to the scores, softmax over the k positions, weights times valid."""
  num_frames, reach = q.shape[0], (kernel_size // 2) * dilation
  out = np.zeros_like(v, dtype=np.float64)
  for t in range(num_frames):
    positions = t - reach + dilation * np.arange(kernel_size)
    valid = (positions >= 0) & (positions < num_frames)
    keys = np.where(valid[:, None], k[np.clip(positions, 0, num_frames - 1)], 0.0)
    values = np.where(valid[:, None], v[np.clip(positions, 0, num_frames - 1)], 0.0)
    scores = keys @ q[t] / math.sqrt(q.shape[1]) + np.log(valid + 1e-6)
    weights = np.exp(scores - scores.max())
    out[t] = (weights / weights.sum() * valid) @ values
  return out


def test_window_attention_outside_logit_is_the_reference_masking():
  rng = np.random.default_rng(3)
  (q, mask), (k, _), (v, _) = [padded_batch(rng, 6) for _ in range(3)]
  # Valid scores about -3 sum(k) / sqrt(F), far below log(1e-6): near the video's ends a query
  # gives most of its weight to the keys outside.
  q, k = -3.0 * np.ones_like(q) * mask[..., None], (k + 2.0) * mask[..., None]
  args = [jnp.asarray(a) for a in (q, k, v, mask)]
  got = np.asarray(layers.window_attention(*args, 5, 2, outside_logit=math.log(1e-6)))
  exact = np.asarray(layers.window_attention(*args, 5, 2))
  for b, length in enumerate(LENGTHS):
    want = np_reference_window_attention(q[b, :length], k[b, :length], v[b, :length], 5, 2)
    np.testing.assert_allclose(got[b, :length], want, atol=1e-5)
    np.testing.assert_array_equal(got[b, length:], 0.0)
  assert np.abs(got - exact).max() > 1e-2  # the logit outside the video changes the output


def jnp_dense_band_attention(q, k, v, mask, kernel_size, dilation, outside_logit):
  """A padded batch through full [B, T, T] scores: the band of the k dilated positions, padded
  keys (and, with `outside_logit`, the positions beyond the video's ends) entering the softmax
  with that logit and a zero value, or left out; no valid key gives 0."""
  num_frames, half = q.shape[1], kernel_size // 2
  offsets = jnp.arange(num_frames)[None, :] - jnp.arange(num_frames)[:, None]
  band = (offsets % dilation == 0) & (jnp.abs(offsets) <= half * dilation)  # [T, T]
  key_valid = band[None] & (mask[:, None, :] > 0)  # [B, T, T]
  exp_scores = jnp.where(key_valid, jnp.exp(q @ jnp.swapaxes(k, 1, 2) / math.sqrt(q.shape[2])), 0)
  total = exp_scores.sum(-1)
  if outside_logit is not None:  # every one of the k positions that is not a valid key
    total += (kernel_size - key_valid.sum(-1)) * math.exp(outside_logit)
  out = (exp_scores @ v) / jnp.where(total > 0, total, 1.0)[..., None]
  return out * mask[..., None]


@pytest.mark.parametrize("outside_logit", [None, math.log(1e-6), -1.0])
@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (5, 2), (3, 8), (5, 13)])
def test_window_attention_gradient_equals_dense_band_attention(
  kernel_size, dilation, outside_logit
):
  """The written-out gradient of a static dilation (and autodiff through the traced one) against
  autodiff through `jnp_dense_band_attention`, on a padded batch, garbage in the padding; (5, 13)
  reaches past both ends of the 24 frames."""
  rng = np.random.default_rng(kernel_size * 100 + dilation)
  (q, mask), (k, _), (v, _) = [padded_batch(rng, 6) for _ in range(3)]
  q, k, v = (jnp.asarray(x + 3.0 * (1 - mask[..., None])) for x in (q, k, v))
  weights = jnp.asarray(rng.normal(size=q.shape).astype(np.float32))
  mask = jnp.asarray(mask)

  def loss(attention):
    return lambda q, k, v: jnp.sum(attention(q, k, v) * weights)

  want = jax.grad(
    loss(lambda *a: jnp_dense_band_attention(*a, mask, kernel_size, dilation, outside_logit)),
    argnums=(0, 1, 2),
  )(q, k, v)
  static = lambda *a: layers.window_attention(*a, mask, kernel_size, dilation, outside_logit)
  traced = jax.jit(
    lambda q, k, v, d: layers.window_attention(q, k, v, mask, kernel_size, d, outside_logit, 16)
  )
  for attention in (static, jax.jit(static), lambda *a: traced(*a, dilation)):
    np.testing.assert_allclose(
      attention(q, k, v),
      jnp_dense_band_attention(q, k, v, mask, kernel_size, dilation, outside_logit),
      atol=1e-5,
    )
    got = jax.grad(loss(attention), argnums=(0, 1, 2))(q, k, v)
    for name, g, w in zip("qkv", got, want):
      np.testing.assert_allclose(g, w, atol=1e-5, err_msg=name)


def test_window_attention_all_keys_masked_gives_zero():
  ones = jnp.ones((1, 5, 2))
  got = layers.window_attention(ones, ones, ones, jnp.zeros((1, 5)), 3, 1)
  np.testing.assert_array_equal(got, 0.0)


def test_window_attention_memory_is_linear_in_t():
  num_frames = 97  # no other dimension equals it
  q = jnp.ones((2, num_frames, 8))
  jaxpr = jax.make_jaxpr(layers.window_attention, static_argnums=(4, 5))(
    q, q, q, jnp.ones((2, num_frames)), 5, 4
  )
  shapes = [v.aval.shape for eqn in jaxpr.eqns for v in eqn.outvars]
  assert shapes and all(s.count(num_frames) <= 1 for s in shapes)
  assert max(math.prod(s) for s in shapes) <= 2 * num_frames * 5 * 8


@pytest.mark.parametrize(
  "make_dropout,shared_axis", [(layers.channel_dropout, 1), (layers.temporal_dropout, 2)]
)
def test_structured_dropout_drops_whole_channels_or_frames(make_dropout, shared_axis):
  x = jnp.ones((3, 40, 30))
  dropout = make_dropout(0.5)
  y = np.asarray(dropout.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)}))
  assert set(np.unique(y)) == {0.0, 2.0}  # kept entries rescaled by 1 / (1 - p)
  np.testing.assert_array_equal(
    y, np.take(y, [0], axis=shared_axis).repeat(y.shape[shared_axis], shared_axis)
  )
  assert 0.3 < (y == 0).mean() < 0.7
  np.testing.assert_array_equal(dropout.apply({}, x, deterministic=True), x)


@pytest.mark.parametrize("shape", [(2, 6, 4), (3, 7, 5)])  # 48 entries, 105 (not a multiple of 4)
def test_bernoulli_mask_is_four_16_bit_uniforms_per_threefry_block(shape):
  """The mask's uniforms, rebuilt from jax's own threefry_2x32 on the counts (0, i) of block i:
  word 0's low and high halves, then word 1's."""
  key = jax.random.PRNGKey(7)
  size = math.prod(shape)
  blocks = -(-size // 4)
  counts = np.concatenate([np.zeros(blocks), np.arange(blocks)]).astype(np.uint32)
  words = np.asarray(jrandom.threefry_2x32(key, jnp.asarray(counts))).reshape(2, blocks)
  uniforms = np.stack([words[0] & 0xFFFF, words[0] >> 16, words[1] & 0xFFFF, words[1] >> 16], 1)
  uniforms = uniforms.reshape(-1)[:size].reshape(shape)
  # The last rate's threshold is one of the drawn uniforms: that entry (uniform == threshold) drops.
  for keep_prob in (0.1, 0.5, 0.9, 0.0, 1.0, int(uniforms.flat[3]) / 65536):
    want = uniforms < round(keep_prob * 65536)
    np.testing.assert_array_equal(layers.bernoulli_mask(key, keep_prob, shape), want)
  typed = layers.bernoulli_mask(jax.random.wrap_key_data(key), 0.5, shape)
  np.testing.assert_array_equal(typed, uniforms < 32768)


def test_bernoulli_mask_keeps_at_the_rate_asked_independently():
  """Frequencies within 5 standard errors of keep_prob, for every one of the four halves of a block
  (entry i % 4) and for pairs of neighbours (no correlation between the halves of a word)."""
  num = 400_000
  for keep_prob in (0.1, 0.5, 0.8):
    mask = np.asarray(layers.bernoulli_mask(jax.random.PRNGKey(11), keep_prob, (num,)))
    tolerance = 5 * math.sqrt(keep_prob * (1 - keep_prob) / (num / 4))
    for half in range(4):
      assert abs(mask[half::4].mean() - keep_prob) < tolerance, (keep_prob, half)
    both = (mask[0::2] & mask[1::2]).mean()
    assert abs(both - keep_prob**2) < 5 * math.sqrt(keep_prob**2 * (1 - keep_prob**2) / (num / 2))
  other = np.asarray(layers.bernoulli_mask(jax.random.PRNGKey(12), 0.8, (num,)))
  assert abs((mask == other).mean() - 0.68) < 0.01  # another key, another mask (0.8² + 0.2² agree)
  with pytest.raises(ValueError, match="threefry"):
    layers.bernoulli_mask(jnp.zeros(4, jnp.uint32), 0.5, (3,))


@pytest.mark.parametrize(
  "shape,dtype,features",
  [
    ((3, 10, 5), jnp.float32, 4),
    ((7, 5), jnp.float32, 4),
    ((2, 3, 4, 5), jnp.float32, 4),
    ((3, 10, 5), jnp.bfloat16, 4),
    ((3, 10, 5), jnp.float32, (2, 3)),
    ((2, 3, 4, 5), jnp.float32, (2, 3)),
  ],
)
def test_dense_is_flax_dense_with_per_video_kernel_gradient(shape, dtype, features):
  """`layers.Dense` (`features` an int) and `layers.DenseGeneral` (a tuple): flax's parameters,
  outputs and gradients (autodiff through `lax.dot_general`), the kernel gradient computed as one
  [Fin, prod(features)] product per leading index."""
  rng = np.random.default_rng(len(shape))
  x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
  out_shape = (features,) if isinstance(features, int) else features
  g = jnp.asarray(rng.normal(size=shape[:-1] + out_shape).astype(np.float32))
  if isinstance(features, int):
    ours, theirs = layers.Dense(features, dtype=dtype), nn.Dense(features, dtype=dtype)
  else:
    ours, theirs = (
      layers.DenseGeneral(features, dtype=dtype),
      nn.DenseGeneral(features, dtype=dtype),
    )
  params = ours.init(jax.random.key(0), x)
  assert jax.tree.structure(params) == jax.tree.structure(theirs.init(jax.random.key(0), x))
  params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias

  def loss(module):
    return lambda params, x: jnp.sum(module.apply(params, x).astype(jnp.float32) * g)

  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_array_equal(ours.apply(params, x), theirs.apply(params, x))
  got, want = (jax.grad(loss(m), argnums=(0, 1))(params, x) for m in (ours, theirs))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)
  products = [
    eqn.outvars[0].aval.shape
    for eqn in jax.make_jaxpr(jax.grad(loss(ours)))(params, x).eqns
    if eqn.primitive.name == "dot_general" or "dot_general" in str(eqn.params.get("jaxpr", ""))
  ]
  assert (shape[0] if len(shape) > 2 else 1, shape[-1], math.prod(out_shape)) in products, products


def test_dense_dot_general_passes_other_contractions_to_lax():
  lhs, rhs = jnp.ones((2, 3, 4)), jnp.arange(24.0).reshape(2, 4, 3)
  batched = (((2,), (1,)), ((0,), (0,)))
  np.testing.assert_array_equal(
    layers.dense_dot_general(lhs, rhs, batched), jax.lax.dot_general(lhs, rhs, batched)
  )


def test_dropout_rescales_kept_entries_and_stops_at_eval():
  x = jnp.arange(1.0, 2001.0).reshape(2, 1000)
  y = np.asarray(
    layers.Dropout(0.25).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
  )
  kept = y != 0
  np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
  assert 0.7 < kept.mean() < 0.8
  np.testing.assert_array_equal(layers.Dropout(0.25, deterministic=True).apply({}, x), x)
  np.testing.assert_array_equal(layers.Dropout(1.0).apply({}, x, deterministic=False), 0 * x)


def np_layer(p, x, kernel_size, dilation, cond=None, condition_in_value=False):
  """Reference ConvAttentionLayer on one unpadded video; Q and K (and with `condition_in_value`, V)
  use one Dense over concat[x, cond]."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)

  def dense(name, inputs):
    return inputs @ p[name]["kernel"] + p[name]["bias"]

  qk_input = x if cond is None else np.concatenate([x, cond], axis=1)

  def qk_dense(name):
    kernel = (
      p[name]["kernel"]
      if cond is None
      else np.concatenate([p[name]["kernel"], p[name + "_cond"]["kernel"]], axis=0)
    )
    return qk_input @ kernel + p[name]["bias"]

  value = qk_dense("value") if condition_in_value else dense("value", x)
  attn = np_dense_window_attention(qk_dense("query"), qk_dense("key"), value, kernel_size, dilation)
  conv = np_dilated_conv(x, p["conv"]["kernel"], p["conv"]["bias"], dilation)
  hidden = np.maximum(dense("ffn_hidden", np_instance_norm(conv + attn)), 0.0)
  return x + dense("ffn_out", hidden)


def perturbed_init(module, method, *args):
  """init through `method`, then perturb all params so biases are non-zero."""
  params = module.init(jax.random.key(0), *args, method=method)
  noise = jax.random.normal(jax.random.key(1), (len(jax.tree.leaves(params)),))
  leaves, tree = jax.tree.flatten(params)
  return jax.tree.unflatten(tree, [leaf + 0.1 * n for leaf, n in zip(leaves, noise)])


@pytest.mark.parametrize(
  "conditioned,condition_in_value", [(False, False), (True, False), (True, True)]
)
def test_conv_attention_layer_matches_reference_and_ignores_padding(
  conditioned, condition_in_value
):
  rng = np.random.default_rng(7)
  x, mask = padded_batch(rng, 8)
  cond, _ = padded_batch(rng, 5)
  layer = layers.ConvAttentionLayer(
    features=8, kernel_size=3, dilation=2, dropout=0.5, condition_in_value=condition_in_value
  )

  def run(module, x, mask, cond):
    cond_proj = module.project_condition(cond, train=False) if conditioned else None
    return module(x, mask, False, cond_proj)

  params = perturbed_init(layer, run, x, mask, cond)
  assert ({"query_cond", "key_cond"} <= set(params["params"])) == conditioned
  assert ("value_cond" in params["params"]) == condition_in_value
  if conditioned:
    assert "bias" not in params["params"]["query_cond"]
  got = np.asarray(layer.apply(params, x, mask, cond, method=run))
  for b, length in enumerate(LENGTHS):
    want = np_layer(
      params["params"],
      x[b, :length],
      3,
      2,
      cond[b, :length] if conditioned else None,
      condition_in_value,
    )
    np.testing.assert_allclose(got[b, :length], want, atol=1e-5)
    np.testing.assert_array_equal(got[b, length:], 0.0)


@pytest.mark.parametrize(
  "shape,dtype", [((2, 24, 8), jnp.float32), ((3, 5, 7), jnp.float32), ((2, 24, 8), jnp.bfloat16)]
)
def test_fusion_fence_is_exactly_the_identity_and_so_is_its_gradient(shape, dtype):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=shape) * 1e3, dtype)
  cotangent = jnp.asarray(rng.normal(size=shape) * 1e-3, dtype)
  out, vjp = jax.vjp(jax.jit(lambda x: layers.fusion_fence(x, True)), x)
  assert out.dtype == dtype
  np.testing.assert_array_equal(out, x)
  np.testing.assert_array_equal(vjp(cotangent)[0], cotangent)


def test_count_params_counts_arrays_and_shape_structs():
  params = {"a": jnp.zeros((3, 4)), "b": {"c": jax.ShapeDtypeStruct((5,), jnp.float32)}}
  assert layers.count_params(params) == 17


def test_torch_default_init_draws_uniform_within_one_over_sqrt_fan_in():
  """PyTorch's nn.Linear / nn.Conv1d default: kernel and bias ~ U(-b, b), b = 1/sqrt(fan_in), fan_in
  = prod(kernel.shape[:-1]); a query on concat[x, condition] split into `query` and `query_cond`
  takes the fan-in of the concatenation (24 + 80); LayerNorm scales and other leaves are kept."""
  rng = np.random.default_rng(0)
  params = {
    'params': {
      'proj': {'kernel': np.zeros((300, 400), np.float32), 'bias': np.zeros(400, np.float32)},
      'conv': {'kernel': np.zeros((5, 64, 64), np.float32), 'bias': np.zeros(64, np.float32)},
      'layer': {
        'query': {'kernel': np.zeros((24, 24), np.float32), 'bias': np.zeros(24, np.float32)},
        'query_cond': {'kernel': np.zeros((80, 24), np.float32)},
      },
      'norm': {'scale': np.ones(7, np.float32), 'bias': rng.normal(size=7).astype(np.float32)},
    }
  }
  out = jax.jit(layers.torch_default_init)(params, jax.random.key(3))
  p = jax.tree.map(np.asarray, out['params'])
  for leaf, fan_in in (
    (p['proj']['kernel'], 300),
    (p['proj']['bias'], 300),
    (p['conv']['kernel'], 5 * 64),
    (p['conv']['bias'], 5 * 64),
    (p['layer']['query']['kernel'], 104),
    (p['layer']['query']['bias'], 104),
    (p['layer']['query_cond']['kernel'], 104),
  ):
    bound = 1 / math.sqrt(fan_in)
    assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.9 * bound
  # A uniform's standard deviation is b / sqrt(3) (a third of lecun_normal's variance 1/fan_in).
  np.testing.assert_allclose(p['proj']['kernel'].std(), 1 / math.sqrt(3 * 300), rtol=0.01)
  np.testing.assert_array_equal(p['norm']['scale'], params['params']['norm']['scale'])
  np.testing.assert_array_equal(p['norm']['bias'], params['params']['norm']['bias'])
  assert not np.allclose(p['proj']['bias'][:24], p['layer']['query']['bias'])  # own draws
  again = layers.torch_default_init(params, jax.random.key(3))
  np.testing.assert_array_equal(again['params']['conv']['kernel'], p['conv']['kernel'])


def test_torch_default_init_draws_each_leaf_from_its_own_key_in_one_program_per_shape():
  """Leaf `/params/<layer>/<field>` is U(-b, b) drawn with fold_in(key, crc32 of its path), as one
  draw per leaf would give it (the values of earlier runs), while the compiled program draws each
  shape once, vmapped over its leaves: as many loops for 8 same-shaped layers as for 2."""

  def params(num_layers: int) -> dict:
    layer = lambda: {'kernel': np.zeros((16, 8), np.float32), 'bias': np.zeros(8, np.float32)}
    tree = {f'layer{i}': layer() for i in range(num_layers)}
    return {'params': {**tree, 'head': {'kernel': np.zeros((4, 8), np.float32)}}}

  key = jax.random.key(7)
  out = jax.jit(layers.torch_default_init)(params(3), key)['params']
  for name, field, fan_in in [
    ('layer0', 'kernel', 16),
    ('layer2', 'bias', 16),
    ('head', 'kernel', 4),
  ]:
    own_key = jax.random.fold_in(key, zlib.crc32(f'/params/{name}/{field}'.encode()))
    bound = 1 / math.sqrt(fan_in)
    expected = jax.random.uniform(own_key, out[name][field].shape, jnp.float32, -bound, bound)
    np.testing.assert_array_equal(out[name][field], expected)

  def loops(num_layers: int) -> int:
    program = jax.jit(layers.torch_default_init).lower(params(num_layers), key).compile()
    return program.as_text().count(' while(')

  assert loops(8) == loops(2) > 0

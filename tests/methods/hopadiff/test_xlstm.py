"""Tests for polyseg.methods.hopadiff.xlstm: the three mLSTM forms against each other and hand-worked values,
cross-attention against a dense numpy reference, the HP-xLSTM module, and linear memory in T."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyseg.methods.hopadiff import xlstm

pytestmark = pytest.mark.usefixtures('fast_compile')

LENGTHS = (13, 8, 1)  # rows of a padded batch
PADDED_T = 13
HEADS, DH = 2, 4

mlstm = jax.jit(xlstm.mlstm, static_argnums=0, static_argnames='chunk_size')


def length_mask(lengths, num_frames):
  return (np.arange(num_frames)[None, :] < np.array(lengths)[:, None]).astype(np.float32)


def cell_inputs(rng, gate_scale=3.0, forget_gate='sigmoid', lengths=LENGTHS, num_frames=PADDED_T):
  """Random q, k, v [B, H, T, dh], i_pre, log_f [B, H, T] and mask [B, T]."""
  batch = len(lengths)
  q, k, v = (rng.normal(size=(batch, HEADS, num_frames, DH)).astype(np.float32) for _ in range(3))
  i_pre = (rng.normal(size=(batch, HEADS, num_frames)) * gate_scale).astype(np.float32)
  f_pre = (rng.normal(size=(batch, HEADS, num_frames)) * gate_scale).astype(np.float32)
  log_f = np.asarray(jax.nn.log_sigmoid(f_pre)) if forget_gate == 'sigmoid' else f_pre
  return q, k / math.sqrt(DH), v, i_pre, log_f, length_mask(lengths, num_frames)


def all_forms(inputs, chunk_size):
  return {
    'recurrent': mlstm('recurrent', *inputs),
    'parallel': mlstm('parallel', *inputs),
    'chunkwise': mlstm('chunkwise', *inputs, chunk_size=chunk_size),
  }


def np_mlstm(q, k, v, i_pre, log_f, mask):
  """Float64 step-by-step reference, written from the formulas (padded frames skipped)."""
  q, k, v, i_pre, log_f = (np.asarray(a, np.float64) for a in (q, k, v, i_pre, log_f))
  out = np.zeros_like(q)
  for b, h in np.ndindex(q.shape[:2]):
    c, n, m = np.zeros((q.shape[-1],) * 2), np.zeros(q.shape[-1]), xlstm.NEG
    for t in np.flatnonzero(mask[b]):
      m_t = max(log_f[b, h, t] + m, i_pre[b, h, t])
      f_w, i_w = math.exp(log_f[b, h, t] + m - m_t), math.exp(i_pre[b, h, t] - m_t)
      c = f_w * c + i_w * np.outer(v[b, h, t], k[b, h, t])
      n = f_w * n + i_w * k[b, h, t]
      m = m_t
      denominator = max(abs(n @ q[b, h, t]), math.exp(-m)) + xlstm.EPS
      out[b, h, t] = c @ q[b, h, t] / denominator
  return out


# ------------------------------------------------------------------------------------------------
# mLSTM cell


@pytest.mark.parametrize('forget_gate', xlstm.FORGET_GATES)
@pytest.mark.parametrize('chunk_size', [1, 4, 5, 13, 64])  # 5: T not a multiple; 64: chunk > T
def test_forms_agree_on_padded_batch(forget_gate, chunk_size):
  inputs = cell_inputs(np.random.default_rng(chunk_size), forget_gate=forget_gate)
  outs = all_forms(inputs, chunk_size)
  np.testing.assert_allclose(outs['parallel'], outs['recurrent'], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(outs['chunkwise'], outs['recurrent'], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(outs['recurrent'], np_mlstm(*inputs), atol=1e-5, rtol=1e-4)
  mask = inputs[-1]
  for out in outs.values():
    assert np.all(np.asarray(out)[np.broadcast_to(mask[:, None, :, None], out.shape) == 0] == 0)
  assert np.abs(np.asarray(outs['recurrent'])).max() > 0.1


@pytest.mark.parametrize('forget_gate', xlstm.FORGET_GATES)
def test_forms_agree_with_extreme_gates(forget_gate):
  """Input gates up to exp(+-60) and forget pre-activations up to +-30 overflow without the stabiliser.

  Each form is checked against the float64 reference: such gates make one state dominate, and where
  |n . q| then nearly cancels (~1e-3 here), rounding the float32 state before the dot product (the
  recurrent form) costs up to ~3e-4 relative there, while the parallel/chunkwise forms dot first.
  """
  rng = np.random.default_rng(1)
  q, k, v, _, _, mask = cell_inputs(rng)
  i_pre = rng.uniform(-60, 60, size=q.shape[:3]).astype(np.float32)
  f_pre = rng.uniform(-30, 30, size=q.shape[:3]).astype(np.float32)
  log_f = np.asarray(jax.nn.log_sigmoid(f_pre)) if forget_gate == 'sigmoid' else f_pre
  inputs = (q, k, v, i_pre, log_f, mask)
  outs = all_forms(inputs, chunk_size=4)
  want = np_mlstm(*inputs)
  for form, out in outs.items():
    assert np.isfinite(out).all()
    rtol = 1e-3 if form == 'recurrent' else 1e-4
    np.testing.assert_allclose(out, want, atol=1e-4, rtol=rtol, err_msg=form)
  np.testing.assert_allclose(outs['chunkwise'], outs['parallel'], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('form', sorted(xlstm.MLSTM_FORMS))
def test_padded_row_equals_unpadded_sequence(form):
  q, k, v, i_pre, log_f, mask = cell_inputs(np.random.default_rng(2))
  # Garbage in the padding must not matter.
  q, k, v = (np.where(mask[:, None, :, None] > 0, a, 7.0) for a in (q, k, v))
  batched = mlstm(form, q, k, v, i_pre, log_f, mask, chunk_size=3)
  length = LENGTHS[1]
  alone = mlstm(
    form,
    *(a[1:2, :, :length] for a in (q, k, v, i_pre, log_f)),
    np.ones((1, length), np.float32),
    chunk_size=3,
  )
  np.testing.assert_allclose(batched[1:2, :, :length], alone, atol=1e-5, rtol=1e-5)
  assert np.all(np.asarray(batched)[1, :, length:] == 0)


@pytest.mark.parametrize('form', sorted(xlstm.MLSTM_FORMS))
def test_hand_worked_two_frames(form):
  """dh = 1, one head: q = (1, 2), k = (0.5, 1), v = (2, -1), i = (0, 1), f = (1/2, 1/2).

  Unstabilised (the stabiliser cancels in the ratio): t=1: C = 1 * 2 * 0.5 = 1, n = 0.5,
  h = C q / max(|n q|, 1) = 1 / 1 (the lower bound is active, |n q| = 0.5).
  t=2: C = 0.5 * 1 + e * (-1) * 1, n = 0.5 * 0.5 + e * 1, h = 2 C / (2 n) = (0.5 - e) / (0.25 + e).
  """
  q = np.array([1.0, 2.0], np.float32).reshape(1, 1, 2, 1)
  k = np.array([0.5, 1.0], np.float32).reshape(1, 1, 2, 1)
  v = np.array([2.0, -1.0], np.float32).reshape(1, 1, 2, 1)
  i_pre = np.array([[[0.0, 1.0]]], np.float32)
  log_f = np.log(np.array([[[0.5, 0.5]]], np.float32))
  h = mlstm(form, q, k, v, i_pre, log_f, np.ones((1, 2), np.float32), chunk_size=1)
  want = [1.0, (0.5 - math.e) / (0.25 + math.e)]
  np.testing.assert_allclose(np.asarray(h).ravel(), want, rtol=1e-5)


def test_chunkwise_gradients_match_recurrent():
  inputs = cell_inputs(np.random.default_rng(3))
  weights = np.random.default_rng(4).normal(size=inputs[0].shape).astype(np.float32)

  def loss(form, *args):
    return jnp.sum(mlstm(form, *args, inputs[-1], chunk_size=4) * weights)

  argnums = (1, 2, 3, 4, 5)
  want = jax.grad(loss, argnums)('recurrent', *inputs[:-1])
  got = jax.grad(loss, argnums)('chunkwise', *inputs[:-1])
  for g, w in zip(got, want):
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-3)


def test_unknown_form_is_an_error():
  with pytest.raises(ValueError, match='form must be one of'):
    xlstm.mlstm('quadratic', *cell_inputs(np.random.default_rng(0)))


# ------------------------------------------------------------------------------------------------
# Cross-attention


def np_dense_attention(q, k, v, mask_q, mask_kv, window=None):
  """[B, T, H, d] with a full T x T score matrix per head; window None = all keys."""
  batch, num_frames, heads, d = q.shape
  out = np.zeros(q.shape, np.float64)
  offsets = np.abs(np.arange(num_frames)[None, :] - np.arange(num_frames)[:, None])
  for b in range(batch):
    for h in range(heads):
      scores = q[b, :, h].astype(np.float64) @ k[b, :, h].T / math.sqrt(d)
      allowed = np.broadcast_to(mask_kv[b][None, :] > 0, scores.shape)
      if window is not None:
        allowed = allowed & (offsets <= window // 2)
      weights = np.where(allowed, np.exp(scores - scores.max(1, keepdims=True)), 0.0)
      total = weights.sum(1, keepdims=True)
      out[b, :, h] = weights / np.where(total > 0, total, 1.0) @ v[b, :, h]  # no key: 0
  return out * mask_q[:, :, None, None]


def attention_inputs(rng, num_frames=PADDED_T):
  q, k, v = (rng.normal(size=(len(LENGTHS), num_frames, 2, 3)).astype(np.float32) for _ in range(3))
  return q, k, v, length_mask(LENGTHS, num_frames)


@pytest.mark.parametrize('chunk_size', [1, 4, 64])
def test_chunked_attention_equals_dense(chunk_size):
  q, k, v, mask = attention_inputs(np.random.default_rng(5))
  mask_kv = mask.copy()
  mask_kv[0, 3] = 0  # a hole in the keys of one row
  got = xlstm.cross_attention(q, k, v, mask, mask_kv, 'chunked', chunk_size=chunk_size)
  np.testing.assert_allclose(got, np_dense_attention(q, k, v, mask, mask_kv), atol=1e-5)


def test_windowed_attention_equals_banded_dense():
  q, k, v, mask = attention_inputs(np.random.default_rng(6))
  got = xlstm.cross_attention(q, k, v, mask, mask, 'windowed', window=5)
  np.testing.assert_allclose(got, np_dense_attention(q, k, v, mask, mask, window=5), atol=1e-5)


def test_chunked_attention_gradients_equal_dense():
  """The custom backward pass (recomputed chunks) against autodiff through a dense softmax."""
  q, k, v, mask = attention_inputs(np.random.default_rng(7))
  weights = np.random.default_rng(8).normal(size=q.shape).astype(np.float32)

  def dense(q, k, v):
    scores = jnp.einsum('bthd,bshd->bhts', q, k) / math.sqrt(q.shape[-1])
    scores = jnp.where(mask[:, None, None, :] > 0, scores, -jnp.inf)
    out = jnp.einsum('bhts,bshd->bthd', jax.nn.softmax(scores, -1), v)
    return jnp.sum(out * mask[:, :, None, None] * weights)

  def chunked(q, k, v):
    return jnp.sum(xlstm.cross_attention(q, k, v, mask, mask, 'chunked', chunk_size=4) * weights)

  want = jax.grad(dense, (0, 1, 2))(q, k, v)
  got = jax.grad(chunked, (0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5)


def test_cross_attention_rejects_bad_arguments():
  q, k, v, mask = attention_inputs(np.random.default_rng(0))
  with pytest.raises(ValueError, match='odd'):
    xlstm.cross_attention(q, k, v, mask, mask, 'windowed', window=4)
  with pytest.raises(ValueError, match='kind'):
    xlstm.cross_attention(q, k, v, mask, mask, 'dense')


# ------------------------------------------------------------------------------------------------
# HP-xLSTM module

FEATURES, MODULE_HEADS, DIM_H, DIM_P = 8, 2, 6, 5


def module_inputs(rng, lengths=LENGTHS, num_frames=PADDED_T):
  mask = length_mask(lengths, num_frames)
  z_h = rng.normal(size=(len(lengths), num_frames, DIM_H)).astype(np.float32)
  z_p = rng.normal(size=(len(lengths), num_frames, DIM_P)).astype(np.float32)
  return z_h, z_p, mask


def make_model(**kwargs):
  return xlstm.HPxLSTM(
    **{'features': FEATURES, 'num_heads': MODULE_HEADS, 'chunk_size': 4, **kwargs}
  )


@pytest.mark.parametrize(
  'kwargs',
  [
    {},
    {'cross_attention': 'windowed', 'window': 5, 'forget_gate': 'exp'},
    {'bidirectional': True},
  ],
  ids=['chunked', 'windowed-exp', 'bidirectional'],
)
def test_hpxlstm_shapes_mask_and_padding_invariance(kwargs):
  z_h, z_p, mask = module_inputs(np.random.default_rng(9))
  model = make_model(**kwargs)
  params = jax.jit(model.init)(jax.random.key(0), z_h, z_p, mask)
  apply = jax.jit(model.apply)
  zhat_h, zhat_p = apply(params, z_h, z_p, mask)
  for out in (zhat_h, zhat_p):
    assert out.shape == (len(LENGTHS), PADDED_T, FEATURES)
    assert np.all(np.asarray(out)[mask == 0] == 0)
    assert np.isfinite(out).all()
  length = LENGTHS[1]
  alone = apply(params, z_h[1:2, :length], z_p[1:2, :length], np.ones((1, length), np.float32))
  for out, ref in zip((zhat_h, zhat_p), alone):
    np.testing.assert_allclose(out[1:2, :length], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('bidirectional', [False, True])
def test_hpxlstm_forms_give_same_output(bidirectional):
  z_h, z_p, mask = module_inputs(np.random.default_rng(10))
  params = jax.jit(make_model(bidirectional=bidirectional).init)(jax.random.key(1), z_h, z_p, mask)
  outs = {
    form: jax.jit(make_model(form=form, bidirectional=bidirectional).apply)(params, z_h, z_p, mask)
    for form in xlstm.MLSTM_FORMS
  }
  for form in ('parallel', 'chunkwise'):
    for got, want in zip(outs[form], outs['recurrent']):
      np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('bidirectional', [False, True])
def test_hpxlstm_direction_of_information_flow(bidirectional):
  """Without cross-attention, a causal model's frame 0 ignores later frames; a bidirectional one not."""
  z_h, z_p, mask = module_inputs(np.random.default_rng(11))
  model = make_model(cross_attention='none', bidirectional=bidirectional)
  params = jax.jit(model.init)(jax.random.key(2), z_h, z_p, mask)
  changed = z_h.copy()
  changed[0, 6] += 1.0
  apply = jax.jit(model.apply)
  before, _ = apply(params, z_h, z_p, mask)
  after, _ = apply(params, changed, z_p, mask)
  diff = np.abs(np.asarray(after - before)[0]).max(-1)
  assert np.all(diff[6:] > 0)
  assert (diff[0] > 1e-6) == bidirectional
  if not bidirectional:
    assert np.all(diff[:6] == 0)


def test_hpxlstm_cross_attention_couples_the_branches():
  """With BCA the holistic output depends on z_p; with 'none' it does not and equals z_p=None."""
  z_h, z_p, mask = module_inputs(np.random.default_rng(12))
  with_bca = make_model()
  params = jax.jit(with_bca.init)(jax.random.key(3), z_h, z_p, mask)
  apply = jax.jit(with_bca.apply)
  a, _ = apply(params, z_h, z_p, mask)
  b, _ = apply(params, z_h, z_p + 1.0, mask)
  assert np.abs(np.asarray(a - b)).max() > 1e-4

  without = make_model(cross_attention='none')
  params = jax.jit(without.init)(jax.random.key(3), z_h, z_p, mask)
  assert 'cross_holistic' not in params['params']
  apply = jax.jit(without.apply)
  a, _ = apply(params, z_h, z_p, mask)
  b, _ = apply(params, z_h, z_p + 1.0, mask)
  np.testing.assert_array_equal(a, b)
  alone, none = apply(params, z_h, None, mask)
  assert none is None
  np.testing.assert_allclose(alone, a, atol=1e-6)


def test_hpxlstm_single_branch_init():
  z_h, _, mask = module_inputs(np.random.default_rng(13))
  model = make_model()
  params = jax.jit(model.init)(jax.random.key(4), z_h, None, mask)
  assert set(params['params']) == {'holistic'}
  zhat_h, zhat_p = model.apply(params, z_h, None, mask)
  assert zhat_h.shape == (len(LENGTHS), PADDED_T, FEATURES) and zhat_p is None


@pytest.mark.parametrize(
  'kwargs',
  [{'bidirectional': True}, {'cross_attention': 'windowed', 'window': 3, 'forget_gate': 'exp'}],
  ids=['chunked-bidirectional', 'windowed-exp'],
)
def test_hpxlstm_gradients_reach_every_parameter(kwargs):
  z_h, z_p, mask = module_inputs(np.random.default_rng(14))
  model = make_model(**kwargs)
  params = jax.jit(model.init)(jax.random.key(5), z_h, z_p, mask)
  rng = np.random.default_rng(15)
  weights = [rng.normal(size=(len(LENGTHS), PADDED_T, FEATURES)).astype(np.float32) for _ in 'hp']

  def loss(p):
    zhat_h, zhat_p = model.apply(p, z_h, z_p, mask)
    return jnp.sum(zhat_h * weights[0]) + jnp.sum(zhat_p * weights[1])

  grads = jax.jit(jax.grad(loss))(params)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert len(flat) == len(jax.tree.leaves(params))
  for path, grad in flat:
    name = jax.tree_util.keystr(path)
    assert np.isfinite(grad).all(), name
    assert np.abs(np.asarray(grad)).max() > 0, name


def test_hpxlstm_rejects_bad_config():
  z_h, z_p, mask = module_inputs(np.random.default_rng(0))
  with pytest.raises(ValueError, match='divisible'):
    make_model(num_heads=3).init(jax.random.key(0), z_h, z_p, mask)
  with pytest.raises(ValueError, match='cross_attention'):
    make_model(cross_attention='full').init(jax.random.key(0), z_h, z_p, mask)
  with pytest.raises(ValueError, match='forget_gate'):
    make_model(forget_gate='tanh').init(jax.random.key(0), z_h, z_p, mask)


# ------------------------------------------------------------------------------------------------
# Memory linear in T


def test_chunkwise_memory_is_linear_in_t():
  num_frames, chunk_size = 16_384, 64
  rng = np.random.default_rng(16)
  q, k, v = (rng.normal(size=(1, 2, num_frames, 4)).astype(np.float32) for _ in range(3))
  i_pre, log_f = rng.normal(size=(2, 1, 2, num_frames)).astype(np.float32)
  log_f = np.asarray(jax.nn.log_sigmoid(log_f + 3.0))
  mask = np.ones((1, num_frames), np.float32)
  args = (q, k, v, i_pre, log_f, mask)
  specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]

  def chunkwise(*a):
    return xlstm.mlstm_chunkwise(*a, chunk_size=chunk_size)

  compiled = jax.jit(chunkwise).lower(*specs).compile()
  quadratic_bytes = num_frames * num_frames * 4
  chunk_temp = compiled.memory_analysis().temp_size_in_bytes
  assert chunk_temp < quadratic_bytes / 100
  assert f'{num_frames},{num_frames}' not in compiled.as_text()
  parallel = jax.jit(xlstm.mlstm_parallel).lower(*specs).compile()
  assert parallel.memory_analysis().temp_size_in_bytes >= quadratic_bytes > 100 * chunk_temp

  out = np.asarray(compiled(*args))
  assert np.isfinite(out).all()
  # The cell is causal: the first 256 frames alone give the same outputs.
  prefix = chunkwise(*(a[..., :256] if a.ndim < 4 else a[:, :, :256] for a in args))
  np.testing.assert_allclose(out[:, :, :256], prefix, atol=1e-5, rtol=1e-5)

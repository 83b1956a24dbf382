"""Causal dilated TCN: a hand-computed conv, causality and reach, masking, params round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyseg.methods.polyphony import tcn

pytestmark = pytest.mark.usefixtures('fast_compile')


def _model_and_params(num_layers=2, channels=8, semantic_dim=5, input_dim=4, seed=0):
  model = tcn.SemanticTCN(num_layers, channels, semantic_dim)
  x = jnp.zeros((1, 16, input_dim))
  params = model.init(jax.random.key(seed), x, jnp.ones((1, 16)))['params']
  # Non-zero biases, so that padding and causality are tested with every term present.
  params = jax.tree.map(
    lambda p: p + 0.1 * jax.random.normal(jax.random.key(seed + 1), p.shape), params
  )
  return model, params


def test_causal_conv_matches_hand_computed_sum():
  conv = tcn.CausalConv(features=2, kernel_size=3, dilation=2)
  x = np.arange(1.0, 8.0, dtype=np.float32)[None, :, None] * np.array([1.0, -0.5], np.float32)
  kernel = np.arange(12, dtype=np.float32).reshape(3, 2, 2) / 10.0
  bias = np.array([0.25, -1.0], np.float32)
  y = conv.apply({'params': {'kernel': kernel, 'bias': bias}}, x, np.ones((1, 7), np.float32))
  expected = np.zeros((7, 2), np.float32)
  for t in range(7):
    for j in range(3):
      source = t - (2 - j) * 2  # taps t-4, t-2, t
      if source >= 0:
        expected[t] += x[0, source] @ kernel[j]
  np.testing.assert_allclose(y[0], expected + bias, rtol=1e-6, atol=1e-6)


def test_output_shape_and_padding_is_zero():
  model, params = _model_and_params()
  x = jax.random.normal(jax.random.key(3), (2, 16, 4))
  mask = (jnp.arange(16)[None] < jnp.array([[16], [9]])).astype(jnp.float32)
  out = model.apply({'params': params}, x, mask)
  assert out.shape == (2, 16, 2, 5)
  assert not np.asarray(out[1, 9:]).any()
  assert np.asarray(out[1, :9]).all()


def test_frame_t_sees_exactly_the_receptive_field_before_it():
  """d out[t] / d x[s] != 0 exactly for s in [t - R + 1, t], R = 1 + 2 (2^L - 1) = 7 for L = 2."""
  model, params = _model_and_params(num_layers=2)
  assert tcn.receptive_field(2) == 7
  x = jax.random.normal(jax.random.key(4), (1, 20, 4))
  mask = jnp.ones((1, 20))
  jacobian = jax.jacobian(lambda x: model.apply({'params': params}, x, mask)[0].sum(axis=(1, 2)))(x)
  for t in range(20):  # jacobian [T out, 1, T in, D]
    seen = np.flatnonzero(np.abs(np.asarray(jacobian[t, 0])).sum(axis=1) > 0)
    assert seen.tolist() == list(range(max(0, t - 6), t + 1)), t


def test_future_frames_never_change_the_past():
  model, params = _model_and_params(num_layers=3)
  x = jax.random.normal(jax.random.key(5), (1, 24, 4))
  changed = x.at[0, 10:].set(100.0)
  mask = jnp.ones((1, 24))
  a = model.apply({'params': params}, x, mask)
  b = model.apply({'params': params}, changed, mask)
  np.testing.assert_array_equal(a[0, :10], b[0, :10])
  assert not np.allclose(a[0, 10], b[0, 10])


def test_padded_batch_gives_each_video_its_unpadded_output():
  model, params = _model_and_params()
  short = jax.random.normal(jax.random.key(6), (1, 11, 4))
  alone = model.apply({'params': params}, short, jnp.ones((1, 11)))
  padded = jnp.concatenate([short, jnp.full((1, 5, 4), 7.0)], axis=1)  # garbage in the padding
  other = jax.random.normal(jax.random.key(7), (1, 16, 4))
  mask = jnp.stack([jnp.arange(16) < 11, jnp.ones(16, bool)]).astype(jnp.float32)
  batch = model.apply({'params': params}, jnp.concatenate([padded, other]), mask)
  np.testing.assert_allclose(batch[0, :11], alone[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    batch[1], model.apply({'params': params}, other, jnp.ones((1, 16)))[0], rtol=1e-5, atol=1e-6
  )


def test_projectors_are_separate_per_hand():
  model, params = _model_and_params()
  x = jax.random.normal(jax.random.key(8), (1, 16, 4))
  out = model.apply({'params': params}, x, jnp.ones((1, 16)))
  assert params['projector']['kernel'].shape == (8, 2, 5)
  assert not np.allclose(out[..., 0, :], out[..., 1, :])
  zeroed = jax.tree.map(lambda p: p, params)
  zeroed['projector'] = {
    'kernel': params['projector']['kernel'].at[:, 1].set(0.0),
    'bias': params['projector']['bias'].at[1].set(0.0),
  }
  out_zeroed = model.apply({'params': zeroed}, x, jnp.ones((1, 16)))
  np.testing.assert_array_equal(out_zeroed[..., 0, :], out[..., 0, :])
  assert not np.asarray(out_zeroed[..., 1, :]).any()


def test_dropout_only_in_training():
  model = tcn.SemanticTCN(2, 8, 5, dropout=0.5)
  x = jax.random.normal(jax.random.key(9), (1, 16, 4))
  mask = jnp.ones((1, 16))
  params = model.init(jax.random.key(0), x, mask)['params']
  eval_out = model.apply({'params': params}, x, mask)
  np.testing.assert_array_equal(eval_out, model.apply({'params': params}, x, mask, train=False))
  train_out = model.apply(
    {'params': params}, x, mask, train=True, rngs={'dropout': jax.random.key(1)}
  )
  assert not np.allclose(train_out, eval_out)


def test_from_params_rebuilds_the_model_and_apply_matches():
  model, params = _model_and_params(num_layers=3, channels=6, semantic_dim=7)
  rebuilt = tcn.from_params(params)
  assert (rebuilt.num_layers, rebuilt.channels, rebuilt.semantic_dim, rebuilt.num_hands) == (
    3,
    6,
    7,
    2,
  )
  assert rebuilt.kernel_size == 3
  x = jax.random.normal(jax.random.key(10), (2, 16, 4))
  mask = jnp.ones((2, 16))
  np.testing.assert_allclose(
    tcn.apply(params, x, mask), model.apply({'params': params}, x, mask), rtol=1e-6, atol=1e-6
  )


def test_from_params_rejects_other_params():
  with pytest.raises(ValueError, match='not SemanticTCN params'):
    tcn.from_params({'Dense_0': {'kernel': np.zeros((2, 2))}})


def test_bad_conv_settings_are_errors():
  with pytest.raises(ValueError, match='dilation must be >= 1'):
    tcn.CausalConv(2, 3, 0).init(jax.random.key(0), jnp.zeros((1, 4, 2)), jnp.ones((1, 4)))

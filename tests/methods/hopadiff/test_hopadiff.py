"""HopaDIFF networks: DFT condition, text condition, the two-branch model (shapes, masks, gradients)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyseg.engine import fused_random
from polyseg.methods.hopadiff import model as hopadiff
from polyseg.methods.hopadiff import xlstm
from polyseg.nn import asformer
from polyseg.nn import layers

pytestmark = pytest.mark.usefixtures('fast_compile')


# --- DFT condition ------------------------------------------------------------------------------


def _dft_reference(x, mask, window, parts):
  """Numpy: Hann-weighted rfft of every frame's window of x [T, C] (zero outside valid frames)."""
  length, _channels = x.shape
  x = x * mask[:, None]
  half = window // 2
  padded = np.pad(x, [(half, half), (0, 0)])
  hann = np.hanning(window + 2)[1:-1]
  out = []
  for t in range(length):
    spectrum = np.fft.rfft(padded[t : t + window] * hann[:, None], axis=0) / hann.sum()
    if parts == 'magnitude':
      out.append(np.log1p(np.abs(spectrum)).reshape(-1))
    else:
      out.append(np.concatenate([spectrum.real, spectrum.imag]).reshape(-1))
  out = np.stack(out)
  out = (out - out.mean(-1, keepdims=True)) / np.sqrt(out.var(-1, keepdims=True) + 1e-6)
  return out * mask[:, None]


def _identity_dft_params(module, x, mask):
  params = module.init(jax.random.PRNGKey(0), x, mask)
  channels = x.shape[-1]
  params['params']['proj']['kernel'] = jnp.eye(channels)
  return params


@pytest.mark.parametrize('parts', ['magnitude', 'complex'])
def test_dft_condition_matches_numpy_reference(parts):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 40, 2)).astype(np.float32)
  mask = np.ones((1, 40), np.float32)
  mask[0, 31:] = 0
  module = hopadiff.DFTCondition('windowed', parts, channels=2, window=9)
  params = _identity_dft_params(module, x, mask)
  out = np.asarray(module.apply(params, x, mask))
  bins = 9 // 2 + 1
  assert out.shape == (1, 40, 2 * bins * (1 if parts == 'magnitude' else 2))
  np.testing.assert_allclose(out[0], _dft_reference(x[0], mask[0], 9, parts), atol=1e-4)


def test_dft_condition_peaks_at_the_frequency_of_a_periodic_motion():
  window, cycles = 33, 6  # period 33 / 6 = 5.5 frames
  t = np.arange(200)
  x = np.sin(2 * np.pi * cycles / window * t).astype(np.float32)[None, :, None]
  mask = np.ones((1, 200), np.float32)
  module = hopadiff.DFTCondition('windowed', 'magnitude', channels=1, window=window)
  out = np.asarray(module.apply(_identity_dft_params(module, x, mask), x, mask))
  assert np.all(out[0, 20:180].argmax(-1) == cycles)


def test_dft_condition_ignores_padding_and_zeroes_padded_frames():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 30, 3)).astype(np.float32)
  mask = np.ones((1, 30), np.float32)
  mask[0, 20:] = 0
  garbage = x.copy()
  garbage[0, 20:] = 1e3
  module = hopadiff.DFTCondition('windowed', channels=2, window=7)
  params = module.init(jax.random.PRNGKey(1), x, mask)
  out, out_garbage = module.apply(params, x, mask), module.apply(params, garbage, mask)
  np.testing.assert_allclose(out, out_garbage, atol=1e-6)
  assert np.all(np.asarray(out)[0, 20:] == 0)


def test_dft_condition_rejects_bad_settings():
  x, mask = jnp.zeros((1, 5, 2)), jnp.ones((1, 5))
  with pytest.raises(ValueError, match='odd'):
    hopadiff.DFTCondition('windowed', window=8).init(jax.random.PRNGKey(0), x, mask)
  with pytest.raises(ValueError, match='parts'):
    hopadiff.DFTCondition('windowed', parts='phase', window=5).init(jax.random.PRNGKey(0), x, mask)
  with pytest.raises(ValueError, match='kind'):
    hopadiff.DFTCondition('local').init(jax.random.PRNGKey(0), x, mask)


def _padded_videos(lengths, frames, channels, seed):
  """Videos of `lengths` padded to `frames` with garbage (which must be ignored): x, mask."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(len(lengths), frames, channels)).astype(np.float32) + 0.3
  mask = (np.arange(frames)[None] < np.asarray(lengths)[:, None]).astype(np.float32)
  return np.where(mask[..., None] > 0, x, 1e3).astype(np.float32), mask


@pytest.mark.parametrize(
  'lengths, frames',
  [((40, 37, 20, 1), 40), ((50_000, 46_349), 50_000)],  # long: m^2 overflows int32, m^2 / L in
  ids=['short', 'long'],  # float32 is 0.03 rad off, so the chirp phase must be exact
)
def test_dft_along_time_is_numpy_fft_of_each_unpadded_video(lengths, frames):
  x, mask = _padded_videos(lengths, frames, 3, seed=0)
  out = np.asarray(jax.jit(hopadiff.dft_along_time)(x, mask))
  assert out.shape == x.shape and out.dtype == np.complex64
  for b, length in enumerate(lengths):
    reference = np.fft.fft(x[b, :length].astype(np.float64), axis=0)
    np.testing.assert_allclose(out[b, :length], reference, atol=1e-5 * np.abs(reference).max())
    assert np.all(out[b, length:] == 0)


def _global_dft_reference(x, length, parts):
  """Numpy: fft / sqrt(L) of the L valid frames of x [T, F], parts, LayerNorm; 0 on padded frames."""
  spectrum = np.fft.fft(x[:length].astype(np.float64), axis=0) / np.sqrt(length)
  if parts == 'magnitude':
    out = np.log1p(np.abs(spectrum))
  else:
    out = np.concatenate([spectrum.real, spectrum.imag], axis=-1)
  out = (out - out.mean(-1, keepdims=True)) / np.sqrt(out.var(-1, keepdims=True) + 1e-6)
  return np.pad(out, [(0, x.shape[0] - length), (0, 0)])


@pytest.mark.parametrize('parts', ['complex', 'magnitude'])
def test_global_dft_condition_matches_numpy_on_a_padded_batch(parts):
  lengths, frames = (33, 24, 17), 33
  x, mask = _padded_videos(lengths, frames, 4, seed=1)
  width = 4 * (2 if parts == 'complex' else 1)
  module = hopadiff.DFTCondition('global', parts)
  params = module.init(jax.random.PRNGKey(0), x, mask)  # no projection: only the LayerNorm
  assert jax.tree.map(np.shape, params) == {
    'params': {'norm': {'bias': (width,), 'scale': (width,)}}
  }
  apply = jax.jit(module.apply)
  out = np.asarray(apply(params, x, mask))
  assert out.shape == (3, frames, width)
  for b, length in enumerate(lengths):
    np.testing.assert_allclose(out[b], _global_dft_reference(x[b], length, parts), atol=2e-4)
  # The same compiled function serves other lengths (L is a traced value, not a shape).
  x2, mask2 = _padded_videos((5, 33, 30), frames, 4, seed=2)
  out2 = np.asarray(apply(params, x2, mask2))
  for b, length in enumerate((5, 33, 30)):
    np.testing.assert_allclose(out2[b], _global_dft_reference(x2[b], length, parts), atol=2e-4)


def test_global_dft_condition_gradients_are_finite_and_ignore_padding():
  x, mask = _padded_videos((20, 13), 20, 3, seed=2)
  module = hopadiff.DFTCondition('global', 'complex')
  params = module.init(jax.random.PRNGKey(0), x, mask)
  weights = np.random.default_rng(3).normal(size=(2, 20, 6)).astype(np.float32)
  loss = lambda p, x: jnp.sum(module.apply(p, x, mask) * weights)
  grad_params, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  for g in (*jax.tree.leaves(grad_params), grad_x):
    assert np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0)
  assert np.all(np.asarray(grad_x)[1, 13:] == 0)


def test_global_dft_condition_puts_bin_k_on_frame_k():
  """A sinusoid with 5 cycles over the L valid frames: the magnitude peaks on frames 5 and L - 5."""
  length, frames = 64, 80
  t = np.arange(frames)
  x = (np.sin(2 * np.pi * 5 * t / length) * (t < length)).astype(np.float32)[None, :, None]
  mask = (t < length).astype(np.float32)[None]
  spectrum = np.abs(np.asarray(hopadiff.dft_along_time(x, mask)))[0, :, 0]
  assert set(np.argsort(spectrum)[-2:]) == {5, length - 5}
  np.testing.assert_allclose(spectrum[[5, length - 5]], length / 2, rtol=1e-4)


# --- text condition -----------------------------------------------------------------------------


def _text_inputs(seed, batch=2, frames=6, dim=5, tokens=4, emb=7):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, frames, dim)).astype(np.float32)
  mask = np.ones((batch, frames), np.float32)
  pooled = rng.normal(size=(batch, emb)).astype(np.float32)
  token_states = rng.normal(size=(batch, tokens, emb)).astype(np.float32)
  token_mask = np.ones((batch, tokens), np.float32)
  token_mask[1, 2:] = 0
  return x, mask, pooled, token_states, token_mask


def _perturbed(params, seed):
  """Every parameter plus N(0, 0.5^2) noise, drawn with numpy (jax would compile a draw and a sum
  for every distinct shape: 5 s for the whole model)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda leaf: np.asarray(leaf) + np.float32(0.5) * rng.standard_normal(leaf.shape, np.float32),
    params,
  )


@pytest.mark.parametrize('kind', ['film', 'cross_attention'])
def test_text_condition_is_identity_at_init_and_uses_the_text(kind):
  inputs = _text_inputs(0)
  module = hopadiff.TextCondition(kind, attention_dim=8)
  params = module.init(jax.random.PRNGKey(0), *inputs)
  np.testing.assert_allclose(module.apply(params, *inputs), inputs[0], atol=1e-6)
  # PyTorch's initialisation redraws every Dense layer; the zero gate keeps the identity.
  redrawn = {'params': layers.torch_default_init(params['params'], jax.random.PRNGKey(1))}
  pairs = zip(jax.tree.leaves(redrawn), jax.tree.leaves(params))
  assert any(not np.array_equal(a, b) for a, b in pairs)
  np.testing.assert_allclose(module.apply(redrawn, *inputs), inputs[0], atol=1e-6)
  trained = _perturbed(params, 1)
  out = module.apply(trained, *inputs)
  other_text = list(inputs)
  other_text[2], other_text[3] = -inputs[2], -inputs[3]
  assert not np.allclose(out, module.apply(trained, *other_text), atol=1e-3)


def test_text_cross_attention_ignores_masked_tokens():
  inputs = _text_inputs(2)
  module = hopadiff.TextCondition('cross_attention', attention_dim=8)
  params = _perturbed(module.init(jax.random.PRNGKey(0), *inputs), 3)
  changed = list(inputs)
  changed[3] = inputs[3].copy()
  changed[3][1, 2:] = 100.0  # masked tokens of sample 1
  np.testing.assert_allclose(
    module.apply(params, *inputs), module.apply(params, *changed), atol=1e-5
  )


# --- the two-branch model -----------------------------------------------------------------------

C, DH, DP = 3, 6, 5


def _model(partial=True, use_xlstm=True, cross_attention='chunked', dft='global', text=None):
  enc = {
    'num_layers': 2,
    'num_f_maps': 8,
    'kernel_size': 3,
    'num_classes': C,
    'dropout': 0.0,
    'channel_dropout': 0.0,
    'temporal_dropout': 0.0,
    'feature_layer_indices': (0, 1),
  }
  dec = {
    'num_layers': 2,
    'num_f_maps': 6,
    'kernel_size': 3,
    'num_classes': C,
    'dropout': 0.0,
    'time_emb_dim': 8,
  }
  parts = 'complex' if dft == 'global' else 'magnitude'  # as configs/hopadiff.py
  dft_condition = functools.partial(hopadiff.DFTCondition, dft, parts, channels=2, window=5)
  return hopadiff.HopaDIFFModel(
    holistic_encoder=asformer.Encoder(**enc),
    holistic_decoder=asformer.Decoder(**dec),
    partial_encoder=asformer.Encoder(**enc) if partial else None,
    partial_decoder=asformer.Decoder(**dec) if partial else None,
    hp_xlstm=xlstm.HPxLSTM(
      features=8, num_heads=2, chunk_size=4, cross_attention=cross_attention, window=5
    )
    if use_xlstm
    else None,
    holistic_dft=dft_condition() if dft else None,
    partial_dft=dft_condition() if dft and partial else None,
    text=hopadiff.TextCondition(text, attention_dim=4) if text else None,
  )


def _model_inputs(seed=0, lengths=(12, 9), total=12):
  rng = np.random.default_rng(seed)
  batch = len(lengths)
  mask = (np.arange(total)[None] < np.asarray(lengths)[:, None]).astype(np.float32)
  inputs = {
    'holistic': rng.normal(size=(batch, total, DH)).astype(np.float32) * mask[..., None],
    'partial': rng.normal(size=(batch, total, DP)).astype(np.float32) * mask[..., None],
    'text': rng.normal(size=(batch, 7)).astype(np.float32),
    'text_tokens': rng.normal(size=(batch, 4, 7)).astype(np.float32),
    'text_mask': np.ones((batch, 4), np.float32),
  }
  x01 = rng.random((batch, total, C)).astype(np.float32)
  return inputs, x01, np.array([10, 500], np.int32)[:batch], mask


@pytest.mark.parametrize(
  'options, branches, width',
  [
    ({}, ('holistic', 'partial'), 16 + 8 + 2 * 8),  # z (2 layers x 8) + zhat (8) + DFT (Re, Im)
    ({'use_xlstm': False}, ('holistic', 'partial'), 16 + 2 * 16),  # DFT(z)
    ({'dft': 'windowed'}, ('holistic', 'partial'), 16 + 8 + 2 * 3),  # 2 channels x 3 bins
    ({'dft': 'windowed', 'use_xlstm': False}, ('holistic', 'partial'), 16 + 2 * 3),
    ({'dft': None}, ('holistic', 'partial'), 16 + 8),
    ({'partial': False}, ('holistic',), 16 + 8 + 2 * 8),
    ({'partial': False, 'use_xlstm': False, 'dft': None}, ('holistic',), 16),
    ({'text': 'film'}, ('holistic', 'partial'), 16 + 8 + 2 * 8),
  ],
)
def test_model_shapes_and_condition_layout(options, branches, width):
  """Shapes only (jax.eval_shape: nothing is compiled)."""
  model = _model(**options)
  inputs, x01, t, mask = _model_inputs()
  params = jax.eval_shape(
    functools.partial(model.init, train=False), jax.random.PRNGKey(0), inputs, x01, t, mask
  )
  logits, conditions = jax.eval_shape(
    functools.partial(model.apply, train=False, method=model.encode), params, inputs, mask
  )
  assert tuple(logits) == tuple(conditions) == branches
  for b in branches:
    assert logits[b].shape == (2, 12, C) and conditions[b].shape == (2, 12, width)
  _, dec = jax.eval_shape(functools.partial(model.apply, train=False), params, inputs, x01, t, mask)
  assert tuple(dec) == branches and all(dec[b].shape == (2, 12, C) for b in branches)


def _init(model, rng, *inputs):
  """model.init (eval mode), jitted with its draws fused as the engine's initialisation is: the
  same values, a program that compiles in about half the time."""
  return jax.jit(fused_random.fuse_random_draws(functools.partial(model.init, train=False)))(
    rng, *inputs
  )


def test_model_valid_frames_do_not_depend_on_padding():
  model = _model(text='cross_attention')
  inputs, x01, t, mask = _model_inputs(lengths=(12, 9))
  apply = jax.jit(functools.partial(model.apply, train=False))
  params = _init(model, jax.random.PRNGKey(0), inputs, x01, t, mask)
  _, dec = apply(params, inputs, x01, t, mask)
  longer = {
    k: (np.pad(v, [(0, 0), (0, 20), (0, 0)]) if k in hopadiff.BRANCHES else v)
    for k, v in inputs.items()
  }
  longer_x01 = np.pad(x01, [(0, 0), (0, 20), (0, 0)], constant_values=0.7)
  longer_mask = np.pad(mask, [(0, 0), (0, 20)])
  _, dec_longer = apply(params, longer, longer_x01, t, longer_mask)
  for b in dec:
    np.testing.assert_allclose(dec[b][1, :9], dec_longer[b][1, :9], atol=1e-4)
    np.testing.assert_allclose(dec[b][0], dec_longer[b][0, :12], atol=1e-4)
    assert np.all(np.asarray(dec[b])[1, 9:] == 0)


@pytest.mark.parametrize('text', ['film', 'cross_attention'])
def test_decoder_loss_reaches_every_parameter(text):
  """Unlike the reference code (always-zero condition, so no gradient into its xLSTM), the decoder
  loss alone moves every parameter of HP-xLSTM, the DFT condition and the text path."""
  model = _model(text=text)
  inputs, x01, t, mask = _model_inputs(seed=4)
  params = _init(model, jax.random.PRNGKey(2), inputs, x01, t, mask)
  params = _perturbed(params, 5)  # zero-initialised text layers would hide gradients otherwise
  target = jnp.asarray(np.random.default_rng(6).random((2, 12, C)) < 0.4, jnp.float32)

  def decoder_loss(p):
    _, dec = model.apply(p, inputs, x01, t, mask, train=False)
    return sum(jnp.sum(((jax.nn.sigmoid(d) - target) ** 2) * mask[..., None]) for d in dec.values())

  grads = jax.jit(jax.grad(decoder_loss))(params)['params']
  for module in ('hp_xlstm', 'holistic_dft', 'partial_dft', *(['text'] if text else [])):
    flat = jax.tree_util.tree_flatten_with_path(grads[module])[0]
    assert flat
    for path, g in flat:
      assert np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0), (module, path)

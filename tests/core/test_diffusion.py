"""Tests for polyseg.core.diffusion: schedule, noising, DDIM sampler, condition masks."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyseg.configlib import load_config
from polyseg.core import diffusion
from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.methods.diffact import task as diffact

SCHEDULE = diffusion.cosine_schedule()


# --- schedule and noising ---------------------------------------------------------------------


def test_cosine_schedule_matches_diffact_values():
  betas = np.asarray(SCHEDULE.betas)
  alpha_bar = np.asarray(SCHEDULE.alphas_cumprod)
  assert betas.dtype == alpha_bar.dtype == np.float32
  assert betas.shape == alpha_bar.shape == (1000,)
  np.testing.assert_allclose(betas[0], 4.1284e-05, rtol=1e-4)
  np.testing.assert_allclose(alpha_bar[[249, 499, 749]], [0.84701, 0.49384, 0.14427], atol=1e-5)
  np.testing.assert_allclose(alpha_bar[999], 2.43e-09, rtol=1e-3)
  assert betas.max() <= 0.999 and betas.min() >= 0
  np.testing.assert_allclose(alpha_bar, np.cumprod(1 - betas.astype(np.float64)), rtol=1e-4)


def test_q_sample_mean_and_std_over_noise_draws():
  draws, t = 20000, 300
  x0 = jnp.asarray([[[-0.5, 0.5], [0.5, -0.5], [0.2, 0.0]]])  # [1, 3, 2]
  noise = jax.random.normal(jax.random.PRNGKey(0), (draws,) + x0.shape[1:])
  x_t = diffusion.q_sample(
    jnp.broadcast_to(x0, noise.shape), jnp.full((draws,), t), noise, SCHEDULE
  )
  alpha_bar = float(SCHEDULE.alphas_cumprod[t])
  tolerance = 5 * np.sqrt(1 - alpha_bar) / np.sqrt(draws)
  np.testing.assert_allclose(x_t.mean(0), np.sqrt(alpha_bar) * x0[0], atol=tolerance)
  np.testing.assert_allclose(x_t.std(0), np.full(x0.shape[1:], np.sqrt(1 - alpha_bar)), rtol=0.03)


noisy_labels = jax.jit(diffusion.noisy_labels)
LABELS = (np.random.default_rng(0).random((4000, 10, 4)) < 0.4).astype(np.float32)  # multi-hot


def test_noisy_labels_shapes_range_and_clipping():
  x01, t = noisy_labels(jax.random.PRNGKey(1), LABELS, SCHEDULE, 0.5)
  assert x01.shape == LABELS.shape and x01.dtype == jnp.float32
  assert t.shape == (4000,) and t.dtype == jnp.int32
  assert float(x01.min()) == 0.0 and float(x01.max()) == 1.0  # unit noise at s = 0.5 gets clipped
  counts = np.bincount(np.asarray(t) // 100, minlength=10)
  assert counts.sum() == 4000 and len(counts) == 10  # t in [0, 1000)
  np.testing.assert_allclose(counts, 400, atol=5 * np.sqrt(400))  # uniform


@pytest.mark.parametrize('shape', [(2, 6, 4), (3, 5), (7,), (1, 1, 1)])
def test_standard_normal_is_jaxs_normal_of_that_shape(shape):
  """Drawn flat and reshaped (far quicker to compile on CPU): jax's values for that shape."""
  key = jax.random.PRNGKey(11)
  np.testing.assert_array_equal(
    diffusion.standard_normal(key, shape), jax.random.normal(key, shape, jnp.float32)
  )


def test_noisy_labels_at_t0_are_the_clean_labels():
  always_t0 = diffusion.Schedule(SCHEDULE.betas, jnp.full(1000, SCHEDULE.alphas_cumprod[0]))
  x01, _ = noisy_labels(jax.random.PRNGKey(2), LABELS, always_t0, 0.5)
  np.testing.assert_allclose(x01, LABELS, atol=0.04)


def test_noisy_labels_noise_follows_the_returned_t():
  """With a large snr scale nothing is clipped; invert the mapping and recover unit gaussian noise."""
  scale = 100.0
  x01, t = noisy_labels(jax.random.PRNGKey(3), LABELS, SCHEDULE, scale)
  alpha_bar = np.asarray(SCHEDULE.alphas_cumprod, np.float64)[np.asarray(t)][:, None, None]
  keep = alpha_bar[:, 0, 0] < 0.9  # far from the clip edges
  x_t = (np.asarray(x01, np.float64) * 2 - 1) * scale
  noise = (x_t - np.sqrt(alpha_bar) * (LABELS * 2 - 1) * scale) / np.sqrt(1 - alpha_bar)
  noise = noise[keep]
  assert abs(noise.mean()) < 0.01 and abs(noise.std() - 1) < 0.01


# --- DDIM ----------------------------------------------------------------------------------------


def test_sampling_times():
  times = diffusion.sampling_times(1000, 25)
  assert times.shape == (26,)
  assert list(times[:4]) == [999, 959, 919, 879] and list(times[-3:]) == [79, 39, -1]
  assert list(times) == [999 - 40 * i for i in range(25)] + [-1]
  assert list(diffusion.sampling_times(10, 10)) == list(range(9, -2, -1))


NUM_CLASSES = 4
SHAPE = (2, 6, NUM_CLASSES)
SCALE = 0.5


def _toy_weights():
  rng = np.random.default_rng(0)
  weight = rng.normal(size=(NUM_CLASSES, NUM_CLASSES)).astype(np.float32) * 2
  cond = rng.normal(size=SHAPE).astype(np.float32)
  return weight, cond


def _toy_denoiser(weight, cond):
  """A fixed linear map of x01 plus a hoisted condition and a time term: [B,T,C], [B] -> [B,T,C]."""

  def denoise(x01, t):
    return x01 @ weight + cond + t[:, None, None] / 1000.0

  return denoise


def _reference_ddim(weight, cond, rng, activation, eta=1.0):
  """Plain step-by-step DDIM in float64 numpy (DiffAct's formulas), same random numbers."""

  def act(logits):
    if activation == 'sigmoid':
      return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  alpha_bars = np.asarray(SCHEDULE.alphas_cumprod, np.float64)
  times = [999 - 40 * i for i in range(25)] + [-1]
  keys = jax.random.split(rng, 26)
  x = np.asarray(jax.random.normal(keys[0], SHAPE), np.float64)
  for i, (time, next_time) in enumerate(itertools.pairwise(times)):
    x01 = (np.clip(x, -SCALE, SCALE) / SCALE + 1) / 2
    logits = x01 @ weight + cond + time / 1000.0
    x0 = np.clip((act(logits) * 2 - 1) * SCALE, -SCALE, SCALE)
    ab = alpha_bars[time]
    eps = (x / np.sqrt(ab) - x0) / np.sqrt(1 / ab - 1)
    if next_time < 0:
      x = x0
      continue
    ab_next = alpha_bars[next_time]
    sigma = eta * np.sqrt((1 - ab / ab_next) * (1 - ab_next) / (1 - ab))
    c = np.sqrt(1 - ab_next - sigma**2)
    z = np.asarray(jax.random.normal(keys[i + 1], SHAPE), np.float64)
    x = np.sqrt(ab_next) * x0 + c * eps + sigma * z
  return (x / SCALE + 1) / 2


@functools.cache
def _sampler(activation='softmax', eta=1.0):
  weight, cond = _toy_weights()

  def sample(rng, cond):
    return diffusion.ddim_sample(
      _toy_denoiser(weight, cond),
      rng,
      SHAPE,
      SCHEDULE,
      snr_scale=SCALE,
      eta=eta,
      activation=activation,
    )

  return jax.jit(sample), weight, cond


@pytest.mark.parametrize('activation,eta', [('softmax', 1.0), ('sigmoid', 0.5)])
def test_ddim_matches_step_by_step_reference(activation, eta):
  sample, weight, cond = _sampler(activation, eta)
  rng = jax.random.PRNGKey(7)
  probs = np.asarray(sample(rng, cond))
  np.testing.assert_allclose(probs, _reference_ddim(weight, cond, rng, activation, eta), atol=1e-5)
  assert probs.min() >= 0 and probs.max() <= 1
  if activation == 'softmax':
    np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)


def test_ddim_is_one_scan_with_one_denoiser_trace():
  weight, cond = _toy_weights()
  traces = []

  def denoise(x01, t):
    traces.append(1)
    return _toy_denoiser(weight, cond)(x01, t)

  sample = jax.jit(
    functools.partial(
      diffusion.ddim_sample, denoise, shape=SHAPE, schedule=SCHEDULE, snr_scale=SCALE
    )
  )
  jaxpr = str(jax.make_jaxpr(sample)(jax.random.PRNGKey(0)))
  assert 'scan[' in jaxpr
  assert jaxpr.count('scan[') == 1
  assert len(traces) == 1


def test_ddim_vmaps_over_views():
  sample, _, cond = _sampler()
  views = 3
  rngs = jax.random.split(jax.random.PRNGKey(8), views)
  conds = jnp.stack([cond, cond * 2, -cond])
  batched = jax.jit(jax.vmap(sample))(rngs, conds)
  assert batched.shape == (views,) + SHAPE
  for view in range(views):
    np.testing.assert_allclose(batched[view], sample(rngs[view], conds[view]), atol=1e-6)
  assert not np.allclose(batched[0], batched[1])


def test_ddim_rejects_unknown_activation():
  weight, cond = _toy_weights()
  with pytest.raises(ValueError, match='sigmoid'):
    diffusion.ddim_sample(
      _toy_denoiser(weight, cond),
      jax.random.PRNGKey(0),
      SHAPE,
      SCHEDULE,
      snr_scale=SCALE,
      activation='relu',
    )


# --- condition masks -----------------------------------------------------------------------------


def test_parse_condition_types():
  assert diffusion.parse_condition_types(
    ['full', 'zero', 'boundary', 'segment=1', 'segment=02']
  ) == ('full', 'zero', 'boundary', 'segment=1', 'segment=2')
  for bad in (['full', 'segmnt=1'], ['segment=0'], ['segment=x'], [' full'], []):
    with pytest.raises(ValueError, match='boundary'):
      diffusion.parse_condition_types(bad)
  with pytest.raises(ValueError, match="'segmnt=1'"):
    diffusion.parse_condition_types(['full', 'segmnt=1'])


def test_condition_mask_rejects_unknown_kind():
  labels = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(ValueError, match='valid kinds'):
    diffusion.condition_mask(
      jax.random.PRNGKey(0), labels, jnp.zeros((1, 4)), jnp.ones((1, 4)), ('full', 'half'), 0.3
    )


@functools.partial(jax.jit, static_argnames=('kinds', 'threshold'))
def _masks_jit(seeds, labels, boundary, mask, kinds, threshold):
  return jax.vmap(
    lambda seed: diffusion.condition_mask(
      jax.random.PRNGKey(seed), labels, boundary, mask, kinds, threshold
    )
  )(seeds)


def _masks(kinds, seeds, labels, boundary, mask, threshold=0.3):
  """Condition masks [len(seeds), B, T], one per rng seed."""
  out = _masks_jit(
    jnp.asarray(seeds),
    jnp.asarray(labels),
    jnp.asarray(boundary),
    jnp.asarray(mask),
    kinds,
    threshold,
  )
  assert out.shape == (len(seeds),) + labels.shape + (1,) and out.dtype == jnp.float32
  return np.asarray(out[..., 0])


def _batch():
  """Three videos of length 12 / 9 / 1 padded to 12; padded labels are class 9 (absent elsewhere)."""
  labels = np.array(
    [
      [0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 5, 5],
      [2, 2, 1, 1, 1, 4, 4, 2, 2, 9, 9, 9],
      [6, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9],
    ],
    np.int32,
  )
  lengths = np.array([12, 9, 1])
  mask = (np.arange(12)[None] < lengths[:, None]).astype(np.float32)
  boundary = np.random.default_rng(0).random(labels.shape).astype(np.float32) * mask
  return labels, boundary, mask


SEEDS = np.arange(600)


def test_full_and_zero_masks():
  labels, boundary, mask = _batch()
  assert np.all(_masks(('full',), [0], labels, boundary, mask) == 1)
  assert np.all(_masks(('zero',), [0], labels, boundary, mask) == 0)


def test_boundary_mask_zeroes_frames_at_or_above_threshold():
  labels, boundary, mask = _batch()
  boundary[0, :3] = [0.3, 0.2999, 1.0]
  out = _masks(('boundary',), [0], labels, boundary, mask)[0]
  valid = mask > 0
  np.testing.assert_array_equal(out[valid], (boundary < 0.3)[valid])
  assert list(out[0, :3]) == [0, 1, 0]
  assert np.all(out[~valid] == 1)


@pytest.mark.parametrize('n', [1, 2])
def test_segment_mask_zeroes_n_present_classes(n):
  labels, boundary, mask = _batch()
  valid = mask > 0
  for out in _masks((f'segment={n}',), SEEDS, labels, boundary, mask):
    assert np.all(out[~valid] == 1)
    for video in range(len(labels)):
      video_labels, video_out = labels[video][valid[video]], out[video][valid[video]]
      zeroed = set(video_labels[video_out == 0])
      assert len(zeroed) == min(n, len(set(video_labels)))
      np.testing.assert_array_equal(video_out, ~np.isin(video_labels, list(zeroed)))


def test_segment_classes_are_drawn_uniformly_over_present_classes():
  """Class 0 covers 9 of 12 frames of video 0, yet each of its 3 classes is picked ~1/3 of the time;
  class 9 (padding only) is never picked for video 1."""
  labels, boundary, mask = _batch()
  out = _masks(('segment=1',), SEEDS, labels, boundary, mask)
  picked = [labels[0][masks[0] == 0][0] for masks in out]
  counts = np.bincount(picked, minlength=6)[[0, 3, 5]]
  np.testing.assert_allclose(counts, len(SEEDS) / 3, atol=5 * np.sqrt(len(SEEDS) * 2 / 9))
  assert np.all((out[:, 1, :9] == 0).sum(axis=1) > 0)


def test_padding_does_not_change_the_segment_mask():
  labels, boundary, mask = _batch()
  other_padding = np.where(mask > 0, labels, np.arange(12) % 7).astype(np.int32)
  out = _masks(('segment=2',), SEEDS, labels, boundary, mask)
  out_other_padding = _masks(('segment=2',), SEEDS, other_padding, boundary, mask)
  valid = np.broadcast_to(mask > 0, out.shape)
  np.testing.assert_array_equal(out[valid], out_other_padding[valid])


def test_kinds_are_drawn_uniformly_per_video():
  videos = 4000
  labels = np.tile(np.array([0, 0, 1, 1, 1, 2, 2, 2], np.int32), (videos, 1))
  boundary = np.tile(np.array([0, 0.5, 0.5, 0, 0, 0.5, 0, 0], np.float32), (videos, 1))
  mask = np.ones(labels.shape, np.float32)
  out = _masks(('full', 'zero', 'boundary', 'segment=1'), [0], labels, boundary, mask)[0]
  is_full = np.all(out == 1, axis=1)
  is_zero = np.all(out == 0, axis=1)
  is_boundary = np.all(out == (boundary < 0.3), axis=1)
  counts = [is_full.sum(), is_zero.sum(), is_boundary.sum()]
  counts.append(videos - sum(counts))
  np.testing.assert_allclose(counts, videos / 4, atol=5 * np.sqrt(videos * 3 / 16))

  repeated = _masks(('full', 'full', 'zero'), [1], labels, boundary, mask)[0]
  np.testing.assert_allclose(np.all(repeated == 1, axis=1).mean(), 2 / 3, atol=0.04)


# --- multi-hot labels (HopaDIFF) ---------------------------------------------------------------


def _multi_hot_masks(kind, seeds, active, mask):
  """Condition masks [len(seeds), B, T] of multi-hot labels active [B, T, C]."""
  boundary = np.zeros(mask.shape, np.float32)
  fn = jax.jit(
    jax.vmap(
      lambda seed: diffusion.condition_mask(
        jax.random.PRNGKey(seed), active, boundary, mask, (kind,), 0.3
      )[..., 0]
    )
  )
  return np.asarray(fn(jnp.asarray(seeds)))


@pytest.mark.parametrize('n', [1, 2, 5])
def test_segment_mask_of_multi_hot_labels_zeroes_frames_of_n_present_classes(n):
  # Video 0: class 0 on frames 0-5, class 1 on 3-8, class 2 on 6-7, frame 9 empty, 10-11 padding
  # (where class 3 is "active" but must never be chosen). Video 1: only class 3, frames 0-3.
  active = np.zeros((2, 12, 4), np.float32)
  active[0, 0:6, 0] = active[0, 3:9, 1] = active[0, 6:8, 2] = 1
  active[0, 10:, 3] = 1
  active[1, 0:4, 3] = 1
  mask = np.zeros((2, 12), np.float32)
  mask[0, :10] = mask[1, :4] = 1
  valid = mask > 0
  chosen_counts = np.zeros(4)
  for out in _multi_hot_masks(f'segment={n}', np.arange(300), active, mask):
    assert np.all(out[~valid] == 1)
    # The zeroed frames of video 0 are exactly those where one of n present classes is active.
    zeroed = out[0] == 0
    sets = [
      set(s) for s in ([0], [1], [2], [0, 1], [0, 2], [1, 2], [0, 1, 2]) if len(s) == min(n, 3)
    ]
    matches = [s for s in sets if np.array_equal(zeroed, valid[0] & active[0][:, list(s)].any(-1))]
    assert len(matches) == 1, zeroed
    chosen_counts[list(matches[0])] += 1
    assert out[0, 9] == 1  # an empty frame is never zeroed
    np.testing.assert_array_equal(out[1, :4] == 0, np.ones(4, bool))  # the only class present
  if n == 1:  # each present class of video 0 is drawn about 1/3 of the time; class 3 never
    np.testing.assert_allclose(chosen_counts[:3], 100, atol=30)
  assert chosen_counts[3] == 0


def test_view_keys_shared_or_independent():
  rng = jax.random.PRNGKey(3)
  shared = diffusion.view_keys(rng, 3, shared=True)
  np.testing.assert_array_equal(shared, np.stack([rng] * 3))
  independent = diffusion.view_keys(rng, 3, shared=False)
  np.testing.assert_array_equal(independent, jax.random.split(rng, 3))


@pytest.mark.parametrize('shared', [True, False])
def test_diffact_views_share_their_ddim_noise_when_asked(shared):
  """A video whose frames come in equal pairs has two equal views at sample rate 2: with shared
  noise their DDIM outputs are equal, with independent noise they are not."""
  config = load_config('diffact', 'runlocal=True')
  config.data.sample_rate = 2
  config.diffusion.shared_view_noise = shared
  features = np.repeat(np.random.default_rng(0).normal(size=(20, 16)), 2, axis=0)
  video = formats.Video('v', features.astype(np.float32), np.zeros(40, np.int64))
  task = diffact.Task(config, dataset_lib.DataInfo(('a', 'b', 'c'), 16, ()))
  inputs, mask = task.view_inputs(video)
  params = task.init(jax.random.PRNGKey(0), task.example_batch())
  probs = np.asarray(task._sample(params, inputs, mask, jax.random.PRNGKey(1)))
  assert probs.shape[:2] == (2, 1)  # two views, one label chain
  assert np.allclose(probs[0], probs[1], atol=1e-6) == shared

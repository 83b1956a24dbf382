"""Tests for polyseg.methods.hal.align: brute-force enumeration, padding / vmap, infeasible cases, grammar
decoding, length priors, mean-length estimation, a long video and the O(T * N) memory bound."""

import itertools
import math

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from polyseg.methods.hal import align

_align = jax.jit(align.align)
_decode = jax.jit(align.decode, static_argnames='batch_size')


def _brute_force(log_probs, transcript, prior, num_frames=None):
  """(best score, labels [F], positions [F]) over all cuts, in float64; None if infeasible."""
  num_frames = len(log_probs) if num_frames is None else num_frames
  best = None
  for cuts in itertools.combinations(range(1, num_frames), len(transcript) - 1):
    bounds = (0, *cuts, num_frames)
    if max(np.diff(bounds)) > len(prior):
      continue
    score = sum(
      np.sum(log_probs[start:end, c], dtype=np.float64) + prior[end - start - 1, c]
      for start, end, c in zip(bounds[:-1], bounds[1:], transcript)
    )
    if best is None or score > best[0]:
      positions = np.repeat(np.arange(len(transcript)), np.diff(bounds))
      best = (score, np.asarray(transcript)[positions], positions)
  return best


def _random_case(rng, num_frames, transcript, max_len, num_classes=4):
  log_probs = rng.normal(size=(num_frames, num_classes)).astype(np.float32)
  prior = rng.normal(size=(max_len, num_classes)).astype(np.float32)
  return log_probs, np.asarray(transcript, np.int32), prior


def _segment_lengths(positions, size, max_len):
  """[N] segment lengths of a frame -> transcript index map, checked to be a valid segmentation."""
  positions = np.asarray(positions)
  assert positions[0] == 0 and positions[-1] == size - 1
  assert set(np.diff(positions)) <= {0, 1}
  lengths = np.bincount(positions, minlength=size)
  assert lengths.min() >= 1 and lengths.max() <= max_len
  return lengths


def _assert_optimal(result, log_probs, transcript, prior):
  """result (possibly padded beyond len(log_probs)) is a brute-force optimum: the same score and
  labels, positions a valid segmentation scoring the same (equal lengths of adjacent segments of one
  class can be swapped: a true tie)."""
  score, labels, _ = _brute_force(log_probs, transcript, prior)
  num_frames = len(log_probs)
  np.testing.assert_allclose(float(result.score), score, atol=1e-5, rtol=0)
  np.testing.assert_array_equal(np.asarray(result.labels)[:num_frames], labels)
  positions = np.asarray(result.positions)[:num_frames]
  lengths = _segment_lengths(positions, len(transcript), len(prior))
  frame_scores = np.asarray(log_probs, np.float64)[np.arange(num_frames), labels]
  own = frame_scores.sum() + np.sum(np.asarray(prior, np.float64)[lengths - 1, transcript])
  np.testing.assert_allclose(own, score, atol=1e-5, rtol=0)


# --- align against brute force ------------------------------------------------------------------


@pytest.mark.parametrize(
  'num_frames, transcript, max_len',
  [
    (5, [2], 5),
    (6, [0, 1], 3),
    (7, [2, 2, 1], 7),
    (8, [1, 0, 0, 1], 2),
    (9, [0, 1, 1, 0], 4),
    (9, [3, 0, 3, 1], 9),
    (9, [2, 2, 2, 2], 9),
  ],
)
def test_align_matches_brute_force(num_frames, transcript, max_len):
  rng = np.random.default_rng(num_frames * 100 + max_len)
  for _ in range(3):
    log_probs, transcript, prior = _random_case(rng, num_frames, transcript, max_len)
    result = _align(log_probs, transcript, prior)
    _assert_optimal(result, log_probs, transcript, prior)
    assert result.labels.dtype == result.positions.dtype == jnp.int32


def test_align_minus_inf_scores_avoided_without_nan():
  rng = np.random.default_rng(1)
  log_probs, transcript, prior = _random_case(rng, 8, [0, 1, 2], 4)
  log_probs[[1, 5], 1] = -np.inf
  prior[2, 0] = -np.inf  # class 0 may not last 3 frames
  assert np.isfinite(_brute_force(log_probs, transcript, prior)[0])
  _assert_optimal(_align(log_probs, transcript, prior), log_probs, transcript, prior)


# --- padding and vmap ---------------------------------------------------------------------------


def _padded(log_probs, transcript, total_frames, total_actions, fill):
  frames = np.full((total_frames, log_probs.shape[1]), fill, np.float32)
  frames[: len(log_probs)] = log_probs
  actions = np.full(total_actions, 7, np.int32)  # padding ids may even be out of range
  actions[: len(transcript)] = transcript
  return frames, actions


def test_align_padding_matches_unpadded():
  rng = np.random.default_rng(2)
  log_probs, transcript, prior = _random_case(rng, 7, [1, 3, 1], 4)
  expected = _align(log_probs, transcript, prior)
  _assert_optimal(expected, log_probs, transcript, prior)
  for fill in (1e6, np.nan):
    frames, actions = _padded(log_probs, transcript, 12, 5, fill)
    result = _align(frames, actions, prior, 7, 3)
    np.testing.assert_allclose(float(result.score), float(expected.score), atol=1e-5)
    np.testing.assert_array_equal(result.labels[:7], expected.labels)
    np.testing.assert_array_equal(result.positions[:7], expected.positions)
    np.testing.assert_array_equal(result.labels[7:], -1)
    np.testing.assert_array_equal(result.positions[7:], -1)


def test_align_vmap_over_differently_padded_cases():
  rng = np.random.default_rng(3)
  cases = [_random_case(rng, 9, [0, 2, 1, 2], 5), _random_case(rng, 6, [3, 3], 5)]
  prior = cases[0][2]
  padded = [_padded(log_probs, transcript, 11, 6, 0.0) for log_probs, transcript, _ in cases]
  batched = jax.jit(jax.vmap(align.align, in_axes=(0, 0, None, 0, 0)))(
    np.stack([frames for frames, _ in padded]),
    np.stack([actions for _, actions in padded]),
    prior,
    np.asarray([9, 6]),
    np.asarray([4, 2]),
  )
  for i, (log_probs, transcript, _) in enumerate(cases):
    _assert_optimal(align.Alignment(*(field[i] for field in batched)), log_probs, transcript, prior)
    np.testing.assert_array_equal(batched.labels[i, len(log_probs) :], -1)


# --- hand-made and infeasible cases -------------------------------------------------------------


def test_align_background_at_both_ends():
  truth = np.repeat([0, 1, 2, 0], [4, 6, 5, 5])  # bg, a, b, bg
  log_probs = np.log(np.where(np.eye(3)[truth] > 0, 0.9, 0.05)).astype(np.float32)
  result = _align(log_probs, np.asarray([0, 1, 2, 0]), align.uniform_log_prior(3, 20))
  np.testing.assert_array_equal(result.labels, truth)
  np.testing.assert_array_equal(result.positions, np.repeat([0, 1, 2, 3], [4, 6, 5, 5]))


@pytest.mark.parametrize(
  'num_frames, transcript, max_len, traced',
  [(3, [0, 1, 2, 0, 1], 4, False), (10, [0, 1], 3, False), (4, [1, 2, 0, 1, 2], 3, True)],
)
def test_align_infeasible(num_frames, transcript, max_len, traced):
  rng = np.random.default_rng(4)
  log_probs, transcript, prior = _random_case(rng, num_frames, transcript, max_len)
  log_probs[0, 0] = -np.inf
  prior[0, 1] = -np.inf
  if traced:  # 5 actions in the 4 valid frames of a padded video
    log_probs, _ = _padded(log_probs, transcript, 8, 5, 0.0)
    result = _align(log_probs, transcript, prior, num_frames, len(transcript))
  else:
    result = _align(log_probs, transcript, prior)
  assert float(result.score) <= align.NEG_INF / 2
  labels, positions = np.asarray(result.labels), np.asarray(result.positions)
  assert np.all((labels[:num_frames] >= 0) & (labels[:num_frames] < 4))
  assert np.all((positions[:num_frames] >= 0) & (positions[:num_frames] < len(transcript)))
  assert np.all(labels[num_frames:] == -1)


# --- grammar decoding ---------------------------------------------------------------------------


def _candidates(rng, count, size=4, num_classes=4):
  lengths = rng.integers(1, size + 1, size=count)
  transcripts = rng.integers(0, num_classes, size=(count, size)).astype(np.int32)
  transcripts[np.arange(size)[None] >= lengths[:, None]] = -1
  return transcripts, lengths.astype(np.int32)


def test_decode_picks_brute_force_best():
  rng = np.random.default_rng(5)
  log_probs, _, prior = _random_case(rng, 8, [0], 4)
  transcripts, lengths = _candidates(rng, 7)
  brute = [_brute_force(log_probs, t[:n], prior) for t, n in zip(transcripts, lengths)]
  scores = [-np.inf if b is None else b[0] for b in brute]
  best = int(np.argmax(scores))
  assert sorted(scores)[-2] < scores[best] - 1e-3  # no near tie
  result, index = _decode(log_probs, transcripts, lengths, prior, batch_size=3)
  assert int(index) == best
  _assert_optimal(result, log_probs, transcripts[best, : lengths[best]], prior)


@pytest.mark.parametrize('copies', [(1, 2), (2, 4), (4, 6)])
def test_decode_ties_go_to_the_lowest_index(copies):
  """7 candidates in batches of 3 (two scan batches and a remainder of 1): the best transcript
  twice, the second copy with other padding ids."""
  rng = np.random.default_rng(6)
  truth = np.repeat([2, 0, 3], [3, 3, 3])
  log_probs = np.log(np.where(np.eye(4)[truth] > 0, 0.7, 0.1)).astype(np.float32)
  transcripts, lengths = _candidates(rng, 7)
  transcripts[:, 0] = 1  # every other candidate starts with a class frame 0 scores badly
  transcripts[list(copies)] = [[2, 0, 3, -1], [2, 0, 3, 1]]
  lengths[list(copies)] = 3
  result, index = _decode(log_probs, transcripts, lengths, align.uniform_log_prior(4, 9), 9, 3)
  assert int(index) == copies[0]
  np.testing.assert_array_equal(result.labels, truth)


# --- priors and mean lengths --------------------------------------------------------------------


def test_poisson_log_prior_matches_scipy():
  means = np.asarray([0.5, 3.0, 40.0, 800.0])
  prior = np.asarray(align.poisson_log_prior(means, 1000))
  assert prior.shape == (1000, 4) and prior.dtype == np.float32
  expected = stats.poisson.logpmf(np.arange(1, 1001)[:, None], means[None])
  np.testing.assert_allclose(prior, expected, rtol=1e-5, atol=2e-3)
  assert math.isclose(prior[4, 1], 5 * math.log(3) - 3 - math.lgamma(6), rel_tol=1e-6)
  np.testing.assert_array_equal(align.uniform_log_prior(4, 6), np.zeros((6, 4)))


def test_estimate_mean_lengths_recovers_means_and_fills_the_rest():
  means = np.asarray([5.0, 12.0, 30.0, 2.0])  # class 3 solves below min_length, class 4 unseen
  rng = np.random.default_rng(7)
  transcripts = [rng.integers(0, 4, size=rng.integers(1, 6)) for _ in range(20)]
  num_frames = [int(means[t].sum()) for t in transcripts]
  estimate = align.estimate_mean_lengths(transcripts, num_frames, 5, min_length=3.0)
  assert estimate.shape == (5,) and estimate.dtype == np.float64
  np.testing.assert_allclose(estimate[:3], means[:3], rtol=1e-9)
  fallback = np.mean(num_frames) / np.mean([len(t) for t in transcripts])
  np.testing.assert_allclose(estimate[3:], [fallback, fallback], rtol=1e-12)
  low = align.estimate_mean_lengths([np.asarray([0, 0])], [3], 2, min_length=4.0)
  np.testing.assert_array_equal(low, [4.0, 4.0])  # the fallback is at least min_length
  uniform = align.estimate_mean_lengths(transcripts, num_frames, 5, method='uniform')
  np.testing.assert_allclose(uniform, [fallback] * 5, rtol=1e-12)
  with pytest.raises(ValueError, match='method'):
    align.estimate_mean_lengths(transcripts, num_frames, 5, method='median')


# --- scale ----------------------------------------------------------------------------------------


def test_align_long_video():
  num_frames, size, max_len, num_classes = 10_000, 12, 2_000, 20
  rng = np.random.default_rng(8)
  transcript = rng.permutation(num_classes)[:size].astype(np.int32)
  cuts = np.sort(rng.choice(np.arange(300, num_frames - 300, 300), size - 1, replace=False))
  lengths = np.diff([0, *cuts, num_frames])
  assert lengths.max() <= max_len
  truth = np.repeat(np.arange(size), lengths)
  logits = rng.normal(size=(num_frames, num_classes)).astype(np.float32)
  logits[np.arange(num_frames), transcript[truth]] += 3.0
  log_probs = jax.nn.log_softmax(logits)
  means = np.full(num_classes, 800.0)
  means[transcript] = lengths
  prior = align.poisson_log_prior(means, max_len)
  result = _align(log_probs, transcript, prior)
  positions = np.asarray(result.positions)
  _segment_lengths(positions, size, max_len)
  np.testing.assert_array_equal(result.labels, transcript[positions])
  assert np.isfinite(float(result.score)) and float(result.score) > align.NEG_INF / 2
  assert np.abs(np.flatnonzero(np.diff(positions)) + 1 - cuts).max() <= 5  # near the true cuts


def _outvar_sizes(jaxpr, depth=0):
  """(depth, size) of every equation's outputs, recursing into sub-jaxprs (scan bodies, ...)."""
  for eqn in jaxpr.eqns:
    yield from ((depth, math.prod(var.aval.shape)) for var in eqn.outvars)
    for sub in jax_core.jaxprs_in_params(eqn.params):
      yield from _outvar_sizes(sub, depth + 1)


def test_align_jaxpr_stays_linear_in_frames():
  num_frames, size, max_len, num_classes = 60, 4, 10, 5
  closed = jax.make_jaxpr(align.align)(
    jnp.zeros((num_frames, num_classes)),
    jnp.zeros(size, jnp.int32),
    jnp.zeros((max_len, num_classes)),
    jnp.int32(50),
    jnp.int32(3),
  )
  sizes = list(_outvar_sizes(closed.jaxpr))
  assert (1, max_len * size) in sizes  # the walk reaches the scan body's [L, N] slab
  bound = (max_len + num_frames + 1) * (size + 1)  # the DP table, < T * T and < T * L * N
  assert max(size_ for _, size_ in sizes) <= bound < min(num_frames**2, num_frames * max_len * size)

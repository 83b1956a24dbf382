"""Tests for polyseg.core.losses: hand-worked values, numpy / scipy references, gradients, padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from scipy import special

from polyseg.core import losses

LN = np.log

# Jitted versions of the functions under test: one compile per shape instead of one per eager op.
cross_entropy = jax.jit(losses.cross_entropy)
soft_cross_entropy = jax.jit(losses.soft_cross_entropy)
binary_cross_entropy = jax.jit(losses.binary_cross_entropy)
smoothing_loss = jax.jit(losses.smoothing_loss)
boundary_loss = jax.jit(losses.boundary_loss)
gaussian_smooth = jax.jit(losses.gaussian_smooth, static_argnums=1)


def _padded_batch(lengths, num_classes=5, total=10, seed=0):
  """Random logits [B, total, C] (huge garbage in the padding), labels, mask."""
  rng = np.random.default_rng(seed)
  mask = (np.arange(total)[None] < np.asarray(lengths)[:, None]).astype(np.float32)
  logits = rng.normal(size=(len(lengths), total, num_classes)).astype(np.float32) * 2
  logits = np.where(mask[..., None] > 0, logits, 1e4).astype(np.float32)
  labels = rng.integers(0, num_classes, size=mask.shape).astype(np.int32)
  return logits, labels, mask


# --- cross-entropy ----------------------------------------------------------------------------


def test_cross_entropy_hand_worked():
  # frame 0: p = (1/4, 3/4), label 1; frame 1: p = (2/3, 1/3), label 0; frame 2 is padding.
  logits = jnp.asarray([[[0.0, LN(3)], [LN(2), 0.0], [50.0, -50.0]]])
  labels = jnp.asarray([[1, 0, 1]])
  mask = jnp.asarray([[1.0, 1.0, 0.0]])
  expected_unweighted = (LN(4 / 3) + LN(3 / 2)) / 2
  np.testing.assert_allclose(cross_entropy(logits, labels, mask), expected_unweighted, rtol=1e-6)
  weights = jnp.asarray([2.0, 1.0])
  expected_weighted = (1 * LN(4 / 3) + 2 * LN(3 / 2)) / 2  # divided by the frames, not by sum w
  np.testing.assert_allclose(
    cross_entropy(logits, labels, mask, weights), expected_weighted, rtol=1e-6
  )


def _reference_cross_entropy(logits, labels, mask, weights):
  """DiffAct's reference, one video at a time: CrossEntropyLoss(weight=w, reduction='none') over
  the video's frames, then .mean(); the batch's loss is the mean over its videos."""
  per_video = []
  for x, y, m in zip(logits, labels, mask):
    x, y = x[m > 0].astype(np.float64), y[m > 0]
    nll = special.logsumexp(x, axis=1) - x[np.arange(len(y)), y]
    per_video.append(np.mean(weights[y] * nll))
  return np.mean(per_video)


def test_cross_entropy_matches_the_reference_per_video_mean():
  logits, labels, mask = _padded_batch([10, 6, 1], seed=1)
  weights = np.asarray([0.5, 2.0, 1.0, 3.0, 0.1], np.float32)
  np.testing.assert_allclose(
    cross_entropy(logits, labels, mask, weights),
    _reference_cross_entropy(logits, labels, mask, weights),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    cross_entropy(logits, labels, mask),
    _reference_cross_entropy(logits, labels, mask, np.ones(5)),
    rtol=1e-5,
  )


# --- soft / binary cross-entropy ------------------------------------------------------------------


def test_soft_cross_entropy_matches_numpy():
  logits, _, mask = _padded_batch([10, 3], seed=2)
  targets = np.random.default_rng(3).random(logits.shape).astype(np.float32)  # not normalised
  expected = np.mean(
    [
      np.mean(-np.sum(q[m > 0] * special.log_softmax(x[m > 0].astype(np.float64), -1), -1))
      for x, q, m in zip(logits, targets, mask)
    ]
  )  # per video, then over the videos
  np.testing.assert_allclose(soft_cross_entropy(logits, targets, mask), expected, rtol=1e-5)


def test_soft_cross_entropy_with_one_hot_targets_is_cross_entropy():
  logits, labels, mask = _padded_batch([10, 7], seed=4)
  onehot = jax.nn.one_hot(labels, 5)
  np.testing.assert_allclose(
    soft_cross_entropy(logits, onehot, mask), cross_entropy(logits, labels, mask), rtol=1e-6
  )


def test_binary_cross_entropy_hand_worked_and_stable():
  # sigmoid(ln 3) = 3/4, sigmoid(0) = 1/2; targets 1 and 0.5; the padded frame is ignored.
  logits = jnp.asarray([[[LN(3), 0.0], [100.0, -100.0], [7.0, 7.0]]])
  targets = jnp.asarray([[[1.0, 0.5], [1.0, 0.0], [0.0, 0.0]]])
  mask = jnp.asarray([[1.0, 1.0, 0.0]])
  expected = (LN(4 / 3) + LN(2) + 0.0 + 0.0) / 2  # summed over classes, mean over 2 frames
  np.testing.assert_allclose(binary_cross_entropy(logits, targets, mask), expected, atol=1e-6)
  wrong = binary_cross_entropy(logits, 1 - targets, mask)
  assert np.isfinite(wrong) and wrong > 40  # -log sigmoid(-100) = 100, not inf


# --- smoothing ------------------------------------------------------------------------------------


def test_smoothing_loss_hand_worked_with_clamp():
  # log p: frame 0 (-ln2, -ln2); frame 1 (-ln(1+e^-20), -20-ln(1+e^-20)); frame 2 = frame 0.
  logits = jnp.asarray([[[0.0, 0.0], [10.0, -10.0], [0.0, 0.0], [3.0, 1.0]]])
  mask = jnp.asarray([[1.0, 1.0, 1.0, 0.0]])
  log_p1 = np.asarray([-np.log1p(np.exp(-20.0)), -20 - np.log1p(np.exp(-20.0))])
  log_p0 = np.full(2, -LN(2))
  pair_01 = np.minimum((log_p1 - log_p0) ** 2, 16)
  pair_12 = np.minimum((log_p0 - log_p1) ** 2, 16)
  assert pair_01[1] == 16  # the clamp is active
  expected = (pair_01.sum() + pair_12.sum()) / 4
  np.testing.assert_allclose(smoothing_loss(logits, mask), expected, rtol=1e-6)


def test_smoothing_loss_gradient_only_through_current_frame():
  logits, _, mask = _padded_batch([6], num_classes=3, total=6, seed=5)
  logits = jnp.asarray(logits * 0.3)  # no clamping
  grad = np.asarray(jax.grad(smoothing_loss)(logits, jnp.asarray(mask)))

  previous = np.asarray(jax.nn.log_softmax(logits, axis=-1))[:, :-1]  # enters as a constant

  def reference(logits):
    return jnp.mean((jax.nn.log_softmax(logits, axis=-1)[:, 1:] - previous) ** 2)

  np.testing.assert_allclose(grad, jax.jit(jax.grad(reference))(logits), atol=1e-6)
  assert np.all(grad[0, 0] == 0) and np.any(grad[0, -1] != 0)


def test_smoothing_loss_clamped_entries_have_no_gradient():
  logits = jnp.asarray([[[0.0, 0.0], [10.0, -10.0]]])
  grad = np.asarray(jax.grad(smoothing_loss)(logits, jnp.ones((1, 2))))
  # loss = (d_0^2 + clamp(d_1^2)) / 2 with d_c = log p1(c) + ln 2; d_1^2 > 16 is clamped (no gradient)
  log_p1_0 = -np.log1p(np.exp(-20.0))
  p1 = special.softmax([10.0, -10.0])
  expected = (log_p1_0 + LN(2)) * (np.eye(2)[0] - p1)  # d_0 * d log p1(0) / d o1
  np.testing.assert_allclose(grad[0, 1], expected, atol=1e-6)
  assert np.all(grad[0, 0] == 0)


# --- boundary -------------------------------------------------------------------------------------


def test_boundary_loss_hand_worked():
  # p0 = (1/2, 1/2), p1 = (3/4, 1/4), p2 = (1/4, 3/4): b1 = 1 - 1/2 = 1/2, b2 = 1 - 6/16 = 5/8.
  logits = jnp.asarray([[[0.0, 0.0], [LN(3), 0.0], [0.0, LN(3)], [9.0, -9.0]]])
  target = jnp.asarray([[0.0, 1.0, 0.2, 1.0]])
  mask = jnp.asarray([[1.0, 1.0, 1.0, 0.0]])
  expected = (-LN(1 / 2) - (0.2 * LN(5 / 8) + 0.8 * LN(3 / 8))) / 2
  np.testing.assert_allclose(boundary_loss(logits, target, mask), expected, rtol=1e-6)


def test_boundary_loss_gradient_only_through_current_frame():
  logits, _, mask = _padded_batch([5], num_classes=3, total=5, seed=6)
  logits = jnp.asarray(logits)
  target = jnp.asarray(np.random.default_rng(7).random((1, 5)), jnp.float32)
  grad = np.asarray(jax.grad(boundary_loss)(logits, target, jnp.asarray(mask)))
  previous = np.asarray(jax.nn.softmax(logits, axis=-1))[:, :-1]

  def reference(logits):
    change = 1 - jnp.sum(jax.nn.softmax(logits, axis=-1)[:, 1:] * previous, axis=-1)
    y = target[:, 1:]
    return jnp.mean(-(y * jnp.log(change) + (1 - y) * jnp.log(1 - change)))

  np.testing.assert_allclose(grad, jax.jit(jax.grad(reference))(logits), atol=1e-6)
  assert np.all(grad[0, 0] == 0) and np.any(grad[0, -1] != 0)


def test_boundary_loss_is_finite_for_certain_predictions():
  logits = jnp.asarray([[[100.0, -100.0], [100.0, -100.0], [-100.0, 100.0]]])
  value = boundary_loss(logits, jnp.asarray([[0.0, 1.0, 0.0]]), jnp.ones((1, 3)))
  grad = jax.grad(boundary_loss)(logits, jnp.asarray([[0.0, 1.0, 0.0]]), jnp.ones((1, 3)))
  assert np.isfinite(value) and value > 5 and np.all(np.isfinite(grad))


# --- padding, one-frame videos, empty rows ----------------------------------------------------------

LENGTH, TOTAL = 7, 12
_TARGET_RNG = np.random.default_rng(8)
LABELS = _TARGET_RNG.integers(0, 4, size=(1, TOTAL)).astype(np.int32)
BOUNDARY = _TARGET_RNG.random((1, TOTAL)).astype(np.float32)
SOFT = _TARGET_RNG.random((1, TOTAL, 4)).astype(np.float32)
WEIGHTS = jnp.asarray([1.0, 2.0, 0.5, 3.0])
LOSSES = {  # (logits [1, T, 4], mask [1, T]) -> loss, with the fixed targets cut to T
  'cross_entropy': lambda lo, m: cross_entropy(lo, LABELS[:, : lo.shape[1]], m, WEIGHTS),
  'soft_cross_entropy': lambda lo, m: soft_cross_entropy(lo, SOFT[:, : lo.shape[1]], m),
  'binary_cross_entropy': lambda lo, m: binary_cross_entropy(lo, SOFT[:, : lo.shape[1]], m),
  'smoothing_loss': smoothing_loss,
  'boundary_loss': lambda lo, m: boundary_loss(lo, BOUNDARY[:, : lo.shape[1]], m),
}


@pytest.mark.parametrize('name', LOSSES)
def test_padding_changes_nothing(name):
  fn = LOSSES[name]
  logits = np.random.default_rng(9).normal(size=(1, TOTAL, 4)).astype(np.float32)
  logits[:, LENGTH:] = 1e4  # garbage in the padding
  mask = (np.arange(TOTAL) < LENGTH).astype(np.float32)[None]
  unpadded = fn(jnp.asarray(logits[:, :LENGTH]), jnp.ones((1, LENGTH)))
  np.testing.assert_allclose(fn(jnp.asarray(logits), jnp.asarray(mask)), unpadded, rtol=1e-6)
  grad = np.asarray(jax.grad(fn)(jnp.asarray(logits), jnp.asarray(mask)))
  assert np.all(grad[:, LENGTH:] == 0) and np.any(grad[:, :LENGTH] != 0)


@pytest.mark.parametrize('name', LOSSES)
def test_one_frame_and_all_padding_rows(name):
  fn = LOSSES[name]
  logits = jnp.asarray(np.random.default_rng(10).normal(size=(1, TOTAL, 4)), jnp.float32)
  for length in (0, 1):
    mask = (jnp.arange(TOTAL) < length).astype(jnp.float32)[None]
    value, grad = jax.value_and_grad(fn)(logits, mask)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    if length == 0 or name in ('smoothing_loss', 'boundary_loss'):  # no valid frame (pair)
      assert value == 0 and np.all(grad == 0)


def test_all_padding_row_adds_nothing_to_a_batch():
  logits, labels, mask = _padded_batch([9, 4], num_classes=4, total=12, seed=11)
  boundary = np.random.default_rng(12).random(mask.shape).astype(np.float32)
  batch = {
    'ce': lambda lo, m: cross_entropy(lo, labels[: len(m)], m, WEIGHTS),
    'smooth': smoothing_loss,
    'boundary': lambda lo, m: boundary_loss(lo, boundary[: len(m)], m),
  }
  empty_mask = mask.copy()
  empty_mask[1] = 0
  for fn in batch.values():
    np.testing.assert_allclose(fn(logits, empty_mask), fn(logits[:1], mask[:1]), rtol=1e-6)


# --- gaussian smoothing -----------------------------------------------------------------------------


@pytest.mark.parametrize('sigma', [0.5, 1.4, 4.0, 7.0])
def test_gaussian_smooth_matches_scipy_per_video(sigma):
  lengths = [40, 13, 5, 1]
  x = np.random.default_rng(13).normal(size=(len(lengths), 40, 3)).astype(np.float32)
  mask = (np.arange(40)[None] < np.asarray(lengths)[:, None]).astype(np.float32)
  x_padded = np.where(mask[..., None] > 0, x, 1e6).astype(np.float32)
  smoothed = np.asarray(gaussian_smooth(jnp.asarray(x_padded), sigma, jnp.asarray(mask)))
  for video, length in enumerate(lengths):
    expected = ndimage.gaussian_filter1d(x[video, :length].astype(np.float64), sigma, axis=0)
    np.testing.assert_allclose(smoothed[video, :length], expected, atol=1e-5)
    assert np.all(smoothed[video, length:] == 0)


def test_gaussian_smooth_of_one_hot_labels_is_a_soft_target():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
  onehot = np.eye(3, dtype=np.float32)[labels][None]
  soft = np.asarray(gaussian_smooth(jnp.asarray(onehot), 1.4, jnp.ones((1, 10))))
  np.testing.assert_allclose(
    soft.sum(-1), 1, atol=1e-6
  )  # the filter preserves a partition of unity
  np.testing.assert_array_equal(soft[0].argmax(-1), labels)


def test_multilabel_boundary_loss_hand_worked():
  # Two classes, sigmoid probabilities p0 = (1/2, 1/4), p1 = (3/4, 1/4), p2 = (1/4, 3/4).
  # d1 = (3/4 * 1/2 + 1/4 * 1/2, 1/4 * 3/4 + 3/4 * 1/4) = (1/2, 3/8): b1 = 1 - (1/2)(5/8) = 11/16.
  # d2 = (1/4 * 1/4 + 3/4 * 3/4, 3/4 * 3/4 + 1/4 * 1/4) = (5/8, 5/8): b2 = 1 - (3/8)^2 = 55/64.
  logits = jnp.asarray([[[0.0, -LN(3)], [LN(3), -LN(3)], [-LN(3), LN(3)], [9.0, -9.0]]])
  target = jnp.asarray([[0.0, 1.0, 0.25, 1.0]])
  mask = jnp.asarray([[1.0, 1.0, 1.0, 0.0]])
  expected = (-LN(11 / 16) - (0.25 * LN(55 / 64) + 0.75 * LN(9 / 64))) / 2
  value = losses.boundary_loss(logits, target, mask, 'sigmoid')
  np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_multilabel_boundary_loss_gradient_only_through_current_frame():
  logits = jnp.asarray(np.random.default_rng(3).normal(size=(1, 5, 3)), jnp.float32)
  target = jnp.asarray(np.random.default_rng(4).random((1, 5)), jnp.float32)
  mask = jnp.ones((1, 5))
  loss = lambda lo: losses.boundary_loss(lo, target, mask, 'sigmoid')
  grad = np.asarray(jax.grad(loss)(logits))
  previous = np.asarray(jax.nn.sigmoid(logits))[:, :-1]

  def reference(lo):
    p = jax.nn.sigmoid(lo)[:, 1:]
    change = 1 - jnp.prod(1 - (p * (1 - previous) + (1 - p) * previous), axis=-1)
    y = target[:, 1:]
    return jnp.mean(-(y * jnp.log(change) + (1 - y) * jnp.log(1 - change)))

  np.testing.assert_allclose(grad, jax.grad(reference)(logits), atol=1e-6)
  assert np.all(grad[0, 0] == 0)


def test_boundary_loss_rejects_unknown_activation():
  with pytest.raises(ValueError, match='activation'):
    losses.boundary_loss(jnp.zeros((1, 2, 2)), jnp.zeros((1, 2)), jnp.ones((1, 2)), 'relu')

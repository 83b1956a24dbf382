"""Segmentation losses over padded batches (docs/methods/diffact.md).

Every loss takes `mask [B, T]` (1 = valid frame), ignores padded frames (their logits get zero
gradient), averages over each video's valid frames (or frame pairs), then over the videos that have
any, and returns a scalar: a padded batch gives the mean of its videos' own losses, as DiffAct's
reference code (one video at a time, gradients accumulated over the batch) computes it. A batch
without any valid frame (pair) gives 0.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

_PROB_EPS = 1e-6
_SMOOTHING_CLAMP = 16.0
_GAUSSIAN_TRUNCATE = 4.0  # scipy.ndimage default


def _masked_logits(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Zero padded frames' logits so they (and their gradients) cannot leak. [B, T, C]."""
  chex.assert_rank(logits, 3)
  chex.assert_equal_shape_prefix([logits, mask], 2)
  return jnp.where(mask[..., None] > 0, logits, 0.0)


def _safe_ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """numerator / denominator, or 0 when the denominator is 0 (gradient-safe)."""
  positive = denominator > 0
  return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


def _video_mean(per_frame: jax.Array, weight: jax.Array) -> jax.Array:
  """Mean over the videos with weight > 0 of sum_t per_frame / sum_t weight (0 if none).
  per_frame, weight [B, T] (per_frame already multiplied by its weight)."""
  counts = jnp.sum(weight, axis=1)
  per_video = _safe_ratio(jnp.sum(per_frame, axis=1), counts)
  return _safe_ratio(jnp.sum(per_video), jnp.sum(counts > 0))


def _pair_mask(mask: jax.Array) -> jax.Array:
  """[B, T-1]: 1 where frames t-1 and t are both valid."""
  return mask[:, 1:] * mask[:, :-1]


def cross_entropy(
  logits: jax.Array, labels: jax.Array, mask: jax.Array, class_weights: jax.Array | None = None
) -> jax.Array:
  """Class-weighted CE: per video sum_t w_y nll_t / (valid frames), as DiffAct's reference
  (CrossEntropyLoss(weight=w, reduction='none'), then the mean over frames; torch's 'mean'
  reduction would divide by sum w_y instead).

  logits [B, T, C], labels [B, T] int, mask [B, T], class_weights [C] or None (all 1).
  """
  logits = _masked_logits(logits, mask)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  nll = -jnp.sum(onehot * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  weights = mask if class_weights is None else mask * (onehot @ class_weights)
  return _video_mean(weights * nll, mask)


def soft_cross_entropy(
  logits: jax.Array,
  soft_targets: jax.Array,
  mask: jax.Array,
  class_weights: jax.Array | None = None,
) -> jax.Array:
  """Mean over valid frames of -sum_c w_c q_c log p_c. logits, soft_targets [B, T, C];
  class_weights [C] or None (all 1, DiffAct's soft-label CE)."""
  logits = _masked_logits(logits, mask)
  if class_weights is not None:
    soft_targets = soft_targets * class_weights
  per_frame = -jnp.sum(soft_targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  return _video_mean(mask * per_frame, mask)


def binary_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """Multi-label BCE with logits, summed over classes, mean over valid frames (a per-frame loss like
  CE, so it weighs against the per-frame boundary loss independently of C). logits, targets [B, T, C]."""
  logits = _masked_logits(logits, mask)
  per_entry = -(targets * jax.nn.log_sigmoid(logits) + (1 - targets) * jax.nn.log_sigmoid(-logits))
  return _video_mean(mask * jnp.sum(per_entry, axis=-1), mask)


def smoothing_loss(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """T-MSE: mean over valid (t-1, t) pairs and classes of
  clip((log p_t - stop_gradient(log p_{t-1}))^2, 0, 16). logits [B, T, C]."""
  log_probs = jax.nn.log_softmax(_masked_logits(logits, mask), axis=-1)
  squared = (log_probs[:, 1:] - jax.lax.stop_gradient(log_probs[:, :-1])) ** 2
  pairs = _pair_mask(mask)
  clamped = jnp.clip(squared, 0.0, _SMOOTHING_CLAMP)
  return _video_mean(pairs * jnp.mean(clamped, axis=-1), pairs)


def boundary_loss(
  logits: jax.Array, boundary_target: jax.Array, mask: jax.Array, activation: str = 'softmax'
) -> jax.Array:
  """BCE of the predicted change b_t against boundary_target_t, t >= 1, mean over valid pairs
  (b clipped to [eps, 1 - eps]). logits [B, T, C], boundary_target [B, T]. With q = stop_gradient(p_{t-1}):

  - 'softmax' (one label per frame): b_t = 1 - sum_c p_t(c) q(c), the chance the label differs.
  - 'sigmoid' (multi-label): b_t = 1 - prod_c (1 - d_t(c)), d_t(c) = p_t(c)(1 - q(c)) + (1 - p_t(c)) q(c),
    the chance that at least one class switches on or off (classes independent).
  """
  masked = _masked_logits(logits, mask)
  if activation == 'softmax':
    probs = jax.nn.softmax(masked, axis=-1)
    change = 1 - jnp.sum(probs[:, 1:] * jax.lax.stop_gradient(probs[:, :-1]), axis=-1)
  elif activation == 'sigmoid':
    probs = jax.nn.sigmoid(masked)
    previous = jax.lax.stop_gradient(probs[:, :-1])
    switch = probs[:, 1:] * (1 - previous) + (1 - probs[:, 1:]) * previous
    stay = jnp.sum(jnp.log1p(-jnp.clip(switch, 0.0, 1 - _PROB_EPS)), axis=-1)
    change = -jnp.expm1(stay)
  else:
    raise ValueError(f"boundary_loss activation must be 'softmax' or 'sigmoid', got {activation!r}")
  change = jnp.clip(change, _PROB_EPS, 1 - _PROB_EPS)
  target = boundary_target[:, 1:]
  bce = -(target * jnp.log(change) + (1 - target) * jnp.log1p(-change))
  pairs = _pair_mask(mask)
  return _video_mean(pairs * bce, pairs)


def _gaussian_kernel(sigma: float) -> np.ndarray:
  """scipy.ndimage.gaussian_filter1d's kernel [2r+1], r = int(4 * sigma + 0.5)."""
  radius = int(_GAUSSIAN_TRUNCATE * sigma + 0.5)
  offsets = np.arange(-radius, radius + 1, dtype=np.float64)
  kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
  return kernel / kernel.sum()


def _reflect_index(index: jax.Array, length: jax.Array) -> jax.Array:
  """scipy 'reflect' (d c b a | a b c d | d c b a) index into a sequence of `length` >= 1."""
  folded = jnp.mod(index, 2 * length)
  return jnp.where(folded < length, folded, 2 * length - 1 - folded)


def gaussian_smooth(x: jax.Array, sigma: float, mask: jax.Array) -> jax.Array:
  """Gaussian filter along T of each video over its own valid length (scipy gaussian_filter1d,
  mode 'reflect'); padded frames -> 0. x [B, T, C], mask [B, T] (padding at the end) -> [B, T, C]."""
  chex.assert_rank(x, 3)
  kernel = _gaussian_kernel(sigma)
  radius = (kernel.shape[0] - 1) // 2
  lengths = jnp.maximum(jnp.sum(mask > 0, axis=1), 1)
  positions = jnp.arange(-radius, x.shape[1] + radius)
  sources = _reflect_index(positions[None, :], lengths[:, None])
  extended = jnp.take_along_axis(x, sources[..., None], axis=1)
  num_channels = x.shape[-1]
  weights = jnp.broadcast_to(
    jnp.asarray(kernel, x.dtype)[:, None, None], (kernel.shape[0], 1, num_channels)
  )
  smoothed = jax.lax.conv_general_dilated(
    extended,
    weights,
    window_strides=(1,),
    padding='VALID',
    dimension_numbers=('NWC', 'WIO', 'NWC'),
    feature_group_count=num_channels,
    precision=jax.lax.Precision.HIGHEST,
  )
  return smoothed * mask[..., None]


def transition_penalty(probs: jax.Array, mask: jax.Array) -> jax.Array:
  """HAL's sparse-transition penalty: mean over valid neighbour pairs of the total variation
  0.5 * sum_c |p[t + 1, c] - p[t, c]| (in [0, 1]; an L1 penalty, so few, sharp changes).
  probs [B, T, C] (class probabilities), mask [B, T]."""
  chex.assert_rank(probs, 3)
  pairs = _pair_mask(mask)
  change = 0.5 * jnp.abs(probs[:, 1:] - probs[:, :-1]).sum(-1)
  return _video_mean(change * pairs, pairs)


def ctc(logits: jax.Array, mask: jax.Array, transcripts: jax.Array, num_actions: jax.Array):
  """CTC of the ordered transcripts (optax.ctc_loss, blank = the last class) divided by the
  video's valid frames, averaged over the videos. logits [B, T, C + 1], mask [B, T], transcripts [B, N]
  int (entries >= num_actions [B] are padding)."""
  chex.assert_rank(logits, 3)
  label_padding = (jnp.arange(transcripts.shape[1])[None] >= num_actions[:, None]).astype(
    jnp.float32
  )
  per_video = optax.ctc_loss(
    logits, 1.0 - mask, transcripts, label_padding, blank_id=logits.shape[-1] - 1
  )
  return _video_mean(per_video[:, None], jnp.sum(mask, axis=1)[:, None])


def presence_loss(log_probs: jax.Array, mask: jax.Array, present: jax.Array) -> jax.Array:
  """Video-level classification (multiple-instance): BCE of p_c = max over valid frames of
  p(c | frame) against `present` [B, C] (1 = class c is in the video's transcript), mean over
  videos and classes. log_probs [B, T, C], mask [B, T]."""
  chex.assert_rank(log_probs, 3)
  pooled = jnp.max(jnp.where(mask[..., None] > 0, log_probs, -jnp.inf), axis=1)  # log p_c
  pooled = jnp.clip(pooled, jnp.log(_PROB_EPS), jnp.log1p(-_PROB_EPS))
  bce = -(present * pooled + (1 - present) * jnp.log1p(-jnp.exp(pooled)))
  return jnp.mean(bce)

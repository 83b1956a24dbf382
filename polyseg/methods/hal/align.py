"""Viterbi alignment of frame scores to ordered transcripts with a length model (HAL, NN-Viterbi).

`align` splits the valid frames into consecutive segments, one per transcript action, each 1..L
frames long, maximising frame scores plus length log-priors: one `lax.scan` over the T frames
(O(T * L * N) time, O((T + L) * N) memory) and one over the N actions for the backtrack.
`decode` aligns to each of K candidate transcripts (grammar decoding) and keeps the best.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy import optimize

MEAN_LENGTH_METHODS = ('uniform', 'least_squares')
NEG_INF = -1e30
"""Finite "impossible" score (keeps arithmetic NaN-free)."""


def poisson_log_prior(means: jax.Array, max_len: int) -> jax.Array:
  """[L, C] log Poisson(l; means[c]) for lengths l = 1..L (row l - 1). means [C] > 0."""
  lengths = jnp.arange(1, max_len + 1, dtype=jnp.float32)[:, None]
  return jax.scipy.stats.poisson.logpmf(lengths, jnp.asarray(means, jnp.float32)[None])


def uniform_log_prior(num_classes: int, max_len: int) -> jax.Array:
  """[L, C] zeros: no length preference, only the bound 1 <= l <= L."""
  return jnp.zeros((max_len, num_classes), jnp.float32)


class Alignment(NamedTuple):
  """labels [T] int32 (class of each frame's segment), positions [T] int32 (its transcript index),
  both -1 on frames >= num_frames; score: scalar float32, <= NEG_INF / 2 when infeasible."""

  labels: jax.Array
  positions: jax.Array
  score: jax.Array


def align(
  log_probs: jax.Array,
  transcript: jax.Array,
  length_log_prior: jax.Array,
  num_frames: jax.Array | int | None = None,
  num_actions: jax.Array | int | None = None,
) -> Alignment:
  """Best segmentation of frames [0, num_frames) into num_actions consecutive segments, segment n
  labelled transcript[n] and 1 <= len_n <= L, maximising
      sum_n (sum_{t in segment n} log_probs[t, c_n] + length_log_prior[len_n - 1, c_n]),
  c_n = transcript[n].

  log_probs [T, C] (-inf allowed); transcript [N] int, entries >= num_actions are padding;
  length_log_prior [L, C]; num_frames (default T) and num_actions (default N) may be traced.
  Infeasible (num_actions > num_frames or num_actions * L < num_frames): score <= NEG_INF / 2,
  labels / positions arbitrary but in range.
  """
  num_steps, num_classes = log_probs.shape
  max_len = length_log_prior.shape[0]
  size = transcript.shape[0]
  num_frames = jnp.asarray(num_steps if num_frames is None else num_frames, jnp.int32)
  num_actions = size if num_actions is None else num_actions
  classes = jnp.clip(transcript, 0, num_classes - 1)
  frames = jnp.arange(num_steps)
  valid = frames < num_frames
  scores = jnp.where(valid[:, None], log_probs[:, classes], 0.0).astype(jnp.float32)  # [T, N]
  prior = length_log_prior[::-1][:, classes]  # [L, N]: row j is length L - j
  # table [L + T + 1, N + 1], row L + t: best score of frames [0, t) as segments 0..n in column
  # n + 1; column 0 is the empty prefix (0 at t = 0). Rows before L pad the window of t < L.
  table = jnp.full((max_len + num_steps + 1, size + 1), NEG_INF).at[max_len, 0].set(0.0)
  sums = jnp.zeros((max_len, size))

  def step(carry, inputs):  # segments ending at frame t (exclusive), previous ends t - L .. t - 1
    table, sums = carry
    t, frame_scores = inputs
    # row j: sum of frames t - L + j .. t - 1, added frame by frame: unlike differences of
    # cumulative sums, no float32 cancellation on long videos and no NaN from -inf scores
    sums = jnp.concatenate([sums[1:], jnp.zeros((1, size))]) + frame_scores
    candidates = lax.dynamic_slice_in_dim(table, t, max_len)[:, :-1] + sums + prior  # [L, N]
    best = jnp.maximum(jnp.max(candidates, axis=0), NEG_INF)
    row = jnp.concatenate([jnp.full((1,), NEG_INF), best])[None]
    table = lax.dynamic_update_slice_in_dim(table, row, max_len + t, axis=0)
    return (table, sums), (t - max_len + jnp.argmax(candidates, axis=0)).astype(jnp.int32)

  # backpointers [T, N], row t - 1: the best previous end of segment n ending at t
  (table, _), backpointers = lax.scan(step, (table, sums), (frames + 1, scores))
  score = table[max_len + num_frames, num_actions]

  def back(end, n):  # segment n covers [start, end); padding segments are empty at num_frames
    start = jnp.clip(backpointers[jnp.maximum(end - 1, 0), n], 0, end)
    start = jnp.where(n < num_actions, start, end)
    return start, start

  _, starts = lax.scan(back, num_frames, jnp.arange(size - 1, -1, -1))
  starts = starts[::-1].at[0].set(0)  # already 0 unless infeasible: keeps positions in range
  positions = jnp.searchsorted(starts, frames, side='right').astype(jnp.int32) - 1
  positions = jnp.where(valid, positions, -1)
  labels = jnp.where(positions >= 0, transcript[jnp.maximum(positions, 0)], -1).astype(jnp.int32)
  return Alignment(labels, positions, score)


def decode(
  log_probs: jax.Array,
  transcripts: jax.Array,
  num_actions: jax.Array,
  length_log_prior: jax.Array,
  num_frames: jax.Array | int | None = None,
  batch_size: int = 16,
) -> tuple[Alignment, jax.Array]:
  """Grammar decoding: align log_probs [T, C] to each candidate of transcripts [K, N] (padded,
  num_actions [K]) in `lax.map` batches and keep the best (ties: the lowest index).
  Returns (the best Alignment, its index: int32 scalar)."""

  def score(candidate):
    transcript, count = candidate
    return align(log_probs, transcript, length_log_prior, num_frames, count).score

  scores = lax.map(score, (transcripts, num_actions), batch_size=batch_size)
  best = jnp.argmax(scores).astype(jnp.int32)
  alignment = align(log_probs, transcripts[best], length_log_prior, num_frames, num_actions[best])
  return alignment, best


def estimate_mean_lengths(
  transcripts: Sequence[np.ndarray],
  num_frames: Sequence[int],
  num_classes: int,
  min_length: float = 1.0,
  method: str = 'least_squares',
) -> np.ndarray:
  """[C] float64 mean segment length per class from transcripts and video lengths alone.

  'uniform': every class gets U = max(min_length, mean video length / mean transcript length).
  'least_squares': NNLS on sum_n mean[transcript_v[n]] = num_frames_v over videos v; classes never
  seen or solved below min_length get U. The system is ill-posed when classes always occur
  together (the steps of one activity), and its solution can then be far off (task.py)."""
  if method not in MEAN_LENGTH_METHODS:
    raise ValueError(f'mean length method {method!r}; choose one of {MEAN_LENGTH_METHODS}')
  counts = np.zeros((len(transcripts), num_classes))
  for row, transcript in zip(counts, transcripts):
    np.add.at(row, np.asarray(transcript, np.int64), 1)
  frames = np.asarray(num_frames, np.float64)
  uniform = max(min_length, frames.mean() / counts.sum(1).mean())
  if method == 'uniform':
    return np.full(num_classes, uniform)
  means, _ = optimize.nnls(counts, frames)
  return np.where((counts.sum(0) > 0) & (means >= min_length), means, uniform)

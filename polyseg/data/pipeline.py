"""Batching: boundary targets, class weights, length buckets, padded train batches, test views.

Everything returns numpy arrays: features float32, labels int32, boundary and
mask float32. Padding is at the end of each video (mask 0, features 0, labels 0).

Bucketing: a length is padded to the smallest `multiple * n` >= it with n in
{1, 2, 3, 4, 6, 8, 12, 16, ...} (powers of two and 1.5x powers of two): at
most two bucket lengths per octave, and less than 50% padding for lengths
above 2 * multiple.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.ndimage

from polyseg.data.formats import Video

BATCH_STREAM = 1  # seed-sequence tag of the per-batch random stream (offsets and crops)


def boundary_target(labels: np.ndarray, sigma: float | None) -> np.ndarray:
  """DiffAct's boundary target: labels [T] int or multi-hot [T, C] -> [T] float32 in [0, 1].

  1 at frames s-1 and s of every segment start s > 0 (a frame whose label, or label set, differs from
  the previous frame's); if `sigma` is set,
  gaussian-smoothed (scipy, mode 'reflect'), clipped at the peak an isolated
  boundary pair reaches in a sequence of the same length, divided by the max.
  A one-segment video gives all zeros.
  """
  labels = np.asarray(labels)
  target = np.zeros(len(labels), np.float64)
  changed = labels[1:] != labels[:-1]
  if changed.ndim > 1:  # multi-hot [T, C]: the label set changed
    changed = changed.any(axis=1)
  starts = np.flatnonzero(changed) + 1
  if starts.size == 0:
    return target.astype(np.float32)
  target[starts] = 1.0
  target[starts - 1] = 1.0
  if sigma:
    target = scipy.ndimage.gaussian_filter1d(target, sigma)
    isolated_pair = np.zeros(len(labels), np.float64)
    isolated_pair[[len(labels) // 2 - 1, len(labels) // 2]] = 1.0
    peak = scipy.ndimage.gaussian_filter1d(isolated_pair, sigma).max()
    target = np.minimum(target, peak)
    target /= target.max()
  return target.astype(np.float32)


def renormalised(boundary: np.ndarray) -> np.ndarray:
  """A subsampled or cropped boundary target [T', ...] divided by its max along T' (per column),
  so its peaks are 1 again, as DiffAct's reference does after picking a temporal offset; all-zero
  columns stay 0."""
  peak = boundary.max(axis=0)
  return np.where(peak > 0, boundary / np.where(peak > 0, peak, 1), boundary).astype(np.float32)


def class_counts(videos: Sequence[Video], num_classes: int) -> np.ndarray:
  """Frames per class [C] float64."""
  counts = np.zeros(num_classes, np.float64)
  for video in videos:
    counts += np.bincount(video.labels, minlength=num_classes)
  return counts


def class_weights(counts: np.ndarray) -> np.ndarray:
  """Class weights [C] float32 from frame counts [C]: w_c = N / ((n_c + 10) C), N = sum n_c."""
  return (counts.sum() / ((counts + 10.0) * len(counts))).astype(np.float32)


def bucket_length(length: int, multiple: int = 64) -> int:
  """Smallest `multiple * n` >= length, n in {1, 2, 3, 4, 6, 8, 12, ...}."""
  units = max(1, math.ceil(length / multiple))
  power = 1 << (units.bit_length() - 1)  # largest power of two <= units
  if units == power:
    return multiple * units
  return multiple * (3 * power // 2 if units <= 3 * power // 2 else 2 * power)


def merge_rare_buckets(batches_per_bucket: dict[int, int], min_batches: int) -> dict[int, int]:
  """bucket -> the length its batches are padded to: itself, or, for a bucket fewer than
  `min_batches` batches fall in, the next longer bucket that is kept (the longest always is)."""
  longest = max(batches_per_bucket)
  kept = [b for b, n in sorted(batches_per_bucket.items()) if n >= min_batches or b == longest]
  return {b: min(k for k in kept if k >= b) for b in batches_per_bucket}


def steps_per_epoch(num_videos: int, batch_size: int) -> int:
  """The batches of an epoch of `TrainLoader`: ceil(num_videos / batch_size) (the last one is
  filled up from the start of the epoch's order)."""
  return -(-num_videos // batch_size)


def pad_stack(arrays: Sequence[np.ndarray], length: int, dtype) -> np.ndarray:
  """Stacks [T_i, ...] arrays into [B, length, ...] of `dtype`, zero-padded at the end."""
  out = np.zeros((len(arrays), length, *arrays[0].shape[1:]), dtype)
  for i, array in enumerate(arrays):
    out[i, : len(array)] = array
  return out


def _mask(lengths: Sequence[int], length: int) -> np.ndarray:
  """[B, length] float32, 1.0 on the first lengths[i] frames of row i."""
  return (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


def video_fields(video: Video) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """The arrays a single-stream video contributes to a batch: per frame ({'features', 'labels'})
  and per video (none)."""
  return {'features': video.features, 'labels': video.labels}, {}


def num_frames(video: Any) -> int:
  """Frames of a video: the length of its labels, or of its features when it has none (weakly
  supervised training videos; features [T, D] or {stream: [T, D]})."""
  if video.labels is not None:
    return len(video.labels)
  features = video.features
  return len(next(iter(features.values())) if isinstance(features, dict) else features)


Fields = Callable[[Any], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]
Boundary = Callable[[np.ndarray, float | None], np.ndarray]  # (labels, sigma) -> target [T, ...]


class TrainLoader:
  """Training batches as a pure function of (seed, step).

  Epoch e = step // steps_per_epoch visits the videos in the order of
  `np.random.default_rng([seed, e]).permutation`, `batch_size` at a time (the
  last batch of an epoch is filled up from the start of the same order). Each
  video gets a random offset o in [0, sample_rate) (frames o::sample_rate of
  its per-frame arrays and of the full-rate boundary target, `renormalised`) and, if `max_len` is
  set, a random crop of at most `max_len` subsampled frames. A batch is padded
  to the bucket length of its longest member, or always to `pad_to` when set (several processes
  must build equally long batches). Each padded length is one compilation of the train step: with
  `num_steps` (the run's steps) and `min_bucket_batches` > 0, a bucket that fewer than that many
  of the run's batches fall in is merged into the next longer one (`merge_rare_buckets`: its
  batches are padded further; the mask keeps them the same batches). The plan is a function of
  (videos, seed, num_steps), so a resumed run with the same num_steps pads as the first did.

  `length_grouping=g > 1` cuts padding: the epoch's order is cut into windows of g batches, each
  window is sorted by video length before it is split into batches, and the epoch's batches are
  then shuffled (0 or 1: plain random batches).

  `fields(video) -> (per_frame, per_video)` says what a video contributes: per-frame arrays
  [T, ...] (e.g. 'labels': [T] int or multi-hot [T, C]) are subsampled and padded to
  [B, T', ...]; per-video arrays are stacked to [B, ...]. Default: `video_fields`.
  `boundary(labels, sigma)` gives a video's full-rate boundary target (computed once per video);
  default `boundary_target` ([T]); e.g. one column per hand for two-hand labels [T, 2]; None: no
  boundary field (videos without labels, e.g. weak supervision).
  """

  def __init__(
    self,
    videos: Sequence[Any],
    *,
    batch_size: int,
    sample_rate: int,
    boundary_sigma: float | None,
    seed: int,
    max_len: int | None = None,
    fields: Fields = video_fields,
    pad_to: int | None = None,
    boundary: Boundary | None = boundary_target,
    length_grouping: int = 0,
    num_steps: int | None = None,
    min_bucket_batches: int = 0,
  ):
    if not videos:
      raise ValueError('TrainLoader needs at least one video')
    if batch_size < 1 or sample_rate < 1 or (max_len is not None and max_len < 1):
      raise ValueError(
        f'batch_size, sample_rate and max_len must be >= 1, got {batch_size}, '
        f'{sample_rate}, {max_len}'
      )
    if length_grouping < 0:
      raise ValueError(f'data.length_grouping must be >= 0, got {length_grouping}')
    if min_bucket_batches < 0 or (min_bucket_batches and num_steps is None):
      raise ValueError(
        f'min_bucket_batches must be >= 0 (> 0 needs num_steps), got {min_bucket_batches}'
      )
    short = [v.name for v in videos if num_frames(v) < sample_rate]
    if short:
      raise ValueError(f'videos shorter than sample_rate {sample_rate}: {short}')
    longest = longest_crop(videos, sample_rate, max_len)
    if pad_to is not None and pad_to < longest:
      raise ValueError(f'pad_to={pad_to} is shorter than the longest training crop ({longest})')
    self.videos = list(videos)
    self.batch_size = batch_size
    self.sample_rate = sample_rate
    self.seed = seed
    self.max_len = max_len
    self.fields = fields
    self.pad_to = pad_to
    self.length_grouping = length_grouping
    self.boundaries = None
    if boundary is not None:
      self.boundaries = [boundary(v.labels, boundary_sigma) for v in self.videos]
    self._last_order = None  # (epoch, `_epoch_order(epoch)`)
    self.padded_length_of = {}  # bucket -> padded length (`merge_rare_buckets`); absent: itself
    if pad_to is None and num_steps:
      self.padded_length_of = merge_rare_buckets(self._run_buckets(num_steps), min_bucket_batches)

  def padded_lengths(self) -> list[int]:
    """The padded lengths its batches can have, sorted (each is one compilation of the train step):
    `pad_to`; with `num_steps`, those of the run's batches; else the bucket of every video's crop
    at every sampling offset."""
    if self.pad_to is not None:
      return [self.pad_to]
    if self.padded_length_of:
      return sorted(set(self.padded_length_of.values()))
    r = self.sample_rate
    crops = {-(-(num_frames(v) - o) // r) for v in self.videos for o in range(r)}
    if self.max_len is not None:
      crops = {min(crop, self.max_len) for crop in crops}
    return sorted({bucket_length(crop) for crop in crops})

  def _run_buckets(self, num_steps: int) -> dict[int, int]:
    """bucket -> how many of the batches of steps 0..num_steps - 1 fall in it."""
    counts = {}
    for step in range(num_steps):
      bucket = bucket_length(max(count for _, _, count in self._crops(step)))
      counts[bucket] = counts.get(bucket, 0) + 1
    return counts

  @classmethod
  def from_config(
    cls, videos: Sequence[Any], config, fields: Fields = video_fields, **overrides
  ) -> TrainLoader:
    """The loader a task's config asks for: train.batch_size, data.sample_rate / boundary_sigma /
    max_train_len, and the run's seed; `overrides` replace any of these arguments (the engine
    passes a process's batch_size and pad_to)."""
    d = config.data
    args = {
      'batch_size': config.train.batch_size,
      'sample_rate': d.sample_rate,
      'boundary_sigma': d.get('boundary_sigma'),
      'seed': config.seed,
      'max_len': d.max_train_len,
      'fields': fields,
      'length_grouping': d.length_grouping,
      'num_steps': config.train.num_steps,
      'min_bucket_batches': d.get('min_bucket_batches', 0),  # absent in runs saved before it
    }
    return cls(videos, **{**args, **overrides})

  @property
  def steps_per_epoch(self) -> int:
    """ceil(num_videos / batch_size) (`steps_per_epoch`)."""
    return steps_per_epoch(len(self.videos), self.batch_size)

  def batch_indices(self, step: int) -> np.ndarray:
    """Video indices [B] of batch `step`."""
    epoch, position = divmod(step, self.steps_per_epoch)
    return self._epoch_order(epoch)[position * self.batch_size : (position + 1) * self.batch_size]

  def _epoch_order(self, epoch: int) -> np.ndarray:
    """The video indices of epoch `epoch`'s batches, one after the other (the last one's kept)."""
    cached = self._last_order
    if cached is not None and cached[0] == epoch:
      return cached[1]
    rng = np.random.default_rng([self.seed, epoch])
    order = np.resize(rng.permutation(len(self.videos)), self.steps_per_epoch * self.batch_size)
    if self.length_grouping > 1:
      lengths = np.array([num_frames(v) for v in self.videos])[order]
      window = self.length_grouping * self.batch_size
      for start in range(0, len(order), window):
        part = slice(start, start + window)
        order[part] = order[part][np.argsort(lengths[part], kind='stable')]
      batches = order.reshape(self.steps_per_epoch, self.batch_size)
      order = batches[rng.permutation(self.steps_per_epoch)].reshape(-1)
    self._last_order = (epoch, order)
    return order

  def _crops(self, step: int) -> list[tuple[int, slice, int]]:
    """(video index, frames, their count) of each video of batch `step`: every `sample_rate`-th
    frame from a random offset and, past `max_len` of them, a random crop."""
    epoch, position = divmod(step, self.steps_per_epoch)
    rng = np.random.default_rng([self.seed, epoch, BATCH_STREAM, position])
    crops = []
    for index in self.batch_indices(step):
      rate = self.sample_rate
      first = int(rng.integers(rate))
      count = -(-(num_frames(self.videos[index]) - first) // rate)
      if self.max_len is not None and count > self.max_len:
        first += int(rng.integers(count - self.max_len + 1)) * rate
        count = self.max_len
      crops.append((index, slice(first, first + count * rate, rate), count))
    return crops

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """Per-frame fields [B, T, ...] (default: features [B, T, D] f32, labels [B, T] i32), per-video
    fields [B, ...], boundary [B, T, ...] f32 (unless `boundary` is None) and mask [B, T] f32."""
    per_frame, per_video, boundary, lengths = {}, {}, [], []
    for index, frames, count in self._crops(step):
      frame_arrays, video_arrays = self.fields(self.videos[index])
      for key, array in frame_arrays.items():
        per_frame.setdefault(key, []).append(array[frames])
      for key, array in video_arrays.items():
        per_video.setdefault(key, []).append(array)
      if self.boundaries is not None:
        boundary.append(renormalised(self.boundaries[index][frames]))
      lengths.append(count)
    bucket = bucket_length(max(lengths))
    length = self.pad_to or self.padded_length_of.get(bucket, bucket)
    batch = {key: pad_stack(arrays, length, arrays[0].dtype) for key, arrays in per_frame.items()}
    batch.update({key: np.stack(arrays) for key, arrays in per_video.items()})
    if self.boundaries is not None:
      batch['boundary'] = pad_stack(boundary, length, np.float32)
    batch['mask'] = _mask(lengths, length)
    return batch


class Prefetcher:
  """`batch_of(step)`, built ahead of the train step on a background thread by grain.

  The steps `step, step + 1, ..., num_steps - 1` form a grain `MapDataset` mapped by `batch_of`,
  read through an iterator that keeps `ahead` batches ready (`threads` threads build them). A call
  for the step after the last one takes the next batch of that iterator; any other step (the
  first call, a resume, a repeated step) starts a new iterator there. `batch_of` must be a pure
  function of the step (TrainLoader.batch is), so the batches are exactly those of `batch_of` in
  any case: the order is deterministic, and the iterator's position is the step a checkpoint
  stores, so a resumed run continues the same data order.
  """

  def __init__(
    self, batch_of: Callable[[int], Any], num_steps: int, *, ahead: int = 2, threads: int = 1
  ):
    if ahead < 1 or threads < 1:
      raise ValueError(f'ahead and threads must be >= 1, got {ahead}, {threads}')
    import grain  # here: importing it costs most of a second, and only training needs it

    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=ahead)
    steps_from = lambda step: grain.MapDataset.range(step, max(step + 1, num_steps))
    self.start = lambda step: iter(steps_from(step).map(batch_of).to_iter_dataset(options))
    self.iterator = None
    self.next_step = None

  def __call__(self, step: int) -> Any:
    if step != self.next_step:
      self.iterator = self.start(step)
    self.next_step = step + 1
    return next(self.iterator)


def longest_crop(videos: Sequence[Any], sample_rate: int, max_len: int | None) -> int:
  """The most frames a training crop of `videos` can have: max ceil(T / rate), capped at max_len."""
  longest = max(-(-num_frames(v) // sample_rate) for v in videos)
  return longest if max_len is None else min(longest, max_len)


def temporal_views(video: Video, sample_rate: int) -> dict[str, np.ndarray]:
  """The r = sample_rate temporal views features[o::r]: features [r, T', D] f32, mask [r, T'] f32.

  T' is the bucket length of the longest view, ceil(T / r).
  """
  return frame_views({'features': video.features}, sample_rate, video.name)


def frame_views(
  arrays: dict[str, np.ndarray], sample_rate: int, name: str
) -> dict[str, np.ndarray]:
  """The r = sample_rate temporal views of each per-frame array: {key: [r, T', ...] f32} and
  mask [r, T'] f32 (T' = bucket length of ceil(T / r)). `name` is used in errors."""
  num_frames = len(next(iter(arrays.values())))
  if num_frames < sample_rate:
    raise ValueError(
      f'video {name!r} has {num_frames} frames, fewer than sample_rate {sample_rate}'
    )
  lengths = [len(range(offset, num_frames, sample_rate)) for offset in range(sample_rate)]
  length = bucket_length(max(lengths))
  views = {
    key: pad_stack(
      [array[offset::sample_rate] for offset in range(sample_rate)], length, np.float32
    )
    for key, array in arrays.items()
  }
  return dict(views, mask=_mask(lengths, length))

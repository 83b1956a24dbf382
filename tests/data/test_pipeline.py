"""Tests for polyseg.data.pipeline: boundary targets, class weights, buckets, loader, test views."""

import threading

import numpy as np
import pytest
import scipy.ndimage

from polyseg.data import pipeline
from polyseg.data.formats import Video
from polyseg.engine import config as engine_config

DIM = 3


def make_video(index: int, length: int, seed: int = 0) -> Video:
  """Features [T, 3] = (frame index, video index, noise); a few random segments of 4 classes."""
  rng = np.random.default_rng([seed, index])
  features = np.stack([np.arange(length), np.full(length, index), rng.standard_normal(length)], 1)
  cuts = np.sort(rng.choice(np.arange(1, length), size=min(4, length - 1), replace=False))
  labels = np.repeat(rng.integers(0, 4, size=len(cuts) + 1), np.diff(np.r_[0, cuts, length]))
  return Video(f'v{index}', features.astype(np.float32), labels.astype(np.int32))


VIDEOS = [make_video(i, length) for i, length in enumerate([50, 130, 77, 300, 64, 201, 5])]


# ----------------------------------------------------------- boundary target


def gaussian_weights(sigma: float) -> np.ndarray:
  """scipy's truncated (4 sigma) normalised gaussian kernel, by hand: [2r + 1]."""
  radius = int(4 * sigma + 0.5)
  weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  return weights / weights.sum()


def test_boundary_target_without_smoothing():
  np.testing.assert_array_equal(
    pipeline.boundary_target(np.array([0, 0, 0, 1, 1, 2]), None), [0, 0, 1, 1, 1, 1]
  )
  np.testing.assert_array_equal(
    pipeline.boundary_target(np.array([5, 5, 3, 3, 3, 3]), 0), [0, 1, 1, 0, 0, 0]
  )


def test_boundary_target_hand_worked():
  # One boundary at s = 6 of a 12-frame video: the pair (5, 6) is the isolated pair itself, so the
  # result is the smoothed pair over its own peak w0 + w1.
  w = gaussian_weights(1.0)[4:]  # w[k] = weight at distance k
  labels = np.array([0] * 6 + [1] * 6)
  target = pipeline.boundary_target(labels, 1.0)
  peak = w[0] + w[1]
  expected = [sum(w[abs(t - b)] for b in (5, 6) if abs(t - b) < len(w)) / peak for t in range(12)]
  assert target.dtype == np.float32
  np.testing.assert_allclose(target, expected, rtol=1e-6, atol=1e-7)
  assert target[5] == target[6] == 1.0 and target[4] == pytest.approx((w[1] + w[2]) / peak)


def test_boundary_target_close_boundaries_are_clipped():
  # Starts at 5 and 7: frames 4..7 are 1; frames 5 and 6 get w0 + 2 w1 + w2 > peak -> clipped to 1.
  w = gaussian_weights(1.0)[4:]
  labels = np.array([0] * 5 + [1] * 2 + [2] * 5)
  target = pipeline.boundary_target(labels, 1.0)
  np.testing.assert_allclose(target[[4, 5, 6, 7]], 1.0)
  np.testing.assert_allclose(target[3], (w[1] + w[2] + w[3] + w[4]) / (w[0] + w[1]), rtol=1e-6)


def diffact_boundary_target(labels, sigma):
  """DiffAct's get_boundary_seq, transcribed as a plain loop with scipy."""
  seq = np.zeros(len(labels))
  for t in range(1, len(labels)):
    if labels[t] != labels[t - 1]:
      seq[t] = seq[t - 1] = 1
  seq = scipy.ndimage.gaussian_filter1d(seq, sigma)
  pair = np.zeros(len(labels))
  pair[len(labels) // 2] = pair[len(labels) // 2 - 1] = 1
  norm = scipy.ndimage.gaussian_filter1d(pair, sigma).max()
  seq[seq > norm] = norm
  return seq / seq.max()


@pytest.mark.parametrize('sigma', [1.0, 3.0, 20.0])
def test_boundary_target_matches_scipy_reference(sigma):
  for video in VIDEOS[:-1]:
    np.testing.assert_allclose(
      pipeline.boundary_target(video.labels, sigma),
      diffact_boundary_target(video.labels, sigma),
      rtol=1e-6,
      atol=1e-7,
    )


@pytest.mark.parametrize('length', [1, 2, 9])
def test_boundary_target_single_segment_is_zero(length):
  for sigma in (None, 1.0, 20.0):
    target = pipeline.boundary_target(np.full(length, 3), sigma)
    assert target.shape == (length,) and target.dtype == np.float32 and not target.any()


# ------------------------------------------------------------- class weights


def test_class_weights_hand_worked():
  videos = [
    Video('a', np.zeros((4, 1)), np.array([0, 0, 0, 1])),
    Video('b', np.zeros((2, 1)), np.array([1, 2])),
  ]
  counts = pipeline.class_counts(videos, 4)
  np.testing.assert_array_equal(counts, [3, 2, 1, 0])
  weights = pipeline.class_weights(counts)  # N = 6; C = 4
  assert weights.dtype == np.float32
  np.testing.assert_allclose(weights, [6 / 52, 6 / 48, 6 / 44, 6 / 40], rtol=1e-6)


# ------------------------------------------------------------------- buckets


def test_bucket_length_values():
  expected = {
    0: 64,
    1: 64,
    64: 64,
    65: 128,
    128: 128,
    129: 192,
    192: 192,
    193: 256,
    257: 384,
    385: 512,
    600: 768,
    800: 1024,
    1100: 1536,
    1500: 1536,
    1537: 2048,
  }
  assert {n: pipeline.bucket_length(n) for n in expected} == expected
  assert pipeline.bucket_length(10, multiple=8) == 16 and pipeline.bucket_length(17, 8) == 24


def test_bucket_lengths_are_few_and_waste_at_most_half():
  lengths = np.arange(1, 50_001)
  buckets = np.array([pipeline.bucket_length(int(n)) for n in lengths])
  assert (buckets >= lengths).all() and (buckets % 64 == 0).all()
  assert (np.diff(buckets) >= 0).all()
  assert len(np.unique(buckets)) <= 2 * np.log2(50_000 / 64) + 2  # two per octave
  assert (buckets[lengths > 128] < 1.5 * lengths[lengths > 128]).all()


# -------------------------------------------------------------- train loader


def make_loader(**kwargs) -> pipeline.TrainLoader:
  return pipeline.TrainLoader(
    VIDEOS, **{'batch_size': 3, 'sample_rate': 2, 'boundary_sigma': 1.0, 'seed': 7, **kwargs}
  )


def test_batch_is_a_pure_function_of_seed_and_step():
  first, second = make_loader(), make_loader()
  second.batch(11)  # consuming other steps first must not matter
  for step in (0, 5, 11):
    a, b = first.batch(step), second.batch(step)
    assert a.keys() == b.keys() == {'features', 'labels', 'boundary', 'mask'}
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  other_seed = make_loader(seed=8)
  batches = [first.batch(step) for step in range(6)]
  for i in range(5):
    assert not np.array_equal(batches[i]['features'], batches[i + 1]['features'])
  assert not all(
    np.array_equal(first.batch(s)['features'], other_seed.batch(s)['features']) for s in range(3)
  )


def test_epochs_visit_every_video():
  loader = make_loader()
  assert loader.steps_per_epoch == 3  # ceil(7 / 3)
  for epoch in range(3):
    steps = range(epoch * 3, epoch * 3 + 3)
    indices = np.concatenate([loader.batch_indices(step) for step in steps])
    order = np.random.default_rng([7, epoch]).permutation(7)
    np.testing.assert_array_equal(indices, np.r_[order, order[:2]])


def test_length_grouping_sorts_windows_of_batches_and_cuts_padding():
  lengths = [40, 1000, 45, 980, 50, 990, 60, 1010, 55, 970, 48, 1005]  # short and long, interleaved
  videos = [make_video(i, n) for i, n in enumerate(lengths)]
  loader = pipeline.TrainLoader(
    videos, batch_size=2, sample_rate=1, boundary_sigma=1.0, seed=3, length_grouping=3
  )
  plain = pipeline.TrainLoader(videos, batch_size=2, sample_rate=1, boundary_sigma=1.0, seed=3)
  for epoch in range(2):
    steps = range(epoch * 6, epoch * 6 + 6)
    batches = [loader.batch_indices(step) for step in steps]
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(12))  # each once
    # Hand-worked: the epoch's plain order, cut into windows of 3 batches, sorted by length.
    order = np.random.default_rng([3, epoch]).permutation(12)
    windows = [sorted(order[i : i + 6], key=lambda v: lengths[v]) for i in (0, 6)]
    expected = {tuple(w[j : j + 2]) for w in windows for j in (0, 2, 4)}
    assert {tuple(b) for b in batches} == expected
    assert [tuple(b) for b in batches] != sorted(expected, key=lambda b: lengths[b[0]])  # shuffled
  # One window per epoch: 3 batches of short videos (padded to 64) and 3 of long ones (1024).
  whole_epoch = pipeline.TrainLoader(
    videos, batch_size=2, sample_rate=1, boundary_sigma=1.0, seed=3, length_grouping=6
  )
  padded = [sum(lo.batch(step)['mask'].size for step in range(12)) for lo in (whole_epoch, plain)]
  assert padded[0] == 2 * (3 * 2 * 64 + 3 * 2 * 1024) < padded[1], padded


def check_batch(loader: pipeline.TrainLoader, step: int, max_len=None) -> set[int]:
  """Checks one batch against the videos it came from; returns the offsets it used."""
  batch = loader.batch(step)
  rate = loader.sample_rate
  assert batch['features'].dtype == np.float32 and batch['labels'].dtype == np.int32
  assert batch['boundary'].dtype == np.float32 and batch['mask'].dtype == np.float32
  size, length, dim = batch['features'].shape
  assert size == loader.batch_size and dim == DIM
  assert batch['labels'].shape == batch['boundary'].shape == batch['mask'].shape == (size, length)
  valid_lengths = batch['mask'].sum(1).astype(int)
  assert length == pipeline.bucket_length(valid_lengths.max())
  offsets = set()
  for row, index in enumerate(loader.batch_indices(step)):
    video, n = VIDEOS[index], valid_lengths[row]
    np.testing.assert_array_equal(batch['mask'][row], np.arange(length) < n)
    frames = batch['features'][row, :n, 0].astype(int)  # feature channel 0 = frame index
    offset, start = frames[0] % rate, frames[0] // rate
    np.testing.assert_array_equal(frames, np.arange(frames[0], frames[0] + rate * n, rate))
    full = np.arange(offset, len(video.labels), rate)
    if max_len is None:
      assert start == 0 and n == len(full)
    else:
      assert n == min(len(full), max_len)
    np.testing.assert_array_equal(batch['features'][row, :n], video.features[frames])
    np.testing.assert_array_equal(batch['labels'][row, :n], video.labels[frames])
    # The full-rate target at these frames, divided by its max there (as DiffAct's reference does
    # after picking the offset): the peaks are 1 again.
    picked = pipeline.boundary_target(video.labels, 1.0)[frames]
    np.testing.assert_allclose(
      batch['boundary'][row, :n], picked / picked.max() if picked.max() > 0 else picked, rtol=1e-6
    )
    assert picked.max() == 0 or batch['boundary'][row, :n].max() == 1
    assert not batch['features'][row, n:].any() and not batch['labels'][row, n:].any()
    assert not batch['boundary'][row, n:].any()
    offsets.add(int(offset))
  return offsets


@pytest.mark.parametrize('sample_rate', [1, 2, 4])
def test_batches_are_subsampled_padded_and_masked(sample_rate):
  loader = make_loader(sample_rate=sample_rate)
  offsets = set().union(*(check_batch(loader, step) for step in range(12)))
  assert offsets == set(range(sample_rate))


def test_max_len_crops_contiguously():
  loader = make_loader(max_len=40)
  starts = set()
  for step in range(12):
    check_batch(loader, step, max_len=40)
    batch = loader.batch(step)
    assert batch['features'].shape[1] == 64  # bucket of 40
    starts.update(batch['features'][:, 0, 0].tolist())
  assert len(starts) > 10  # crops start at many places


def test_bucket_lengths_of_batches_are_a_small_set():
  loader = make_loader(sample_rate=1)
  lengths = {loader.batch(step)['labels'].shape[1] for step in range(30)}
  assert lengths <= {64, 128, 192, 256, 384}


def test_merge_rare_buckets_pads_each_rare_bucket_to_the_next_kept_one():
  # Polyphony's synthetic stage 3 over 1,200 steps: 192 and 256 are rare, both go to 384
  counts = {192: 3, 256: 13, 384: 1064, 512: 120}
  assert pipeline.merge_rare_buckets(counts, 50) == {192: 384, 256: 384, 384: 384, 512: 512}
  assert pipeline.merge_rare_buckets(counts, 13) == {192: 256, 256: 256, 384: 384, 512: 512}
  assert pipeline.merge_rare_buckets(counts, 0) == {b: b for b in counts}
  # the longest bucket stays however rare; everything below it may go there
  assert pipeline.merge_rare_buckets({64: 40, 128: 1}, 50) == {64: 128, 128: 128}
  assert pipeline.merge_rare_buckets({64: 60, 128: 1, 192: 2}, 50) == {64: 64, 128: 192, 192: 192}


def test_rare_buckets_are_padded_up_and_the_batches_are_otherwise_the_same():
  """Over the run's steps, every batch of a bucket with fewer than min_bucket_batches batches has
  the next kept bucket's length: the same videos, frames, labels and boundary, zeros beyond."""
  num_steps = 60
  plain = make_loader(sample_rate=1, num_steps=num_steps)
  counts = {}
  for step in range(num_steps):
    length = plain.batch(step)['mask'].shape[1]
    counts[length] = counts.get(length, 0) + 1
  assert plain.padded_lengths() == sorted(counts)  # the run's buckets exactly, none missing
  assert len(counts) >= 3 and min(counts.values()) < 10 < max(counts.values())
  rare = {b for b, n in counts.items() if n < 10}
  kept = sorted(set(counts) - rare | {max(counts)})
  merged = make_loader(sample_rate=1, num_steps=num_steps, min_bucket_batches=10)
  assert merged.padded_lengths() == kept
  for step in range(num_steps):
    a, b = plain.batch(step), merged.batch(step)
    length, padded = a['mask'].shape[1], b['mask'].shape[1]
    assert padded == (min(k for k in kept if k >= length) if length in rare else length)
    for key in a:
      np.testing.assert_array_equal(b[key][:, :length], a[key])
      assert not b[key][:, length:].any()
  # no steps to plan (num_steps 0): every bucket a crop can fall in, as without a plan
  assert make_loader(sample_rate=1, num_steps=0, min_bucket_batches=10).padded_lengths() == (
    make_loader(sample_rate=1).padded_lengths()
  )
  # steps past the plan (a longer resumed run) keep their own buckets, merged where the plan
  # merged them; pad_to still wins
  for step in range(num_steps, num_steps + 40):
    length = plain.batch(step)['mask'].shape[1]
    assert merged.batch(step)['mask'].shape[1] == merged.padded_length_of.get(length, length)
  assert make_loader(num_steps=num_steps, min_bucket_batches=10, pad_to=512).padded_lengths() == [
    512
  ]


def test_loader_from_config_plans_the_runs_steps_and_merges_rare_buckets():
  config = engine_config.base_config('diffact')
  config.data.sample_rate = 1
  config.train.update(batch_size=3, num_steps=60)
  config.data.min_bucket_batches = 10
  loader = pipeline.TrainLoader.from_config(VIDEOS, config)
  expected = make_loader(sample_rate=1, seed=0, num_steps=60, min_bucket_batches=10)
  assert loader.padded_lengths() == expected.padded_lengths()
  assert loader.padded_length_of == expected.padded_length_of != {}
  config.data.min_bucket_batches = 0
  kept_all = pipeline.TrainLoader.from_config(VIDEOS, config)
  assert len(kept_all.padded_lengths()) > len(loader.padded_lengths())


def test_loader_rejects_bad_arguments():
  with pytest.raises(ValueError, match='at least one video'):
    pipeline.TrainLoader([], batch_size=1, sample_rate=1, boundary_sigma=1.0, seed=0)
  with pytest.raises(ValueError, match='batch_size'):
    make_loader(batch_size=0)
  with pytest.raises(ValueError, match=r"shorter than sample_rate 8: \['v6'\]"):
    make_loader(sample_rate=8)
  with pytest.raises(ValueError, match='length_grouping must be >= 0'):
    make_loader(length_grouping=-1)
  with pytest.raises(ValueError, match='min_bucket_batches must be >= 0'):
    make_loader(num_steps=10, min_bucket_batches=-1)
  with pytest.raises(ValueError, match='needs num_steps'):
    make_loader(min_bucket_batches=5)


# ---------------------------------------------------------------- test views


@pytest.mark.parametrize('length, rate', [(130, 4), (64, 1), (7, 3), (300, 8)])
def test_test_views(length, rate):
  video = make_video(0, length)
  views = pipeline.temporal_views(video, rate)
  longest = -(-length // rate)
  padded = pipeline.bucket_length(longest)
  assert views['features'].shape == (rate, padded, DIM) and views['mask'].shape == (rate, padded)
  assert views['features'].dtype == np.float32 and views['mask'].dtype == np.float32
  for offset in range(rate):
    n = len(range(offset, length, rate))
    np.testing.assert_array_equal(views['mask'][offset], np.arange(padded) < n)
    np.testing.assert_array_equal(views['features'][offset, :n], video.features[offset::rate])
    assert not views['features'][offset, n:].any()


def test_test_views_rejects_too_short_video():
  with pytest.raises(ValueError, match="'v6' has 5 frames"):
    pipeline.temporal_views(VIDEOS[-1], 8)


# --- multi-hot labels and extra fields (HopaDIFF) ------------------------------------------------


def test_boundary_target_of_multi_hot_labels_marks_label_set_changes():
  # Sets: {0} {0} {0,1} {0,1} {} {} {1}: changes at frames 2, 4 and 6.
  active = np.array([[1, 0], [1, 0], [1, 1], [1, 1], [0, 0], [0, 0], [0, 1]], bool)
  np.testing.assert_array_equal(pipeline.boundary_target(active, None), [0, 1, 1, 1, 1, 1, 1])
  same = np.tile([[1, 1]], (5, 1)).astype(bool)
  np.testing.assert_array_equal(pipeline.boundary_target(same, 1.0), np.zeros(5))


class _Sample:
  def __init__(self, name, length, seed):
    rng = np.random.default_rng(seed)
    self.name = name
    self.a = rng.normal(size=(length, 3)).astype(np.float32)
    self.labels = rng.random((length, 4)) < 0.3
    self.code = np.full(2, seed, np.float32)


def _sample_fields(sample):
  return {'a': sample.a, 'labels': sample.labels.astype(np.float32)}, {'code': sample.code}


def test_loader_fields_pad_per_frame_arrays_and_stack_per_video_arrays():
  samples = [_Sample('s0', 70, 0), _Sample('s1', 30, 1)]
  loader = pipeline.TrainLoader(
    samples, batch_size=2, sample_rate=2, boundary_sigma=None, seed=3, fields=_sample_fields
  )
  batch = loader.batch(0)
  assert set(batch) == {'a', 'labels', 'code', 'boundary', 'mask'}
  assert batch['a'].shape == (2, 64, 3) and batch['labels'].shape == (2, 64, 4)
  for row, index in enumerate(loader.batch_indices(0)):
    sample = samples[index]
    length = int(batch['mask'][row].sum())
    offset = next(o for o in range(2) if np.array_equal(batch['a'][row, 0], sample.a[o]))
    np.testing.assert_array_equal(batch['a'][row, :length], sample.a[offset::2])
    np.testing.assert_array_equal(batch['labels'][row, :length], sample.labels[offset::2])
    np.testing.assert_array_equal(
      batch['boundary'][row, :length], pipeline.boundary_target(sample.labels, None)[offset::2]
    )
    assert np.all(batch['a'][row, length:] == 0)
    np.testing.assert_array_equal(batch['code'][row], sample.code)


def test_frame_views_of_several_arrays():
  a = np.arange(10, dtype=np.float32)[:, None]
  views = pipeline.frame_views({'a': a, 'b': 2 * a}, 3, 'v')
  assert views['a'].shape == (3, 64, 1) and views['mask'].shape == (3, 64)
  np.testing.assert_array_equal(views['mask'].sum(1), [4, 3, 3])
  np.testing.assert_array_equal(views['a'][1, :3, 0], [1, 4, 7])
  np.testing.assert_array_equal(views['b'][1, :3, 0], [2, 8, 14])
  with pytest.raises(ValueError, match="'v' has 10 frames"):
    pipeline.frame_views({'a': a}, 11, 'v')


def test_padded_lengths_are_the_buckets_of_every_crop_at_every_offset():
  def loader(lengths, **kwargs):
    videos = [make_video(i, n) for i, n in enumerate(lengths)]
    return pipeline.TrainLoader(
      videos, batch_size=2, sample_rate=2, boundary_sigma=1.0, seed=0, **kwargs
    )

  # 100 -> 50 frames at either offset -> 64; 130 -> 65 -> 128; 701 -> 351 or 350 -> 384
  assert loader([100, 130, 701]).padded_lengths() == [64, 128, 384]
  # 257 -> 129 frames at offset 0 (bucket 192), 128 at offset 1 (bucket 128): both can occur
  assert loader([257]).padded_lengths() == [128, 192]
  assert loader([100, 130, 701], max_len=100).padded_lengths() == [64, 128]  # crops <= 100
  assert loader([100, 701], pad_to=512).padded_lengths() == [512]
  for lengths in ([100, 130, 701], [257]):  # every batch it makes has one of those lengths
    one = loader(lengths)
    seen = {one.batch(step)['mask'].shape[1] for step in range(40)}
    assert seen <= set(one.padded_lengths())


def test_prefetcher_serves_the_loaders_batches_in_any_order():
  """Consecutive steps from grain's buffer, a jump (a resume), a repeat and the last step: every
  batch bitwise the loader's own."""
  loader = make_loader(sample_rate=2, length_grouping=2)
  prefetch = pipeline.Prefetcher(loader.batch, num_steps=12, ahead=3)
  for step in (0, 1, 2, 3, 7, 8, 8, 2, 11, 11):
    got, want = prefetch(step), loader.batch(step)
    assert got.keys() == want.keys()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_prefetcher_builds_batches_before_they_are_asked_for():
  built = {step: threading.Event() for step in range(6)}

  def batch_of(step):
    built[step].set()
    return step

  prefetch = pipeline.Prefetcher(batch_of, num_steps=6, ahead=2)
  assert prefetch(0) == 0
  assert built[1].wait(10) and built[2].wait(10)  # on grain's thread, before step 1 is asked
  assert [prefetch(s) for s in range(1, 6)] == [1, 2, 3, 4, 5]


def test_prefetcher_raises_the_batch_functions_error_and_rejects_bad_arguments():
  def batch_of(step):
    if step == 2:
      raise ValueError('video v7: broken')
    return step

  prefetch = pipeline.Prefetcher(batch_of, num_steps=4)
  assert [prefetch(0), prefetch(1)] == [0, 1]
  with pytest.raises(ValueError, match='video v7: broken'):
    prefetch(2)
  with pytest.raises(ValueError, match='ahead and threads must be >= 1'):
    pipeline.Prefetcher(batch_of, num_steps=4, ahead=0)

"""Tests for polyseg.data.synthetic: determinism, structure, caching, and that it is hard per frame
but learnable with temporal context."""

import pathlib

import numpy as np
import pytest
import scipy.signal

from polyseg.data import formats
from polyseg.data import synthetic
from polyseg.data.synthetic import base

SMALL = {'num_train': 4, 'num_test': 2, 'min_len': 150, 'max_len': 300, 'input_dim': 16}


def files(root: pathlib.Path) -> dict[str, bytes]:
  """Relative path -> bytes of every file under root."""
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def default_data(tmp_path_factory) -> dict[str, formats.Dataset]:
  """The default dataset, written to disk and read back."""
  root = synthetic.ensure_single_stream(tmp_path_factory.mktemp('cache'))
  return {subset: formats.read_single_stream(root, subset, 1) for subset in ('train', 'test')}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
  first = files(synthetic.single_stream(tmp_path / 'a', seed=3, **SMALL))
  second = files(synthetic.single_stream(tmp_path / 'b', seed=3, **SMALL))
  other = files(synthetic.single_stream(tmp_path / 'c', seed=4, **SMALL))
  assert first == second
  assert first.keys() == other.keys()
  assert first['features/train000.npy'] != other['features/train000.npy']
  assert first['groundTruth/train000.txt'] != other['groundTruth/train000.txt']


@pytest.mark.parametrize(
  'length,dim,ar_coef', [(1, 3, 0.9), (2, 1, 0.5), (300, 16, 0.9), (57, 5, -0.3)]
)
def test_ar1_noise_is_scipys_recursive_filter_to_the_bit(length, dim, ar_coef):
  """The generators' AR(1) noise: the innovations (scaled after the first frame) through
  lfilter([1], [1, -ar_coef]), as earlier versions computed it: the same datasets."""
  noise = base.ar1_noise(np.random.default_rng(7), length, dim, ar_coef)
  innovations = np.random.default_rng(7).standard_normal((length, dim))
  innovations[1:] *= np.sqrt(1.0 - ar_coef**2)
  expected = scipy.signal.lfilter([1.0], [1.0, -ar_coef], innovations, axis=0)
  assert noise.shape == (length, dim) and noise.dtype == np.float64
  np.testing.assert_array_equal(noise, expected)


def test_default_sizes_and_structure(default_data):
  train, test = default_data['train'], default_data['test']
  assert len(train.videos) == 48 and len(test.videos) == 16
  assert train.classes == test.classes == synthetic.class_names(11)
  assert train.classes[0] == 'background' and len(set(train.classes)) == 11
  assert train.input_dim == 64
  for video in train.videos + test.videos:
    assert 600 <= len(video.labels) <= 1500
    assert video.labels[0] == 0 and video.labels[-1] == 0
    assert video.features.dtype == np.float32 and np.isfinite(video.features).all()
  train_labels = np.concatenate([v.labels for v in train.videos])
  assert set(np.unique(train_labels)) == set(range(11))
  assert np.bincount(train_labels).min() > 0.005 * len(train_labels)  # no vanishing class


def segment_lengths(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(segment classes [S], segment lengths [S])."""
  starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
  return labels[starts], np.diff(np.r_[starts, len(labels)])


def test_segments_and_grammar(default_data):
  world = synthetic.make_world(seed=0, num_classes=11, input_dim=64, num_activities=3, rank=8)
  lengths = []
  for video in default_data['train'].videos:
    classes, seg_lengths = segment_lengths(video.labels)
    lengths.append(seg_lengths[classes != 0])
    # Between background segments: one episode, each step at most once, all from one activity.
    episodes = np.split(classes, np.flatnonzero(classes == 0))
    for episode in (e[e != 0] for e in episodes if len(e) > 1):
      assert len(set(episode)) == len(episode)
      assert any(set(episode) <= set(steps) for steps, _ in world.activities)
  lengths = np.concatenate(lengths)
  assert np.median(lengths) > 20 and np.percentile(lengths, 95) < 400 and lengths.min() >= 1


def test_confusable_pairs_are_close_and_in_different_activities():
  world = synthetic.make_world(seed=0, num_classes=11, input_dim=64, num_activities=3, rank=8)
  pairs = synthetic.confusable_pairs(11, 3)
  assert pairs == [(1, 2), (3, 4)]
  distances = np.linalg.norm(world.prototypes[:, None] - world.prototypes[None], axis=-1)
  typical = np.median(distances[np.triu_indices(11, 1)])
  for first, second in pairs:
    assert distances[first, second] < 0.15 * typical
    assert not any({first, second} <= set(steps) for steps, _ in world.activities)
  assert np.linalg.matrix_rank(world.prototypes, tol=1e-6) == 8


def moving_average(scores: np.ndarray, width: int) -> np.ndarray:
  """Centred moving average over time of [T, C] scores, edges repeated."""
  padded = np.pad(scores, ((width // 2, width - 1 - width // 2), (0, 0)), mode='edge')
  cumulative = np.concatenate([np.zeros((1, scores.shape[1])), np.cumsum(padded, axis=0)])
  return (cumulative[width:] - cumulative[:-width]) / width


def test_hard_per_frame_but_temporal_context_pays_off(default_data):
  train, test = default_data['train'], default_data['test']
  num_classes = len(train.classes)
  x = np.concatenate([v.features for v in train.videos]).astype(np.float64)
  y = np.concatenate([v.labels for v in train.videos])
  # Class-balanced least-squares linear classifier on single frames (one-hot targets, bias).
  x1 = np.c_[x, np.ones(len(x))]
  sample_weight = (1.0 / np.bincount(y, minlength=num_classes))[y][:, None]
  weights = np.linalg.solve(
    x1.T @ (x1 * sample_weight) + 1e-3 * np.eye(x1.shape[1]),
    x1.T @ (np.eye(num_classes)[y] * sample_weight),
  )
  frame_correct, smooth_correct, frame_segments, true_segments = [], [], 0, 0
  for video in test.videos:
    scores = np.c_[video.features, np.ones(len(video.features))] @ weights
    prediction = scores.argmax(1)
    frame_correct.append(prediction == video.labels)
    smooth_correct.append(moving_average(scores, 30).argmax(1) == video.labels)
    frame_segments += len(segment_lengths(prediction)[0])
    true_segments += len(segment_lengths(video.labels)[0])
  frame_acc = np.concatenate(frame_correct).mean()
  smooth_acc = np.concatenate(smooth_correct).mean()
  assert 0.4 < frame_acc < 0.7, frame_acc
  assert smooth_acc > frame_acc + 0.12, (frame_acc, smooth_acc)
  assert frame_segments > 10 * true_segments  # per-frame predictions are very fragmented


def test_ensure_single_stream_generates_once_and_keys_on_arguments(tmp_path, monkeypatch):
  root = synthetic.ensure_single_stream(tmp_path, seed=1, **SMALL)
  assert root.parent == tmp_path and root.name.startswith('single_stream-')
  assert formats.read_split(root, 'test', 1) == ['test000', 'test001']
  # Defaults filled in: spelling out a default gives the same dataset.
  assert synthetic.ensure_single_stream(tmp_path, seed=1, num_classes=11, **SMALL) == root
  assert synthetic.ensure_single_stream(tmp_path, seed=2, **SMALL) != root
  monkeypatch.setattr(
    'polyseg.data.synthetic.activities.single_stream', lambda *a, **k: pytest.fail('regenerated')
  )
  assert synthetic.ensure_single_stream(tmp_path, seed=1, **SMALL) == root
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
    [root.name, synthetic.cache_name(seed=2, **SMALL)]
  )


def test_ensure_single_stream_fills_an_empty_leftover_folder(tmp_path):
  root = tmp_path / synthetic.cache_name(**SMALL)
  root.mkdir()
  assert synthetic.ensure_single_stream(tmp_path, **SMALL) == root
  assert formats.read_split(root, 'train', 1) == [f'train{i:03d}' for i in range(4)]


TINY_REFERRING = {
  'num_videos': 2,
  'min_len': 60,
  'max_len': 90,
  'holistic_dim': 6,
  'partial_dim': 5,
}


@pytest.mark.parametrize(
  'ensure, cache_name, writer, kwargs',
  [
    ('ensure_single_stream', 'cache_name', 'activities.single_stream', SMALL),
    ('ensure_referring', 'referring_cache_name', 'people.referring', TINY_REFERRING),
  ],
)
def test_ensure_reuses_a_concurrent_winner(
  tmp_path, monkeypatch, ensure, cache_name, writer, kwargs
):
  root = tmp_path / getattr(synthetic, cache_name)(**kwargs)
  module, name = writer.split('.')
  real_write = getattr(getattr(synthetic, module), name)

  def lose_the_race(target, **kwargs):
    real_write(target, **kwargs)  # another process finishes first ...
    return real_write(target, **kwargs)  # ... so this write is refused

  monkeypatch.setattr(f'polyseg.data.synthetic.{writer}', lose_the_race)
  assert getattr(synthetic, ensure)(tmp_path, **kwargs) == root
  assert [p.name for p in tmp_path.iterdir()] == [root.name]


def test_other_sizes():
  data = synthetic.make_single_stream(
    num_classes=30,
    num_activities=4,
    input_dim=32,
    num_train=2,
    num_test=1,
    min_len=3000,
    max_len=3000,
    rank=4,
  )
  video = data['train'].videos[0]
  assert video.features.shape == (3000, 32) and video.labels.max() < 30
  assert data['train'].classes[-1] == 'action_028'
  assert len(synthetic.confusable_pairs(30, 4)) == 5


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'num_classes': 2}, 'num_classes'),
    ({'num_activities': 0}, 'num_activities'),
    ({'rank': 65}, 'rank'),
    ({'min_len': 700, 'max_len': 600}, 'min_len'),
    ({'min_len': 8, 'max_len': 600}, 'too short'),
    ({'blend': 0}, 'blend'),
  ],
)
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    synthetic.make_single_stream(**{'num_train': 1, 'num_test': 1, **kwargs})

"""polyseg/data/watch.py: seglearn's real smartwatch recordings converted to one dataset root
that DiffAct, 2s-DAS and HAL read; hand-worked window features; only the pinned file is unpickled
without --trust-pickle."""

import math

import numpy as np
import pytest

from polyseg.configlib import load_config
from polyseg.data import formats
from polyseg.data import watch
from polyseg.methods.diffact import task as diffact
from polyseg.methods.hal import task as hal
from polyseg.methods.twostream import task as twostream


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp('watch') / 'data'
  counts = watch.convert(watch.installed_file(), root)
  return root, counts


def test_window_features_hand_worked():
  signal = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
  # centres 0, 2, 4; windows of 2 samples from centre - 1, clipped: [0], [1, 2], [3, 4]
  got = watch.window_features(signal, window=2, stride=2)
  np.testing.assert_allclose(
    got, [[0, 0, 0, 0], [1.5, 0.5, 1, 2], [3.5, 0.5, 3, 4]]
  )  # mean, std, min, max


def test_the_real_recordings_become_cross_subject_sequences(converted):
  root, counts = converted
  assert counts == {'train': 12, 'val': 4, 'test': 4}  # 10 subjects x 2 wrists
  recordings = watch.read_recordings(watch.installed_file(), trust=False)
  classes = formats.read_mapping(root / 'mapping.txt')
  assert classes == recordings['classes'] and len(classes) == 7
  subjects = {}
  for subset in ('train', 'val', 'test'):
    data = formats.read_transcripts(root, subset, 1)
    streams = formats.read_two_streams(root, subset, 1)
    for video, two in zip(data.videos, streams.videos, strict=True):
      subject, side = int(video.name[1:3]), video.name.split('_')[1]
      subjects.setdefault(subset, set()).add(subject)
      chosen = (recordings['subject'] == subject) & (
        recordings['side'] == {'left': 0, 'right': 1}[side]
      )
      samples = sum(len(x) for x, keep in zip(recordings['X'], chosen, strict=True) if keep)
      assert len(video.labels) == math.ceil(samples / 10)  # a frame every 10 samples
      # Each exercise once, in class order; the transcript says the same.
      np.testing.assert_array_equal(formats.segment_classes(video.labels), np.arange(7))
      np.testing.assert_array_equal(video.transcript, np.arange(7))
      assert video.features.shape == (len(video.labels), 24)
      np.testing.assert_array_equal(two.features['rgb'], video.features[:, :12])  # accelerometer
      np.testing.assert_array_equal(two.features['flow'], video.features[:, 12:])  # gyroscope
      np.testing.assert_array_equal(two.labels, video.labels)
  assert subjects == {'train': {1, 2, 3, 4, 5, 6}, 'val': {7, 8}, 'test': {9, 10}}
  train = np.concatenate([v.features for v in formats.read_single_stream(root, 'train', 1).videos])
  np.testing.assert_allclose(train.mean(0), 0, atol=1e-4)  # standardised on the train subjects
  np.testing.assert_allclose(train.std(0), 1, atol=1e-3)


def test_diffact_twostream_and_hal_read_the_converted_root(converted):
  root, _ = converted
  for module, name in ((diffact, 'diffact'), (twostream, 'twostream'), (hal, 'hal')):
    config = load_config(name)
    config.data.root = str(root)
    data = module.load_data(config)
    assert len(data.train) == 12 and len(data.val) == 4 and len(data.read_test()) == 4
    assert len(data.info.classes) == 7


def fake_recordings(path) -> None:
  """A pickled watch-like dict of 10 subjects x 2 sides x 2 exercises, 20 samples each."""
  rng = np.random.default_rng(0)
  index = [(s, side, y) for s in range(1, 11) for side in (0, 1) for y in (1, 0)]
  data = {
    'X': [rng.normal(size=(20, 6)) + y for _, _, y in index],
    'y': np.array([y for _, _, y in index]),
    'subject': np.array([s for s, _, _ in index]),
    'side': np.array([side for _, side, _ in index]),
    'y_labels': ['raise', 'lower'],
    'X_labels': ['ax', 'ay', 'az', 'gx', 'gy', 'gz'],
  }
  np.save(path, np.array(data, dtype=object), allow_pickle=True)


def test_another_file_is_unpickled_only_when_trusted(tmp_path):
  fake_recordings(tmp_path / 'other.npy')
  with pytest.raises(formats.DataError, match='is not that of seglearn 1.2.5.*--trust-pickle'):
    watch.convert(tmp_path / 'other.npy', tmp_path / 'refused')
  assert not (tmp_path / 'refused').exists()
  assert watch.convert(
    tmp_path / 'other.npy', tmp_path / 'out', window=4, stride=5, trust=True
  ) == {
    'train': 12,
    'val': 4,
    'test': 4,
  }
  video = formats.read_single_stream(tmp_path / 'out', 'test', 1).videos[0]
  assert video.name == 's09_left'
  np.testing.assert_array_equal(video.labels, [0] * 4 + [1] * 4)  # exercise order, 40 samples / 5
  assert watch.main(['--src', str(tmp_path / 'missing.npy'), '--out', str(tmp_path / 'x')]) == 1

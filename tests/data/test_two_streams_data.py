"""Tests for the two-streams data: formats.write_two_streams / read_two_streams (round trip,
length alignment to the flow stream within a tolerance, errors) and synthetic.make_two_streams /
ensure_two_streams (RGB names classes, flow separates RGB's confusable pairs and shows boundaries,
determinism, caching)."""

import logging
import pathlib

import numpy as np
import pytest
from conftest import raises_data_error

from polyseg.data import formats
from polyseg.data import synthetic

CLASSES = ['background', 'cut', 'pour']
RGB_DIM, FLOW_DIM = 4, 3
SMALL = {
  'num_train': 3,
  'num_test': 2,
  'min_len': 150,
  'max_len': 250,
  'rgb_dim': 12,
  'flow_dim': 8,
}


def video(name: str, label_ids: list[int], rgb_len: int | None = None, flow_len: int | None = None):
  """A MultiStreamVideo whose features encode (video, frame, channel); stream lengths default to
  the label count."""
  length = len(label_ids)

  def features(frames: int, dim: int, scale: float) -> np.ndarray:
    return scale * (np.arange(frames * dim, dtype=np.float32).reshape(frames, dim) + ord(name[0]))

  return formats.MultiStreamVideo(
    name,
    {
      'rgb': features(rgb_len or length, RGB_DIM, 1.0),
      'flow': features(flow_len or length, FLOW_DIM, -0.5),
    },
    np.asarray(label_ids, np.int32),
  )


def datasets(*train: formats.MultiStreamVideo) -> dict[str, formats.MultiStreamDataset]:
  """{'train': the given videos (default two), 'test': one video}."""
  train = train or (video('a', [0, 0, 1, 1, 2]), video('b', [2, 1, 1]))
  return {
    'train': formats.MultiStreamDataset(CLASSES, list(train)),
    'test': formats.MultiStreamDataset(CLASSES, [video('c', [1, 2, 2, 0])]),
  }


def assert_same_videos(a: list[formats.MultiStreamVideo], b: list[formats.MultiStreamVideo]):
  assert [v.name for v in a] == [v.name for v in b]
  for x, y in zip(a, b, strict=True):
    assert x.features.keys() == y.features.keys()
    for stream in x.features:
      assert x.features[stream].dtype == y.features[stream].dtype == np.float32
      np.testing.assert_array_equal(x.features[stream], y.features[stream])
    assert x.labels.dtype == y.labels.dtype == np.int32
    np.testing.assert_array_equal(x.labels, y.labels)


# ------------------------------------------------------------------- writer and reader --


def test_write_read_round_trip_with_different_dims(tmp_path):
  data = datasets()
  root = formats.write_two_streams(tmp_path / 'data', data, split=2)
  assert root == tmp_path / 'data'
  assert sorted(p.name for p in root.iterdir()) == [
    'features_flow',
    'features_rgb',
    'groundTruth',
    'mapping.txt',
    'splits',
  ]
  assert (root / 'splits' / 'train.split2.bundle').read_text() == 'a.txt\nb.txt\n'
  assert (root / 'groundTruth' / 'b.txt').read_text() == 'pour\ncut\ncut\n'
  on_disk = np.load(root / 'features_flow' / 'a.npy')
  assert on_disk.dtype == np.float32 and on_disk.shape == (FLOW_DIM, 5)  # [D, T]
  for subset in ('train', 'test'):
    read = formats.read_two_streams(root, subset, 2, rgb_dim=RGB_DIM, flow_dim=FLOW_DIM)
    assert read.classes == CLASSES and read.input_dims == {'rgb': RGB_DIM, 'flow': FLOW_DIM}
    assert_same_videos(read.videos, data[subset].videos)


def test_reader_checks_each_stream_dim(tmp_path):
  root = formats.write_two_streams(tmp_path / 'data', datasets())
  with raises_data_error(f'{root / "features_flow" / "a.npy"}: feature dimension D = 3'):
    formats.read_two_streams(root, 'train', 1, flow_dim=RGB_DIM)


@pytest.mark.parametrize(
  'train, message',
  [
    ([video('a', [0, 1]), video('c', [1])], "video 'c' appears in both 'train' and 'test'"),
    (
      [video('a', [0, 1, 1], rgb_len=2)],
      "video 'a' in 'train': features 'features_rgb' have shape (2, 4)",
    ),
    ([video('a', [0, 3])], "video 'a' in 'train': label ids in [0, 3] outside [0, 3)"),
    (
      [
        video('a', [0, 1]),
        formats.MultiStreamVideo('b', {'rgb': np.zeros((1, 4)), 'flow': np.zeros((1, 2))}, [0]),
      ],
      "video 'b' in 'train': features 'features_flow' have shape (1, 2), expected [T, 3]",
    ),
    (
      [formats.MultiStreamVideo('a', {'rgb': np.zeros((1, 4))}, np.zeros(1, np.int32))],
      "video 'a' in 'train' has streams ['rgb'], expected ['flow', 'rgb']",
    ),
  ],
)
def test_writer_rejects_bad_datasets_and_leaves_nothing(tmp_path, train, message):
  with raises_data_error(message):
    formats.write_two_streams(tmp_path / 'data', datasets(*train))
  assert list(tmp_path.iterdir()) == []


def test_writer_refuses_to_overwrite(tmp_path):
  root = formats.write_two_streams(tmp_path / 'data', datasets())
  with raises_data_error(f'{root}: already exists'):
    formats.write_two_streams(root, datasets())


# ------------------------------------------------------------------------ length alignment --


def write_lengths(root: pathlib.Path, rgb_len: int, flow_len: int, label_len: int) -> pathlib.Path:
  """A dataset whose train video 'a' has the given RGB, flow and label lengths (labels end in
  class 2, then follow 0, 1, 2, ...)."""
  labels = [(i % 2) for i in range(label_len - 1)] + [2]
  root = formats.write_two_streams(root, datasets())
  original = video('a', labels, rgb_len=rgb_len, flow_len=flow_len)
  for stream, features in original.features.items():
    np.save(root / f'features_{stream}' / 'a.npy', features.T)
  formats.write_labels(root / 'groundTruth' / 'a.txt', [CLASSES[c] for c in labels])
  return root


def warnings_of(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize(
  'rgb_len, label_len', [(12, 10), (8, 10), (10, 12), (10, 8), (12, 8), (8, 12), (10, 10)]
)
def test_rgb_and_labels_are_aligned_to_the_flow_length(tmp_path, caplog, rgb_len, label_len):
  root = write_lengths(tmp_path / 'data', rgb_len, 10, label_len)
  expected = video('a', [0] * 10, rgb_len=rgb_len, flow_len=10)
  label_ids = [(i % 2) for i in range(label_len - 1)] + [2]
  with caplog.at_level(logging.WARNING):
    first = formats.read_two_streams(root, 'train', 1, length_tolerance=2).videos[0]
  assert first.features['flow'].shape == (10, FLOW_DIM) and first.labels.shape == (10,)
  np.testing.assert_array_equal(first.features['flow'], expected.features['flow'])
  rgb = first.features['rgb']
  assert rgb.shape == (10, RGB_DIM) and rgb.dtype == np.float32
  shared = min(rgb_len, 10)
  np.testing.assert_array_equal(rgb[:shared], expected.features['rgb'][:shared])
  assert not rgb[shared:].any()  # padded with zeros
  padded_labels = label_ids[:10] + [2] * (10 - label_len)  # the last label repeated
  np.testing.assert_array_equal(first.labels, padded_labels)
  messages = warnings_of(caplog)
  if rgb_len == label_len == 10:
    assert messages == []
    return
  assert len(messages) == 1  # one warning per video, naming every changed file
  (message,) = messages
  assert f'the 10 frames of {root / "features_flow" / "a.npy"}' in message
  for path, length in (('features_rgb/a.npy', rgb_len), ('groundTruth/a.txt', label_len)):
    change = f'{root / path}: {length} frames, {"truncated" if length > 10 else "padded"}'
    assert (change in message) == (length != 10), message


def test_length_difference_beyond_the_tolerance_names_files_and_lengths(tmp_path):
  root = write_lengths(tmp_path / 'data', 13, 10, 10)
  flow, rgb = root / 'features_flow' / 'a.npy', root / 'features_rgb' / 'a.npy'
  with raises_data_error(
    f'{flow}: 10 frames but {rgb} has 13 frames (they differ by 3 > length_tolerance 2); '
    f'raise data.length_tolerance to align them'
  ):
    formats.read_two_streams(root, 'train', 1, length_tolerance=2)
  root = write_lengths(tmp_path / 'labels', 10, 10, 9)
  with raises_data_error(
    f'{root / "groundTruth" / "a.txt"} has 9 frames (they differ by 1 > length_tol'
  ):
    formats.read_two_streams(root, 'train', 1)  # default tolerance 0: lengths must be equal


def test_align_lengths_on_arrays(caplog):
  rgb, labels = np.ones((7, 2), np.float32), np.array([[0, 1], [2, 3], [4, 5]])
  with caplog.at_level(logging.WARNING):
    aligned = formats.align_lengths(
      'v', ('flow.npy', 5), [('rgb.npy', rgb, 'constant'), ('gt', labels, 'edge')], tolerance=2
    )
  np.testing.assert_array_equal(aligned[0], np.ones((5, 2)))
  np.testing.assert_array_equal(aligned[1], [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
  expected = (
    "video 'v': aligned to the 5 frames of flow.npy (length_tolerance 2): rgb.npy: 7 frames, "
    'truncated; gt: 3 frames, padded'
  )
  assert warnings_of(caplog) == [expected]


@pytest.mark.parametrize('tolerance', [-1, 1.5, None])
def test_bad_length_tolerance(tmp_path, tolerance):
  root = formats.write_two_streams(tmp_path / 'data', datasets())
  with pytest.raises(ValueError, match='length_tolerance must be an int >= 0'):
    formats.read_two_streams(root, 'train', 1, length_tolerance=tolerance)


# ------------------------------------------------------------------------------ synthetic --


def files(root: pathlib.Path) -> dict[str, bytes]:
  """Relative path -> bytes of every file under root."""
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
  first = files(synthetic.two_streams(tmp_path / 'a', seed=3, **SMALL))
  assert files(synthetic.two_streams(tmp_path / 'b', seed=3, **SMALL)) == first
  other = files(synthetic.two_streams(tmp_path / 'c', seed=4, **SMALL))
  assert other.keys() == first.keys()
  for name in (
    'features_rgb/train000.npy',
    'features_flow/train000.npy',
    'groundTruth/test001.txt',
  ):
    assert other[name] != first[name]


def test_structure_and_round_trip_of_the_generated_data(tmp_path):
  data = synthetic.make_two_streams(**SMALL)
  root = synthetic.two_streams(tmp_path / 'data', **SMALL)
  for subset, count in (('train', 3), ('test', 2)):
    dataset = data[subset]
    assert dataset.classes == synthetic.class_names(11) and len(dataset.videos) == count
    assert dataset.input_dims == {'rgb': 12, 'flow': 8}
    for v in dataset.videos:
      assert 150 <= len(v.labels) <= 250 and v.labels[0] == v.labels[-1] == 0
      assert all(x.shape[0] == len(v.labels) and np.isfinite(x).all() for x in v.features.values())
    assert_same_videos(formats.read_two_streams(root, subset, 1).videos, dataset.videos)


def test_motion_groups_share_motions_and_split_confusable_pairs():
  world = synthetic.make_two_streams_world(
    seed=0,
    num_classes=11,
    rgb_dim=64,
    flow_dim=32,
    num_activities=3,
    rank=8,
    num_motions=3,
    flow_rank=6,
  )
  groups = world.groups
  assert groups[0] == 0 and (groups[1:] > 0).all() and (groups == 0).sum() == 1
  assert np.bincount(groups[1:]).max() >= 3  # flow alone cannot name most classes
  for first, second in synthetic.confusable_pairs(11, 3):
    assert groups[first] != groups[second]
  same = groups[:, None] == groups[None]
  distances = np.linalg.norm(world.flow.prototypes[:, None] - world.flow.prototypes[None], axis=-1)
  assert np.allclose(distances[same], 0) and distances[~same].min() > 1.0
  np.testing.assert_allclose(world.flow.prototypes @ world.burst, 0, atol=1e-9)
  assert world.rgb.activities is world.flow.activities  # one grammar for both streams


@pytest.fixture(scope='module')
def design_data() -> dict[str, formats.MultiStreamDataset]:
  """A small dataset at the default dimensions and noise levels."""
  return synthetic.make_two_streams(seed=0, num_train=12, num_test=6)


def frames(dataset: formats.MultiStreamDataset, stream: str) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, D] of all frames, labels [N]); stream 'concat' joins RGB and flow."""
  streams = ('rgb', 'flow') if stream == 'concat' else (stream,)
  x = np.concatenate([np.concatenate([v.features[s] for s in streams], 1) for v in dataset.videos])
  return x.astype(np.float64), np.concatenate([v.labels for v in dataset.videos])


def nearest_class_mean(train, test, stream: str) -> tuple[np.ndarray, np.ndarray]:
  """(squared distances [N, C] of the test frames to the training class means, labels [N])."""
  x, y = frames(train, stream)
  means = np.stack([x[y == c].mean(0) for c in range(len(train.classes))])
  x_test, y_test = frames(test, stream)
  return ((x_test[:, None] - means[None]) ** 2).sum(-1), y_test


def test_rgb_names_classes_flow_separates_pairs_and_both_beat_either(design_data):
  train, test = design_data['train'], design_data['test']
  chance = 1.0 / len(train.classes)
  accuracy, pair_accuracy = {}, {}
  for stream in ('rgb', 'flow', 'concat'):
    distances, labels = nearest_class_mean(train, test, stream)
    accuracy[stream] = (distances.argmin(1) == labels).mean()
    correct = []
    for first, second in synthetic.confusable_pairs(len(train.classes), 3):
      frames_of_pair = np.isin(labels, [first, second])
      closer = distances[frames_of_pair, first] < distances[frames_of_pair, second]
      correct.append(np.where(closer, first, second) == labels[frames_of_pair])
    pair_accuracy[stream] = np.concatenate(correct).mean()
  assert accuracy['flow'] > 2.5 * chance and accuracy['rgb'] > 4 * chance, accuracy
  assert accuracy['rgb'] > accuracy['flow'] + 0.15, accuracy
  assert accuracy['concat'] > accuracy['rgb'] + 0.05, accuracy
  assert pair_accuracy['rgb'] < 0.6 and pair_accuracy['flow'] > 0.75, pair_accuracy


def test_boundaries_show_in_flow(design_data):
  at_boundary, inside = [], []
  for v in design_data['test'].videos:
    change = np.linalg.norm(np.diff(v.features['flow'], axis=0), axis=1)
    boundary = v.labels[1:] != v.labels[:-1]
    at_boundary.append(change[boundary])
    inside.append(change[~boundary])
  ratio = np.median(np.concatenate(at_boundary)) / np.median(np.concatenate(inside))
  assert ratio > 1.8, ratio


def test_ensure_two_streams_generates_once_and_keys_on_arguments(tmp_path, monkeypatch):
  root = synthetic.ensure_two_streams(tmp_path, seed=1, **SMALL)
  assert root.parent == tmp_path and root.name.startswith('two_streams-')
  assert formats.read_split(root, 'test', 1) == ['test000', 'test001']
  # Defaults filled in: spelling out a default gives the same dataset.
  assert synthetic.ensure_two_streams(tmp_path, seed=1, num_motions=3, **SMALL) == root
  other = synthetic.ensure_two_streams(tmp_path, seed=1, burst_len=2, **SMALL)
  assert other != root
  monkeypatch.setattr(
    'polyseg.data.synthetic.motion.two_streams', lambda *a, **k: pytest.fail('regenerated')
  )
  assert synthetic.ensure_two_streams(tmp_path, seed=1, **SMALL) == root
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted([root.name, other.name])
  assert synthetic.two_streams_cache_name(seed=1, **SMALL) == root.name
  assert synthetic.cache_name(seed=1) != synthetic.two_streams_cache_name(seed=1)


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'num_motions': 1}, 'num_motions must be in'),
    ({'num_motions': 11}, 'num_motions must be in'),
    ({'flow_rank': 8}, 'flow_rank must be in'),
    ({'burst_len': 0}, 'burst_len'),
    ({'rank': 13}, 'rank must be in'),
    ({'min_len': 10, 'max_len': 20}, 'too short'),
  ],
)
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    synthetic.make_two_streams(**{**SMALL, **kwargs})

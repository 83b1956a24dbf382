"""Tests for the referring layout (polyseg.data.formats) and its synthetic generator."""

import json
import pathlib

import numpy as np
import pytest
import scipy.ndimage
from conftest import raises_data_error
from conftest import rejects_text

from polyseg.data import formats
from polyseg.data import synthetic
from polyseg.data.formats import ReferringDataset
from polyseg.data.formats import ReferringSample

CLASSES = ['walk', 'run', 'wave']
DH, DP = 3, 2
TINY = {
  'num_videos': 3,
  'min_len': 60,
  'max_len': 90,
  'holistic_dim': 12,
  'partial_dim': 10,
  'latent_dim': 6,
}


def multi_hot(rows: list[list[int]]) -> np.ndarray:
  """[T, len(CLASSES)] bool from the class ids of each frame."""
  labels = np.zeros((len(rows), len(CLASSES)), bool)
  for t, ids in enumerate(rows):
    labels[t, ids] = True
  return labels


def make_sample(video: str, person: str, rows: list[list[int]], shift: float = 0.0):
  """Sample whose features encode (frame, channel), shifted by `shift`."""
  length = len(rows)
  holistic = np.arange(length * DH, dtype=np.float32).reshape(length, DH) + shift
  partial = -np.arange(length * DP, dtype=np.float32).reshape(length, DP)
  return ReferringSample(
    f'{video}__{person}',
    video,
    person,
    f'the {person} of {video}',
    holistic,
    partial,
    multi_hot(rows),
  )


def make_dataset() -> ReferringDataset:
  """Video a: persons p0, p1 with their own holistic features; video b: person x."""
  return ReferringDataset(
    CLASSES,
    [
      make_sample('a', 'p0', [[0, 2], [], [1], []]),
      make_sample('a', 'p1', [[], [], [0], [0]], shift=100.0),
      make_sample('b', 'x', [[2], [2], []]),
    ],
  )


@pytest.fixture
def root(tmp_path) -> pathlib.Path:
  return formats.write_referring(tmp_path / 'data', make_dataset())


def save_npy(path: pathlib.Path, array: np.ndarray) -> None:
  np.save(path, array, allow_pickle=False)


def assert_same_samples(got: list[ReferringSample], expected: list[ReferringSample]) -> None:
  assert [s.name for s in got] == [s.name for s in expected]
  for g, e in zip(got, expected, strict=True):
    assert (g.video, g.person, g.reference, g.start) == (e.video, e.person, e.reference, e.start)
    np.testing.assert_array_equal(g.holistic, e.holistic)
    np.testing.assert_array_equal(g.partial, e.partial)
    if e.labels is None:
      assert g.labels is None
    else:
      np.testing.assert_array_equal(g.labels, e.labels)


# ------------------------------------------------------------------ round trip


def test_round_trip(root):
  assert sorted(p.name for p in root.iterdir()) == [
    'features_holistic',
    'features_partial',
    'labels',
    'mapping.txt',
    'references.json',
  ]
  assert sorted(p.name for p in (root / 'features_holistic').iterdir()) == [
    'a__p0.npy',
    'a__p1.npy',
    'b.npy',  # one person: the per-video file
  ]
  assert (root / 'labels' / 'a__p0.txt').read_text() == 'walk,wave\n\nrun\n\n'
  assert json.loads((root / 'references.json').read_text()) == {
    'a': {'p0': 'the p0 of a', 'p1': 'the p1 of a'},
    'b': {'x': 'the x of b'},
  }
  on_disk = np.load(root / 'features_partial' / 'a__p1.npy')
  assert on_disk.shape == (DP, 4) and on_disk.dtype == np.float32
  dataset = formats.read_referring(root, classes=CLASSES, holistic_dim=DH, partial_dim=DP)
  assert dataset.classes == CLASSES
  assert (dataset.holistic_dim, dataset.partial_dim) == (DH, DP)
  assert_same_samples(dataset.samples, make_dataset().samples)
  assert dataset.samples[0].labels.dtype == bool and dataset.samples[0].holistic.dtype == np.float32


def test_shared_holistic_is_written_once_per_video(tmp_path):
  first = make_sample('v', 'p0', [[0], [1]])
  second = make_sample('v', 'p1', [[], [2]])  # same holistic array values as `first`
  root = formats.write_referring(tmp_path / 'data', ReferringDataset(CLASSES, [first, second]))
  assert [p.name for p in (root / 'features_holistic').iterdir()] == ['v.npy']
  assert_same_samples(formats.read_referring(root).samples, [first, second])


def test_per_sample_holistic_file_wins_over_per_video_file(root):
  save_npy(root / 'features_holistic' / 'b__x.npy', np.full((DH, 3), 7.0))
  sample = formats.read_referring(root).samples[2]
  np.testing.assert_array_equal(sample.holistic, np.full((3, DH), 7.0))


def test_samples_sorted_by_video_then_person(root):
  (root / 'references.json').write_text(
    '{"b": {"x": "the x of b"}, "a": {"p1": "the p1 of a", "p0": "the p0 of a"}}'
  )
  assert [s.name for s in formats.read_referring(root).samples] == ['a__p0', 'a__p1', 'b__x']


def test_unlabelled_data_reads_no_labels(root):
  for path in (root / 'labels').iterdir():
    path.unlink()
  (root / 'mapping.txt').unlink()
  dataset = formats.read_referring(root, classes=CLASSES, labels=False)
  assert dataset.classes == CLASSES and all(s.labels is None for s in dataset.samples)
  with raises_data_error(f'{root / "mapping.txt"}: class mapping file not found'):
    formats.read_referring(root, labels=False)


def test_classes_differ_from_mapping(root):
  with raises_data_error(f'{root / "mapping.txt"}: classes'):
    formats.read_referring(root, classes=['run', 'walk', 'wave'])


# ---------------------------------------------------------------- label files


@pytest.mark.parametrize(
  'data, rows',
  [
    (b'walk\nrun\n', [[0], [1]]),
    (b'walk\nrun', [[0], [1]]),  # no final newline
    (b'walk\n\n\n', [[0], [], []]),  # trailing empty lines are frames
    (b'\n', [[]]),
    (b' run , walk \n\nwave,walk,run\n', [[0, 1], [], [0, 1, 2]]),
    (b'walk,run\r\n\r\nwave\r\n', [[0, 1], [], [2]]),  # Windows line ends
  ],
)
def test_label_parsing(tmp_path, data, rows):
  path = tmp_path / 'labels.txt'
  path.write_bytes(data)
  np.testing.assert_array_equal(formats.read_multilabels(path, CLASSES), multi_hot(rows))


@pytest.mark.parametrize(
  'data, message',
  [
    (b'', ': empty label file (T = 0 frames)'),
    (b'walk\n\njump\n', ":3: label 'jump' is not in the class mapping"),
    (b'walk\nrun, walk , run\n', ":2: label 'run' appears twice on the line"),
    (b'walk,,run\n', ":1: empty label name in 'walk,,run'"),
    (b'walk\nrun\nw\xe4ve\n', ':3: not valid UTF-8'),
  ],
)
def test_bad_label_file(tmp_path, data, message):
  path = tmp_path / 'labels.txt'
  path.write_bytes(data)
  with raises_data_error(f'{path}{message}'):
    formats.read_multilabels(path, CLASSES)


def test_label_errors_through_the_reader(root):
  path = root / 'labels' / 'a__p1.txt'
  path.write_text('\n\nrun\n\n\n')
  with raises_data_error(
    f'{path}: 5 label lines but {root / "features_partial" / "a__p1.npy"} has 4 frames'
  ):
    formats.read_referring(root)
  path.write_text('\n\nrun\nclap\n')
  with raises_data_error(f"{path}:4: label 'clap' is not in the class mapping"):
    formats.read_referring(root)
  path.unlink()
  with raises_data_error(f'{path}: label file not found'):
    formats.read_referring(root)


# ------------------------------------------------------------ references.json


@pytest.mark.parametrize(
  'text, message',
  [
    ('{"a": {"p0": "x"},\n "b" {}}', ':2: not valid JSON'),
    ('["a"]', ': expected a non-empty object'),
    ('{}', ': expected a non-empty object'),
    ('{"a": "the man"}', ": video 'a': expected a non-empty object"),
    ('{"a": {}}', ": video 'a': expected a non-empty object"),
    ('{"a": {"p0": "  "}}', ": video 'a', person 'p0': reference must be non-empty text"),
    ('{"a": {"p0": 3}}', ": video 'a', person 'p0': reference must be non-empty text"),
    ('{"a": {"p__0": "x"}}', ": person id 'p__0' contains '__'"),
    ('{"a/b": {"p0": "x"}}', ": video id 'a/b' cannot be part of a file name"),
    ('{"": {"p0": "x"}}', ": video id '' must be a non-empty string"),
    ('{"a": {"p0": "x", "p0": "y"}}', ": duplicate key 'p0'"),
  ],
)
def test_bad_references(root, text, message):
  rejects_text(root / 'references.json', text, message, lambda: formats.read_referring(root))


def test_references_missing_or_not_utf8(root):
  path = root / 'references.json'
  path.write_bytes(b'{"a":\n {"p0": "the m\xe4n"}}')
  with raises_data_error(f'{path}:2: not valid UTF-8'):
    formats.read_referring(root)
  path.unlink()
  with raises_data_error(f'{path}: references file not found'):
    formats.read_referring(root)


# -------------------------------------------------------------- feature files


def test_missing_holistic_names_both_candidates(root):
  (root / 'features_holistic' / 'b.npy').unlink()
  folder = root / 'features_holistic'
  with raises_data_error(
    f'{folder / "b__x.npy"}: holistic feature file not found (also tried {folder / "b.npy"})'
  ):
    formats.read_referring(root)


def test_missing_partial(root):
  path = root / 'features_partial' / 'a__p0.npy'
  path.unlink()
  with raises_data_error(f'{path}: feature file not found'):
    formats.read_referring(root)


def test_holistic_and_partial_lengths_differ(root):
  path = root / 'features_partial' / 'b__x.npy'
  save_npy(path, np.zeros((DP, 4), np.float32))
  with raises_data_error(
    f'{path}: 4 frames but {root / "features_holistic" / "b.npy"} has 3 frames'
  ):
    formats.read_referring(root)


@pytest.mark.parametrize(
  'array, message',
  [
    (np.zeros((DP, 4, 1), np.float32), 'features must have rank 2 [D, T]'),
    (np.full((DP, 4), 'x'), 'features must be numeric'),
    (np.array([[0.0, 1.0, np.nan, 0.0], [0.0] * 4]), 'non-finite feature value'),
    (np.zeros((DP, 0), np.float32), 'empty video (T = 0 frames'),
  ],
)
def test_bad_partial_array(root, array, message):
  path = root / 'features_partial' / 'a__p1.npy'
  save_npy(path, array)
  with raises_data_error(f'{path}: {message}'):
    formats.read_referring(root)


def test_bad_holistic_array(root):
  path = root / 'features_holistic' / 'b.npy'
  save_npy(path, np.array([[np.inf, 0.0, 0.0]] * DH))
  with raises_data_error(f'{path}: non-finite feature value'):
    formats.read_referring(root)


def test_dims_differ_across_files(root):
  holistic = root / 'features_holistic' / 'b.npy'
  save_npy(holistic, np.zeros((DH + 1, 3), np.float32))
  with raises_data_error(
    f'{holistic}: feature dimension D = {DH + 1} differs from D = {DH} of '
    f'{root / "features_holistic" / "a__p0.npy"}'
  ):
    formats.read_referring(root)
  with raises_data_error(f'{root / "features_holistic" / "a__p0.npy"}: feature dimension D = {DH}'):
    formats.read_referring(root, holistic_dim=DH + 1)
  save_npy(holistic, np.zeros((DH, 3), np.float32))
  partial = root / 'features_partial' / 'a__p1.npy'
  save_npy(partial, np.zeros((DP + 2, 4), np.float32))
  with raises_data_error(f'{partial}: feature dimension D = {DP + 2} differs from D = {DP}'):
    formats.read_referring(root)
  with raises_data_error(f'!= input_dim {DP + 1}'):
    formats.read_referring(root, partial_dim=DP + 1)


def test_empty_dataset_has_no_dims():
  with raises_data_error('no samples'):
    _ = ReferringDataset(CLASSES, []).holistic_dim


# -------------------------------------------------------------------- writer


@pytest.mark.parametrize(
  'change, message',
  [
    ({'labels': None}, "sample 'a__p0' has no labels"),
    ({'name': 'a__p0@0'}, 'is not a full-length sample'),
    ({'start': 2}, 'is not a full-length sample'),
    ({'reference': ' '}, 'has an empty reference'),
    ({'labels': np.zeros((4, 2), bool)}, 'do not fit [T, Dh], [T, Dp], [T, 3]'),
    ({'name': 'a__p1', 'person': 'p1'}, "sample 'a__p1' appears twice"),
  ],
)
def test_write_rejects_bad_samples(tmp_path, change, message):
  dataset = make_dataset()
  dataset.samples[0] = ReferringSample(**{**vars(dataset.samples[0]), **change})
  with raises_data_error(message):
    formats.write_referring(tmp_path / 'data', dataset)
  assert list(tmp_path.iterdir()) == []


def test_write_rejects_unwritable_class_names_and_overwrites(tmp_path, root):
  dataset = make_dataset()
  dataset.classes = ['walk', 'run,fast', 'wave']
  with raises_data_error("class name 'run,fast' cannot be written"):
    formats.write_referring(tmp_path / 'new', dataset)
  with raises_data_error(f'{root}: already exists'):
    formats.write_referring(root, make_dataset())
  with pytest.raises(ValueError, match='protocol must be one of'):
    formats.write_referring(tmp_path / 'new', make_dataset(), splits={'cross': {}})
  with raises_data_error("split subset must be one of ('train', 'val', 'test'), got 'dev'"):
    formats.write_referring(tmp_path / 'new', make_dataset(), splits={'random': {'dev': []}})


def test_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
  calls = []

  def failing_save(path, features):
    calls.append(path)
    if len(calls) == 3:
      raise OSError('disk full')

  monkeypatch.setattr('polyseg.data.formats.base.save_features', failing_save)
  with pytest.raises(OSError, match='disk full'):
    formats.write_referring(tmp_path / 'data', make_dataset())
  assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- windowing


def long_sample(length: int, start: int = 0) -> ReferringSample:
  sample = make_sample('v', 'p', [[t % 3] for t in range(length)])
  sample.start = start
  return sample


@pytest.mark.parametrize(
  'length, bounds',
  [
    (16, [(0, 8), (8, 16)]),  # exact multiple
    (17, [(0, 8), (8, 17)]),  # remainder 1 < 8 // 4 joins the previous window
    (18, [(0, 8), (8, 16), (16, 18)]),  # remainder 2 = 8 // 4 is its own window
    (25, [(0, 8), (8, 16), (16, 25)]),
  ],
)
def test_window_samples(length, bounds):
  sample = long_sample(length)
  windows = formats.window_samples([sample], 8)
  assert [(w.start, w.start + len(w.partial)) for w in windows] == bounds
  assert [w.name for w in windows] == [f'v__p@{begin}' for begin, _ in bounds]
  for window, (begin, end) in zip(windows, bounds, strict=True):
    assert (window.video, window.person, window.reference) == ('v', 'p', 'the p of v')
    np.testing.assert_array_equal(window.holistic, sample.holistic[begin:end])
    np.testing.assert_array_equal(window.partial, sample.partial[begin:end])
    np.testing.assert_array_equal(window.labels, sample.labels[begin:end])


def test_window_samples_keeps_short_samples_and_offsets_starts():
  short, exact = long_sample(5), long_sample(8)
  kept = formats.window_samples([short, exact], 8)
  assert len(kept) == 2 and kept[0] is short and kept[1] is exact
  assert formats.window_samples([short, exact], None) == [short, exact]  # same objects
  assert formats.window_samples([short], 0)[0] is short
  window = formats.window_samples([long_sample(20, start=100)], 10)[1]
  assert (window.name, window.start) == ('v__p@110', 110)
  unlabelled = long_sample(20)
  unlabelled.labels = None
  assert all(w.labels is None for w in formats.window_samples([unlabelled], 10))
  with pytest.raises(ValueError, match='sample_frames'):
    formats.window_samples([short], -1)


# -------------------------------------------------------------------- splits


def split_samples() -> list[ReferringSample]:
  """Videos v0..v5 with 1, 2, 1, 3, 1, 2 persons; lengths 3 frames."""
  return [
    make_sample(f'v{v}', f'p{p}', [[0], [1], [2]])
    for v, count in enumerate([1, 2, 1, 3, 1, 2])
    for p in range(count)
  ]


def names(subsets: dict[str, list[ReferringSample]]) -> dict[str, list[str]]:
  return {subset: [s.name for s in samples] for subset, samples in subsets.items()}


def test_cross_video_split_keeps_videos_whole_and_is_seeded():
  samples = split_samples()
  subsets = formats.split_referring(None, samples, 'cross_video', seed=0)
  assert list(subsets) == ['train', 'val', 'test']
  assert all(subsets.values())
  videos = [{s.video for s in members} for members in subsets.values()]
  assert sum(len(v) for v in videos) == len(set.union(*videos)) == 6  # each video in one subset
  for members in subsets.values():
    for sample in members:  # all samples of the video come along
      assert sum(s.video == sample.video for s in members) == sum(
        s.video == sample.video for s in samples
      )
  # Input order is kept inside a subset, and the partition ignores the input order.
  order = [s.name for s in samples]
  assert all(
    [order.index(n) for n in subset] == sorted(order.index(n) for n in subset)
    for subset in names(subsets).values()
  )
  assert names(formats.split_referring(None, samples[::-1], 'cross_video', seed=0)) == {
    k: v[::-1] for k, v in names(subsets).items()
  }
  assert names(formats.split_referring(None, samples, 'cross_video', seed=0)) == names(subsets)
  others = [names(formats.split_referring(None, samples, 'cross_video', seed=s)) for s in range(8)]
  assert any(other != names(subsets) for other in others)


def test_random_split_covers_windows_once():
  samples = formats.window_samples(split_samples() + [long_sample(40)], 10)
  subsets = formats.split_referring(None, samples, 'random', seed=3, fractions=(0.5, 0.25, 0.25))
  split_names = [n for members in names(subsets).values() for n in members]
  assert sorted(split_names) == sorted(s.name for s in samples)
  assert [len(m) for m in subsets.values()] == [6, 4, 4]  # 14 units, round(3.5) = 4


def test_split_needs_three_units_and_valid_arguments():
  samples = split_samples()[:3]  # videos v0 and v1
  with raises_data_error('split_referring: no split files, and 2 videos cannot be split'):
    formats.split_referring(None, samples, 'cross_video', seed=0)
  assert [len(m) for m in formats.split_referring(None, samples, 'random', 0).values()] == [1, 1, 1]
  with pytest.raises(ValueError, match='protocol must be one of'):
    formats.split_referring(None, samples, 'cross_subject', seed=0)
  with pytest.raises(ValueError, match='fractions'):
    formats.split_referring(None, samples, 'random', seed=0, fractions=(1.0, 0.0, 0.0))
  with pytest.raises(ValueError, match="'v0__p0' appears twice"):
    formats.split_referring(None, samples + samples[:1], 'random', seed=0)


def test_split_files_decide(tmp_path):
  samples = split_samples()
  splits = {'cross_video': {'train': ['v0', 'v3', 'v5'], 'val': ['v1'], 'test': ['v2', 'v4']}}
  root = formats.write_referring(tmp_path / 'data', ReferringDataset(CLASSES, samples), splits)
  assert (root / 'splits' / 'cross_video' / 'val.txt').read_text() == 'v1\n'
  subsets = formats.split_referring(root, samples, 'cross_video', seed=0)
  assert names(subsets) == {
    'train': ['v0__p0', 'v3__p0', 'v3__p1', 'v3__p2', 'v5__p0', 'v5__p1'],
    'val': ['v1__p0', 'v1__p1'],
    'test': ['v2__p0', 'v4__p0'],
  }
  # No files for the other protocol: seeded partition.
  assert names(formats.split_referring(root, samples, 'random', 0)) == names(
    formats.split_referring(None, samples, 'random', 0)
  )


@pytest.mark.parametrize(
  'files, where, message',
  [
    ({'train': 'v0\nv1\n\nv7\n'}, 'cross_video/train.txt:4', "unknown video 'v7'"),
    ({'train': 'v0\nv1\nv0\n'}, 'cross_video/train.txt:3', "video 'v0' is already listed at"),
    ({'test': 'v2\nv1\n'}, 'cross_video/test.txt:2', "video 'v1' is already listed at"),
    ({'test': 'v2\n'}, 'cross_video', '1 videos in no subset'),
  ],
)
def test_bad_split_files(tmp_path, files, where, message):
  folder = tmp_path / 'splits' / 'cross_video'
  folder.mkdir(parents=True)
  contents = {'train': 'v0\nv1\n', 'val': 'v3\nv5\n', 'test': 'v2\nv4\n', **files}
  for subset, text in contents.items():
    (folder / f'{subset}.txt').write_text(text)
  with raises_data_error(f'{tmp_path / "splits" / where}: {message}'):
    formats.split_referring(tmp_path, split_samples(), 'cross_video', seed=0)


def test_missing_split_file(tmp_path):
  folder = tmp_path / 'splits' / 'random'
  folder.mkdir(parents=True)
  (folder / 'train.txt').write_text('v0__p0\n')
  with raises_data_error(f'{folder / "val.txt"}: split file not found'):
    formats.split_referring(tmp_path, split_samples(), 'random', seed=0)


# ----------------------------------------------------------------- generator


def test_generator_is_deterministic(tmp_path):
  first, again = synthetic.make_referring(seed=1, **TINY), synthetic.make_referring(seed=1, **TINY)
  other = synthetic.make_referring(seed=2, **TINY)
  assert_same_samples(first.samples, again.samples)
  assert not np.array_equal(first.samples[0].holistic, other.samples[0].holistic)
  assert not np.array_equal(first.samples[0].labels, other.samples[0].labels)
  root = synthetic.referring(tmp_path / 'data', seed=1, **TINY)
  assert_same_samples(formats.read_referring(root).samples, first.samples)


def test_generator_shapes_and_texts():
  dataset = synthetic.make_referring(seed=0, **TINY)
  assert dataset.classes == list(synthetic.REFERRING_CLASSES) and len(dataset.classes) == 10
  assert (dataset.holistic_dim, dataset.partial_dim) == (12, 10)
  videos = sorted({s.video for s in dataset.samples})
  assert videos == ['video000', 'video001', 'video002']
  assert [s.name for s in dataset.samples] == sorted(s.name for s in dataset.samples)
  for video in videos:
    samples = [s for s in dataset.samples if s.video == video]
    assert 2 <= len(samples) <= 4
    assert len({s.reference for s in samples}) == len(samples)  # texts tell persons apart
    assert len({len(s.partial) for s in samples}) == 1
  for sample in dataset.samples:
    assert 60 <= len(sample.partial) <= 90 and sample.name == f'{sample.video}__{sample.person}'
    assert sample.holistic.dtype == sample.partial.dtype == np.float32
    assert sample.labels.shape == (len(sample.partial), 10) and sample.labels.dtype == bool


def test_latent_space_larger_than_the_features():
  dataset = synthetic.make_referring(
    num_videos=1, min_len=40, max_len=40, holistic_dim=5, partial_dim=4
  )
  assert (dataset.holistic_dim, dataset.partial_dim) == (5, 4)  # latent_dim 16 > 5, 4
  world = synthetic.make_referring_world(seed=0, latent_dim=16, holistic_dim=5, partial_dim=4)
  np.testing.assert_allclose(
    world.partial_projection.T @ world.partial_projection, np.eye(4), atol=1e-12
  )
  world = synthetic.make_referring_world(seed=0, latent_dim=4, holistic_dim=5, partial_dim=4)
  np.testing.assert_allclose(
    world.holistic_projection @ world.holistic_projection.T, np.eye(4), atol=1e-12
  )


def video_persons(seed: int, length: int = 400, **kwargs):
  """(world, persons, samples) of one generated video."""
  world = synthetic.make_referring_world(seed=seed, latent_dim=8, holistic_dim=16, partial_dim=12)
  options = {
    'cross_modal': True,
    'noise_std': 1.0,
    'partial_noise_std': 1.2,
    'ar_coef': 0.7,
    'match_beta': 1.0,
    'detection_failure': 0.1,
  }
  rng = np.random.default_rng(seed)
  persons, samples = synthetic.sample_referring_video(
    rng, world, 'v', length, **{**options, **kwargs}
  )
  return world, persons, samples


def test_multi_label_statistics():
  present_frames, activity_frames, failures = 0, 0, 0
  for seed in range(4):
    _, persons, _ = video_persons(seed)
    for person in persons:
      labels, present = person.labels, person.present
      assert not labels[~present].any()  # absent: no label
      assert (labels[present, :4].sum(1) == 1).all()  # present: exactly one pose
      assert (labels[:, 4:].sum(1) <= 1).all()  # at most one activity
      assert 0.45 <= present.mean() <= 0.95 and not person.detected[~present].any()
      present_frames += present.sum()
      activity_frames += labels[:, 4:].any(1).sum()
      failures += (present & ~person.detected).sum()
      segments = np.flatnonzero(np.diff(present.astype(int)) == 1).size + present[0]
      assert 1 <= segments <= 2
    assert len({tuple(p.attributes.values()) for p in persons}) == len(persons)
  assert 0.2 < activity_frames / present_frames < 0.6
  assert 0.08 <= failures / present_frames <= 0.15


def dominant_frequency(world, name: str, length: int = 960) -> float:
  """Peak frequency (cycles per frame) of the oscillation of class `name` along its direction."""
  c = world.classes.index(name)
  labels = np.zeros((length, len(world.classes)), bool)
  labels[:, c] = True
  signal = synthetic.oscillations(np.random.default_rng(0), world, labels) @ world.directions[c]
  spectrum = np.abs(np.fft.rfft(signal - signal.mean()))
  return float(np.fft.rfftfreq(length)[np.argmax(spectrum)])


def test_confusable_pairs_share_prototypes_but_not_frequencies():
  world = synthetic.make_referring_world(seed=0, latent_dim=8, holistic_dim=16, partial_dim=12)
  index = world.classes.index
  distances = np.linalg.norm(world.prototypes[:, None] - world.prototypes[None], axis=-1)
  for first, second in [('walk', 'run'), ('wave', 'clap')]:
    i, j = index(first), index(second)
    others = np.delete(distances[i], [i, j])
    assert distances[i, j] < 0.1 * others.min()
    np.testing.assert_array_equal(world.directions[i], world.directions[j])
  for name, frequency in [('walk', 1 / 16), ('run', 1 / 6), ('wave', 1 / 10), ('clap', 1 / 4)]:
    assert abs(dominant_frequency(world, name) - frequency) < 0.1 * frequency, name
  assert not world.directions[index('sit')].any()  # not periodic


def test_partial_features_vanish_when_absent_or_undetected():
  world, persons, samples = video_persons(1, partial_noise_std=0.0)
  for person, sample in zip(persons, samples, strict=True):
    assert not sample.partial[~person.detected].any()
    assert (np.abs(sample.partial[person.detected]).sum(1) > 0).all()
    np.testing.assert_allclose(
      sample.partial[person.detected],
      person.state[person.detected] @ world.partial_projection,
      rtol=1e-5,
      atol=1e-5,
    )


def test_hard_per_frame_but_temporal_and_frequency_cues_pay_off():
  dataset = synthetic.make_referring(seed=0, num_videos=12)
  world = synthetic.make_referring_world(seed=0, latent_dim=16, holistic_dim=48, partial_dim=32)
  walk, run = world.classes.index('walk'), world.classes.index('run')
  direction = world.directions[walk] @ world.partial_projection  # shared by walk and run, [Dp]

  def frames(samples, smooth):
    """Features [N, Dp] averaged over `smooth` frames, labels [N, C], motion power [N]."""
    features = [scipy.ndimage.uniform_filter1d(s.partial, smooth, axis=0) for s in samples]
    motion = [np.diff(s.partial @ direction, prepend=0.0) ** 2 for s in samples]
    motion = [scipy.ndimage.uniform_filter1d(m, 15) for m in motion]
    return [np.concatenate(x) for x in (features, [s.labels for s in samples], motion)]

  def with_bias(features):
    return np.c_[features, np.ones(len(features))]

  train, test = dataset.samples[::2], dataset.samples[1::2]
  pose_accuracy = {}
  for smooth in (1, 15):
    features, labels, _ = frames(train, smooth)
    weights = np.linalg.lstsq(with_bias(features), labels[:, :4], rcond=None)[0]
    features, labels, _ = frames(test, smooth)
    predicted = (with_bias(features) @ weights).argmax(1)
    present = labels[:, :4].any(1)
    merged = np.minimum(predicted, walk) == np.minimum(labels[:, :4].argmax(1), walk)
    pose_accuracy[smooth] = merged[present].mean()  # walk and run counted as one class
    moving = labels[:, walk] | labels[:, run]
    walk_or_run = ((predicted[moving] == run) == labels[moving, run]).mean()
    assert walk_or_run < 0.6, (smooth, walk_or_run)  # same prototype: linear models are at chance
  assert pose_accuracy[1] < 0.8 and pose_accuracy[15] > pose_accuracy[1] + 0.07, pose_accuracy
  # The frequency (here the power of the temporal derivative along the oscillation) separates them.
  _, labels, motion = frames(train, 1)
  threshold = np.median(motion[labels[:, walk] | labels[:, run]])
  _, labels, motion = frames(test, 1)
  moving = labels[:, walk] | labels[:, run]
  assert ((motion[moving] > threshold) == labels[moving, run]).mean() > 0.75


def correlation(a: np.ndarray, b: np.ndarray) -> float:
  a, b = a - a.mean(0), b - b.mean(0)
  return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_holistic_weighting_favours_the_target():
  wins = total = 0
  for seed in range(6):
    world, persons, samples = video_persons(seed)
    for i, sample in enumerate(samples):
      for j, other in enumerate(persons):
        both = persons[i].present & other.present
        if j == i or both.sum() < 50:
          continue
        target_corr = correlation(
          sample.holistic[both], persons[i].state[both] @ world.holistic_projection
        )
        other_corr = correlation(
          sample.holistic[both], other.state[both] @ world.holistic_projection
        )
        wins += target_corr > other_corr
        total += 1
  assert total >= 10 and wins / total > 0.9, (wins, total)


def test_holistic_weights_by_hand():
  def person(noun, colour, present):
    attributes = {'noun': noun, 'colour': colour, 'garment': 'hat', 'position': 'left'}
    return synthetic.Person('p', attributes, '', None, np.array(present), None, None)

  persons = [
    person('man', 'red', [1, 0, 0, 1]),  # the target
    person('man', 'blue', [1, 1, 0, 0]),  # shares 3 attributes
    person('girl', 'blue', [1, 1, 0, 1]),  # shares 2
  ]
  e = np.exp
  expected = [
    [e(4), e(3), e(2)] / (e(4) + e(3) + e(2)),
    [0, e(3), e(2)] / (e(3) + e(2)),  # target absent: only the others
    [0, 0, 0],
    [e(4), 0, e(2)] / (e(4) + e(2)),
  ]
  np.testing.assert_allclose(synthetic.holistic_weights(persons, 0, 1.0), expected)
  uniform = [[1 / 3] * 3, [0, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0.5]]
  np.testing.assert_allclose(synthetic.holistic_weights(persons, None, 1.0), uniform)


def test_holistic_features_are_the_weighted_mixture():
  world, persons, samples = video_persons(2, noise_std=0.0)
  _, _, without_text = video_persons(2, noise_std=0.0, cross_modal=False)
  states = np.stack([p.state for p in persons], 1)  # [T, N, S]

  def mixture(target):
    weights = synthetic.holistic_weights(persons, target, 1.0)
    return np.einsum('tn,tns->ts', weights, states) @ world.holistic_projection

  scene = samples[0].holistic - mixture(0)
  np.testing.assert_allclose(scene, np.broadcast_to(scene[0], scene.shape), atol=1e-4)  # offset
  for i, sample in enumerate(samples):
    np.testing.assert_allclose(sample.holistic, mixture(i) + scene[0], atol=1e-4)
  # Without text: one array shared by all persons of the video, the uniform mixture.
  assert all(s.holistic is without_text[0].holistic for s in without_text)
  np.testing.assert_allclose(without_text[0].holistic, mixture(None) + scene[0], atol=1e-4)
  # While the target is absent, the others' actions leak in.
  others = np.stack([p.present for p in persons[1:]], 1).any(1)
  gone = ~persons[0].present & others
  assert gone.any() and (np.abs(samples[0].holistic[gone] - scene[0]).sum(1) > 1e-2).all()


def test_without_text_one_holistic_file_per_video(tmp_path):
  root = synthetic.referring(tmp_path / 'data', cross_modal=False, **TINY)
  assert sorted(p.name for p in (root / 'features_holistic').iterdir()) == [
    'video000.npy',
    'video001.npy',
    'video002.npy',
  ]
  assert len(formats.read_referring(root).samples) == len(list((root / 'labels').iterdir()))


def test_ensure_referring_caches(tmp_path, monkeypatch):
  root = synthetic.ensure_referring(tmp_path, seed=1, **TINY)
  assert root.parent == tmp_path and root.name.startswith('referring-')
  assert synthetic.ensure_referring(tmp_path, seed=1, match_beta=1.0, **TINY) == root
  assert synthetic.ensure_referring(tmp_path, seed=2, **TINY) != root
  assert root.name != synthetic.cache_name()  # single-stream caches live under another name
  monkeypatch.setattr(
    'polyseg.data.synthetic.people.referring', lambda *a, **k: pytest.fail('regenerated')
  )
  assert synthetic.ensure_referring(tmp_path, seed=1, **TINY) == root
  assert len(formats.read_referring(root).samples) >= 6
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
    [root.name, synthetic.referring_cache_name(seed=2, **TINY)]
  )


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'num_videos': 0}, 'num_videos'),
    ({'min_len': 90, 'max_len': 60}, 'min_len'),
    ({'latent_dim': 0}, 'latent_dim'),
    ({'partial_dim': 0}, 'partial_dim'),
    ({'detection_failure': 1.0}, 'detection_failure'),
    ({'ar_coef': 1.0}, 'ar_coef'),
  ],
)
def test_bad_generator_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    synthetic.make_referring(**{**TINY, **kwargs})

"""Tests for polyseg.data.formats: round trip, every validation error, atomic writers."""

import os
import pathlib
import pickle

import numpy as np
import pytest
from conftest import raises_data_error
from conftest import rejects_text

from polyseg.data import formats
from polyseg.data.formats import DataError
from polyseg.data.formats import base

CLASSES = ['background', 'cut', 'pour']
DIM = 4


def make_video(name: str, label_ids: list[int], dim: int = DIM) -> formats.Video:
  """Video whose features encode (frame, channel)."""
  length = len(label_ids)
  features = np.arange(length * dim, dtype=np.float32).reshape(length, dim)
  return formats.Video(name, features, np.asarray(label_ids, np.int32))


@pytest.fixture
def root(tmp_path) -> pathlib.Path:
  """A valid tiny dataset: train = a, b; test = c."""
  train = formats.Dataset(CLASSES, [make_video('a', [0, 0, 1, 1, 2]), make_video('b', [0, 2, 2])])
  test = formats.Dataset(CLASSES, [make_video('c', [1, 1, 0, 0])])
  return formats.write_single_stream(tmp_path / 'data', {'train': train, 'test': test})


def save_npy(path: pathlib.Path, array: np.ndarray) -> None:
  np.save(path, array, allow_pickle=False)


def read_train(root, **kwargs) -> formats.Dataset:
  return formats.read_single_stream(root, 'train', 1, **kwargs)


# ------------------------------------------------------------------ round trip


def test_round_trip(root):
  assert sorted(p.name for p in root.iterdir()) == [
    'features',
    'groundTruth',
    'mapping.txt',
    'splits',
  ]
  assert (root / 'mapping.txt').read_text() == '0 background\n1 cut\n2 pour\n'
  assert (root / 'splits' / 'train.split1.bundle').read_text() == 'a.txt\nb.txt\n'
  assert (root / 'groundTruth' / 'b.txt').read_text() == 'background\npour\npour\n'
  on_disk = np.load(root / 'features' / 'a.npy')
  assert on_disk.shape == (DIM, 5) and on_disk.dtype == np.float32
  train, test = (
    read_train(root, classes=CLASSES, input_dim=DIM),
    formats.read_single_stream(root, 'test', 1),
  )
  assert train.classes == CLASSES and train.input_dim == DIM
  assert [v.name for v in train.videos] == ['a', 'b'] and [v.name for v in test.videos] == ['c']
  expected = make_video('a', [0, 0, 1, 1, 2])
  got = train.videos[0]
  assert got.features.dtype == np.float32 and got.labels.dtype == np.int32
  np.testing.assert_array_equal(got.features, expected.features)
  np.testing.assert_array_equal(got.labels, expected.labels)


def test_split_entries_with_or_without_txt_and_blank_lines(root):
  (root / 'splits' / 'train.split2.bundle').write_text('a\n\nb.txt\n\n')
  assert formats.read_split(root, 'train', 2) == ['a', 'b']


def test_features_any_numeric_dtype_become_float32(tmp_path):
  path = tmp_path / 'int.npy'
  save_npy(path, np.array([[1, 2, 3], [4, 5, 6]], np.int16))  # [D=2, T=3]
  features = formats.read_features(path, input_dim=2)
  assert features.dtype == np.float32
  np.testing.assert_array_equal(features, [[1, 4], [2, 5], [3, 6]])


def test_label_lines_are_stripped(tmp_path):
  path = tmp_path / 'crlf.txt'
  path.write_bytes(b'cut\r\npour \r\n\n')
  np.testing.assert_array_equal(formats.read_labels(path, CLASSES), [1, 2])


def test_read_feature_folder(tmp_path):
  save_npy(tmp_path / 'z.npy', np.zeros((DIM, 3), np.float32))
  save_npy(tmp_path / 'y.npy', np.ones((DIM, 2), np.float64))
  (tmp_path / 'notes.txt').write_text('ignored')
  loaded = formats.read_feature_folder(tmp_path, input_dim=DIM)
  assert [name for name, _ in loaded] == ['y', 'z']
  assert [f.shape for _, f in loaded] == [(2, DIM), (3, DIM)]
  assert all(f.dtype == np.float32 for _, f in loaded)


# -------------------------------------------------------------------- errors


def test_data_error_is_value_error():
  assert issubclass(DataError, ValueError)


def test_missing_feature_file(root):
  os.remove(root / 'features' / 'b.npy')
  with raises_data_error(f'{root / "features" / "b.npy"}: feature file not found'):
    read_train(root)


def test_missing_label_file(root):
  os.remove(root / 'groundTruth' / 'a.txt')
  with raises_data_error(f'{root / "groundTruth" / "a.txt"}: label file not found'):
    read_train(root)


def test_missing_mapping(root):
  os.remove(root / 'mapping.txt')
  with raises_data_error(f'{root / "mapping.txt"}: class mapping file not found'):
    read_train(root)


def test_missing_split(root):
  with raises_data_error(f'{root / "splits" / "train.split3.bundle"}: split file not found'):
    formats.read_single_stream(root, 'train', 3)


def test_empty_split(root):
  path = root / 'splits' / 'train.split1.bundle'
  rejects_text(path, '\n\n', ': split lists no videos', lambda: read_train(root))


def test_duplicate_video_in_split(root):
  path = root / 'splits' / 'train.split1.bundle'
  message = ":3: duplicate video 'a' (first listed on line 1)"
  rejects_text(path, 'a.txt\nb.txt\na\n', message, lambda: read_train(root))


def test_label_length_differs_from_feature_length(root):
  (root / 'groundTruth' / 'b.txt').write_text('background\npour\n')
  with raises_data_error(
    f'{root / "groundTruth" / "b.txt"}: 2 labels but {root / "features" / "b.npy"} has 3 frames'
  ):
    read_train(root)


def test_label_not_in_mapping(root):
  (root / 'groundTruth' / 'a.txt').write_text('background\nbackground\ncut\nstir\npour\n')
  with raises_data_error(
    f"{root / 'groundTruth' / 'a.txt'}:4: label 'stir' is not in the class mapping"
  ):
    read_train(root)


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf, 1e39])
def test_non_finite_features(root, bad):
  path = root / 'features' / 'a.npy'
  features = np.zeros((DIM, 5), np.float64)
  features[2, 3] = bad  # channel 2, frame 3
  features[0, 4] = bad
  save_npy(path, features)
  with raises_data_error(f'{path}: non-finite feature value'):
    read_train(root)
  with raises_data_error('at frame 3 (2 bad frames)'):
    read_train(root)


def test_empty_feature_file(root):
  path = root / 'features' / 'a.npy'
  save_npy(path, np.zeros((DIM, 0), np.float32))
  with raises_data_error(f'{path}: empty video (T = 0 frames'):
    read_train(root)


def test_empty_label_file(root):
  path = root / 'groundTruth' / 'a.txt'
  rejects_text(path, '\n', ': empty label file (T = 0 frames)', lambda: read_train(root))


@pytest.mark.parametrize('shape', [(20,), (DIM, 5, 1), ()])
def test_wrong_rank(root, shape):
  path = root / 'features' / 'a.npy'
  save_npy(path, np.zeros(shape, np.float32))
  with raises_data_error(f'{path}: features must have rank 2 [D, T], got shape {shape}'):
    read_train(root)


@pytest.mark.parametrize(
  'array', [np.full((DIM, 5), 'x'), np.zeros((DIM, 5), bool), np.zeros((DIM, 5), np.complex64)]
)
def test_non_numeric_dtype(root, array):
  path = root / 'features' / 'a.npy'
  save_npy(path, array)
  with raises_data_error(
    f'{path}: features must be numeric (int or float), got dtype {array.dtype}'
  ):
    read_train(root)


def test_feature_dim_differs_from_input_dim(root):
  with raises_data_error(f'{root / "features" / "a.npy"}: feature dimension D = {DIM}'):
    read_train(root, input_dim=DIM + 1)
  with raises_data_error(f'!= input_dim {DIM + 1}'):
    formats.read_feature_folder(root / 'features', input_dim=DIM + 1)


def test_inconsistent_feature_dim(root):
  path = root / 'features' / 'b.npy'
  save_npy(path, np.zeros((DIM + 2, 3), np.float32))
  message = (
    f'{path}: feature dimension D = {DIM + 2} differs from D = {DIM} of '
    f'{root / "features" / "a.npy"}'
  )
  with raises_data_error(message):
    read_train(root)
  with raises_data_error(message):
    formats.read_feature_folder(root / 'features')


def test_non_utf8_label_file(root):
  path = root / 'groundTruth' / 'a.txt'
  path.write_bytes(b'background\nbackground\ncut\ncut\npour\xff\n')
  with raises_data_error(f'{path}:5: not valid UTF-8'):
    read_train(root)


def test_non_utf8_mapping(root):
  path = root / 'mapping.txt'
  path.write_bytes(b'0 background\n1 c\xe9t\n2 pour\n')
  with raises_data_error(f'{path}:2: not valid UTF-8'):
    read_train(root)


def test_object_npy_is_refused(root):
  path = root / 'features' / 'a.npy'
  np.save(path, np.array([{'a': 1}, None], dtype=object), allow_pickle=True)
  with raises_data_error(f'{path}: not a plain numeric .npy array'):
    read_train(root)


class _Trap:
  """Unpickling this creates `marker`; the reader must never do it."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_raw_pickle_is_never_unpickled(root):
  path = root / 'features' / 'a.npy'
  marker = root.parent / 'unpickled'
  path.write_bytes(pickle.dumps(_Trap(marker)))
  with raises_data_error(f'{path}: not a plain numeric .npy array'):
    read_train(root)
  assert not marker.exists()


def test_npz_is_refused(tmp_path):
  path = tmp_path / 'x.npy'
  with open(path, 'wb') as f:
    np.savez(f, features=np.zeros((DIM, 3)))
  with raises_data_error(f'{path}: expected a single .npy array, got an .npz archive'):
    formats.read_features(path)


def test_truncated_npy(root):
  path = root / 'features' / 'a.npy'
  path.write_bytes(path.read_bytes()[:-7])
  with raises_data_error(f'{path}: not a plain numeric .npy array'):
    read_train(root)


@pytest.mark.parametrize(
  'text, message',
  [
    ('', ': class mapping is empty'),
    ('0 background\n2 cut\n', ":2: expected id 1, got '2'"),
    ('1 background\n', ":1: expected id 0, got '1'"),
    ('0 background\n1\n', ':2: expected "<id> <name>", got \'1\''),
    ('0 background\n1 background\n', ":2: duplicate class name 'background'"),
  ],
)
def test_bad_mapping(tmp_path, text, message):
  path = tmp_path / 'mapping.txt'
  rejects_text(path, text, message, lambda: formats.read_mapping(path))


def test_mapping_names_may_contain_spaces(tmp_path):
  path = tmp_path / 'mapping.txt'
  path.write_text('0 background\n1 take cup\n')
  assert formats.read_mapping(path) == ['background', 'take cup']


def test_classes_differ_from_mapping(root):
  with raises_data_error(f'{root / "mapping.txt"}: classes'):
    read_train(root, classes=['background', 'pour', 'cut'])


def test_feature_folder_missing_or_empty(tmp_path):
  with raises_data_error(f'{tmp_path / "nope"}: feature folder not found'):
    formats.read_feature_folder(tmp_path / 'nope')
  with raises_data_error(f'{tmp_path}: no .npy feature files'):
    formats.read_feature_folder(tmp_path)


def test_empty_dataset_has_no_input_dim():
  with raises_data_error('dataset has no videos'):
    _ = formats.Dataset(CLASSES, []).input_dim


# ------------------------------------------------------------------- writers


def test_write_refuses_to_overwrite(root):
  dataset = formats.Dataset(CLASSES, [make_video('x', [0])])
  with raises_data_error(f'{root}: already exists'):
    formats.write_single_stream(root, {'train': dataset})


def test_write_into_empty_folder(tmp_path):
  dataset = formats.Dataset(CLASSES, [make_video('x', [0, 1])])
  formats.write_single_stream(tmp_path, {'train': dataset}, split=2)
  assert formats.read_split(tmp_path, 'train', 2) == ['x']


@pytest.mark.parametrize(
  'datasets, message',
  [
    (
      {
        'train': formats.Dataset(CLASSES, [make_video('x', [0])]),
        'test': formats.Dataset(CLASSES, [make_video('x', [1])]),
      },
      "video 'x' appears in both 'train' and 'test'",
    ),
    (
      {
        'train': formats.Dataset(CLASSES, [make_video('x', [0])]),
        'test': formats.Dataset(CLASSES[:2], [make_video('y', [1])]),
      },
      "subset 'test' has classes",
    ),
    (
      {'train': formats.Dataset(CLASSES, [formats.Video('x', np.zeros((2, DIM)), None)])},
      "video 'x' in 'train' has no labels",
    ),
  ],
)
def test_write_rejects_inconsistent_datasets(tmp_path, datasets, message):
  with raises_data_error(message):
    formats.write_single_stream(tmp_path / 'data', datasets)
  assert list(tmp_path.iterdir()) == []


def test_write_single_stream_leaves_nothing_on_failure(tmp_path, monkeypatch):
  calls = []

  def failing_save(path, features):
    calls.append(path)
    if len(calls) == 2:
      raise OSError('disk full')
    np.save(path, features.T)

  monkeypatch.setattr('polyseg.data.formats.base.save_features', failing_save)
  dataset = formats.Dataset(CLASSES, [make_video('x', [0]), make_video('y', [1])])
  with pytest.raises(OSError, match='disk full'):
    formats.write_single_stream(tmp_path / 'data', {'train': dataset})
  assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_write_labels(tmp_path):
  path = tmp_path / 'sub' / 'pred.txt'
  formats.write_labels(path, ['cut', 'cut', 'pour'])
  assert path.read_text() == 'cut\ncut\npour\n'
  np.testing.assert_array_equal(formats.read_labels(path, CLASSES), [1, 1, 2])


def test_write_labels_is_atomic(tmp_path, monkeypatch):
  path = tmp_path / 'pred.txt'
  formats.write_labels(path, ['cut'])

  def failing_replace(src, dst):
    raise OSError('interrupted')

  monkeypatch.setattr(os, 'replace', failing_replace)
  with pytest.raises(OSError, match='interrupted'):
    formats.write_labels(path, ['pour', 'pour'])
  assert path.read_text() == 'cut\n'
  assert [p.name for p in tmp_path.iterdir()] == ['pred.txt']


def test_hold_out_is_seeded_and_leaves_training_videos():
  names = [f'v{i:02d}' for i in range(20)]
  held = formats.hold_out(names, 0.1, seed=3)
  assert len(held) == 2 and held == sorted(held) and set(held) <= set(names)
  assert formats.hold_out(names, 0.1, seed=3) == held
  assert formats.hold_out(names, 0.1, seed=4) != held
  assert len(formats.hold_out(names[:3], 0.01, seed=0)) == 1  # at least one
  assert len(formats.hold_out(names[:2], 0.9, seed=0)) == 1  # never all
  with pytest.raises(ValueError, match='from 1 video'):
    formats.hold_out(names[:1], 0.5, seed=0)
  with pytest.raises(ValueError, match='val_fraction'):
    formats.hold_out(names, 1.0, seed=0)


def test_atomic_writes_have_the_usual_permissions(tmp_path):
  """Files and folders written atomically get the umask's permissions, not mkstemp's private ones,
  so other users and web servers can read outputs (reports, predictions, datasets)."""
  previous = os.umask(0o022)
  try:
    formats.write_atomic(tmp_path / 'a.json', b'{}')
    with base.atomic_dir(tmp_path / 'dataset') as folder:
      (folder / 'x.txt').write_text('x')
  finally:
    os.umask(previous)
  assert (tmp_path / 'a.json').stat().st_mode & 0o777 == 0o644
  assert (tmp_path / 'dataset').stat().st_mode & 0o777 == 0o755


def test_text_files_saved_with_a_byte_order_mark_read_the_same(root):
  """Notepad and some spreadsheet exports start UTF-8 files with a BOM; it is not part of line 1."""
  expected = read_train(root)
  for path in (root / 'mapping.txt', root / 'groundTruth' / 'a.txt'):
    path.write_bytes(b'\xef\xbb\xbf' + path.read_bytes())
  again = read_train(root)
  assert again.classes == expected.classes
  np.testing.assert_array_equal(again.videos[0].labels, expected.videos[0].labels)

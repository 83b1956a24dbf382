"""Read, validate and write the single-stream (MS-TCN) on-disk layout.

Layout under a dataset root::

    mapping.txt                      lines "<id> <name>", ids 0..C-1 in order
    features/<vid>.npy               [D, T] numeric array (never pickled)
    groundTruth/<vid>.txt            T lines, one class name per frame
    splits/<subset>.split<k>.bundle  one "<vid>.txt" (or "<vid>") per line

Every reader validates what it reads and raises `DataError` naming the file
(and the line or frame) at fault. Writers are atomic: they write to a
temporary sibling and `os.replace` it into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

PathLike = str | os.PathLike


class DataError(ValueError):
  """A problem with data on disk; the message names the file (and line)."""


@dataclasses.dataclass
class Video:
  """One video: `features` [T, D] float32, `labels` [T] int32 or None."""

  name: str
  features: np.ndarray
  labels: np.ndarray | None = None


@dataclasses.dataclass
class Dataset:
  """Class names (index = class id) and the videos of one subset."""

  classes: list[str]
  videos: list[Video]

  @property
  def input_dim(self) -> int:
    """Feature dimension D shared by all videos."""
    if not self.videos:
      raise DataError('dataset has no videos, so no input_dim')
    return int(self.videos[0].features.shape[1])


# ----------------------------------------------------------------- readers --


def _read_text_lines(path: PathLike, what: str) -> list[str]:
  """Lines of a UTF-8 text file, stripped, trailing blank lines dropped."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f'{path}: {what} file not found')
  try:
    text = path.read_bytes().decode('utf-8')
  except UnicodeDecodeError as e:
    line = path.read_bytes()[: e.start].count(b'\n') + 1
    raise DataError(f'{path}:{line}: not valid UTF-8 ({e.reason})') from None
  lines = [line.strip() for line in text.splitlines()]
  while lines and not lines[-1]:
    lines.pop()
  return lines


def read_mapping(path: PathLike) -> list[str]:
  """Class names from `mapping.txt` (lines "<id> <name>", ids 0..C-1 in order)."""
  lines = _read_text_lines(path, 'class mapping')
  if not lines:
    raise DataError(f'{path}: class mapping is empty')
  classes = []
  for line_no, line in enumerate(lines, start=1):
    parts = line.split(maxsplit=1)
    if len(parts) != 2:
      raise DataError(f'{path}:{line_no}: expected "<id> <name>", got {line!r}')
    class_id, name = parts
    if class_id != str(len(classes)):
      raise DataError(f'{path}:{line_no}: expected id {len(classes)}, got {class_id!r}')
    if name in classes:
      raise DataError(f'{path}:{line_no}: duplicate class name {name!r}')
    classes.append(name)
  return classes


def split_path(root: PathLike, subset: str, split: int) -> pathlib.Path:
  """`root/splits/{subset}.split{split}.bundle`."""
  return pathlib.Path(root) / 'splits' / f'{subset}.split{split}.bundle'


def read_split(root: PathLike, subset: str, split: int) -> list[str]:
  """Video ids listed in `splits/{subset}.split{split}.bundle` (".txt" stripped)."""
  path = split_path(root, subset, split)
  names, first_line = [], {}
  for line_no, line in enumerate(_read_text_lines(path, 'split'), start=1):
    if not line:
      continue
    name = line.removesuffix('.txt')
    if name in first_line:
      raise DataError(
        f'{path}:{line_no}: duplicate video {name!r} (first listed on line {first_line[name]})'
      )
    first_line[name] = line_no
    names.append(name)
  if not names:
    raise DataError(f'{path}: split lists no videos')
  return names


def _as_features(array: np.ndarray, path: PathLike, input_dim: int | None) -> np.ndarray:
  """Validates an on-disk [D, T] array and returns it as [T, D] float32."""
  if array.ndim != 2:
    raise DataError(f'{path}: features must have rank 2 [D, T], got shape {array.shape}')
  if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
    raise DataError(f'{path}: features must be numeric (int or float), got dtype {array.dtype}')
  dim, length = array.shape
  if length == 0:
    raise DataError(f'{path}: empty video (T = 0 frames, shape {array.shape})')
  if input_dim is not None and dim != input_dim:
    raise DataError(
      f'{path}: feature dimension D = {dim} (shape [D, T] = {array.shape}) != input_dim {input_dim}'
    )
  with np.errstate(over='ignore'):  # values beyond float32 become inf, reported below
    features = np.ascontiguousarray(array.T, dtype=np.float32)
  bad_frames = np.flatnonzero(~np.isfinite(features).all(axis=1))
  if bad_frames.size:
    raise DataError(
      f'{path}: non-finite feature value (NaN/Inf, or too large for float32) '
      f'at frame {bad_frames[0]} ({bad_frames.size} bad frames)'
    )
  return features


def read_features(path: PathLike, input_dim: int | None = None) -> np.ndarray:
  """Features [T, D] float32 from a `.npy` stored as [D, T]; never unpickles."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f'{path}: feature file not found')
  try:
    array = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise DataError(f'{path}: not a plain numeric .npy array ({e})') from None
  if not isinstance(array, np.ndarray):
    array.close()
    raise DataError(f'{path}: expected a single .npy array, got an .npz archive')
  return _as_features(array, path, input_dim)


def read_labels(path: PathLike, classes: Sequence[str]) -> np.ndarray:
  """Labels [T] int32 from a ground-truth file (one class name per line)."""
  lines = _read_text_lines(path, 'label')
  if not lines:
    raise DataError(f'{path}: empty label file (T = 0 frames)')
  class_ids = {name: i for i, name in enumerate(classes)}
  labels = np.empty(len(lines), np.int32)
  for line_no, name in enumerate(lines, start=1):
    if name not in class_ids:
      raise DataError(f'{path}:{line_no}: label {name!r} is not in the class mapping')
    labels[line_no - 1] = class_ids[name]
  return labels


def _check_same_dim(features: Sequence[tuple[pathlib.Path, np.ndarray]]) -> None:
  """All [T, D] arrays share D, else DataError naming both files."""
  first_path, first = features[0]
  for path, array in features[1:]:
    if array.shape[1] != first.shape[1]:
      raise DataError(
        f'{path}: feature dimension D = {array.shape[1]} differs from '
        f'D = {first.shape[1]} of {first_path}'
      )


def read_single_stream(
  root: PathLike,
  subset: str,
  split: int,
  classes: Sequence[str] | None = None,
  input_dim: int | None = None,
) -> Dataset:
  """Reads one subset ('train'/'test') of split `split` of an MS-TCN-layout dataset."""
  root = pathlib.Path(root)
  mapping_path = root / 'mapping.txt'
  mapping = read_mapping(mapping_path)
  if classes is not None and list(classes) != mapping:
    raise DataError(f'{mapping_path}: classes {mapping} differ from the expected {list(classes)}')
  videos, feature_paths = [], []
  for name in read_split(root, subset, split):
    feature_path = root / 'features' / f'{name}.npy'
    label_path = root / 'groundTruth' / f'{name}.txt'
    features = read_features(feature_path, input_dim)
    labels = read_labels(label_path, mapping)
    if len(labels) != len(features):
      raise DataError(
        f'{label_path}: {len(labels)} labels but {feature_path} has {len(features)} frames'
      )
    videos.append(Video(name, features, labels))
    feature_paths.append((feature_path, features))
  _check_same_dim(feature_paths)
  return Dataset(mapping, videos)


def read_feature_folder(
  folder: PathLike, input_dim: int | None = None
) -> list[tuple[str, np.ndarray]]:
  """(name, features [T, D] float32) for every `*.npy` in `folder`, sorted by name."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise DataError(f'{folder}: feature folder not found')
  paths = sorted(folder.glob('*.npy'))
  if not paths:
    raise DataError(f'{folder}: no .npy feature files')
  loaded = [(path, read_features(path, input_dim)) for path in paths]
  _check_same_dim(loaded)
  return [(path.stem, features) for path, features in loaded]


# ----------------------------------------------------------------- writers --


@contextlib.contextmanager
def _atomic_dir(root: pathlib.Path) -> Iterator[pathlib.Path]:
  """Yields a temporary sibling folder that replaces `root` on success."""
  if root.exists() and (not root.is_dir() or any(root.iterdir())):
    raise DataError(f'{root}: already exists and is not an empty folder; not overwriting')
  root.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=root.parent, prefix=f'.{root.name}.tmp-'))
  try:
    yield tmp
    os.replace(tmp, root)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def write_atomic(path: PathLike, data: bytes) -> None:
  """Writes `data` to a temporary sibling of `path`, then renames it into place."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_labels(path: PathLike, names: Sequence[str]) -> None:
  """Writes a ground-truth file (one class name per line), atomically."""
  write_atomic(path, ''.join(f'{name}\n' for name in names).encode('utf-8'))


def _save_features(path: pathlib.Path, features: np.ndarray) -> None:
  """Saves features [T, D] as a [D, T] float32 `.npy`."""
  np.save(path, np.ascontiguousarray(features.T, dtype=np.float32), allow_pickle=False)


def write_single_stream(
  root: PathLike, datasets: Mapping[str, Dataset], split: int = 1
) -> pathlib.Path:
  """Writes {subset: Dataset} as an MS-TCN-layout dataset at `root`, atomically.

  All subsets must share the class list and have distinct, labelled videos;
  `root` must not exist yet (or be an empty folder). Returns `root`.
  """
  root = pathlib.Path(root)
  if not datasets:
    raise DataError(f'{root}: no subsets to write')
  classes = next(iter(datasets.values())).classes
  seen = {}
  for subset, dataset in datasets.items():
    if dataset.classes != classes:
      raise DataError(
        f'{root}: subset {subset!r} has classes {dataset.classes}, expected {classes}'
      )
    for video in dataset.videos:
      if video.name in seen:
        raise DataError(
          f'{root}: video {video.name!r} appears in both {seen[video.name]!r} and {subset!r}'
        )
      if video.labels is None:
        raise DataError(f'{root}: video {video.name!r} in {subset!r} has no labels')
      seen[video.name] = subset
  with _atomic_dir(root) as tmp:
    for folder in ('features', 'groundTruth', 'splits'):
      (tmp / folder).mkdir()
    (tmp / 'mapping.txt').write_text(''.join(f'{i} {name}\n' for i, name in enumerate(classes)))
    for subset, dataset in datasets.items():
      split_path(tmp, subset, split).write_text(
        ''.join(f'{video.name}.txt\n' for video in dataset.videos)
      )
      for video in dataset.videos:
        _save_features(tmp / 'features' / f'{video.name}.npy', video.features)
        (tmp / 'groundTruth' / f'{video.name}.txt').write_text(
          ''.join(f'{classes[c]}\n' for c in video.labels)
        )
  return root

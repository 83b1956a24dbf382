"""What every on-disk layout shares: `DataError`, the in-memory videos and datasets (`Video`,
`Dataset`, `MultiStreamVideo`, `MultiStreamDataset`), the files of the MS-TCN family (mapping.txt,
splits, `[D, T]` features, per-frame labels), atomic writes, and the seeded validation hold-out.

Every reader validates what it reads and raises `DataError` naming the file (and the line or frame)
at fault. Writers are atomic: they write to a temporary sibling and `os.replace` it into place.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import functools
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np
from absl import logging

PathLike = str | os.PathLike


class DataError(ValueError):
  """A problem with data on disk; the message names the file (and line)."""


def reports_data_errors(main: Callable[..., int]) -> Callable[..., int]:
  """Wraps a command line's `main(argv) -> exit status`: a DataError is printed to stderr as
  'error: <message>' (no traceback for a user's bad file) and the status is 1."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs) -> int:
    try:
      return main(*args, **kwargs)
    except DataError as e:
      print(f'error: {e}', file=sys.stderr)
      return 1

  return wrapped


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


@dataclasses.dataclass
class MultiStreamVideo:
  """One video seen through several feature streams (two hands, or RGB and flow).

  `features` {stream: [T, D_stream] float32}; `labels` [T] int32 (one track), [T, H] int32 (one
  column per hand, in HANDS order) or None.
  """

  name: str
  features: dict[str, np.ndarray]
  labels: np.ndarray | None = None


@dataclasses.dataclass
class MultiStreamDataset:
  """Class names (index = class id) and the multi-stream videos of one subset."""

  classes: list[str]
  videos: list[MultiStreamVideo]

  @property
  def input_dims(self) -> dict[str, int]:
    """{stream: feature dimension D shared by all videos}."""
    if not self.videos:
      raise DataError('dataset has no videos, so no input_dims')
    return {stream: int(x.shape[1]) for stream, x in self.videos[0].features.items()}


def read_utf8(path: pathlib.Path) -> str:
  """The text of a UTF-8 file (without the byte-order mark some editors write first); DataError
  naming the file and line of the first bad byte."""
  data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b'\n') + 1
    raise DataError(f'{path}:{line}: not valid UTF-8 ({e.reason})') from None


def read_text_lines(path: PathLike, what: str) -> list[str]:
  """Lines of a UTF-8 text file, stripped, trailing blank lines dropped."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f'{path}: {what} file not found')
  text = read_utf8(path)
  lines = [line.strip() for line in text.splitlines()]
  while lines and not lines[-1]:
    lines.pop()
  return lines


def read_mapping(path: PathLike) -> list[str]:
  """Class names from `mapping.txt` (lines "<id> <name>", ids 0..C-1 in order)."""
  lines = read_text_lines(path, 'class mapping')
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


def require_split(root: PathLike, subset: str, split: int) -> None:
  """DataError unless the split file of `subset` exists (checked without opening it)."""
  path = split_path(root, subset, split)
  if not path.is_file():
    raise DataError(f'{path}: split file not found')


def read_split(root: PathLike, subset: str, split: int) -> list[str]:
  """Video ids listed in `splits/{subset}.split{split}.bundle` (".txt" stripped)."""
  path = split_path(root, subset, split)
  names, first_line = [], {}
  for line_no, line in enumerate(read_text_lines(path, 'split'), start=1):
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


def as_features(array: np.ndarray, path: PathLike, input_dim: int | None) -> np.ndarray:
  """Validates an on-disk [D, T] array and returns it as [T, D] float32."""
  if array.ndim != 2:
    raise DataError(f'{path}: features must have rank 2 [D, T], got shape {array.shape}')
  if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
    raise DataError(f'{path}: features must be numeric (int or float), got dtype {array.dtype}')
  dim, length = array.shape
  if length == 0:
    raise DataError(f'{path}: empty video (T = 0 frames, shape {array.shape})')
  if dim == 0:
    raise DataError(f'{path}: no feature channels (D = 0, shape {array.shape})')
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
  return as_features(array, path, input_dim)


def read_labels(path: PathLike, classes: Sequence[str]) -> np.ndarray:
  """Labels [T] int32 from a ground-truth file (one class name per line)."""
  lines = read_text_lines(path, 'label')
  if not lines:
    raise DataError(f'{path}: empty label file (T = 0 frames)')
  class_ids = {name: i for i, name in enumerate(classes)}
  labels = np.empty(len(lines), np.int32)
  for line_no, name in enumerate(lines, start=1):
    if name not in class_ids:
      raise DataError(f'{path}:{line_no}: label {name!r} is not in the class mapping')
    labels[line_no - 1] = class_ids[name]
  return labels


def check_same_dim(features: Sequence[tuple[pathlib.Path, np.ndarray]]) -> None:
  """All [T, D] arrays share D, else DataError naming both files."""
  first_path, first = features[0]
  for path, array in features[1:]:
    if array.shape[1] != first.shape[1]:
      raise DataError(
        f'{path}: feature dimension D = {array.shape[1]} differs from '
        f'D = {first.shape[1]} of {first_path}'
      )


def _umask() -> int:
  """The process's umask (read by setting it, then restoring it)."""
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_dir(root: pathlib.Path) -> Iterator[pathlib.Path]:
  """Yields a temporary sibling folder that replaces `root` on success."""
  if root.exists() and (not root.is_dir() or any(root.iterdir())):
    raise DataError(f'{root}: already exists and is not an empty folder; not overwriting')
  root.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=root.parent, prefix=f'.{root.name}.tmp-'))
  try:
    yield tmp
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's folder is private (0700): make it a usual one
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
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private (0600): make it a usual one
    os.replace(tmp, path)
  except BaseException as error:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    if isinstance(error, OSError) and error.errno and not error.filename:  # say which file failed
      raise OSError(error.errno, error.strerror, str(path)) from error
    raise


def write_labels(path: PathLike, names: Sequence[str]) -> None:
  """Writes a ground-truth file (one class name per line), atomically."""
  write_atomic(path, ''.join(f'{name}\n' for name in names).encode('utf-8'))


def write_lines(path: pathlib.Path, lines: Iterable[str]) -> None:
  """A text file of `lines`, each ended by a newline, in UTF-8 (whatever the locale) — the text
  files of the dataset writers, inside their `atomic_dir`."""
  path.write_text(''.join(f'{line}\n' for line in lines), encoding='utf-8')


def write_mapping(path: pathlib.Path, classes: Sequence[str]) -> None:
  """mapping.txt: '<id> <name>' per class."""
  write_lines(path, (f'{i} {name}' for i, name in enumerate(classes)))


def save_features(path: pathlib.Path, features: np.ndarray) -> None:
  """Saves features [T, D] as a [D, T] float32 `.npy`."""
  np.save(path, np.ascontiguousarray(features.T, dtype=np.float32), allow_pickle=False)


def check_features(
  where: str, features: Mapping[str, np.ndarray], num_frames: int, dims: dict[str, int | None]
) -> None:
  """DataError unless every {folder: [T, D]} of a video to write is finite, with T = num_frames and
  D = dims[folder]; a folder's D is taken from its first video (missing or None in `dims`)."""
  for folder, array in features.items():
    shape, expected = np.shape(array), dims.get(folder)
    if (
      len(shape) != 2 or shape[0] != num_frames or expected not in (None, shape[1]) or not shape[1]
    ):
      raise DataError(
        f'{where}: features {folder!r} have shape {shape}, expected '
        f'[T, {"D >= 1" if expected is None else expected}] with T = {num_frames} labels'
      )
    if not np.isfinite(array).all():
      raise DataError(f'{where}: features {folder!r} have non-finite values (NaN/Inf)')
    dims[folder] = shape[1]


def check_id(path: PathLike, what: str, name: object) -> None:
  """A video / person id usable as part of a file name, else DataError naming `path`."""
  if not isinstance(name, str) or not name.strip() or name != name.strip():
    raise DataError(f'{path}: {what} id {name!r} must be a non-empty string without outer spaces')
  if any(c in name for c in '/\\\n\r\0') or name in ('.', '..'):
    raise DataError(f'{path}: {what} id {name!r} cannot be part of a file name')
  if what == 'person' and '__' in name:
    raise DataError(f"{path}: person id {name!r} contains '__' (the video/person separator)")


def hold_out(names: Sequence[str], fraction: float, seed: int) -> list[str]:
  """A seeded `fraction` of `names` (at least one, never all), sorted: the validation videos."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f'val_fraction must be in (0, 1), got {fraction}')
  if len(names) < 2:
    raise ValueError(f'cannot hold out validation videos from {len(names)} video(s)')
  count = min(len(names) - 1, max(1, round(fraction * len(names))))
  order = np.random.default_rng(seed).permutation(len(names))
  return sorted(names[i] for i in order[:count])


def hold_out_split(
  names: Sequence[str], fraction: float, seed: int, where: str
) -> tuple[list[int], list[int]]:
  """(kept, held) indices into `names`: the held ones are `hold_out`'s seeded `fraction`, the
  validation videos. DataError '<where>, and <why>' when that is impossible."""
  try:
    held = set(hold_out(names, fraction, seed))
  except ValueError as e:
    raise DataError(f'{where}, and {e}') from None
  kept = [i for i, name in enumerate(names) if name not in held]
  return kept, [i for i, name in enumerate(names) if name in held]


def read_mapping_as(root: pathlib.Path, classes: Sequence[str] | None) -> list[str]:
  """`root/mapping.txt`, checked against `classes` when given."""
  mapping_path = root / 'mapping.txt'
  mapping = read_mapping(mapping_path)
  if classes is not None and list(classes) != mapping:
    raise DataError(f'{mapping_path}: classes {mapping} differ from the expected {list(classes)}')
  return mapping


def check_same_length(arrays: Sequence[tuple[pathlib.Path, np.ndarray]]) -> None:
  """All arrays (features or labels) have the first one's length T, else DataError naming both."""
  first_path, first = arrays[0]
  for path, array in arrays[1:]:
    if len(array) != len(first):
      raise DataError(f'{path}: {len(array)} frames but {first_path} has {len(first)} frames')


def align_lengths(
  video: str,
  reference: tuple[PathLike, int],
  arrays: Sequence[tuple[PathLike, np.ndarray, str]],
  tolerance: int,
) -> list[np.ndarray]:
  """`arrays` [(path, [T', ...], np.pad mode)] of `video` brought to the length T of `reference`
  (path, T) when |T' - T| <= `tolerance`: truncated, or padded ('constant': zeros, 'edge': the
  last row repeated), with one warning naming every changed file and both lengths; beyond the
  tolerance DataError naming both files. E.g. RGB features [(path, [T', D], 'constant')] to the
  flow length."""
  if not isinstance(tolerance, int) or tolerance < 0:
    raise ValueError(f'length_tolerance must be an int >= 0, got {tolerance!r}')
  reference_path, length = reference
  aligned, changes = [], []
  for path, array, mode in arrays:
    difference = len(array) - length
    if abs(difference) > tolerance:
      raise DataError(
        f'{reference_path}: {length} frames but {path} has {len(array)} frames (they differ by '
        f'{abs(difference)} > length_tolerance {tolerance}); raise data.length_tolerance to '
        f'align them'
      )
    if difference:
      changes.append(f'{path}: {len(array)} frames, {"truncated" if difference > 0 else "padded"}')
    if difference > 0:
      array = array[:length]
    elif difference < 0:
      array = np.pad(array, [(0, -difference)] + [(0, 0)] * (array.ndim - 1), mode=mode)
    aligned.append(array)
  if changes:
    logging.warning(
      'video %r: aligned to the %d frames of %s (length_tolerance %d): %s',
      video,
      length,
      reference_path,
      tolerance,
      '; '.join(changes),
    )
  return aligned


def segment_classes(labels: np.ndarray) -> np.ndarray:
  """The class of each segment of labels [T], in order: the transcript of the labels, [N]."""
  return labels[np.r_[0, np.flatnonzero(labels[1:] != labels[:-1]) + 1]]

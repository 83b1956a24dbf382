"""Read, validate and write the on-disk layouts: single stream (MS-TCN), referring, two hands,
two streams and transcripts.

Single-stream layout under a dataset root::

    mapping.txt                      lines "<id> <name>", ids 0..C-1 in order
    features/<vid>.npy               [D, T] numeric array (never pickled)
    groundTruth/<vid>.txt            T lines, one class name per frame
    splits/<subset>.split<k>.bundle  one "<vid>.txt" (or "<vid>") per line

Referring layout (one sample per referred person of a video; multi-label)::

    mapping.txt                            action classes (no background class needed)
    references.json                        {"<vid>": {"<person>": "text"}}: defines the samples
    features_holistic/<vid>__<person>.npy  [Dh, T] cross-modal features, used when present,
    features_holistic/<vid>.npy            else [Dh, T] shared by all persons of the video
    features_partial/<vid>__<person>.npy   [Dp, T] the person's crop features
    labels/<vid>__<person>.txt             T lines, each zero or more class names separated by
                                           commas (empty line = no action / person absent)
    splits/<protocol>/<subset>.txt         optional; protocol cross_video (lines = video ids)
                                           or random (lines = sample names); subset train/val/test

Two hands, two streams and transcripts are the single-stream layout (mapping.txt, splits/) with::

    groundTruth/<hand>/<vid>.txt           two hands: T lines per hand, hand in HANDS = (lh, rh)
    features/<hand>/<vid>.npy              two hands: [D, T] per hand, or features/<vid>.npy shared
    features/shared/<vid>.npy              two hands with a shared stream (read_hand_streams):
                                           [Ds, T], and features/<hand>/ hold logits [C, T]
    features_rgb/<vid>.npy                 two streams: [Drgb, T] (groundTruth/<vid>.txt as above)
    features_flow/<vid>.npy                two streams: [Dflow, T]; RGB and labels may differ
                                           from the flow length by `length_tolerance` frames
    transcripts/<vid>.txt                  transcripts: the video's actions in order, one per line
                                           (features/ and, optionally, groundTruth/ as above)

Every reader validates what it reads and raises `DataError` naming the file
(and the line or frame) at fault. Writers are atomic: they write to a
temporary sibling and `os.replace` it into place.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
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


def _read_utf8(path: pathlib.Path) -> str:
  """The text of a UTF-8 file (without the byte-order mark some editors write first); DataError
  naming the file and line of the first bad byte."""
  data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b'\n') + 1
    raise DataError(f'{path}:{line}: not valid UTF-8 ({e.reason})') from None


def _read_text_lines(path: PathLike, what: str) -> list[str]:
  """Lines of a UTF-8 text file, stripped, trailing blank lines dropped."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f'{path}: {what} file not found')
  text = _read_utf8(path)
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


def require_split(root: PathLike, subset: str, split: int) -> None:
  """DataError unless the split file of `subset` exists (checked without opening it)."""
  path = split_path(root, subset, split)
  if not path.is_file():
    raise DataError(f'{path}: split file not found')


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


def _umask() -> int:
  """The process's umask (read by setting it, then restoring it)."""
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def _atomic_dir(root: pathlib.Path) -> Iterator[pathlib.Path]:
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
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_labels(path: PathLike, names: Sequence[str]) -> None:
  """Writes a ground-truth file (one class name per line), atomically."""
  write_atomic(path, ''.join(f'{name}\n' for name in names).encode('utf-8'))


def _write_lines(path: pathlib.Path, lines: Iterable[str]) -> None:
  """A text file of `lines`, each ended by a newline, in UTF-8 (whatever the locale) — the text
  files of the dataset writers, inside their `_atomic_dir`."""
  path.write_text(''.join(f'{line}\n' for line in lines), encoding='utf-8')


def _write_mapping(path: pathlib.Path, classes: Sequence[str]) -> None:
  """mapping.txt: '<id> <name>' per class."""
  _write_lines(path, (f'{i} {name}' for i, name in enumerate(classes)))


def _save_features(path: pathlib.Path, features: np.ndarray) -> None:
  """Saves features [T, D] as a [D, T] float32 `.npy`."""
  np.save(path, np.ascontiguousarray(features.T, dtype=np.float32), allow_pickle=False)


def _write_ms_tcn(
  root: PathLike,
  datasets: Mapping[str, Dataset | MultiStreamDataset],
  split: int,
  feature_files: Callable[[Video | MultiStreamVideo], Mapping[str, np.ndarray]],
  transcripts: bool = False,
) -> pathlib.Path:
  """Writes {subset: dataset} in the MS-TCN layout at `root`, atomically: mapping.txt, splits/,
  groundTruth/<vid>.txt (and with `transcripts`, transcripts/<vid>.txt: the classes of the label
  segments, in order) and every {folder: features [T, D]} of `feature_files(video)` as
  `<folder>/<vid>.npy`. Subsets share the class list and have distinct videos with labels [T]
  in [0, C); each folder has one D. Returns `root`."""
  root = pathlib.Path(root)
  if not datasets:
    raise DataError(f'{root}: no subsets to write')
  classes = next(iter(datasets.values())).classes
  seen, dims = {}, {}
  for subset, dataset in datasets.items():
    if dataset.classes != classes:
      raise DataError(
        f'{root}: subset {subset!r} has classes {dataset.classes}, expected {classes}'
      )
    for video in dataset.videos:
      where = f'{root}: video {video.name!r} in {subset!r}'
      if video.name in seen:
        raise DataError(
          f'{root}: video {video.name!r} appears in both {seen[video.name]!r} and {subset!r}'
        )
      if video.labels is None:
        raise DataError(f'{where} has no labels')
      labels = np.asarray(video.labels)
      if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or not len(labels):
        raise DataError(f'{where}: labels must be integers [T], T >= 1, got {labels.shape}')
      if labels.min() < 0 or labels.max() >= len(classes):
        raise DataError(
          f'{where}: label ids in [{labels.min()}, {labels.max()}] outside [0, {len(classes)})'
        )
      _check_features(where, feature_files(video), len(labels), dims)
      seen[video.name] = subset
  with _atomic_dir(root) as tmp:
    for folder in (*dims, 'groundTruth', 'splits', *(['transcripts'] if transcripts else [])):
      (tmp / folder).mkdir()
    _write_mapping(tmp / 'mapping.txt', classes)
    for subset, dataset in datasets.items():
      _write_lines(split_path(tmp, subset, split), (f'{v.name}.txt' for v in dataset.videos))
      for video in dataset.videos:
        for folder, features in feature_files(video).items():
          _save_features(tmp / folder / f'{video.name}.npy', np.asarray(features))
        _write_lines(tmp / 'groundTruth' / f'{video.name}.txt', (classes[c] for c in video.labels))
        if transcripts:
          _write_lines(
            tmp / 'transcripts' / f'{video.name}.txt',
            (classes[c] for c in segment_classes(np.asarray(video.labels))),
          )
  return root


def _check_features(
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


def write_single_stream(
  root: PathLike, datasets: Mapping[str, Dataset], split: int = 1, transcripts: bool = False
) -> pathlib.Path:
  """Writes {subset: Dataset} as an MS-TCN-layout dataset at `root`, atomically (with
  `transcripts/` derived from the labels when `transcripts`).

  All subsets must share the class list and have distinct, labelled videos;
  `root` must not exist yet (or be an empty folder). Returns `root`.
  """
  return _write_ms_tcn(
    root, datasets, split, lambda video: {'features': video.features}, transcripts
  )


# --------------------------------------------------------------- referring --

REFERRING_PROTOCOLS = ('cross_video', 'random')
REFERRING_SUBSETS = ('train', 'val', 'test')


@dataclasses.dataclass
class ReferringSample:
  """One referred person in one video (or a window of it)."""

  name: str  # '<vid>__<person>'; windows: '<vid>__<person>@<start>'
  video: str  # video id
  person: str  # person id (no '__' inside)
  reference: str  # the text that refers to the person
  holistic: np.ndarray  # [T, Dh] float32
  partial: np.ndarray  # [T, Dp] float32
  labels: (
    np.ndarray | None
  )  # [T, C] bool multi-hot (all False = no action / person absent), or None
  start: int = 0  # first frame of this sample in the video


@dataclasses.dataclass
class ReferringDataset:
  """Class names (index = class id) and the referring samples."""

  classes: list[str]
  samples: list[ReferringSample]

  def _first(self) -> ReferringSample:
    if not self.samples:
      raise DataError('referring dataset has no samples, so no feature dimensions')
    return self.samples[0]

  @property
  def holistic_dim(self) -> int:
    """Holistic feature dimension Dh shared by all samples."""
    return int(self._first().holistic.shape[1])

  @property
  def partial_dim(self) -> int:
    """Partial feature dimension Dp shared by all samples."""
    return int(self._first().partial.shape[1])


def sample_name(video: str, person: str) -> str:
  """'<video>__<person>': the name of a full-length sample and of its files."""
  return f'{video}__{person}'


def _check_id(path: PathLike, what: str, name: object) -> None:
  """A video / person id usable as part of a file name, else DataError naming `path`."""
  if not isinstance(name, str) or not name.strip() or name != name.strip():
    raise DataError(f'{path}: {what} id {name!r} must be a non-empty string without outer spaces')
  if any(c in name for c in '/\\\n\r\0') or name in ('.', '..'):
    raise DataError(f'{path}: {what} id {name!r} cannot be part of a file name')
  if what == 'person' and '__' in name:
    raise DataError(f"{path}: person id {name!r} contains '__' (the video/person separator)")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
  """json object hook that refuses duplicate keys."""
  result = {}
  for key, value in pairs:
    if key in result:
      raise DataError(f'duplicate key {key!r}')
    result[key] = value
  return result


def read_references(path: PathLike) -> dict[str, dict[str, str]]:
  """{video: {person: text}} from `references.json`, validated."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f'{path}: references file not found')
  text = _read_utf8(path)
  try:
    references = json.loads(text, object_pairs_hook=_unique_keys)
  except json.JSONDecodeError as e:
    raise DataError(f'{path}:{e.lineno}: not valid JSON ({e.msg})') from None
  except DataError as e:
    raise DataError(f'{path}: {e}') from None
  if not isinstance(references, dict) or not references:
    raise DataError(f'{path}: expected a non-empty object {{"<vid>": {{"<person>": "text"}}}}')
  for video, persons in references.items():
    _check_id(path, 'video', video)
    if not isinstance(persons, dict) or not persons:
      raise DataError(
        f'{path}: video {video!r}: expected a non-empty object {{"<person>": "text"}}, '
        f'got {persons!r:.60}'
      )
    for person, reference in persons.items():
      _check_id(path, 'person', person)
      if not isinstance(reference, str) or not reference.strip():
        raise DataError(
          f'{path}: video {video!r}, person {person!r}: reference must be non-empty text, '
          f'got {reference!r:.60}'
        )
  return references


def read_multilabels(path: PathLike, classes: Sequence[str]) -> np.ndarray:
  """Multi-hot labels [T, C] bool: one line per frame, class names separated by commas.

  An empty line is a frame without action; trailing empty lines are frames too
  (every line, the last included, ends with a newline, which may be missing on
  the last one; '\\r\\n' is accepted).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f'{path}: label file not found')
  text = _read_utf8(path)
  lines = text.split('\n')
  if lines[-1] == '':  # the newline that ends the last frame
    lines.pop()
  if not lines:
    raise DataError(f'{path}: empty label file (T = 0 frames)')
  class_ids = {name: i for i, name in enumerate(classes)}
  labels = np.zeros((len(lines), len(classes)), bool)
  for line_no, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    for name in (part.strip() for part in line.split(',')):
      if not name:
        raise DataError(f'{path}:{line_no}: empty label name in {line.strip()!r}')
      if name not in class_ids:
        raise DataError(f'{path}:{line_no}: label {name!r} is not in the class mapping')
      if labels[line_no - 1, class_ids[name]]:
        raise DataError(f'{path}:{line_no}: label {name!r} appears twice on the line')
      labels[line_no - 1, class_ids[name]] = True
  return labels


def _referring_classes(
  root: pathlib.Path, classes: Sequence[str] | None, labels: bool
) -> list[str]:
  """The mapping (checked against `classes`), or `classes` when unlabelled data has no mapping."""
  mapping_path = root / 'mapping.txt'
  if not labels and classes is not None and not mapping_path.exists():
    return list(classes)
  mapping = read_mapping(mapping_path)
  if classes is not None and list(classes) != mapping:
    raise DataError(f'{mapping_path}: classes {mapping} differ from the expected {list(classes)}')
  return mapping


def read_referring(
  root: PathLike,
  classes: Sequence[str] | None = None,
  holistic_dim: int | None = None,
  partial_dim: int | None = None,
  labels: bool = True,
) -> ReferringDataset:
  """Reads every sample of `references.json` (sorted by video, then person), full length.

  `labels=False` (prediction on new data) reads no label files (labels None);
  then `mapping.txt` may be missing if `classes` is given.
  """
  root = pathlib.Path(root)
  class_names = _referring_classes(root, classes, labels)
  references = read_references(root / 'references.json')
  samples, holistic_loaded, partial_loaded = [], {}, []
  for video in sorted(references):
    for person in sorted(references[video]):
      name = sample_name(video, person)
      candidates = [root / 'features_holistic' / f'{n}.npy' for n in (name, video)]
      holistic_path = next((p for p in candidates if p.is_file()), None)
      if holistic_path is None:
        raise DataError(
          f'{candidates[0]}: holistic feature file not found (also tried {candidates[1]})'
        )
      if holistic_path not in holistic_loaded:
        holistic_loaded[holistic_path] = read_features(holistic_path, holistic_dim)
      holistic = holistic_loaded[holistic_path]
      partial_path = root / 'features_partial' / f'{name}.npy'
      partial = read_features(partial_path, partial_dim)
      partial_loaded.append((partial_path, partial))
      if len(partial) != len(holistic):
        raise DataError(
          f'{partial_path}: {len(partial)} frames but {holistic_path} has {len(holistic)} frames'
        )
      multi_hot = None
      if labels:
        label_path = root / 'labels' / f'{name}.txt'
        multi_hot = read_multilabels(label_path, class_names)
        if len(multi_hot) != len(partial):
          raise DataError(
            f'{label_path}: {len(multi_hot)} label lines but {partial_path} has '
            f'{len(partial)} frames'
          )
      samples.append(
        ReferringSample(
          name, video, person, references[video][person], holistic, partial, multi_hot
        )
      )
  _check_same_dim(list(holistic_loaded.items()))
  _check_same_dim(partial_loaded)
  return ReferringDataset(class_names, samples)


def _check_referring_writable(root: pathlib.Path, dataset: ReferringDataset) -> None:
  """DataError unless `dataset` can be written as (and read back from) the referring layout."""
  if not dataset.samples:
    raise DataError(f'{root}: no samples to write')
  for name in dataset.classes:
    if not name.strip() or name != name.strip() or any(c in name for c in ',\n\r'):
      raise DataError(f'{root}: class name {name!r} cannot be written in a label file')
  seen = set()
  for sample in dataset.samples:
    where = f'{root}: sample {sample.name!r}'
    _check_id(where, 'video', sample.video)
    _check_id(where, 'person', sample.person)
    if sample.name != sample_name(sample.video, sample.person) or sample.start != 0:
      raise DataError(f'{where} is not a full-length sample (a window?); write whole samples')
    if sample.name in seen:
      raise DataError(f'{where} appears twice')
    seen.add(sample.name)
    if not sample.reference.strip():
      raise DataError(f'{where} has an empty reference')
    length = len(sample.partial)
    if sample.labels is None:
      raise DataError(f'{where} has no labels')
    if (
      sample.holistic.ndim != 2
      or sample.partial.ndim != 2
      or len(sample.holistic) != length
      or sample.labels.shape != (length, len(dataset.classes))
    ):
      raise DataError(
        f'{where}: shapes holistic {sample.holistic.shape}, partial {sample.partial.shape}, '
        f'labels {sample.labels.shape} do not fit [T, Dh], [T, Dp], [T, {len(dataset.classes)}]'
      )


def _split_file(root: pathlib.Path, protocol: str, subset: str) -> pathlib.Path:
  """`root/splits/{protocol}/{subset}.txt`."""
  return root / 'splits' / protocol / f'{subset}.txt'


def _check_protocol(protocol: str) -> None:
  if protocol not in REFERRING_PROTOCOLS:
    raise ValueError(f'protocol must be one of {REFERRING_PROTOCOLS}, got {protocol!r}')


def write_referring(
  root: PathLike,
  dataset: ReferringDataset,
  splits: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
) -> pathlib.Path:
  """Writes full-length labelled samples in the referring layout at `root`, atomically.

  Holistic features go to one `<vid>.npy` when all samples of the video share
  them, else to one `<vid>__<person>.npy` per sample. `splits` ({protocol:
  {subset: names}}) become `splits/<protocol>/<subset>.txt`. `root` must not
  exist yet (or be an empty folder). Returns `root`.
  """
  root = pathlib.Path(root)
  _check_referring_writable(root, dataset)
  for protocol, subsets in (splits or {}).items():
    _check_protocol(protocol)
    for subset in subsets:
      if subset not in REFERRING_SUBSETS:
        raise DataError(f'{root}: split subset must be one of {REFERRING_SUBSETS}, got {subset!r}')
  by_video: dict[str, list[ReferringSample]] = {}
  for sample in dataset.samples:
    by_video.setdefault(sample.video, []).append(sample)
  references = {
    video: {s.person: s.reference for s in samples} for video, samples in by_video.items()
  }
  with _atomic_dir(root) as tmp:
    for folder in ('features_holistic', 'features_partial', 'labels'):
      (tmp / folder).mkdir()
    _write_mapping(tmp / 'mapping.txt', dataset.classes)
    (tmp / 'references.json').write_text(
      json.dumps(references, indent=2, sort_keys=True, ensure_ascii=False) + '\n', encoding='utf-8'
    )
    for video, samples in by_video.items():
      shared = all(np.array_equal(s.holistic, samples[0].holistic) for s in samples[1:])
      if shared:
        _save_features(tmp / 'features_holistic' / f'{video}.npy', samples[0].holistic)
      for sample in samples:
        if not shared:
          _save_features(tmp / 'features_holistic' / f'{sample.name}.npy', sample.holistic)
        _save_features(tmp / 'features_partial' / f'{sample.name}.npy', sample.partial)
        lines = (','.join(dataset.classes[c] for c in np.flatnonzero(row)) for row in sample.labels)
        _write_lines(tmp / 'labels' / f'{sample.name}.txt', lines)
    for protocol, subsets in (splits or {}).items():
      for subset, names in subsets.items():
        path = _split_file(tmp, protocol, subset)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_lines(path, names)
  return root


def window_samples(
  samples: Sequence[ReferringSample], sample_frames: int | None
) -> list[ReferringSample]:
  """Cuts each sample into consecutive windows of `sample_frames` frames.

  Windows are named '<vid>__<person>@<start>' (start = first frame in the
  video) and hold views of the arrays. A remainder shorter than
  `sample_frames // 4` joins the previous window, a longer one is a window of
  its own; samples not longer than `sample_frames` stay as they are. None or
  0 means no windowing.
  """
  if not sample_frames:
    return list(samples)
  if sample_frames < 0:
    raise ValueError(f'sample_frames must be >= 0 or None, got {sample_frames}')
  windows = []
  for sample in samples:
    length = len(sample.partial)
    if length <= sample_frames:
      windows.append(sample)
      continue
    starts = list(range(0, length, sample_frames))
    if length - starts[-1] < sample_frames // 4:
      starts.pop()
    for begin, end in zip(starts, [*starts[1:], length], strict=True):
      start = sample.start + begin
      windows.append(
        dataclasses.replace(
          sample,
          name=f'{sample_name(sample.video, sample.person)}@{start}',
          holistic=sample.holistic[begin:end],
          partial=sample.partial[begin:end],
          labels=None if sample.labels is None else sample.labels[begin:end],
          start=start,
        )
      )
  return windows


def _read_split_files(
  root: pathlib.Path, protocol: str, units: Sequence[str]
) -> dict[str, list[str]] | None:
  """{subset: units} from `splits/<protocol>/*.txt`, or None when there are none; validated."""
  paths = {subset: _split_file(root, protocol, subset) for subset in REFERRING_SUBSETS}
  if not any(path.exists() for path in paths.values()):
    return None
  what = 'video' if protocol == 'cross_video' else 'sample'
  known, listed, subsets = set(units), {}, {}
  for subset, path in paths.items():
    subsets[subset] = []
    for line_no, line in enumerate(_read_text_lines(path, 'split'), start=1):
      if not line:
        continue
      if line not in known:
        raise DataError(f'{path}:{line_no}: unknown {what} {line!r}')
      if line in listed:
        first_path, first_line = listed[line]
        raise DataError(
          f'{path}:{line_no}: {what} {line!r} is already listed at {first_path}:{first_line}'
        )
      listed[line] = (path, line_no)
      subsets[subset].append(line)
  missing = [unit for unit in units if unit not in listed]
  if missing:
    raise DataError(
      f'{root / "splits" / protocol}: {len(missing)} {what}s in no subset, e.g. {missing[:3]}'
    )
  return subsets


def _partition(units: Sequence[str], seed: int, fractions: Sequence[float]) -> dict[str, list[str]]:
  """Seeded partition of `units` (>= 3) into train/val/test, each non-empty."""
  order = np.random.default_rng(seed).permutation(len(units))
  counts = [max(1, round(len(units) * f / sum(fractions))) for f in fractions[1:]]
  while len(units) - sum(counts) < 1:
    counts[int(np.argmax(counts))] -= 1
  bounds = np.cumsum([len(units) - sum(counts), *counts])
  parts = np.split(order, bounds[:-1])
  return {
    subset: [units[i] for i in sorted(part)]
    for subset, part in zip(REFERRING_SUBSETS, parts, strict=True)
  }


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


def split_referring(
  root: PathLike | None,
  samples: Sequence[ReferringSample],
  protocol: str,
  seed: int,
  fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> dict[str, list[ReferringSample]]:
  """{'train', 'val', 'test'}: lists of `samples` (input order kept).

  'cross_video' partitions videos (all samples of a video go to one subset),
  'random' partitions the (windowed) samples by name. Files
  `root/splits/<protocol>/{train,val,test}.txt` decide when they exist (lines:
  video ids or sample names; every unit exactly once); otherwise a partition
  seeded by `seed` with the given fractions, each subset non-empty.
  """
  _check_protocol(protocol)
  if len(fractions) != 3 or min(fractions) <= 0:
    raise ValueError(f'fractions must be 3 positive numbers (train, val, test), got {fractions}')
  names = [s.name for s in samples]
  if len(set(names)) != len(names):
    duplicate = next(n for n in names if names.count(n) > 1)
    raise ValueError(f'samples: sample name {duplicate!r} appears twice')
  if protocol == 'cross_video':
    units, unit_of = sorted({s.video for s in samples}), [s.video for s in samples]
  else:
    units, unit_of = sorted(names), names
  subsets = None if root is None else _read_split_files(pathlib.Path(root), protocol, units)
  if subsets is None:
    if len(units) < 3:
      where = 'split_referring' if root is None else pathlib.Path(root) / 'splits' / protocol
      what = 'videos' if protocol == 'cross_video' else 'samples'
      raise DataError(
        f'{where}: no split files, and {len(units)} {what} cannot be split into non-empty '
        f'train/val/test subsets (need >= 3)'
      )
    subsets = _partition(units, seed, fractions)
  subset_of = {unit: subset for subset, members in subsets.items() for unit in members}
  return {
    subset: [s for s, unit in zip(samples, unit_of, strict=True) if subset_of[unit] == subset]
    for subset in REFERRING_SUBSETS
  }


# ------------------------------------------------- two hands, two streams, transcripts --

HANDS = ('lh', 'rh')  # left hand, right hand: the columns of two-hands labels
STREAMS = ('rgb', 'flow')


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


@dataclasses.dataclass(kw_only=True)
class TranscriptVideo(Video):
  """A video with its transcript [N] int32: the class ids of its segments, in order.

  `labels` [T] (when read) is consistent with it; None for weakly supervised videos.
  """

  transcript: np.ndarray


def _read_mapping_as(root: pathlib.Path, classes: Sequence[str] | None) -> list[str]:
  """`root/mapping.txt`, checked against `classes` when given."""
  mapping_path = root / 'mapping.txt'
  mapping = read_mapping(mapping_path)
  if classes is not None and list(classes) != mapping:
    raise DataError(f'{mapping_path}: classes {mapping} differ from the expected {list(classes)}')
  return mapping


def _check_same_length(arrays: Sequence[tuple[pathlib.Path, np.ndarray]]) -> None:
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


def _read_streams(
  root: pathlib.Path,
  subset: str,
  split: int,
  classes: Sequence[str] | None,
  feature_paths: Callable[[str], dict[str, pathlib.Path]],
  label_paths: Callable[[str], list[pathlib.Path]],
  dims: Mapping[str, int | None],
  one_dim: bool,
  reference: str | None = None,
  length_tolerance: int = 0,
) -> MultiStreamDataset:
  """Videos of `splits/{subset}.split{split}.bundle` with features {stream: feature_paths(name)}
  and labels from label_paths(name) (one file: [T]; several: [T, H]). `one_dim`: all streams
  share D, else each stream has its own. All have one length T, or, with a `reference` stream,
  the others and the labels are aligned to its T within `length_tolerance` frames (`align_lengths`:
  features truncated or zero-padded, labels truncated or padded with the last label)."""
  mapping = _read_mapping_as(root, classes)
  videos, loaded = [], {stream: [] for stream in dims}
  for name in read_split(root, subset, split):
    features, arrays, files = {}, [], feature_paths(name)
    for stream, path in files.items():
      shared = next((x for p, x in arrays if p == path), None)  # one file for several streams
      features[stream] = read_features(path, dims[stream]) if shared is None else shared
      arrays.append((path, features[stream]))
    paths = label_paths(name)
    tracks = [read_labels(path, mapping) for path in paths]
    if reference is None:
      _check_same_length([*zip(paths, tracks), *arrays])
    else:
      aligned = align_lengths(
        name,
        (files[reference], len(features[reference])),
        [(path, x, 'constant') for path, x in arrays]
        + [(p, t, 'edge') for p, t in zip(paths, tracks)],
        length_tolerance,
      )
      features = dict(zip(features, aligned))
      tracks = aligned[len(features) :]
    for stream, x in features.items():
      loaded[stream].append((files[stream], x))
    labels = tracks[0] if len(tracks) == 1 else np.stack(tracks, axis=1)
    videos.append(MultiStreamVideo(name, features, labels))
  groups = [[x for pairs in loaded.values() for x in pairs]] if one_dim else loaded.values()
  for group in groups:
    _check_same_dim(group)
  return MultiStreamDataset(mapping, videos)


def read_two_hands(
  root: PathLike,
  subset: str,
  split: int,
  classes: Sequence[str] | None = None,
  input_dim: int | None = None,
) -> MultiStreamDataset:
  """Reads one subset of split `split` of a two-hands dataset.

  Labels `groundTruth/<hand>/<vid>.txt` become [T, 2] (columns HANDS); features come from
  `features/<hand>/<vid>.npy`, or from `features/<vid>.npy` shared by both hands when
  `features/lh/` does not exist. Both hands' labels and features have one length T and one D.
  """
  root = pathlib.Path(root)
  per_hand = (root / 'features' / HANDS[0]).is_dir()
  folder = {hand: root / 'features' / hand if per_hand else root / 'features' for hand in HANDS}
  return _read_streams(
    root,
    subset,
    split,
    classes,
    lambda name: {hand: folder[hand] / f'{name}.npy' for hand in HANDS},
    lambda name: [root / 'groundTruth' / hand / f'{name}.txt' for hand in HANDS],
    dict.fromkeys(HANDS, input_dim),
    one_dim=True,
  )


def read_two_streams(
  root: PathLike,
  subset: str,
  split: int,
  classes: Sequence[str] | None = None,
  rgb_dim: int | None = None,
  flow_dim: int | None = None,
  length_tolerance: int = 0,
) -> MultiStreamDataset:
  """Reads one subset of split `split` of a two-streams dataset: features {'rgb': [T, Drgb],
  'flow': [T, Dflow]} from `features_<stream>/<vid>.npy` (dimensions may differ), labels [T] from
  `groundTruth/<vid>.txt`.

  The flow length T is the reference: RGB features and labels that differ from it by at most
  `length_tolerance` frames are truncated, or padded (RGB with zeros, labels with the last label),
  with one warning per video; a larger difference is a DataError (0: lengths must be equal).
  """
  root = pathlib.Path(root)
  return _read_streams(
    root,
    subset,
    split,
    classes,
    lambda name: {stream: root / f'features_{stream}' / f'{name}.npy' for stream in STREAMS},
    lambda name: [root / 'groundTruth' / f'{name}.txt'],
    {'rgb': rgb_dim, 'flow': flow_dim},
    one_dim=False,
    reference='flow',
    length_tolerance=length_tolerance,
  )


def write_two_streams(
  root: PathLike, datasets: Mapping[str, MultiStreamDataset], split: int = 1
) -> pathlib.Path:
  """Writes {subset: MultiStreamDataset} as a two-streams dataset at `root`, atomically.

  Every video has features {'rgb': [T, Drgb], 'flow': [T, Dflow]} (one D per stream) and labels
  [T], saved as `features_<stream>/<vid>.npy` [D, T] float32 and `groundTruth/<vid>.txt`; subsets
  share the class list and have distinct videos. `root` must not exist yet (or be an empty
  folder). Returns `root`.
  """
  for subset, dataset in datasets.items():
    for video in dataset.videos:
      if sorted(video.features) != sorted(STREAMS):
        raise DataError(
          f'{root}: video {video.name!r} in {subset!r} has streams {sorted(video.features)}, '
          f'expected {sorted(STREAMS)}'
        )
  return _write_ms_tcn(
    root,
    datasets,
    split,
    lambda video: {f'features_{stream}': video.features[stream] for stream in STREAMS},
  )


def read_transcript(path: PathLike, classes: Sequence[str]) -> np.ndarray:
  """Transcript [N] int32 from a file with one action name per line, in order."""
  lines = _read_text_lines(path, 'transcript')
  if not lines:
    raise DataError(f'{path}: empty transcript (no actions)')
  class_ids = {name: i for i, name in enumerate(classes)}
  unknown = [(n, name) for n, name in enumerate(lines, start=1) if name not in class_ids]
  if unknown:
    line_no, name = unknown[0]
    raise DataError(f'{path}:{line_no}: action {name!r} is not in the class mapping')
  return np.asarray([class_ids[name] for name in lines], np.int32)


def segment_classes(labels: np.ndarray) -> np.ndarray:
  """The class of each segment of labels [T], in order: the transcript of the labels, [N]."""
  return labels[np.r_[0, np.flatnonzero(labels[1:] != labels[:-1]) + 1]]


def read_transcripts(
  root: PathLike,
  subset: str,
  split: int,
  classes: Sequence[str] | None = None,
  input_dim: int | None = None,
  labels: bool = True,
  names: Sequence[str] | None = None,
) -> Dataset:
  """Reads one subset of split `split` of a transcripts dataset as TranscriptVideos (only the
  videos `names` of it, when given).

  Features `features/<vid>.npy`, transcripts `transcripts/<vid>.txt` (no more actions than frames)
  and, if `labels`, `groundTruth/<vid>.txt`, whose segments must be the transcript; else labels
  are None (weak supervision).
  """
  root = pathlib.Path(root)
  mapping = _read_mapping_as(root, classes)
  videos, feature_paths = [], []
  for name in read_split(root, subset, split) if names is None else names:
    feature_path = root / 'features' / f'{name}.npy'
    transcript_path = root / 'transcripts' / f'{name}.txt'
    features = read_features(feature_path, input_dim)
    transcript = read_transcript(transcript_path, mapping)
    if len(transcript) > len(features):
      raise DataError(
        f'{transcript_path}: {len(transcript)} actions but {feature_path} has only '
        f'{len(features)} frames'
      )
    frame_labels = None
    if labels:
      label_path = root / 'groundTruth' / f'{name}.txt'
      frame_labels = read_labels(label_path, mapping)
      _check_same_length([(label_path, frame_labels), (feature_path, features)])
      segments = segment_classes(frame_labels)
      differ = [i for i, (a, b) in enumerate(zip(transcript, segments)) if a != b]
      if differ:
        i = differ[0]
        raise DataError(
          f'{transcript_path}:{i + 1}: action {mapping[transcript[i]]!r} but segment {i + 1} of '
          f'{label_path} is {mapping[segments[i]]!r}'
        )
      if len(segments) != len(transcript):
        raise DataError(
          f'{transcript_path}: {len(transcript)} actions but {label_path} has '
          f'{len(segments)} segments'
        )
    videos.append(TranscriptVideo(name, features, frame_labels, transcript=transcript))
    feature_paths.append((feature_path, features))
  _check_same_dim(feature_paths)
  return Dataset(mapping, videos)


# ------------------------------------------------- two hands with a shared stream (Polyphony) --

HAND_STREAMS = ('shared', *HANDS)  # stage-1 output: shared features and each hand's logits
_ROOT_ENTRIES = ('mapping.txt', 'splits', 'features', 'groundTruth')  # what write_two_hands owns


def read_hand_streams(
  root: PathLike,
  subset: str,
  split: int,
  classes: Sequence[str] | None = None,
  dims: Mapping[str, int | None] | None = None,
) -> MultiStreamDataset:
  """Reads one subset of split `split` of a two-hands dataset with a shared stream.

  Features {'shared': [T, Ds], 'lh': [T, C], 'rh': [T, C]} from `features/<stream>/<vid>.npy`
  (each hand's per-frame logits over the C classes of mapping.txt), labels [T, 2] (columns HANDS)
  from `groundTruth/<hand>/<vid>.txt`; all of one length T. `dims` {stream: D or None} checks the
  dimensions; by default lh and rh must have C.
  """
  root = pathlib.Path(root)
  unknown = sorted(set(dims or {}) - set(HAND_STREAMS))
  if unknown:
    raise ValueError(f'dims: unknown streams {unknown}, expected some of {HAND_STREAMS}')
  mapping = _read_mapping_as(root, classes)
  expected = {'shared': None, **dict.fromkeys(HANDS, len(mapping)), **(dims or {})}
  return _read_streams(
    root,
    subset,
    split,
    mapping,
    lambda name: {stream: root / 'features' / stream / f'{name}.npy' for stream in HAND_STREAMS},
    lambda name: [root / 'groundTruth' / hand / f'{name}.txt' for hand in HANDS],
    expected,
    one_dim=False,
  )


def _check_class_names(root: pathlib.Path, classes: Sequence[str]) -> None:
  """DataError unless `classes` can be written to mapping.txt and label files and read back."""
  if not classes:
    raise DataError(f'{root}: no classes to write')
  for name in classes:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
      raise DataError(f'{root}: class name {name!r} must be non-empty text without outer spaces')
    if any(c in name for c in '\n\r\0'):
      raise DataError(f'{root}: class name {name!r} cannot be written on one line')
  duplicates = sorted({name for name in classes if list(classes).count(name) > 1})
  if duplicates:
    raise DataError(f'{root}: duplicate class names {duplicates}')


def _check_hand_video(
  where: str, video: MultiStreamVideo, num_classes: int, dims: dict[str, int | None]
) -> None:
  """DataError unless `video` has labels [T, 2] in [0, C) and finite features {folder: [T, D]}
  whose folders and dimensions are `dims` (filled from the first video when empty)."""
  labels = video.labels
  if labels is None:
    raise DataError(f'{where} has no labels')
  if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f'{where}: labels must be an integer array, got {type(labels).__name__}')
  if labels.ndim != 2 or labels.shape[1] != len(HANDS) or not len(labels):
    raise DataError(
      f'{where}: labels must have shape [T, {len(HANDS)}], T >= 1, got {labels.shape}'
    )
  if labels.min() < 0 or labels.max() >= num_classes:
    raise DataError(
      f'{where}: label ids in [{labels.min()}, {labels.max()}] outside [0, {num_classes})'
    )
  if not video.features:
    raise DataError(f'{where} has no features')
  if not dims:
    for folder in video.features:
      _check_id(where, 'feature folder', folder)
    dims.update({folder: None for folder in video.features})
  if sorted(video.features) != sorted(dims):
    raise DataError(
      f'{where}: feature streams {sorted(video.features)} differ from the first video '
      f'{sorted(dims)}'
    )
  _check_features(where, video.features, len(labels), dims)


def write_two_hands(
  root: PathLike,
  classes: Sequence[str],
  splits: Mapping[str, Sequence[str]],
  videos: Iterable[MultiStreamVideo],
  split: int = 1,
  extra_files: Mapping[str, bytes] | None = None,
  video_arrays: Callable[[MultiStreamVideo], Mapping[str, np.ndarray]] | None = None,
) -> pathlib.Path:
  """Writes a complete two-hands dataset root at `root`, atomically; returns `root`.

  `mapping.txt` from `classes`; `splits/<subset>.split<split>.bundle` from `splits` {subset:
  video names} (disjoint subsets, each non-empty); per video, labels [T, 2] (columns HANDS) to
  `groundTruth/<hand>/<vid>.txt` and every `features[folder]` [T, D] to
  `features/<folder>/<vid>.npy` as [D, T] float32; `extra_files` {name: bytes} at the root (e.g.
  'mas.json'); `video_arrays(video)` {folder: array}, if given, saved unchanged as
  `<folder>/<vid>.npy` (e.g. {'videos': frames [T, H, W, 3] uint8}, first axis T). `videos` is
  consumed once, one video at a time; it must hold exactly the videos of `splits`, with the same
  feature folders and dimensions. `root` must not exist yet (or be an empty folder).
  """
  root = pathlib.Path(root)
  classes = list(classes)
  _check_class_names(root, classes)
  if not splits:
    raise DataError(f'{root}: no split subsets to write')
  subset_of = {}
  for subset, names in splits.items():
    _check_id(root, 'subset', subset)
    if not names:
      raise DataError(f'{root}: split subset {subset!r} lists no videos')
    for name in names:
      _check_id(f'{root}: subset {subset!r}', 'video', name)
      if name in subset_of:
        raise DataError(
          f'{root}: video {name!r} is listed in both {subset_of[name]!r} and {subset!r}'
        )
      subset_of[name] = subset
  for name in extra_files or {}:
    _check_id(root, 'extra file', name)
    if name in _ROOT_ENTRIES:
      raise DataError(f'{root}: extra file {name!r} would replace part of the dataset')
  with _atomic_dir(root) as tmp:
    for hand in HANDS:
      (tmp / 'groundTruth' / hand).mkdir(parents=True)
    (tmp / 'splits').mkdir()
    _write_mapping(tmp / 'mapping.txt', classes)
    for subset, names in splits.items():
      _write_lines(split_path(tmp, subset, split), (f'{name}.txt' for name in names))
    for name, data in (extra_files or {}).items():
      (tmp / name).write_bytes(data)
    written, dims = set(), {}
    for video in videos:
      where = f'{root}: video {video.name!r}'
      if video.name not in subset_of:
        raise DataError(f'{where} is in no split subset')
      if video.name in written:
        raise DataError(f'{where} is given twice')
      _check_hand_video(where, video, len(classes), dims)
      for folder, features in video.features.items():
        (tmp / 'features' / folder).mkdir(parents=True, exist_ok=True)
        _save_features(tmp / 'features' / folder / f'{video.name}.npy', np.asarray(features))
      for hand, column in zip(HANDS, video.labels.T, strict=True):
        _write_lines(tmp / 'groundTruth' / hand / f'{video.name}.txt', (classes[c] for c in column))
      for folder, array in (video_arrays(video) if video_arrays else {}).items():
        _check_id(where, 'array folder', folder)
        array = np.asarray(array)
        if folder in _ROOT_ENTRIES or folder in (extra_files or {}):
          raise DataError(f'{where}: array folder {folder!r} would replace part of the dataset')
        if array.dtype.hasobject or array.ndim < 1 or len(array) != len(video.labels):
          raise DataError(
            f'{where}: array {folder!r} ({array.dtype}, shape {array.shape}) must be numeric '
            f'with T = {len(video.labels)} first'
          )
        (tmp / folder).mkdir(exist_ok=True)
        np.save(tmp / folder / f'{video.name}.npy', array, allow_pickle=False)
      written.add(video.name)
    missing = [name for name in subset_of if name not in written]
    if missing:
      raise DataError(
        f'{root}: {len(missing)} videos of the splits were not given, e.g. {missing[:3]}'
      )
  return root

"""The referring layout: one sample per referred person of a video; multi-label::

    mapping.txt                            action classes (no background class needed)
    references.json                        {"<vid>": {"<person>": "text"}}: defines the samples
    features_holistic/<vid>__<person>.npy  [Dh, T] cross-modal features, used when present,
    features_holistic/<vid>.npy            else [Dh, T] shared by all persons of the video
    features_partial/<vid>__<person>.npy   [Dp, T] the person's crop features
    labels/<vid>__<person>.txt             T lines, each zero or more class names separated by
                                           commas (empty line = no action / person absent)
    splits/<protocol>/<subset>.txt         optional; protocol cross_video (lines = video ids)
                                           or random (lines = sample names); subset train/val/test

Also the samples' splits (`split_referring`) and their fixed-length windows (`window_samples`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

from polyseg.data.formats import base

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
      raise base.DataError('referring dataset has no samples, so no feature dimensions')
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


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
  """json object hook that refuses duplicate keys."""
  result = {}
  for key, value in pairs:
    if key in result:
      raise base.DataError(f'duplicate key {key!r}')
    result[key] = value
  return result


def read_references(path: base.PathLike) -> dict[str, dict[str, str]]:
  """{video: {person: text}} from `references.json`, validated."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise base.DataError(f'{path}: references file not found')
  text = base.read_utf8(path)
  try:
    references = json.loads(text, object_pairs_hook=_unique_keys)
  except json.JSONDecodeError as e:
    raise base.DataError(f'{path}:{e.lineno}: not valid JSON ({e.msg})') from None
  except base.DataError as e:
    raise base.DataError(f'{path}: {e}') from None
  if not isinstance(references, dict) or not references:
    raise base.DataError(f'{path}: expected a non-empty object {{"<vid>": {{"<person>": "text"}}}}')
  for video, persons in references.items():
    base.check_id(path, 'video', video)
    if not isinstance(persons, dict) or not persons:
      raise base.DataError(
        f'{path}: video {video!r}: expected a non-empty object {{"<person>": "text"}}, '
        f'got {persons!r:.60}'
      )
    for person, reference in persons.items():
      base.check_id(path, 'person', person)
      if not isinstance(reference, str) or not reference.strip():
        raise base.DataError(
          f'{path}: video {video!r}, person {person!r}: reference must be non-empty text, '
          f'got {reference!r:.60}'
        )
  return references


def read_multilabels(path: base.PathLike, classes: Sequence[str]) -> np.ndarray:
  """Multi-hot labels [T, C] bool: one line per frame, class names separated by commas.

  An empty line is a frame without action; trailing empty lines are frames too
  (every line, the last included, ends with a newline, which may be missing on
  the last one; '\\r\\n' is accepted).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise base.DataError(f'{path}: label file not found')
  text = base.read_utf8(path)
  lines = text.split('\n')
  if lines[-1] == '':  # the newline that ends the last frame
    lines.pop()
  if not lines:
    raise base.DataError(f'{path}: empty label file (T = 0 frames)')
  class_ids = {name: i for i, name in enumerate(classes)}
  labels = np.zeros((len(lines), len(classes)), bool)
  for line_no, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    for name in (part.strip() for part in line.split(',')):
      if not name:
        raise base.DataError(f'{path}:{line_no}: empty label name in {line.strip()!r}')
      if name not in class_ids:
        raise base.DataError(f'{path}:{line_no}: label {name!r} is not in the class mapping')
      if labels[line_no - 1, class_ids[name]]:
        raise base.DataError(f'{path}:{line_no}: label {name!r} appears twice on the line')
      labels[line_no - 1, class_ids[name]] = True
  return labels


def _referring_classes(
  root: pathlib.Path, classes: Sequence[str] | None, labels: bool
) -> list[str]:
  """The mapping (checked against `classes`), or `classes` when unlabelled data has no mapping."""
  mapping_path = root / 'mapping.txt'
  if not labels and classes is not None and not mapping_path.exists():
    return list(classes)
  mapping = base.read_mapping(mapping_path)
  if classes is not None and list(classes) != mapping:
    raise base.DataError(
      f'{mapping_path}: classes {mapping} differ from the expected {list(classes)}'
    )
  return mapping


def read_referring(
  root: base.PathLike,
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
        raise base.DataError(
          f'{candidates[0]}: holistic feature file not found (also tried {candidates[1]})'
        )
      if holistic_path not in holistic_loaded:
        holistic_loaded[holistic_path] = base.read_features(holistic_path, holistic_dim)
      holistic = holistic_loaded[holistic_path]
      partial_path = root / 'features_partial' / f'{name}.npy'
      partial = base.read_features(partial_path, partial_dim)
      partial_loaded.append((partial_path, partial))
      if len(partial) != len(holistic):
        raise base.DataError(
          f'{partial_path}: {len(partial)} frames but {holistic_path} has {len(holistic)} frames'
        )
      multi_hot = None
      if labels:
        label_path = root / 'labels' / f'{name}.txt'
        multi_hot = read_multilabels(label_path, class_names)
        if len(multi_hot) != len(partial):
          raise base.DataError(
            f'{label_path}: {len(multi_hot)} label lines but {partial_path} has '
            f'{len(partial)} frames'
          )
      samples.append(
        ReferringSample(
          name, video, person, references[video][person], holistic, partial, multi_hot
        )
      )
  base.check_same_dim(list(holistic_loaded.items()))
  base.check_same_dim(partial_loaded)
  return ReferringDataset(class_names, samples)


def _check_referring_writable(root: pathlib.Path, dataset: ReferringDataset) -> None:
  """DataError unless `dataset` can be written as (and read back from) the referring layout."""
  if not dataset.samples:
    raise base.DataError(f'{root}: no samples to write')
  for name in dataset.classes:
    if not name.strip() or name != name.strip() or any(c in name for c in ',\n\r'):
      raise base.DataError(f'{root}: class name {name!r} cannot be written in a label file')
  seen = set()
  for sample in dataset.samples:
    where = f'{root}: sample {sample.name!r}'
    base.check_id(where, 'video', sample.video)
    base.check_id(where, 'person', sample.person)
    if sample.name != sample_name(sample.video, sample.person) or sample.start != 0:
      raise base.DataError(f'{where} is not a full-length sample (a window?); write whole samples')
    if sample.name in seen:
      raise base.DataError(f'{where} appears twice')
    seen.add(sample.name)
    if not sample.reference.strip():
      raise base.DataError(f'{where} has an empty reference')
    length = len(sample.partial)
    if sample.labels is None:
      raise base.DataError(f'{where} has no labels')
    if (
      sample.holistic.ndim != 2
      or sample.partial.ndim != 2
      or len(sample.holistic) != length
      or sample.labels.shape != (length, len(dataset.classes))
    ):
      raise base.DataError(
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
  root: base.PathLike,
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
        raise base.DataError(
          f'{root}: split subset must be one of {REFERRING_SUBSETS}, got {subset!r}'
        )
  by_video: dict[str, list[ReferringSample]] = {}
  for sample in dataset.samples:
    by_video.setdefault(sample.video, []).append(sample)
  references = {
    video: {s.person: s.reference for s in samples} for video, samples in by_video.items()
  }
  with base.atomic_dir(root) as tmp:
    for folder in ('features_holistic', 'features_partial', 'labels'):
      (tmp / folder).mkdir()
    base.write_mapping(tmp / 'mapping.txt', dataset.classes)
    (tmp / 'references.json').write_text(
      json.dumps(references, indent=2, sort_keys=True, ensure_ascii=False) + '\n', encoding='utf-8'
    )
    for video, samples in by_video.items():
      shared = all(np.array_equal(s.holistic, samples[0].holistic) for s in samples[1:])
      if shared:
        base.save_features(tmp / 'features_holistic' / f'{video}.npy', samples[0].holistic)
      for sample in samples:
        if not shared:
          base.save_features(tmp / 'features_holistic' / f'{sample.name}.npy', sample.holistic)
        base.save_features(tmp / 'features_partial' / f'{sample.name}.npy', sample.partial)
        lines = (','.join(dataset.classes[c] for c in np.flatnonzero(row)) for row in sample.labels)
        base.write_lines(tmp / 'labels' / f'{sample.name}.txt', lines)
    for protocol, subsets in (splits or {}).items():
      for subset, names in subsets.items():
        path = _split_file(tmp, protocol, subset)
        path.parent.mkdir(parents=True, exist_ok=True)
        base.write_lines(path, names)
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
    for line_no, line in enumerate(base.read_text_lines(path, 'split'), start=1):
      if not line:
        continue
      if line not in known:
        raise base.DataError(f'{path}:{line_no}: unknown {what} {line!r}')
      if line in listed:
        first_path, first_line = listed[line]
        raise base.DataError(
          f'{path}:{line_no}: {what} {line!r} is already listed at {first_path}:{first_line}'
        )
      listed[line] = (path, line_no)
      subsets[subset].append(line)
  missing = [unit for unit in units if unit not in listed]
  if missing:
    raise base.DataError(
      f'{root / "splits" / protocol}: {len(missing)} {what}s in no subset, e.g. {missing[:3]}'
    )
  return subsets


def partition(units: Sequence[str], seed: int, fractions: Sequence[float]) -> dict[str, list[str]]:
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


def split_referring(
  root: base.PathLike | None,
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
      raise base.DataError(
        f'{where}: no split files, and {len(units)} {what} cannot be split into non-empty '
        f'train/val/test subsets (need >= 3)'
      )
    subsets = partition(units, seed, fractions)
  subset_of = {unit: subset for subset, members in subsets.items() for unit in members}
  return {
    subset: [s for s, unit in zip(samples, unit_of, strict=True) if subset_of[unit] == subset]
    for subset in REFERRING_SUBSETS
  }

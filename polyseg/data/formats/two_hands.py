"""The two-hands layouts (Polyphony): the single-stream layout with a track per hand::

    groundTruth/<hand>/<vid>.txt   T lines per hand, hand in HANDS = (lh, rh)
    features/<hand>/<vid>.npy      [D, T] per hand, or features/<vid>.npy shared by both
    features/shared/<vid>.npy      with a shared stream (read_hand_streams, stage 1's output):
                                   [Ds, T], and features/<hand>/ hold logits [C, T]

Both hands share mapping.txt and splits/; `write_two_hands` writes either form.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

from polyseg.data.formats import base
from polyseg.data.formats import two_streams

HANDS = ('lh', 'rh')  # left hand, right hand: the columns of two-hands labels


def read_two_hands(
  root: base.PathLike,
  subset: str,
  split: int,
  classes: Sequence[str] | None = None,
  input_dim: int | None = None,
) -> base.MultiStreamDataset:
  """Reads one subset of split `split` of a two-hands dataset.

  Labels `groundTruth/<hand>/<vid>.txt` become [T, 2] (columns HANDS); features come from
  `features/<hand>/<vid>.npy`, or from `features/<vid>.npy` shared by both hands when
  `features/lh/` does not exist. Both hands' labels and features have one length T and one D.
  """
  root = pathlib.Path(root)
  per_hand = (root / 'features' / HANDS[0]).is_dir()
  folder = {hand: root / 'features' / hand if per_hand else root / 'features' for hand in HANDS}
  return two_streams.read_streams(
    root,
    subset,
    split,
    classes,
    lambda name: {hand: folder[hand] / f'{name}.npy' for hand in HANDS},
    lambda name: [root / 'groundTruth' / hand / f'{name}.txt' for hand in HANDS],
    dict.fromkeys(HANDS, input_dim),
    one_dim=True,
  )


HAND_STREAMS = ('shared', *HANDS)  # stage-1 output: shared features and each hand's logits


_ROOT_ENTRIES = ('mapping.txt', 'splits', 'features', 'groundTruth')  # what write_two_hands owns


def read_hand_streams(
  root: base.PathLike,
  subset: str,
  split: int,
  classes: Sequence[str] | None = None,
  dims: Mapping[str, int | None] | None = None,
) -> base.MultiStreamDataset:
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
  mapping = base.read_mapping_as(root, classes)
  expected = {'shared': None, **dict.fromkeys(HANDS, len(mapping)), **(dims or {})}
  return two_streams.read_streams(
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
    raise base.DataError(f'{root}: no classes to write')
  for name in classes:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
      raise base.DataError(
        f'{root}: class name {name!r} must be non-empty text without outer spaces'
      )
    if any(c in name for c in '\n\r\0'):
      raise base.DataError(f'{root}: class name {name!r} cannot be written on one line')
  duplicates = sorted({name for name in classes if list(classes).count(name) > 1})
  if duplicates:
    raise base.DataError(f'{root}: duplicate class names {duplicates}')


def _check_hand_video(
  where: str, video: base.MultiStreamVideo, num_classes: int, dims: dict[str, int | None]
) -> None:
  """DataError unless `video` has labels [T, 2] in [0, C) and finite features {folder: [T, D]}
  whose folders and dimensions are `dims` (filled from the first video when empty)."""
  labels = video.labels
  if labels is None:
    raise base.DataError(f'{where} has no labels')
  if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
    raise base.DataError(f'{where}: labels must be an integer array, got {type(labels).__name__}')
  if labels.ndim != 2 or labels.shape[1] != len(HANDS) or not len(labels):
    raise base.DataError(
      f'{where}: labels must have shape [T, {len(HANDS)}], T >= 1, got {labels.shape}'
    )
  if labels.min() < 0 or labels.max() >= num_classes:
    raise base.DataError(
      f'{where}: label ids in [{labels.min()}, {labels.max()}] outside [0, {num_classes})'
    )
  if not video.features:
    raise base.DataError(f'{where} has no features')
  if not dims:
    for folder in video.features:
      base.check_id(where, 'feature folder', folder)
    dims.update({folder: None for folder in video.features})
  if sorted(video.features) != sorted(dims):
    raise base.DataError(
      f'{where}: feature streams {sorted(video.features)} differ from the first video '
      f'{sorted(dims)}'
    )
  base.check_features(where, video.features, len(labels), dims)


def write_two_hands(
  root: base.PathLike,
  classes: Sequence[str],
  splits: Mapping[str, Sequence[str]],
  videos: Iterable[base.MultiStreamVideo],
  split: int = 1,
  extra_files: Mapping[str, bytes] | None = None,
  video_arrays: Callable[[base.MultiStreamVideo], Mapping[str, np.ndarray]] | None = None,
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
    raise base.DataError(f'{root}: no split subsets to write')
  subset_of = {}
  for subset, names in splits.items():
    base.check_id(root, 'subset', subset)
    if not names:
      raise base.DataError(f'{root}: split subset {subset!r} lists no videos')
    for name in names:
      base.check_id(f'{root}: subset {subset!r}', 'video', name)
      if name in subset_of:
        raise base.DataError(
          f'{root}: video {name!r} is listed in both {subset_of[name]!r} and {subset!r}'
        )
      subset_of[name] = subset
  for name in extra_files or {}:
    base.check_id(root, 'extra file', name)
    if name in _ROOT_ENTRIES:
      raise base.DataError(f'{root}: extra file {name!r} would replace part of the dataset')
  with base.atomic_dir(root) as tmp:
    for hand in HANDS:
      (tmp / 'groundTruth' / hand).mkdir(parents=True)
    (tmp / 'splits').mkdir()
    base.write_mapping(tmp / 'mapping.txt', classes)
    for subset, names in splits.items():
      base.write_lines(base.split_path(tmp, subset, split), (f'{name}.txt' for name in names))
    for name, data in (extra_files or {}).items():
      (tmp / name).write_bytes(data)
    written, dims = set(), {}
    for video in videos:
      where = f'{root}: video {video.name!r}'
      if video.name not in subset_of:
        raise base.DataError(f'{where} is in no split subset')
      if video.name in written:
        raise base.DataError(f'{where} is given twice')
      _check_hand_video(where, video, len(classes), dims)
      for folder, features in video.features.items():
        (tmp / 'features' / folder).mkdir(parents=True, exist_ok=True)
        base.save_features(tmp / 'features' / folder / f'{video.name}.npy', np.asarray(features))
      for hand, column in zip(HANDS, video.labels.T, strict=True):
        base.write_lines(
          tmp / 'groundTruth' / hand / f'{video.name}.txt', (classes[c] for c in column)
        )
      for folder, array in (video_arrays(video) if video_arrays else {}).items():
        base.check_id(where, 'array folder', folder)
        array = np.asarray(array)
        if folder in _ROOT_ENTRIES or folder in (extra_files or {}):
          raise base.DataError(
            f'{where}: array folder {folder!r} would replace part of the dataset'
          )
        if array.dtype.hasobject or array.ndim < 1 or len(array) != len(video.labels):
          raise base.DataError(
            f'{where}: array {folder!r} ({array.dtype}, shape {array.shape}) must be numeric '
            f'with T = {len(video.labels)} first'
          )
        (tmp / folder).mkdir(exist_ok=True)
        np.save(tmp / folder / f'{video.name}.npy', array, allow_pickle=False)
      written.add(video.name)
    missing = [name for name in subset_of if name not in written]
    if missing:
      raise base.DataError(
        f'{root}: {len(missing)} videos of the splits were not given, e.g. {missing[:3]}'
      )
  return root

"""The single-stream (MS-TCN) layout under a dataset root::

    mapping.txt                      lines "<id> <name>", ids 0..C-1 in order
    features/<vid>.npy               [D, T] numeric array (never pickled)
    groundTruth/<vid>.txt            T lines, one class name per frame
    splits/<subset>.split<k>.bundle  one "<vid>.txt" (or "<vid>") per line

`write_ms_tcn` writes it for every layout of this family (two streams, transcripts too).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

from polyseg.data.formats import base


def read_single_stream(
  root: base.PathLike,
  subset: str,
  split: int,
  classes: Sequence[str] | None = None,
  input_dim: int | None = None,
) -> base.Dataset:
  """Reads one subset ('train'/'test') of split `split` of an MS-TCN-layout dataset."""
  root = pathlib.Path(root)
  mapping_path = root / 'mapping.txt'
  mapping = base.read_mapping(mapping_path)
  if classes is not None and list(classes) != mapping:
    raise base.DataError(
      f'{mapping_path}: classes {mapping} differ from the expected {list(classes)}'
    )
  videos, feature_paths = [], []
  for name in base.read_split(root, subset, split):
    feature_path = root / 'features' / f'{name}.npy'
    label_path = root / 'groundTruth' / f'{name}.txt'
    features = base.read_features(feature_path, input_dim)
    labels = base.read_labels(label_path, mapping)
    if len(labels) != len(features):
      raise base.DataError(
        f'{label_path}: {len(labels)} labels but {feature_path} has {len(features)} frames'
      )
    videos.append(base.Video(name, features, labels))
    feature_paths.append((feature_path, features))
  base.check_same_dim(feature_paths)
  return base.Dataset(mapping, videos)


def read_feature_folder(
  folder: base.PathLike, input_dim: int | None = None
) -> list[tuple[str, np.ndarray]]:
  """(name, features [T, D] float32) for every `*.npy` in `folder`, sorted by name."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise base.DataError(f'{folder}: feature folder not found')
  paths = sorted(folder.glob('*.npy'))
  if not paths:
    raise base.DataError(f'{folder}: no .npy feature files')
  loaded = [(path, base.read_features(path, input_dim)) for path in paths]
  base.check_same_dim(loaded)
  return [(path.stem, features) for path, features in loaded]


def write_ms_tcn(
  root: base.PathLike,
  datasets: Mapping[str, base.Dataset | base.MultiStreamDataset],
  split: int,
  feature_files: Callable[[base.Video | base.MultiStreamVideo], Mapping[str, np.ndarray]],
  transcripts: bool = False,
) -> pathlib.Path:
  """Writes {subset: dataset} in the MS-TCN layout at `root`, atomically: mapping.txt, splits/,
  groundTruth/<vid>.txt (and with `transcripts`, transcripts/<vid>.txt: the classes of the label
  segments, in order) and every {folder: features [T, D]} of `feature_files(video)` as
  `<folder>/<vid>.npy`. Subsets share the class list and have distinct videos with labels [T]
  in [0, C); each folder has one D. Returns `root`."""
  root = pathlib.Path(root)
  if not datasets:
    raise base.DataError(f'{root}: no subsets to write')
  classes = next(iter(datasets.values())).classes
  seen, dims = {}, {}
  for subset, dataset in datasets.items():
    if dataset.classes != classes:
      raise base.DataError(
        f'{root}: subset {subset!r} has classes {dataset.classes}, expected {classes}'
      )
    for video in dataset.videos:
      where = f'{root}: video {video.name!r} in {subset!r}'
      if video.name in seen:
        raise base.DataError(
          f'{root}: video {video.name!r} appears in both {seen[video.name]!r} and {subset!r}'
        )
      if video.labels is None:
        raise base.DataError(f'{where} has no labels')
      labels = np.asarray(video.labels)
      if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or not len(labels):
        raise base.DataError(f'{where}: labels must be integers [T], T >= 1, got {labels.shape}')
      if labels.min() < 0 or labels.max() >= len(classes):
        raise base.DataError(
          f'{where}: label ids in [{labels.min()}, {labels.max()}] outside [0, {len(classes)})'
        )
      base.check_features(where, feature_files(video), len(labels), dims)
      seen[video.name] = subset
  with base.atomic_dir(root) as tmp:
    for folder in (*dims, 'groundTruth', 'splits', *(['transcripts'] if transcripts else [])):
      (tmp / folder).mkdir()
    base.write_mapping(tmp / 'mapping.txt', classes)
    for subset, dataset in datasets.items():
      base.write_lines(
        base.split_path(tmp, subset, split), (f'{v.name}.txt' for v in dataset.videos)
      )
      for video in dataset.videos:
        for folder, features in feature_files(video).items():
          base.save_features(tmp / folder / f'{video.name}.npy', np.asarray(features))
        base.write_lines(
          tmp / 'groundTruth' / f'{video.name}.txt', (classes[c] for c in video.labels)
        )
        if transcripts:
          base.write_lines(
            tmp / 'transcripts' / f'{video.name}.txt',
            (classes[c] for c in base.segment_classes(np.asarray(video.labels))),
          )
  return root


def write_single_stream(
  root: base.PathLike,
  datasets: Mapping[str, base.Dataset],
  split: int = 1,
  transcripts: bool = False,
) -> pathlib.Path:
  """Writes {subset: Dataset} as an MS-TCN-layout dataset at `root`, atomically (with
  `transcripts/` derived from the labels when `transcripts`).

  All subsets must share the class list and have distinct, labelled videos;
  `root` must not exist yet (or be an empty folder). Returns `root`.
  """
  return write_ms_tcn(
    root, datasets, split, lambda video: {'features': video.features}, transcripts
  )

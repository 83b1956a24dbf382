"""The two-streams layout (2s-DAS): the single-stream layout with two feature folders::

    features_rgb/<vid>.npy     [Drgb, T] (groundTruth/<vid>.txt, mapping.txt, splits/ as single stream)
    features_flow/<vid>.npy    [Dflow, T]; RGB and labels may differ from the flow length by
                               `length_tolerance` frames

The streams' lengths are aligned on reading (`base.align_lengths`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

from polyseg.data.formats import base
from polyseg.data.formats import single_stream

STREAMS = ('rgb', 'flow')


def read_streams(
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
) -> base.MultiStreamDataset:
  """Videos of `splits/{subset}.split{split}.bundle` with features {stream: feature_paths(name)}
  and labels from label_paths(name) (one file: [T]; several: [T, H]). `one_dim`: all streams
  share D, else each stream has its own. All have one length T, or, with a `reference` stream,
  the others and the labels are aligned to its T within `length_tolerance` frames (`align_lengths`:
  features truncated or zero-padded, labels truncated or padded with the last label)."""
  mapping = base.read_mapping_as(root, classes)
  videos, loaded = [], {stream: [] for stream in dims}
  for name in base.read_split(root, subset, split):
    features, arrays, files = {}, [], feature_paths(name)
    for stream, path in files.items():
      shared = next((x for p, x in arrays if p == path), None)  # one file for several streams
      features[stream] = base.read_features(path, dims[stream]) if shared is None else shared
      arrays.append((path, features[stream]))
    paths = label_paths(name)
    tracks = [base.read_labels(path, mapping) for path in paths]
    if reference is None:
      base.check_same_length([*zip(paths, tracks), *arrays])
    else:
      aligned = base.align_lengths(
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
    videos.append(base.MultiStreamVideo(name, features, labels))
  groups = [[x for pairs in loaded.values() for x in pairs]] if one_dim else loaded.values()
  for group in groups:
    base.check_same_dim(group)
  return base.MultiStreamDataset(mapping, videos)


def read_two_streams(
  root: base.PathLike,
  subset: str,
  split: int,
  classes: Sequence[str] | None = None,
  rgb_dim: int | None = None,
  flow_dim: int | None = None,
  length_tolerance: int = 0,
) -> base.MultiStreamDataset:
  """Reads one subset of split `split` of a two-streams dataset: features {'rgb': [T, Drgb],
  'flow': [T, Dflow]} from `features_<stream>/<vid>.npy` (dimensions may differ), labels [T] from
  `groundTruth/<vid>.txt`.

  The flow length T is the reference: RGB features and labels that differ from it by at most
  `length_tolerance` frames are truncated, or padded (RGB with zeros, labels with the last label),
  with one warning per video; a larger difference is a DataError (0: lengths must be equal).
  """
  root = pathlib.Path(root)
  return read_streams(
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
  root: base.PathLike, datasets: Mapping[str, base.MultiStreamDataset], split: int = 1
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
        raise base.DataError(
          f'{root}: video {video.name!r} in {subset!r} has streams {sorted(video.features)}, '
          f'expected {sorted(STREAMS)}'
        )
  return single_stream.write_ms_tcn(
    root,
    datasets,
    split,
    lambda video: {f'features_{stream}': video.features[stream] for stream in STREAMS},
  )

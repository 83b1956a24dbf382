"""The transcripts layout (HAL's weak supervision): the single-stream layout plus::

    transcripts/<vid>.txt   the video's actions in order, one per line (features/ and,
                            optionally, groundTruth/ as in the single-stream layout)

A transcript is checked against the labels when both are present.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np

from polyseg.data.formats import base


@dataclasses.dataclass(kw_only=True)
class TranscriptVideo(base.Video):
  """A video with its transcript [N] int32: the class ids of its segments, in order.

  `labels` [T] (when read) is consistent with it; None for weakly supervised videos.
  """

  transcript: np.ndarray


def read_transcript(path: base.PathLike, classes: Sequence[str]) -> np.ndarray:
  """Transcript [N] int32 from a file with one action name per line, in order."""
  lines = base.read_text_lines(path, 'transcript')
  if not lines:
    raise base.DataError(f'{path}: empty transcript (no actions)')
  class_ids = {name: i for i, name in enumerate(classes)}
  unknown = [(n, name) for n, name in enumerate(lines, start=1) if name not in class_ids]
  if unknown:
    line_no, name = unknown[0]
    raise base.DataError(f'{path}:{line_no}: action {name!r} is not in the class mapping')
  return np.asarray([class_ids[name] for name in lines], np.int32)


def read_transcripts(
  root: base.PathLike,
  subset: str,
  split: int,
  classes: Sequence[str] | None = None,
  input_dim: int | None = None,
  labels: bool = True,
  names: Sequence[str] | None = None,
) -> base.Dataset:
  """Reads one subset of split `split` of a transcripts dataset as TranscriptVideos (only the
  videos `names` of it, when given).

  Features `features/<vid>.npy`, transcripts `transcripts/<vid>.txt` (no more actions than frames)
  and, if `labels`, `groundTruth/<vid>.txt`, whose segments must be the transcript; else labels
  are None (weak supervision).
  """
  root = pathlib.Path(root)
  mapping = base.read_mapping_as(root, classes)
  videos, feature_paths = [], []
  for name in base.read_split(root, subset, split) if names is None else names:
    feature_path = root / 'features' / f'{name}.npy'
    transcript_path = root / 'transcripts' / f'{name}.txt'
    features = base.read_features(feature_path, input_dim)
    transcript = read_transcript(transcript_path, mapping)
    if len(transcript) > len(features):
      raise base.DataError(
        f'{transcript_path}: {len(transcript)} actions but {feature_path} has only '
        f'{len(features)} frames'
      )
    frame_labels = None
    if labels:
      label_path = root / 'groundTruth' / f'{name}.txt'
      frame_labels = base.read_labels(label_path, mapping)
      base.check_same_length([(label_path, frame_labels), (feature_path, features)])
      segments = base.segment_classes(frame_labels)
      differ = [i for i, (a, b) in enumerate(zip(transcript, segments)) if a != b]
      if differ:
        i = differ[0]
        raise base.DataError(
          f'{transcript_path}:{i + 1}: action {mapping[transcript[i]]!r} but segment {i + 1} of '
          f'{label_path} is {mapping[segments[i]]!r}'
        )
      if len(segments) != len(transcript):
        raise base.DataError(
          f'{transcript_path}: {len(transcript)} actions but {label_path} has '
          f'{len(segments)} segments'
        )
    videos.append(TranscriptVideo(name, features, frame_labels, transcript=transcript))
    feature_paths.append((feature_path, features))
  base.check_same_dim(feature_paths)
  return base.Dataset(mapping, videos)

"""The statistics of a dataset's splits, for a dataset check (`polyseg.engine.data_check`).

Per split: videos, lengths in frames (min / median / mean / max / total) and frames and segments per
class, read from each video's labels by their shape: [T] int class ids; [T, 2] int, one column per
hand (formats.HANDS), counted per hand, plus the share of frames where each hand is active (not a
background class); [T, C] bool multi-hot, plus the mean number of active classes per frame and the
share of frames without any; None (weak supervision): the video's transcript [N] gives segments per
class and transcript lengths. Warnings name legal but suspicious data.
"""

import dataclasses

import numpy as np

from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.data import pipeline

SPLITS = ('train', 'val', 'test')
LONG_VIDEO_FACTOR = 10  # warn about videos this many times longer than the median
RARE_CLASS_SHARE = 0.01  # warn about classes on fewer labelled frames than this share
MAX_LISTED = 10  # names listed in one warning


@dataclasses.dataclass
class SplitStats:
  """One split's videos: `frames` and `segments` [K, C] per track (K = 2 hands, else 1) and class
  (`frames` None when the videos carry transcripts only)."""

  names: list[str]
  lengths: np.ndarray  # [N] frames per video
  kind: str  # 'class ids' | 'hands' | 'multi-hot' | 'transcripts'
  segments: np.ndarray
  frames: np.ndarray | None = None
  active: np.ndarray | None = None  # hands: [2] share of frames with a non-background class
  empty_frames: int | None = None  # multi-hot: frames without any active class
  transcript_lengths: np.ndarray | None = None  # [N] actions per transcript, if videos have them

  @property
  def tracks(self) -> tuple[str, ...]:
    return formats.HANDS if self.kind == 'hands' else ('all',)


def label_kind(video) -> str:
  """How a video's labels are counted: 'class ids' [T] int, 'hands' [T, 2] int, 'multi-hot'
  [T, C] bool, or 'transcripts' (no labels)."""
  if video.labels is None:
    return 'transcripts'
  labels = np.asarray(video.labels)
  integer = np.issubdtype(labels.dtype, np.integer)
  if labels.ndim == 1 and integer:
    return 'class ids'
  if labels.ndim == 2 and integer and labels.shape[1] == len(formats.HANDS):
    return 'hands'
  if labels.ndim == 2 and labels.dtype == bool:
    return 'multi-hot'
  raise ValueError(
    f'video {video.name!r}: labels {labels.dtype} {labels.shape} are none of [T] int, '
    f'[T, {len(formats.HANDS)}] int (hands) or [T, C] bool (multi-hot)'
  )


def track_counts(track: np.ndarray, num_classes: int) -> np.ndarray:
  """[2, C]: frames and segments per class of class ids [T] or multi-hot [T, C] (there a segment
  is a run of frames where the class is active)."""
  if track.ndim == 1:
    segments = formats.segment_classes(track)
    return np.stack(
      [np.bincount(track, minlength=num_classes), np.bincount(segments, minlength=num_classes)]
    )
  starts = track & ~np.pad(track, ((1, 0), (0, 0)))[:-1]
  return np.stack([track.sum(0), starts.sum(0)])


def split_stats(videos: list, info: dataset_lib.DataInfo) -> SplitStats:
  """The statistics of one split's videos (all with labels of one kind)."""
  kinds = {label_kind(v) for v in videos}
  if len(kinds) > 1:
    raise ValueError(f'a split mixes labels of kinds {sorted(kinds)}')
  num_classes = len(info.classes)
  stats = SplitStats(
    names=[v.name for v in videos],
    lengths=np.array([pipeline.num_frames(v) for v in videos], np.int64),
    kind=kinds.pop() if kinds else 'class ids',
    segments=np.zeros((1, num_classes), np.int64),
  )
  if not videos:
    return stats
  transcripts = [getattr(v, 'transcript', None) for v in videos]
  if all(t is not None for t in transcripts):
    stats.transcript_lengths = np.array([len(t) for t in transcripts])
  if stats.kind == 'transcripts':
    stats.segments[0] = np.bincount(np.concatenate(transcripts), minlength=num_classes)
    return stats
  labels = [np.asarray(v.labels) for v in videos]
  tracks = [labels]  # per track, every video's [T] class ids or [T, C] multi-hot
  if stats.kind == 'hands':
    tracks = [[x[:, h] for x in labels] for h in range(len(formats.HANDS))]
  counts = np.array([sum(track_counts(x, num_classes) for x in track) for track in tracks])
  stats.frames, stats.segments = counts[:, 0], counts[:, 1]  # [K, C] each
  if stats.kind == 'hands':
    stats.active = 1.0 - np.isin(np.concatenate(labels), info.background).mean(0)
  if stats.kind == 'multi-hot':
    stats.empty_frames = int(sum((~x.any(1)).sum() for x in labels))
  return stats


# ------------------------------------------------------------------------------ reporting --


def summary(values: np.ndarray) -> dict:
  return {
    'min': int(values.min()),
    'median': float(np.median(values)),
    'mean': float(values.mean()),
    'max': int(values.max()),
    'total': int(values.sum()),
  }


def split_json(stats: SplitStats, classes) -> dict:
  """The JSON of one split: per-class counts as {class: n}, for two hands {hand: {class: n}}."""
  out = {'videos': len(stats.names)}
  if not stats.names:
    return out

  def per_class(values: np.ndarray) -> dict:
    rows = {
      t: dict(zip(classes, row.tolist(), strict=True)) for t, row in zip(stats.tracks, values)
    }
    return rows if stats.kind == 'hands' else rows['all']

  out.update(labels=stats.kind, frames=summary(stats.lengths))
  out['segments_per_class'] = per_class(stats.segments)
  if stats.frames is not None:
    out['frames_per_class'] = per_class(stats.frames)
  if stats.active is not None:
    out['active_share'] = dict(zip(formats.HANDS, stats.active.tolist(), strict=True))
  if stats.empty_frames is not None:
    total = int(stats.lengths.sum())
    out['mean_active_classes'] = float(stats.frames.sum() / total)
    out['no_action_share'] = stats.empty_frames / total
  if stats.transcript_lengths is not None:
    out['transcript_actions'] = summary(stats.transcript_lengths)
  return out


def listed(items: list[str]) -> str:
  more = f', ... ({len(items) - MAX_LISTED} more)' if len(items) > MAX_LISTED else ''
  return ', '.join(items[:MAX_LISTED]) + more


def find_warnings(splits: dict[str, SplitStats], classes) -> list[str]:
  """Legal but suspicious: classes missing from train, or present in val / test but not in train;
  videos over LONG_VIDEO_FACTOR x the median length; classes on fewer than RARE_CLASS_SHARE of the
  labelled frames (of all splits; per hand-frame for two hands)."""
  warnings = []
  seen = {name: s.segments.sum(0) > 0 for name, s in splits.items() if s.names}
  in_train = seen['train'] if 'train' in seen else np.zeros(len(classes), bool)
  missing = [classes[c] for c in np.flatnonzero(~in_train)]
  if missing:
    warnings.append(f'classes never in train ({len(missing)} of {len(classes)}): {listed(missing)}')
  for name in ('val', 'test'):
    extra = [classes[c] for c in np.flatnonzero(seen.get(name, in_train) & ~in_train)]
    if extra:
      warnings.append(f'classes in {name} but never in train ({len(extra)}): {listed(extra)}')
  videos = [
    (t, f'{n} ({split})') for split, s in splits.items() for n, t in zip(s.names, s.lengths)
  ]
  median = np.median([t for t, _ in videos])
  long = [f'{where}: {t} frames' for t, where in videos if t > LONG_VIDEO_FACTOR * median]
  if long:
    warnings.append(
      f'videos over {LONG_VIDEO_FACTOR}x the median length of {median:g} frames ({len(long)}): '
      f'{listed(long)}'
    )
  labelled = [s for s in splits.values() if s.frames is not None]
  if labelled:
    share = sum(s.frames.sum(0) for s in labelled) / sum(
      s.lengths.sum() * len(s.tracks) for s in labelled
    )
    rare = [
      f'{classes[c]} ({share[c]:.2%})'
      for c in np.flatnonzero((share > 0) & (share < RARE_CLASS_SHARE))
    ]
    if rare:
      warnings.append(
        f'classes on fewer than {RARE_CLASS_SHARE:.0%} of the labelled frames ({len(rare)}): '
        f'{listed(rare)}'
      )
  return warnings

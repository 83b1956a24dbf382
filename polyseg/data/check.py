r"""Dataset check (`--config.data.check_only=True`): validate a dataset with its task's own loader
and report its statistics, without training.

  python -m polyseg.main --config=configs/diffact.py --workdir=runs/check \
      --config.data.root=/data/gtea --config.data.check_only=True

A problem with the data raises the `formats.DataError` that training would raise. Statistics per
split: videos, lengths in frames (min / median / mean / max / total) and frames and segments per
class, read from each video's labels by their shape: [T] int class ids; [T, 2] int, one column per
hand (formats.HANDS), counted per hand, plus the share of frames where each hand is active (not a
background class); [T, C] bool multi-hot, plus the mean number of active classes per frame and the
share of frames without any; None (weak supervision): the video's transcript [N] gives segments per
class and transcript lengths. Prints them with warnings about legal but suspicious data, and writes
<workdir>/data_check.json and the class histogram <workdir>/data_check.png.

What is read is `load_data(config)` of the task module, or its `check_data(config, workdir)` when it
has one (Polyphony: the input of the first stage of `config.stage`).
"""

import dataclasses
import os

import ml_collections
import numpy as np

from polyseg import report
from polyseg import tasks
from polyseg import train
from polyseg.data import formats
from polyseg.data import pipeline

SPLITS = ('train', 'val', 'test')
LONG_VIDEO_FACTOR = 10  # warn about videos this many times longer than the median
RARE_CLASS_SHARE = 0.01  # warn about classes on fewer labelled frames than this share
MAX_LISTED = 10  # names listed in one warning
JSON_FILE, PNG_FILE = 'data_check.json', 'data_check.png'


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


def split_stats(videos: list, info: tasks.DataInfo) -> SplitStats:
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


def format_report(stats: dict, splits: dict[str, SplitStats]) -> str:
  """The printed report of `stats` (the JSON) and `splits`."""
  classes = stats['classes']
  dims = stats['feature_dims']
  if isinstance(dims, dict):
    dims = ', '.join(f'{k} {v}' for k, v in dims.items()) or 'none (no feature files)'
  background = ', '.join(stats['background']) or 'none'
  lines = [
    f'Data check: {stats["task"]}, {stats["dataset"]}',
    f'{len(classes)} classes (background: {background}); feature dims: {dims}',
    '',
  ]
  rows = [['split', 'videos', 'labels', 'min', 'median', 'mean', 'max', 'total frames']]
  for name, s in stats['splits'].items():
    row = [name, str(s['videos']), s.get('labels', '')]
    if 'frames' in s:
      f = s['frames']
      row += [str(f['min']), f'{f["median"]:g}', f'{f["mean"]:.1f}', str(f['max']), str(f['total'])]
    rows.append(row + [''] * (len(rows[0]) - len(row)))
  lines += report.align_columns(rows) + ['']
  shown = {name: s for name, s in splits.items() if s.names}
  columns = [(name, k, track) for name, s in shown.items() for k, track in enumerate(s.tracks)]
  rows = [['frames/segments per class'] + [f'{n} {t}' if t != 'all' else n for n, _, t in columns]]
  for c, class_name in enumerate(classes):
    cells = []
    for name, k, _ in columns:
      s = shown[name]
      frames = '-' if s.frames is None else str(s.frames[k, c])
      cells.append(f'{frames}/{s.segments[k, c]}')
    rows.append([f'{c:>3} {class_name}'] + cells)
  lines += report.align_columns(rows)
  for name, s in stats['splits'].items():
    if 'active_share' in s:
      hands = ', '.join(f'{h} {v:.1%}' for h, v in s['active_share'].items())
      lines.append(f'{name}: frames where each hand is active (not background): {hands}')
    if 'mean_active_classes' in s:
      lines.append(
        f'{name}: {s["mean_active_classes"]:.2f} active classes per frame on average, '
        f'{s["no_action_share"]:.1%} of frames without action'
      )
    if 'transcript_actions' in s:
      a = s['transcript_actions']
      lines.append(
        f'{name}: actions per transcript min {a["min"]}, median {a["median"]:g}, '
        f'mean {a["mean"]:.1f}, max {a["max"]}'
      )
  lines += ['', 'Warnings:' if stats['warnings'] else 'No warnings.']
  lines += [f'  - {w}' for w in stats['warnings']]
  return '\n'.join(lines)


def plot_histogram(path: str, splits: dict[str, SplitStats], info: tasks.DataInfo) -> None:
  """PNG of frames per class (actions in transcripts for a transcripts-only split), one panel per
  non-empty split, classes top to bottom, the hands' bars side by side."""
  shown = {name: s for name, s in splits.items() if s.names}
  num_classes = len(info.classes)
  num_tracks = max(len(s.tracks) for s in shown.values())
  figure = report.new_figure(2.5 + 3.2 * len(shown), 1.2 + 0.2 * num_classes * (1 + num_tracks) / 2)
  axes = figure.subplots(1, len(shown), sharey=True, squeeze=False)[0]
  y = np.arange(num_classes)
  colors = report.class_colors(num_classes, info.background)
  for ax, (name, s) in zip(axes, shown.items()):
    values = s.segments if s.frames is None else s.frames
    height = 0.8 / len(values)
    for k, (track, row) in enumerate(zip(s.tracks, values)):
      color = colors if len(values) == 1 else f'C{k}'
      ax.barh(y - 0.4 + height * (k + 0.5), row, height, color=color, label=track)
    title = f'{name}: {len(s.names)} videos, {s.lengths.sum()} frames'
    if s.active is not None:
      title += '\nactive: ' + ', '.join(f'{h} {a:.0%}' for h, a in zip(s.tracks, s.active))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel('actions in transcripts' if s.frames is None else 'frames', fontsize=8)
    ax.tick_params(labelsize=7)
    if len(values) > 1:
      ax.legend(fontsize=8)
  axes[0].set_yticks(y, [f'{c}: {n}' for c, n in enumerate(info.classes)])
  axes[0].invert_yaxis()
  report.save_png(figure, path)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Reads the data of `config` as training would (DataError on a problem), prints its statistics
  and warnings and writes <workdir>/data_check.json and data_check.png. Returns the statistics."""
  workdir = train.prepare_workdir(workdir)
  module = tasks.get(config.task)
  if hasattr(module, 'check_data'):
    data = module.check_data(config, workdir)
  else:
    data = module.load_data(config)
  info = data.info
  videos = {'train': data.train, 'val': data.val, 'test': data.read_test()}  # a check reads all
  splits = {name: split_stats(videos[name], info) for name in SPLITS}
  root = module.dataset_root(config) if hasattr(module, 'dataset_root') else config.data.root
  synthetic = f'synthetic (config.data.synthetic, cached in {config.data.cache_dir})'
  stats = {
    'task': config.task,
    'dataset': str(root or synthetic),
    'classes': list(info.classes),
    'background': [info.classes[c] for c in info.background],
    'feature_dims': info.input_dim,
    'splits': {name: split_json(s, info.classes) for name, s in splits.items()},
    'warnings': find_warnings(splits, info.classes),
  }
  print(format_report(stats, splits), flush=True)
  png_path, json_path = os.path.join(workdir, PNG_FILE), os.path.join(workdir, JSON_FILE)
  plot_histogram(png_path, splits, info)
  train.write_json(json_path, stats)
  print(f'Wrote {json_path} and {png_path}', flush=True)
  return stats

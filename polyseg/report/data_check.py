"""The text and the figure of a dataset check (`polyseg.data.check` computes what they show)."""

import numpy as np

from polyseg.data import check
from polyseg.data import dataset as dataset_lib
from polyseg.report import plots
from polyseg.report import tables


def format_report(stats: dict, splits: dict[str, check.SplitStats]) -> str:
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
  lines += tables.align_columns(rows) + ['']
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
  lines += tables.align_columns(rows)
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


def plot_histogram(
  path: str, splits: dict[str, check.SplitStats], info: dataset_lib.DataInfo
) -> None:
  """PNG of frames per class (actions in transcripts for a transcripts-only split), one panel per
  non-empty split, classes top to bottom, the hands' bars side by side."""
  shown = {name: s for name, s in splits.items() if s.names}
  num_classes = len(info.classes)
  num_tracks = max(len(s.tracks) for s in shown.values())
  figure = plots.new_figure(2.5 + 3.2 * len(shown), 1.2 + 0.2 * num_classes * (1 + num_tracks) / 2)
  axes = figure.subplots(1, len(shown), sharey=True, squeeze=False)[0]
  y = np.arange(num_classes)
  colors = plots.class_colors(num_classes, info.background)
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
  plots.save_png(figure, path)

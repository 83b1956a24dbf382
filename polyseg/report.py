"""Reporting: metric tables, metrics.jsonl + TensorBoard writer, PNG timelines and training curves.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global backend change) and are
written atomically (temporary file, then os.replace).
"""

import collections
import io
import json
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np
import tensorboardX

from polyseg.data import formats

TABLE_COLUMNS = ('Acc', 'Edit', 'F1@10', 'F1@25', 'F1@50')
BACKGROUND_COLOR = (0.85, 0.85, 0.85)
CURVE_PREFIXES = ('train/', 'eval/')


def format_table(rows: dict[str, dict[str, float]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
  """Aligned text table, one line per row name, values with 1 decimal, columns 2 spaces apart."""
  for name, values in rows.items():
    missing = [column for column in columns if column not in values]
    if missing:
      raise ValueError(f'table row {name!r} has no value for columns {missing}')
  cells = [['', *columns]] + [
    [name, *(f'{values[c]:.1f}' for c in columns)] for name, values in rows.items()
  ]
  widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
  lines = [
    '  '.join([row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])])
    for row in cells
  ]
  return '\n'.join(line.rstrip() for line in lines)


class MetricWriter:
  """Appends `{'step', **scalars}` lines to workdir/metrics.jsonl and TensorBoard scalars to
  workdir/tensorboard. Does nothing when not enabled (e.g. on processes other than 0).

  TensorBoard tags are the metric names with characters outside [-/\\w.] replaced by '_'
  (tensorboardX), e.g. 'eval/F1@50' -> 'eval/F1_50'; metrics.jsonl keeps the names as given.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    self.tensorboard = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self.tensorboard = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    """Logs scalars (python/numpy/jax scalars) at `step`."""
    if not self.enabled:
      return
    values = {}
    for name, value in scalars.items():
      try:
        values[name] = float(value)
      except (TypeError, ValueError) as error:
        raise ValueError(f'metric {name!r} at step {step} is not a scalar: {value!r}') from error
    with open(self.jsonl_path, 'a') as f:
      f.write(json.dumps({'step': int(step), **values}) + '\n')
    for name, value in values.items():
      self.tensorboard.add_scalar(name, value, int(step))

  def flush(self) -> None:
    if self.enabled:
      self.tensorboard.flush()

  def close(self) -> None:
    if self.enabled:
      self.tensorboard.close()


def _palette() -> list[tuple[float, float, float]]:
  """54 distinct colours without greys: tab20 darks, tab20 lights, then tab20b and tab20c by shade."""
  import matplotlib

  tab20 = matplotlib.colormaps['tab20'].colors
  tab20b = matplotlib.colormaps['tab20b'].colors
  tab20c = matplotlib.colormaps['tab20c'].colors[:16]  # the last 4 are greys
  tab20_no_grey = [c for i, c in enumerate(tab20) if i not in (14, 15)]
  return (
    tab20_no_grey[0::2]
    + tab20_no_grey[1::2]
    + [c for shade in range(4) for c in tab20b[shade::4]]
    + [c for shade in range(4) for c in tab20c[shade::4]]
  )


def class_colors(num_classes: int, background: Iterable[int] = ()) -> np.ndarray:
  """RGB [C, 3] in [0, 1]: colour of class c = palette[c % 54], background classes light grey."""
  palette = _palette()
  colors = np.array([palette[c % len(palette)] for c in range(num_classes)], np.float64)
  colors[list(background)] = BACKGROUND_COLOR
  return colors


def _new_figure(width: float, height: float):
  """A matplotlib Figure drawn by the Agg canvas."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(width, height), layout='constrained')
  FigureCanvasAgg(figure)
  return figure


def _save_png(figure, path: str) -> None:
  """Writes the figure to `path` atomically."""
  png = io.BytesIO()
  figure.savefig(png, format='png', dpi=100)
  formats.write_atomic(path, png.getvalue())


def plot_timelines(
  path: str,
  videos: list[tuple[str, dict[str, np.ndarray]]],
  classes: Sequence[str],
  background: Iterable[int] = (),
) -> None:
  """One PNG of coloured label bars: per video, one row per entry of its dict (e.g. 'ground truth',
  'prediction'; each [T] int class ids, same T), top to bottom in dict order, and a legend of the
  classes shown."""
  from matplotlib.patches import Patch

  if not videos:
    raise ValueError(f'plot_timelines({path!r}): no videos')
  colors = class_colors(len(classes), background)
  shown = set()
  figure = _new_figure(12.0, 0.9 + sum(0.5 + 0.35 * len(rows) for _, rows in videos))
  axes = figure.subplots(len(videos), 1, squeeze=False)[:, 0]
  for ax, (name, rows) in zip(axes, videos):
    lengths = {row: len(labels) for row, labels in rows.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f'video {name!r}: rows differ in length {lengths}')
    bars = np.stack([np.asarray(labels) for labels in rows.values()])  # [R, T]
    if bars.min() < 0 or bars.max() >= len(classes):
      raise ValueError(f'video {name!r}: class ids outside [0, {len(classes)})')
    shown.update(np.unique(bars).tolist())
    ax.imshow(
      colors[bars],
      aspect='auto',
      interpolation='nearest',
      extent=(0, bars.shape[1], bars.shape[0], 0),
    )
    for row in range(1, bars.shape[0]):
      ax.axhline(row, color='white', linewidth=2)
    ax.set_yticks(np.arange(bars.shape[0]) + 0.5, list(rows))
    ax.set_title(name, loc='left', fontsize=10)
  axes[-1].set_xlabel('frame')
  handles = [Patch(color=colors[c], label=f'{c}: {classes[c]}') for c in sorted(shown)]
  figure.legend(handles=handles, loc='outside lower center', ncol=min(len(handles), 6), fontsize=8)
  _save_png(figure, path)


def read_metrics(jsonl_path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """key -> (steps [N], values [N]) of every numeric key in metrics.jsonl; a step logged twice (a
  resumed run) keeps its last value."""
  series = collections.defaultdict(dict)
  with open(jsonl_path) as f:
    for line_number, line in enumerate(f, start=1):
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise ValueError(f'{jsonl_path}:{line_number}: not JSON: {error}') from error
      for key, value in record.items():
        if key != 'step' and isinstance(value, (int, float)) and not isinstance(value, bool):
          series[key][record['step']] = value
  return {
    key: (np.array(sorted(points)), np.array([points[s] for s in sorted(points)], np.float64))
    for key, points in series.items()
  }


def plot_curves(
  metrics_jsonl_path: str, png_path: str, prefixes: Sequence[str] = CURVE_PREFIXES
) -> None:
  """One PNG with a panel per numeric key of metrics.jsonl starting with one of `prefixes` (in
  prefix order, then alphabetical)."""
  all_series = read_metrics(metrics_jsonl_path)
  series = {
    key: all_series[key]
    for prefix in prefixes
    for key in sorted(all_series)
    if key.startswith(prefix)
  }
  if not series:
    raise ValueError(f'{metrics_jsonl_path}: no numeric keys starting with {tuple(prefixes)}')
  num_columns = min(len(series), 4)
  num_rows = math.ceil(len(series) / num_columns)
  figure = _new_figure(3.2 * num_columns, 2.4 * num_rows)
  axes = figure.subplots(num_rows, num_columns, squeeze=False).ravel()
  for ax, (key, (steps, values)) in zip(axes, series.items()):
    ax.plot(steps, values, marker='.' if steps.size < 30 else None)
    ax.set_title(key, fontsize=9)
    ax.set_xlabel('step', fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in axes[len(series) :]:
    ax.set_visible(False)
  _save_png(figure, png_path)

"""PNG figures: timelines of class labels per video and training curves from metrics.jsonl.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global backend change) and are
written atomically (temporary file, then os.replace).
"""

import collections
import io
import json
import math
from collections.abc import Iterable
from collections.abc import Sequence

import numpy as np

from polyseg.data import formats

# What a timeline plot or segment file shows: per video (name, {row title: [T] labels or [T, C]
# multi-hot}), the rows top to bottom in dict order.
TimelineRows = list[tuple[str, dict[str, np.ndarray]]]

BACKGROUND_COLOR = (0.85, 0.85, 0.85)
CURVE_PREFIXES = ('train/', 'eval/', 'eval_val/')
# A curves panel and its margins in inches (left, right, bottom, top): fixed, since a constrained
# layout would cost about a second per figure of a dozen panels, more than drawing them.
CURVE_PANEL = (3.2, 2.4)
CURVE_MARGINS = (0.6, 0.15, 0.45, 0.3)
# timeline row kind -> (bar height in inches, colour and width of the lines between rows)
TIMELINE_STYLES = {'class ids': (0.35, 'white', 2), 'multi-hot': (0.25, 'black', 1)}


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


def new_figure(width: float, height: float, layout: str | None = 'constrained'):
  """A matplotlib Figure drawn by the Agg canvas (`layout` None: the caller places the axes)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(width, height), layout=layout)
  FigureCanvasAgg(figure)
  return figure


def save_png(figure, path: str) -> None:
  """Writes the figure to `path` atomically."""
  png = io.BytesIO()
  figure.savefig(png, format='png', dpi=100)
  formats.write_atomic(path, png.getvalue())


def _class_id_bars(rows: dict[str, np.ndarray], colors: np.ndarray):
  """[T] int rows -> (image [R, T, 3], row labels [R], class ids shown, separator y positions)."""
  bars = np.stack([np.asarray(labels) for labels in rows.values()])  # [R, T]
  return colors[bars], list(rows), np.unique(bars).tolist(), range(1, len(rows))


def _multi_hot_bars(rows: dict[str, np.ndarray], colors: np.ndarray, classes):
  """[T, C] bool rows -> one sub-row per (row, class active anywhere in the video), labelled
  '<row>: <class>', class colour where active, white elsewhere; a row without any active class is
  one white sub-row '<row>: none'. Returns (image [R', T, 3], row labels [R'], class ids shown,
  separator y positions between the rows' blocks)."""
  tracks = np.stack([np.asarray(labels) for labels in rows.values()])  # [R, T, C]
  shown = np.flatnonzero(tracks.any(axis=(0, 1)))
  if shown.size == 0:
    return (
      np.ones(tracks.shape[:2] + (3,)),
      [f'{row}: none' for row in rows],
      [],
      range(1, len(rows)),
    )
  active = tracks[:, :, shown].transpose(0, 2, 1).reshape(-1, tracks.shape[1])  # [R * S, T]
  row_colors = colors[np.tile(shown, len(rows))]  # [R * S, 3]
  image = np.where(active[:, :, None], row_colors[:, None, :], 1.0)
  labels = [f'{row}: {classes[c]}' for row in rows for c in shown]
  return image, labels, shown.tolist(), range(shown.size, image.shape[0], shown.size)


def check_timeline(name: str, rows: dict[str, np.ndarray], num_classes: int) -> str:
  """The kind of a video's timeline rows: 'class ids' if every row is [T] ints in [0, C),
  'multi-hot' if every row is [T, C] bool; else a ValueError naming the video."""
  lengths = {row: len(labels) for row, labels in rows.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f'video {name!r}: rows differ in length {lengths}')
  kinds = {}
  for row, labels in rows.items():
    labels = np.asarray(labels)
    if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
      kinds[row] = 'class ids'
    elif labels.ndim == 2 and labels.dtype == bool:
      kinds[row] = 'multi-hot'
    else:
      raise ValueError(
        f'video {name!r}, row {row!r}: expected [T] int class ids or [T, C] bool multi-hot, got '
        f'shape {labels.shape} dtype {labels.dtype}'
      )
  if len(set(kinds.values())) != 1:
    raise ValueError(f'video {name!r}: rows mix [T] class ids and [T, C] multi-hot {kinds}')
  kind = next(iter(kinds.values()))
  labels = np.stack([np.asarray(labels) for labels in rows.values()])
  if kind == 'class ids' and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'video {name!r}: class ids outside [0, {num_classes})')
  if kind == 'multi-hot' and labels.shape[2] != num_classes:
    raise ValueError(
      f'video {name!r}: multi-hot rows have {labels.shape[2]} classes, expected {num_classes}'
    )
  return kind


def plot_timelines(
  path: str,
  videos: TimelineRows,
  classes: Sequence[str],
  background: Iterable[int] = (),
) -> None:
  """One PNG of coloured label bars: per video, one row per entry of its dict (e.g. 'ground truth',
  'prediction'), top to bottom in dict order, and a legend of the classes shown.

  The rows of one video (same T) are either all [T] int class ids (one bar each) or all [T, C] bool
  multi-hot labels; a multi-hot row becomes one thin sub-row per class active anywhere in that
  video, labelled '<row>: <class>', in the class colour where active and white where not.
  """
  from matplotlib.patches import Patch

  if not videos:
    raise ValueError(f'plot_timelines({path!r}): no videos')
  colors = class_colors(len(classes), background)
  panels = []  # (name, kind, image [R, T, 3], row labels [R], separator y positions)
  shown = set()
  for name, rows in videos:
    kind = check_timeline(name, rows, len(classes))
    if kind == 'class ids':
      image, labels, classes_shown, separators = _class_id_bars(rows, colors)
    else:
      image, labels, classes_shown, separators = _multi_hot_bars(rows, colors, classes)
    panels.append((name, kind, image, labels, separators))
    shown.update(classes_shown)
  heights = [0.5 + TIMELINE_STYLES[kind][0] * len(labels) for _, kind, _, labels, _ in panels]
  figure = new_figure(12.0, 0.9 + sum(heights))
  axes = figure.subplots(len(videos), 1, squeeze=False, height_ratios=heights)[:, 0]
  for ax, (name, kind, image, labels, separators) in zip(axes, panels):
    _, line_color, line_width = TIMELINE_STYLES[kind]
    ax.imshow(
      image,
      aspect='auto',
      interpolation='nearest',
      extent=(0, image.shape[1], image.shape[0], 0),
    )
    for row in separators:
      ax.axhline(row, color=line_color, linewidth=line_width)
    ax.set_yticks(np.arange(image.shape[0]) + 0.5, labels)
    ax.set_title(name, loc='left', fontsize=10)
  axes[-1].set_xlabel('frame')
  handles = [Patch(color=colors[c], label=f'{c}: {classes[c]}') for c in sorted(shown)]
  if handles:
    figure.legend(
      handles=handles, loc='outside lower center', ncol=min(len(handles), 6), fontsize=8
    )
  save_png(figure, path)


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
  save_png(curves_figure(series), png_path)


def curves_figure(series: dict[str, tuple[np.ndarray, np.ndarray]]):
  """A Figure of one panel per key -> (steps [N], values [N]), 4 panels to a row, in dict order."""
  num_columns = min(len(series), 4)
  num_rows = math.ceil(len(series) / num_columns)
  (panel_w, panel_h), (left, right, bottom, top) = CURVE_PANEL, CURVE_MARGINS
  width, height = panel_w * num_columns, panel_h * num_rows
  figure = new_figure(width, height, layout=None)
  figure.subplots_adjust(
    left=left / width,
    right=1 - right / width,
    bottom=bottom / height,
    top=1 - top / height,
    wspace=(left + right) / (panel_w - left - right),
    hspace=(bottom + top) / (panel_h - bottom - top),
  )
  axes = figure.subplots(num_rows, num_columns, squeeze=False).ravel()
  for ax, (key, (steps, values)) in zip(axes, series.items()):
    ax.plot(steps, values, marker='.' if steps.size < 30 else None)
    ax.set_title(key, fontsize=9)
    ax.set_xlabel('step', fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in axes[len(series) :]:
    ax.set_visible(False)
  return figure

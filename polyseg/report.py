r"""Reporting: metric tables, metrics.jsonl + TensorBoard writer, PNG timelines and training curves,
segments.json files, and the command line that renders a workdir as one HTML page (report_html):

  python -m polyseg.report --workdir=DIR [--output=DIR/report.html] [--max_videos=12]

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global backend change) and are
written atomically (temporary file, then os.replace).
"""

import collections
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence

import numpy as np
import tensorboardX
from absl import app
from absl import flags

from polyseg import metrics
from polyseg.data import formats

FLAGS = flags.FLAGS

TABLE_COLUMNS = ('Acc', 'Jaccard', 'Edit', 'F1@10', 'F1@25', 'F1@50')
BACKGROUND_COLOR = (0.85, 0.85, 0.85)
CURVE_PREFIXES = ('train/', 'eval/', 'eval_val/')
# timeline row kind -> (bar height in inches, colour and width of the lines between rows)
TIMELINE_STYLES = {'class ids': (0.35, 'white', 2), 'multi-hot': (0.25, 'black', 1)}


def table_columns(rows: Iterable[dict[str, float]]) -> tuple[str, ...]:
  """The TABLE_COLUMNS some row has, then every other metric in order of appearance (e.g. mAP; an
  alignment row's MoF, IoU, IoD)."""
  seen = dict.fromkeys(k for values in rows for k in values)
  return (*(k for k in TABLE_COLUMNS if k in seen), *(k for k in seen if k not in TABLE_COLUMNS))


def format_table(rows: dict[str, dict[str, float]], columns: Sequence[str] | None = None) -> str:
  """Aligned text table, one line per row name, values with 1 decimal, columns 2 spaces apart.

  columns: default `table_columns`, with '-' where a row has no value; given columns must be in
  every row.
  """
  if columns is None:
    columns = table_columns(rows.values())
  else:
    for name, values in rows.items():
      missing = [column for column in columns if column not in values]
      if missing:
        raise ValueError(f'table row {name!r} has no value for columns {missing}')
  cells = [['', *columns]] + [
    [name, *(f'{values[c]:.1f}' if c in values else '-' for c in columns)]
    for name, values in rows.items()
  ]
  return '\n'.join(align_columns(cells))


def align_columns(cells: Sequence[Sequence[str]]) -> list[str]:
  """Rows of cells as lines, columns 2 spaces apart: the first left-aligned, the others right."""
  widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
  return [
    '  '.join(
      [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:]))]
    ).rstrip()
    for row in cells
  ]


class MetricWriter:
  """Appends `{'step', **scalars}` lines to workdir/metrics.jsonl and TensorBoard scalars to
  workdir/tensorboard. Does nothing when not enabled (e.g. on processes other than 0).

  TensorBoard tags are the metric names with characters outside [-/\\w.] replaced by '_'
  (tensorboardX), e.g. 'eval/F1@50' -> 'eval/F1_50'; metrics.jsonl keeps the names as given.

  A run resumed from the checkpoint of `resume_step` forgets what the run before it logged after
  that step (it will log those steps again): the later metrics.jsonl lines (and a last line cut
  short by a kill) are dropped, and TensorBoard purges those steps.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
    self.enabled = enabled
    self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    self.tensorboard = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if resume_step is not None and os.path.exists(self.jsonl_path):
        self._rewind(resume_step)
      self.tensorboard = tensorboardX.SummaryWriter(
        os.path.join(workdir, 'tensorboard'),
        purge_step=None if resume_step is None else resume_step + 1,
      )

  def _rewind(self, step: int) -> None:
    kept = []
    with open(self.jsonl_path, 'rb') as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:  # a line cut short by a kill (or undecodable bytes)
          continue
        if record.get('step', math.inf) <= step:
          kept.append(line if line.endswith(b'\n') else line + b'\n')
    formats.write_atomic(self.jsonl_path, b''.join(kept))

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


def new_figure(width: float, height: float):
  """A matplotlib Figure drawn by the Agg canvas."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(width, height), layout='constrained')
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
  videos: list[tuple[str, dict[str, np.ndarray]]],
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
  num_columns = min(len(series), 4)
  num_rows = math.ceil(len(series) / num_columns)
  figure = new_figure(3.2 * num_columns, 2.4 * num_rows)
  axes = figure.subplots(num_rows, num_columns, squeeze=False).ravel()
  for ax, (key, (steps, values)) in zip(axes, series.items()):
    ax.plot(steps, values, marker='.' if steps.size < 30 else None)
    ax.set_title(key, fontsize=9)
    ax.set_xlabel('step', fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in axes[len(series) :]:
    ax.set_visible(False)
  save_png(figure, png_path)


# ---------------------------------------------------------------------------------------------
# segments.json: the timelines of an output folder, read back by the HTML report.

SEGMENTS_VERSION = 1


def encode_segments(labels: np.ndarray) -> np.ndarray:
  """Run-length segments [S, 3] int64 of (start, end, class), ends exclusive, sorted by (start,
  class): [T] int class ids -> the runs, which tile [0, T); [T, C] bool multi-hot -> the runs of
  active frames of each class."""
  labels = np.asarray(labels)
  if labels.ndim == 1:
    classes, starts, ends = metrics.segments(labels)
  else:
    edges = np.diff(np.pad(labels.T.astype(np.int8), ((0, 0), (1, 1))), axis=1)  # [C, T + 1]
    classes, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]  # same (class, time) order: runs alternate start, end
    order = np.lexsort((classes, starts))
    classes, starts, ends = classes[order], starts[order], ends[order]
  return np.stack([starts, ends, classes], axis=1).astype(np.int64)


def decode_segments(segments: np.ndarray, kind: str, length: int, num_classes: int) -> np.ndarray:
  """Inverse of `encode_segments`: [S, 3] -> [T] int64 class ids or [T, C] bool multi-hot."""
  if kind == 'class ids':
    return np.repeat(segments[:, 2], segments[:, 1] - segments[:, 0])
  active = np.zeros((length, num_classes), bool)
  for start, end, label in segments:
    active[start:end, label] = True
  return active


def write_segments(
  path: str,
  videos: list[tuple[str, dict[str, np.ndarray]]],
  classes: Sequence[str],
  background: Iterable[int] = (),
) -> None:
  """Writes the timeline rows of `videos` (as `plot_timelines` takes them) to a JSON file,
  atomically; `python -m polyseg.report` renders these files. The layout (segments as
  `encode_segments`, [start, end, class] with ends exclusive):

    {"version": 1, "classes": [C names], "background": [class ids],
     "videos": [{"name": str, "length": T, "kind": "class ids" | "multi-hot",
                 "rows": {row: [[start, end, class], ...]}}, ...]}
  """
  entries = []
  for name, rows in videos:
    kind = check_timeline(name, rows, len(classes))
    entries.append(
      {
        'name': name,
        'length': len(next(iter(rows.values()))),
        'kind': kind,
        'rows': {row: encode_segments(labels).tolist() for row, labels in rows.items()},
      }
    )
  data = {
    'version': SEGMENTS_VERSION,
    'classes': list(classes),
    'background': [int(c) for c in background],
    'videos': entries,
  }
  formats.write_atomic(path, json.dumps(data, separators=(',', ':')).encode('utf-8'))


def _segments_problem(segments: np.ndarray, kind: str, length: int, num_classes: int) -> str:
  """What is wrong with the [S, 3] segments of one row, or ''."""
  starts, ends, classes = segments.T
  if kind not in TIMELINE_STYLES:
    return f'kind {kind!r} is not one of {list(TIMELINE_STYLES)}'
  if np.any(starts < 0) or np.any(ends <= starts) or np.any(ends > length):
    return f'a segment is empty or outside the video [0, {length})'
  if np.any(classes < 0) or np.any(classes >= num_classes):
    return f'class ids outside [0, {num_classes})'
  if kind == 'class ids' and (
    starts.size == 0 or starts[0] != 0 or ends[-1] != length or np.any(starts[1:] != ends[:-1])
  ):
    return f'class-id segments do not tile the video [0, {length})'
  return ''


def read_segments(path: str) -> dict:
  """A `write_segments` file, checked, with every row as an int64 [S, 3] array; DataError naming
  the file (and video and row) when it is not one."""
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
    if data['version'] != SEGMENTS_VERSION:
      raise formats.DataError(f'{path}: version {data["version"]}, expected {SEGMENTS_VERSION}')
    for video in data['videos']:
      for row, segments in video['rows'].items():
        segments = np.asarray(segments, np.int64).reshape(-1, 3)
        problem = _segments_problem(segments, video['kind'], video['length'], len(data['classes']))
        if problem:
          raise formats.DataError(f'{path}: video {video["name"]!r}, row {row!r}: {problem}')
        video['rows'][row] = segments
  except formats.DataError:
    raise
  except (KeyError, TypeError, ValueError) as error:  # ValueError: not JSON, or not numbers
    raise formats.DataError(f'{path}: not a segments file: {error!r}') from error
  return data


def is_ground_truth(row: str) -> bool:
  return row == 'ground truth' or row.endswith(' ground truth')


def ground_truth_of(row: str, rows: Iterable[str]) -> str | None:
  """The row a prediction row is scored against: '<row> ground truth' when `rows` has it (e.g.
  Polyphony's 'LH'), else 'ground truth' when it has that, else None (also for ground-truth rows)."""
  rows = set(rows)
  if is_ground_truth(row):
    return None
  return next((gt for gt in (f'{row} ground truth', 'ground truth') if gt in rows), None)


def frame_counts(data: dict) -> dict[str, dict[str, np.ndarray]]:
  """Frame counts of every prediction row of a `read_segments` dict against its ground truth
  (`ground_truth_of`), summed over videos: row -> {'confusion': [C, C] frames where ground-truth
  class i and predicted class j are both active, 'gt': [C] frames where class c is active in the
  ground truth, 'pred': [C] in the prediction}. For class ids this is the usual confusion matrix."""
  num_classes = len(data['classes'])
  totals = {}
  for video in data['videos']:
    rows = {
      row: decode_segments(segments, video['kind'], video['length'], num_classes)
      for row, segments in video['rows'].items()
    }
    for row, pred in rows.items():
      gt_row = ground_truth_of(row, rows)
      if gt_row is None:
        continue
      gt = rows[gt_row]
      if video['kind'] == 'class ids':
        confusion = metrics.confusion_matrix(pred, gt, num_classes)
        counts = {'confusion': confusion, 'gt': confusion.sum(1), 'pred': confusion.sum(0)}
      else:  # exact in float64 up to 2**53 frames
        confusion = np.rint(gt.T.astype(np.float64) @ pred.astype(np.float64)).astype(np.int64)
        counts = {'confusion': confusion, 'gt': gt.sum(0), 'pred': pred.sum(0)}
      if row in totals:
        counts = {key: totals[row][key] + value for key, value in counts.items()}
      totals[row] = counts
  return totals


def class_f1(counts: dict[str, np.ndarray]) -> np.ndarray:
  """Frame-level F1 in percent per class [C] from `frame_counts`: 2 TP / (gt frames + predicted
  frames), TP the confusion's diagonal; NaN for a class in neither."""
  total = counts['gt'] + counts['pred']
  true_positives = np.diag(counts['confusion'])
  return np.divide(200.0 * true_positives, total, out=np.full(total.shape, np.nan), where=total > 0)


def main(argv):
  """python -m polyseg.report --workdir=DIR: writes DIR/report.html (see report_html)."""
  from polyseg import report_html

  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    path = report_html.write_report(FLAGS.workdir, FLAGS.output, FLAGS.max_videos)
  except (formats.DataError, OSError) as error:  # the user's input, not a bug
    sys.exit(f'polyseg.report: {type(error).__name__}: {error}')
  print(f'Wrote {path}')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A run folder, or a folder of runs, to report on.')
  flags.DEFINE_string('output', None, 'The HTML file to write; default <workdir>/report.html.')
  flags.DEFINE_integer(
    'max_videos', 12, 'Timelines of at most this many videos per output folder.', lower_bound=0
  )
  flags.mark_flag_as_required('workdir')
  app.run(main)

"""segments.json: the timelines of an output folder as run-length segments, written by the engine
and read back by the HTML report, with the per-class frame counts the report tabulates."""

import json
from collections.abc import Iterable
from collections.abc import Sequence

import numpy as np

from polyseg.core import metrics
from polyseg.data import formats
from polyseg.report import plots

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
  videos: plots.TimelineRows,
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
    kind = plots.check_timeline(name, rows, len(classes))
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
  if kind not in plots.TIMELINE_STYLES:
    return f'kind {kind!r} is not one of {list(plots.TIMELINE_STYLES)}'
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

"""Tests for polyseg.report: table text, metrics.jsonl / TensorBoard round trips, PNG plots."""

import json
import os
import struct
import time

import matplotlib.image
import numpy as np
import pytest
from tensorboardX import crc32c as reference_crc32c
from tensorboardX import record_writer
from tensorboardX.proto import event_pb2

from polyseg.engine import metric_writer
from polyseg.report import plots
from polyseg.report import tables

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def test_format_table_exact_text():
  rows = {
    'gtea': {'Acc': 82.24, 'Edit': 89.6, 'F1@10': 92.5, 'F1@25': 91.46, 'F1@50': 100.0},
    'synthetic test': {'Acc': 5.0, 'Edit': 9.96, 'F1@10': 2.0, 'F1@25': 1.04, 'F1@50': 4.0},
  }
  assert tables.format_table(rows) == (
    '                 Acc  Edit  F1@10  F1@25  F1@50\n'
    'gtea            82.2  89.6   92.5   91.5  100.0\n'
    'synthetic test   5.0  10.0    2.0    1.0    4.0'
  )
  assert tables.format_table({'a': {'Acc': 1.0, 'x': 2.25}}, columns=('x',)) == '     x\na  2.2'
  with pytest.raises(ValueError, match="'a'.*Edit"):
    tables.format_table({'a': {'Acc': 1.0}}, columns=('Acc', 'Edit'))
  # A multi-label row (metrics.MultiLabelMetrics; results.json sorts its keys): Jaccard after Acc.
  multi_label = dict.fromkeys(('mAP', 'F1@50', 'F1@25', 'F1@10', 'Edit', 'Jaccard', 'Acc'), 1.0)
  assert tables.table_columns([rows['gtea'], multi_label]) == (
    'Acc',
    'Jaccard',
    'Edit',
    'F1@10',
    'F1@25',
    'F1@50',
    'mAP',
  )


def read_events(path) -> list:
  """The events of one file, read with tensorboardX's protocol buffers and CRC (an independent
  implementation): TFRecords of 8-byte length, 4-byte masked CRC, data, 4-byte masked CRC."""
  data = path.read_bytes()
  events, offset = [], 0
  while offset < len(data):
    header = data[offset : offset + 8]
    (length,) = struct.unpack('<Q', header)
    record = data[offset + 12 : offset + 12 + length]
    crcs = struct.unpack('<II', data[offset + 8 : offset + 12] + data[offset + 12 + length :][:4])
    assert crcs == tuple(record_writer.masked_crc32c(x) for x in (header, record)), path
    events.append(event_pb2.Event.FromString(record))
    offset += 12 + length + 4
  return events


def read_event_scalars(events_dir):
  """tag -> [(step, value)] from the TensorBoard event files in `events_dir`."""
  scalars = {}
  for path in sorted(events_dir.iterdir()):
    for event in read_events(path):
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_crc32c_check_value_and_agreement_with_tensorboardx():
  assert metric_writer.crc32c(b'123456789') == 0xE3069283  # the CRC-32C check value
  assert metric_writer.crc32c(b'') == 0
  data = np.random.default_rng(0).bytes(1000)
  assert metric_writer.crc32c(data) == reference_crc32c.crc32c(data)


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
  before = time.time()
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.write(10, {'train/loss': np.float32(1.5), 'train/lr': 5e-4})
  writer.write(20, {'eval/F1@50': 60.25})
  with open(tmp_path / 'metrics.jsonl') as f:
    lines = [json.loads(line) for line in f]
  assert lines == [
    {'step': 10, 'train/loss': 1.5, 'train/lr': 5e-4},
    {'step': 20, 'eval/F1@50': 60.25},
  ]
  (path,) = (tmp_path / 'tensorboard').iterdir()
  assert path.name.startswith('events.out.tfevents.')  # what TensorBoard looks for
  first, *scalar_events = read_events(path)
  assert first.file_version == 'brain.Event:2'
  assert [e.step for e in scalar_events] == [10, 20]
  assert all(before <= e.wall_time <= time.time() for e in [first, *scalar_events])
  scalars = read_event_scalars(tmp_path / 'tensorboard')
  assert scalars['train/loss'] == [(10, 1.5)]
  assert scalars['eval/F1_50'] == [(20, 60.25)]  # '@' is not allowed in TensorBoard tags
  assert scalars['train/lr'][0][1] == pytest.approx(5e-4)


def test_resumed_writer_tells_tensorboard_to_drop_the_steps_it_logs_again(tmp_path):
  first = metric_writer.MetricWriter(str(tmp_path))
  for step in range(1, 6):
    first.write(step, {'train/loss': float(step)})
  resumed = metric_writer.MetricWriter(str(tmp_path), resume_step=3)
  resumed.write(4, {'train/loss': 40.0})
  earlier, later = sorted((tmp_path / 'tensorboard').iterdir())  # each writer its own file
  assert [e.step for e in read_events(earlier)] == [0, 1, 2, 3, 4, 5]
  version, start, again = read_events(later)
  assert (version.file_version, version.step) == ('brain.Event:2', 4)
  # TensorBoard drops the earlier events of step >= 4 when it reads this session start.
  assert start.session_log.status == event_pb2.SessionLog.START and start.step == 4
  assert (again.step, again.summary.value[0].simple_value) == (4, 40.0)
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(line)['step'] for line in lines] == [1, 2, 3, 4]
  with pytest.raises(ValueError, match='>= 0, got -1'):
    metric_writer.MetricWriter(str(tmp_path)).write(-1, {'train/loss': 1.0})


def test_metric_writer_disabled_writes_nothing(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path / 'run'), enabled=False)
  writer.write(1, {'train/loss': 1.0})
  assert not (tmp_path / 'run').exists()


def test_metric_writer_rejects_non_scalars(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  with pytest.raises(ValueError, match="'train/loss' at step 3"):
    writer.write(3, {'train/loss': np.ones(2)})


def test_class_colors_stable_and_distinct():
  colors = plots.class_colors(48, background=(0,))
  np.testing.assert_array_equal(colors[:11], plots.class_colors(11, background=(0,)))
  np.testing.assert_array_equal(colors[0], plots.BACKGROUND_COLOR)
  assert len({tuple(c) for c in plots.class_colors(54)}) == 54
  assert not any(r == g == b for r, g, b in plots.class_colors(54))  # no greys but background


def pixels_of(image, color):
  """(rows, cols) of pixels within 1.5/255 of an RGB colour."""
  return np.nonzero(np.all(np.abs(image[..., :3] - color) < 1.5 / 255, axis=-1))


def test_plot_timelines_png(tmp_path):
  classes = ['background', 'pour', 'stir', 'take', 'open']
  path = str(tmp_path / 'plots' / 'timelines.png')
  gt = np.repeat([0, 1, 2, 3, 0], 40)
  videos = [
    ('video_a', {'ground truth': np.full(200, 1), 'prediction': np.full(200, 4)}),
    ('video_b', {'ground truth': gt, 'prediction': np.roll(gt, 7)}),
  ]
  plots.plot_timelines(path, videos, classes, background=(0,))
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  assert os.listdir(tmp_path / 'plots') == ['timelines.png']  # no temporary file left
  image = matplotlib.image.imread(path)
  colors = plots.class_colors(len(classes), background=(0,))
  for class_id in range(len(classes)):  # every class is drawn in its own colour
    assert pixels_of(image, colors[class_id])[0].size > 500
  # video_a: the ground-truth bar (class 1) is drawn above the prediction bar (class 4)
  assert pixels_of(image, colors[1])[0].min() < pixels_of(image, colors[4])[0].min()
  with pytest.raises(ValueError, match='outside'):
    plots.plot_timelines(path, [('v', {'prediction': np.array([0, 9])})], classes)
  with pytest.raises(ValueError, match="'v': rows differ in length"):
    plots.plot_timelines(
      path, [('v', {'ground truth': np.zeros(3, int), 'prediction': np.zeros(4, int)})], classes
    )


def test_read_metrics_and_plot_curves(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  for step in range(5):
    writer.write(step, {'train/loss': 2.0 / (step + 1), 'time': float(step)})
  writer.write(4, {'eval/Acc': 50.0})
  writer.write(3, {'train/loss': 9.0})  # a resumed run logs step 3 again
  series = plots.read_metrics(str(tmp_path / 'metrics.jsonl'))
  np.testing.assert_array_equal(series['train/loss'][0], [0, 1, 2, 3, 4])
  np.testing.assert_allclose(series['train/loss'][1], [2.0, 1.0, 2 / 3, 9.0, 0.4])
  assert set(series) == {'train/loss', 'time', 'eval/Acc'}
  png_path = str(tmp_path / 'curves.png')
  plots.plot_curves(str(tmp_path / 'metrics.jsonl'), png_path)
  with open(png_path, 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  image = matplotlib.image.imread(png_path)
  assert len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 10  # not blank
  with pytest.raises(ValueError, match='no numeric keys'):
    plots.plot_curves(str(tmp_path / 'metrics.jsonl'), png_path, prefixes=('val/',))


@pytest.mark.parametrize('num_panels', [1, 6, 14])
def test_curve_panels_fit_the_figure_without_overlapping(num_panels):
  """The fixed layout: every panel's title, tick labels and axis label lie inside the figure and
  away from the other panels, with wide tick labels and titles as long as the methods' longest
  metric names (31 characters: 'train/holistic/decoder_boundary')."""
  steps = np.arange(0, 12000, 150)
  series = {
    f'train/holistic/decoder_boundary{i}': (steps, -1234.5678 * np.cos(steps / 900.0 + i))
    for i in range(num_panels)
  }
  figure = plots.curves_figure(series)
  renderer = figure.canvas.get_renderer()
  boxes = [ax.get_tightbbox(renderer) for ax in figure.axes if ax.get_visible()]
  assert len(boxes) == num_panels
  inside = figure.bbox
  for i, box in enumerate(boxes):
    assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0
    assert box.y1 <= inside.y1
    assert not any(box.overlaps(other) for other in boxes[i + 1 :])


def bands(rows):
  """Contiguous runs of pixel row indices: [(first, last), ...]."""
  rows = np.unique(rows)
  breaks = np.flatnonzero(np.diff(rows) > 1)
  return list(zip(rows[np.r_[0, breaks + 1]], rows[np.r_[breaks, rows.size - 1]]))


def test_plot_timelines_multi_hot_png(tmp_path):
  classes = ['stand', 'walk', 'sit', 'talk']
  length = 200
  gt = np.zeros((length, 4), bool)
  gt[:100, 1] = True  # walk on frames [0, 100)
  gt[50:150, 2] = True  # sit on frames [50, 150), ground truth only
  pred = np.zeros((length, 4), bool)
  pred[20:100, 1] = True  # walk on frames [20, 100); 'stand' and 'talk' are never active
  path = str(tmp_path / 'multi.png')
  plots.plot_timelines(path, [('vid__p1', {'ground truth': gt, 'prediction': pred})], classes)
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  image = matplotlib.image.imread(path)[..., :3]
  colors = plots.class_colors(len(classes))
  for unused in (0, 3):  # no sub-row and no legend entry for classes never active
    assert pixels_of(image, colors[unused])[0].size == 0
  # Sub-rows top to bottom: ground truth: walk, ground truth: sit, prediction: walk, prediction: sit
  # (all white). Bars are much wider than the legend patches: keep pixel rows with > 300 pixels.
  walk_rows, walk_cols = pixels_of(image, colors[1])
  sit_rows = pixels_of(image, colors[2])[0]
  wide_walk = [r for r in np.unique(walk_rows) if np.sum(walk_rows == r) > 300]
  wide_sit = [r for r in np.unique(sit_rows) if np.sum(sit_rows == r) > 300]
  (gt_walk, pred_walk), (gt_sit,) = bands(wide_walk), bands(wide_sit)
  # Ground-truth 'sit' row: the class colour exactly on frames [50, 150), white on the rest of the
  # axes (frame width and axes position from the coloured run itself).
  row = (gt_sit[0] + gt_sit[1]) // 2
  colored = np.flatnonzero(np.all(np.abs(image[row] - colors[2]) < 1.5 / 255, axis=-1))
  first, last = colored.min(), colored.max()
  assert colored.size == last - first + 1  # one contiguous run
  frame_width = (last + 1 - first) / 100
  axes_left, axes_right = first - 50 * frame_width, first + 150 * frame_width
  margin = round(2 * frame_width)  # the axes edges are only known to a few pixels
  white = np.all(image[row] > 1 - 1.5 / 255, axis=-1)
  assert white[round(axes_left) + margin : first - 1].all()
  assert white[last + 2 : round(axes_right) - margin].all()
  # Ground-truth 'walk' ends 50 frames after 'sit' starts; the predicted one starts 20 frames
  # after the ground-truth one and ends with it.
  gt_cols = walk_cols[walk_rows == (gt_walk[0] + gt_walk[1]) // 2]
  pred_cols = walk_cols[walk_rows == (pred_walk[0] + pred_walk[1]) // 2]
  assert gt_cols.max() + 1 - first == pytest.approx(50 * frame_width, abs=0.75 * frame_width)
  assert pred_cols.min() - gt_cols.min() == pytest.approx(20 * frame_width, abs=0.75 * frame_width)
  assert pred_cols.max() == gt_cols.max()
  # Four sub-rows of equal height between the axes frame's top and bottom lines, with the black
  # block separator after the second; the fourth, 'prediction: sit', is white.
  column = round(axes_left + 10.5 * frame_width)  # clear of tick marks and labels
  black = np.flatnonzero(np.all(image[:, column] < 0.2, axis=-1))
  top, separator, bottom = [(start + end) / 2 for start, end in bands(black)]
  sub_row = (bottom - top) / 4
  assert separator == pytest.approx(top + 2 * sub_row, abs=2)
  for index, band in enumerate((gt_walk, gt_sit, pred_walk)):
    assert (band[0] + band[1]) / 2 == pytest.approx(top + (index + 0.5) * sub_row, abs=2)
  pred_sit = image[round(top + 3 * sub_row) + 3 : round(bottom) - 2]
  assert np.all(pred_sit[:, round(axes_left) + margin : round(axes_right) - margin] > 1 - 1.5 / 255)


def test_plot_timelines_multi_hot_errors(tmp_path):
  path = str(tmp_path / 'bad.png')
  classes = ['a', 'b']
  with pytest.raises(ValueError, match="'v': rows differ in length"):
    plots.plot_timelines(
      path,
      [('v', {'ground truth': np.zeros((5, 2), bool), 'prediction': np.zeros((4, 2), bool)})],
      classes,
    )
  with pytest.raises(ValueError, match="'v': rows mix"):
    plots.plot_timelines(
      path,
      [('v', {'ground truth': np.zeros((5, 2), bool), 'prediction': np.zeros(5, int)})],
      classes,
    )
  with pytest.raises(ValueError, match='3 classes, expected 2'):
    plots.plot_timelines(path, [('v', {'prediction': np.zeros((5, 3), bool)})], classes)
  with pytest.raises(ValueError, match="row 'prediction'.*float"):
    plots.plot_timelines(path, [('v', {'prediction': np.zeros((5, 2))})], classes)
  assert not os.path.exists(path)

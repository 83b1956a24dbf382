"""Tests for polyseg.report: table text, metrics.jsonl / TensorBoard round trips, PNG plots."""

import json
import os
import struct

import matplotlib.image
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from polyseg import report

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def test_format_table_exact_text():
  rows = {
    'gtea': {'Acc': 82.24, 'Edit': 89.6, 'F1@10': 92.5, 'F1@25': 91.46, 'F1@50': 100.0},
    'synthetic test': {'Acc': 5.0, 'Edit': 9.96, 'F1@10': 2.0, 'F1@25': 1.04, 'F1@50': 4.0},
  }
  assert report.format_table(rows) == (
    '                 Acc  Edit  F1@10  F1@25  F1@50\n'
    'gtea            82.2  89.6   92.5   91.5  100.0\n'
    'synthetic test   5.0  10.0    2.0    1.0    4.0'
  )
  assert report.format_table({'a': {'Acc': 1.0, 'x': 2.25}}, columns=('x',)) == '     x\na  2.2'
  with pytest.raises(ValueError, match="'a'.*Edit"):
    report.format_table({'a': {'Acc': 1.0}}, columns=('Acc', 'Edit'))


def read_event_scalars(events_dir):
  """tag -> [(step, value)] from TFRecord event files (8-byte length, 4-byte crc, data, 4-byte crc)."""
  scalars = {}
  for name in sorted(os.listdir(events_dir)):
    with open(os.path.join(events_dir, name), 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset : offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
  writer = report.MetricWriter(str(tmp_path))
  writer.write(10, {'train/loss': np.float32(1.5), 'train/lr': 5e-4})
  writer.write(20, {'eval/F1@50': 60.25})
  writer.flush()
  writer.close()
  with open(tmp_path / 'metrics.jsonl') as f:
    lines = [json.loads(line) for line in f]
  assert lines == [
    {'step': 10, 'train/loss': 1.5, 'train/lr': 5e-4},
    {'step': 20, 'eval/F1@50': 60.25},
  ]
  scalars = read_event_scalars(tmp_path / 'tensorboard')
  assert scalars['train/loss'] == [(10, 1.5)]
  assert scalars['eval/F1_50'] == [(20, 60.25)]  # tensorboardX replaces '@' in tags
  assert scalars['train/lr'][0][1] == pytest.approx(5e-4)


def test_metric_writer_disabled_writes_nothing(tmp_path):
  writer = report.MetricWriter(str(tmp_path / 'run'), enabled=False)
  writer.write(1, {'train/loss': 1.0})
  writer.flush()
  writer.close()
  assert not (tmp_path / 'run').exists()


def test_metric_writer_rejects_non_scalars(tmp_path):
  writer = report.MetricWriter(str(tmp_path))
  with pytest.raises(ValueError, match="'train/loss' at step 3"):
    writer.write(3, {'train/loss': np.ones(2)})
  writer.close()


def test_class_colors_stable_and_distinct():
  colors = report.class_colors(48, background=(0,))
  np.testing.assert_array_equal(colors[:11], report.class_colors(11, background=(0,)))
  np.testing.assert_array_equal(colors[0], report.BACKGROUND_COLOR)
  assert len({tuple(c) for c in report.class_colors(54)}) == 54
  assert not any(r == g == b for r, g, b in report.class_colors(54))  # no greys but background


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
  report.plot_timelines(path, videos, classes, background=(0,))
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  assert os.listdir(tmp_path / 'plots') == ['timelines.png']  # no temporary file left
  image = matplotlib.image.imread(path)
  colors = report.class_colors(len(classes), background=(0,))
  for class_id in range(len(classes)):  # every class is drawn in its own colour
    assert pixels_of(image, colors[class_id])[0].size > 500
  # video_a: the ground-truth bar (class 1) is drawn above the prediction bar (class 4)
  assert pixels_of(image, colors[1])[0].min() < pixels_of(image, colors[4])[0].min()
  with pytest.raises(ValueError, match='outside'):
    report.plot_timelines(path, [('v', {'prediction': np.array([0, 9])})], classes)
  with pytest.raises(ValueError, match="'v': rows differ in length"):
    report.plot_timelines(
      path, [('v', {'ground truth': np.zeros(3, int), 'prediction': np.zeros(4, int)})], classes
    )


def test_read_metrics_and_plot_curves(tmp_path):
  writer = report.MetricWriter(str(tmp_path))
  for step in range(5):
    writer.write(step, {'train/loss': 2.0 / (step + 1), 'time': float(step)})
  writer.write(4, {'eval/Acc': 50.0})
  writer.write(3, {'train/loss': 9.0})  # a resumed run logs step 3 again
  writer.close()
  series = report.read_metrics(str(tmp_path / 'metrics.jsonl'))
  np.testing.assert_array_equal(series['train/loss'][0], [0, 1, 2, 3, 4])
  np.testing.assert_allclose(series['train/loss'][1], [2.0, 1.0, 2 / 3, 9.0, 0.4])
  assert set(series) == {'train/loss', 'time', 'eval/Acc'}
  png_path = str(tmp_path / 'curves.png')
  report.plot_curves(str(tmp_path / 'metrics.jsonl'), png_path)
  with open(png_path, 'rb') as f:
    assert f.read(8) == PNG_MAGIC
  image = matplotlib.image.imread(png_path)
  assert len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 10  # not blank
  with pytest.raises(ValueError, match='no numeric keys'):
    report.plot_curves(str(tmp_path / 'metrics.jsonl'), png_path, prefixes=('val/',))

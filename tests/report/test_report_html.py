"""Tests for segments.json (segment_files.write_segments / read_segments), frame-level per-class F1 and
confusion, the HTML report (polyseg.report.html) and `python -m polyseg.report`, rendered in headless
Chromium (Debian's `chromium`, installed by .ci/run)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import types

import matplotlib.image
import numpy as np
import pytest

from polyseg.configlib import load_config
from polyseg.core import metrics
from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.engine import train
from polyseg.methods.diffact import task as diffact
from polyseg.report import html as report_html
from polyseg.report import plots
from polyseg.report import segment_files

CLASSES = ['bg', '<b>&', 'stir', 'cut']
CHROMIUM_FLAGS = (
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--enable-logging=stderr',
  '--v=0',
)
RECT = re.compile(
  r'<rect x="(\d+)" y="0" width="(\d+)" height="1" fill="(#[0-9a-f]{6})"><title>(.*?)</title>'
  r'</rect>',
  re.DOTALL,
)


def test_write_segments_round_trip_class_ids(tmp_path):
  path = str(tmp_path / 'segments.json')
  gt = np.array([1, 1, 0, 0, 0, 2, 1])
  pred = np.array([1, 1, 1, 1, 1, 1, 1])
  segment_files.write_segments(path, [('v1', {'ground truth': gt, 'DiffAct': pred})], CLASSES, [0])
  with open(path) as f:
    assert json.load(f) == {
      'version': 1,
      'classes': CLASSES,
      'background': [0],
      'videos': [
        {
          'name': 'v1',
          'length': 7,
          'kind': 'class ids',
          'rows': {
            'ground truth': [[0, 2, 1], [2, 5, 0], [5, 6, 2], [6, 7, 1]],
            'DiffAct': [[0, 7, 1]],
          },
        }
      ],
    }
  video = segment_files.read_segments(path)['videos'][0]
  for row, labels in (('ground truth', gt), ('DiffAct', pred)):
    decoded = segment_files.decode_segments(video['rows'][row], 'class ids', 7, len(CLASSES))
    np.testing.assert_array_equal(decoded, labels)


def test_write_segments_round_trip_multi_hot(tmp_path):
  path = str(tmp_path / 'segments.json')
  active = np.zeros((7, 3), bool)
  active[0:3, 0] = True
  active[0:2, 2] = True  # starts with class 0: sorted by (start, class)
  active[5:7, 2] = True  # a second run of class 2; class 1 is never active
  segment_files.write_segments(
    path, [('p', {'ground truth': active, 'Fused': np.zeros((7, 3), bool)})], 'abc'
  )
  data = segment_files.read_segments(path)
  assert data['videos'][0]['kind'] == 'multi-hot'
  rows = data['videos'][0]['rows']
  assert rows['ground truth'].tolist() == [[0, 3, 0], [0, 2, 2], [5, 7, 2]]
  assert rows['Fused'].shape == (0, 3)
  decoded = segment_files.decode_segments(rows['ground truth'], 'multi-hot', 7, 3)
  np.testing.assert_array_equal(decoded, active)


def test_segments_files_checked(tmp_path):
  path = str(tmp_path / 'segments.json')
  with pytest.raises(ValueError, match=r"'v': class ids outside \[0, 4\)"):
    segment_files.write_segments(path, [('v', {'ground truth': np.array([0, 4])})], CLASSES)
  assert not os.path.exists(path)
  segment_files.write_segments(path, [('v', {'ground truth': np.array([0, 1, 1])})], CLASSES)
  with open(path) as f:
    data = json.load(f)
  broken = [
    (lambda d: d['videos'][0]['rows'].update({'ground truth': [[0, 1, 0], [2, 3, 1]]}), 'tile'),
    (lambda d: d['videos'][0]['rows'].update({'ground truth': [[0, 3, 9]]}), 'class ids'),
    (lambda d: d['videos'][0].update(length=2), 'outside the video'),
    (lambda d: d.update(version=7), 'version 7'),
    (lambda d: d.pop('classes'), 'not a segments file'),
  ]
  for change, message in broken:
    copy = json.loads(json.dumps(data))
    change(copy)
    with open(path, 'w') as f:
      json.dump(copy, f)
    with pytest.raises(formats.DataError, match=f'{re.escape(path)}.*{message}'):
      segment_files.read_segments(path)


def test_ground_truth_of_pairs_rows_of_every_task():
  polyphony = ['LH ground truth', 'LH', 'RH ground truth', 'RH']
  assert segment_files.ground_truth_of('LH', polyphony) == 'LH ground truth'
  assert segment_files.ground_truth_of('RH', polyphony) == 'RH ground truth'
  assert segment_files.ground_truth_of('LH ground truth', polyphony) is None
  hal = ['ground truth', 'Segmentation', 'Alignment']
  assert segment_files.ground_truth_of('Alignment', hal) == 'ground truth'
  assert segment_files.ground_truth_of('ground truth', hal) is None
  assert segment_files.ground_truth_of('DiffAct', ['DiffAct']) is None  # predict: no labels


def counts_of(videos, kind, num_classes):
  """frame_counts of hand-made (gt, pred) videos."""
  data = {
    'classes': [str(c) for c in range(num_classes)],
    'videos': [
      {
        'length': len(gt),
        'kind': kind,
        'rows': {
          'ground truth': segment_files.encode_segments(gt),
          'X': segment_files.encode_segments(pred),
        },
      }
      for gt, pred in videos
    ],
  }
  return segment_files.frame_counts(data)['X']


def test_frame_counts_and_f1_class_ids():
  counts = counts_of(
    [
      (np.array([0, 0, 1, 1, 1, 2, 2, 2]), np.array([0, 1, 1, 1, 2, 2, 2, 0])),
      (np.array([3, 3]), np.array([3, 0])),
    ],
    'class ids',
    5,
  )
  # gt 0 -> pred 0, 1; gt 1 -> 1, 1, 2; gt 2 -> 2, 2, 0; gt 3 -> 3, 0; class 4 nowhere
  expected = np.zeros((5, 5), int)
  expected[:4, :4] = [[1, 1, 0, 0], [0, 2, 1, 0], [1, 0, 2, 0], [1, 0, 0, 1]]
  np.testing.assert_array_equal(counts['confusion'], expected)
  np.testing.assert_array_equal(counts['gt'], [2, 3, 3, 2, 0])
  np.testing.assert_array_equal(counts['pred'], [3, 3, 3, 1, 0])
  # 2 TP / (gt + pred): 2/5, 4/6, 4/6, 2/3
  np.testing.assert_allclose(
    segment_files.class_f1(counts), [40.0, 200 / 3, 200 / 3, 200 / 3, np.nan]
  )


def test_frame_counts_and_f1_multi_hot():
  gt = np.zeros((6, 3), bool)
  gt[0:4, 0] = gt[2:6, 1] = True
  pred = np.zeros((6, 3), bool)
  pred[1:3, 0] = pred[3:5, 2] = True
  counts = counts_of([(gt, pred)], 'multi-hot', 3)
  # gt 0 (frames 0-3) meets pred 0 on 1, 2 and pred 2 on 3; gt 1 (2-5) meets pred 0 on 2 and
  # pred 2 on 3, 4
  np.testing.assert_array_equal(counts['confusion'], [[2, 0, 1], [1, 0, 2], [0, 0, 0]])
  np.testing.assert_array_equal(counts['gt'], [4, 4, 0])
  np.testing.assert_array_equal(counts['pred'], [2, 0, 2])
  np.testing.assert_allclose(segment_files.class_f1(counts), [200 / 3, 0.0, 0.0])


def diffact_task():
  """A DiffAct task of CLASSES (background: the first), for write_outputs."""
  info = dataset_lib.DataInfo(tuple(CLASSES), 4, (0,))
  return diffact.Task(load_config('diffact', 'runlocal=True'), info)


def make_workdir(root) -> None:
  """A workdir of two runs, written as the engine writes them: runs/diffact/{eval, eval_val,
  predict} through train.write_outputs (+ results.json), runs/hopadiff/eval multi-hot by hand.
  6 video timelines with 40 segments in all."""
  gt = np.array([0] * 20 + [1] * 30 + [2] * 40 + [0] * 10)
  pred = np.array([0] * 25 + [1] * 20 + [2] * 45 + [3] * 10)
  videos = [types.SimpleNamespace(name=n, labels=l) for n, l in (('v1', gt), ('v"2<', gt[::-1]))]
  predictions = {'v1': {'DiffAct': pred}, 'v"2<': {'DiffAct': pred[::-1]}}
  for folder, step in (('eval', 10), ('eval_val', 8)):
    outdir = os.path.join(root, 'runs', 'diffact', folder)
    train.write_outputs(diffact_task(), outdir, videos, predictions, num_timelines=0)
    results = {'DiffAct': {'Acc': 81.26, 'Edit': 70.04, 'F1@10': 12.0, 'F1@25': 11.0, 'F1@50': 9.0}}
    train.write_json(os.path.join(outdir, 'results.json'), {'step': step, 'results': results})
  unlabelled = [types.SimpleNamespace(name='new', labels=None)]
  outdir = os.path.join(root, 'runs', 'diffact', 'predict')
  train.write_outputs(diffact_task(), outdir, unlabelled, {'new': {'DiffAct': pred}}, 0)
  active = np.zeros((50, 3), bool)
  active[5:20, 0] = active[10:40, 1] = True
  predicted = np.zeros((50, 3), bool)
  predicted[8:20, 0] = predicted[30:45, 2] = True
  segment_files.write_segments(
    os.path.join(root, 'runs', 'hopadiff', 'eval', 'segments.json'),
    [('m1__p1', {'ground truth': active, 'Fused': predicted})],
    ['walk', 'sit', 'wave'],
  )


def test_html_report_contents(tmp_path):
  make_workdir(str(tmp_path))
  page = report_html.render(str(tmp_path), max_videos=1)
  # the metrics table: one line per (output folder, row), values with 1 decimal
  for folder, step in (('runs/diffact/eval', 10), ('runs/diffact/eval_val', 8)):
    assert (
      f'<tr><td class="name">{folder}</td><td>{step}</td><td class="name">DiffAct</td>'
      '<td>81.3</td><td>70.0</td><td>12.0</td><td>11.0</td><td>9.0</td></tr>'
    ) in page
  # timelines: 1 of 2 videos of each diffact folder; one rect per segment with its label, frame
  # range and row, class colours from plots.class_colors
  colors = plots.class_colors(len(CLASSES), [0])
  rects = [(int(x), int(w), fill, title) for x, w, fill, title in RECT.findall(page)]
  gt_v1 = [(0, 20, 0), (20, 30, 1), (50, 40, 2), (90, 10, 0)]
  pred_v1 = [(0, 25, 0), (25, 20, 1), (45, 45, 2), (90, 10, 3)]
  expected = [
    (
      x,
      w,
      report_html.hex_color(colors[c]),
      f'{report_html.esc(CLASSES[c])}\nframes {x}-{x + w - 1} ({w} frames)\n{row}',
    )
    for row, segments in (('ground truth', gt_v1), ('DiffAct', pred_v1))
    for x, w, c in segments
  ]
  assert rects[:8] == expected  # eval
  assert rects[8:16] == expected  # eval_val
  assert [r[:2] for r in rects[16:20]] == [(0, 25), (25, 20), (45, 45), (90, 10)]  # predict
  assert len(rects) == 20 + 4  # hopadiff: 2 ground-truth and 2 predicted runs
  assert 'frames 5-19 (15 frames)\nground truth: walk' in page
  assert 'frames 30-44 (15 frames)\nFused: wave' in page
  # data strings are escaped: the class '<b>&' and the video 'v"2<' (all of eval shown)
  assert '<b>&' not in page and '&lt;b&gt;&amp;' in page
  full = report_html.render(str(tmp_path), max_videos=2)
  assert 'v"2<' not in full and 'v&quot;2&lt;' in full
  # per-class F1 (2 TP / (gt + pred) over both videos) and confusion counts on hover
  # (v2 is v1 reversed: twice v1's counts)
  tip = 'DiffAct, &lt;b&gt;&amp;: F1 80.0\n40 true-positive frames, 60 ground-truth frames, 40 predicted'
  assert f'<td title="{tip}">' in page
  assert 'ground truth bg, predicted cut: 20 frames (33.3% of 60 ground-truth frames)' in page
  assert (
    'Fused, walk: F1 88.9\n12 true-positive frames, 15 ground-truth frames, 12 predicted' in page
  )
  assert 'walk, predicted wave' not in page  # no frame has both
  assert 'ground truth sit, predicted wave: 10 frames (33.3% of 30 ground-truth frames)' in page


def run_report(*args):
  return subprocess.run(
    [sys.executable, '-m', 'polyseg.report', *args],
    capture_output=True,
    text=True,
    timeout=120,
    check=False,  # the tests read the return code and stderr
  )


def run_chromium(tmp_path, *args) -> subprocess.CompletedProcess:
  """Headless Chromium with a fresh profile and no network use; the whole process group is killed
  if it hangs."""
  chromium = shutil.which('chromium')
  if chromium is None:
    pytest.fail('chromium not found: install Debian\'s chromium package (apt-get install chromium)')
  profile = tmp_path / f'chromium-profile-{len(os.listdir(tmp_path))}'
  command = [chromium, *CHROMIUM_FLAGS, f'--user-data-dir={profile}', *args]
  process = subprocess.Popen(
    command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
  )
  try:
    stdout, stderr = process.communicate(timeout=120)
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    raise
  assert process.returncode == 0, stderr
  return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def rendered_dom(tmp_path, page: str) -> str:
  """The DOM of `page` after its scripts ran; fails on a script error or any console message."""
  result = run_chromium(tmp_path, '--dump-dom', f'file://{page}')
  console = [line for line in result.stderr.splitlines() if ':CONSOLE' in line]
  assert not console, console
  assert 'data-errors' not in result.stdout, result.stdout[:300]
  return result.stdout


def colour_runs(image: np.ndarray, colors: np.ndarray) -> set[tuple[tuple[int, int], ...]]:
  """Per pixel row of image [H, W, 3] with at least 500 pixels of the colours [C, 3]: its runs
  of one colour as (class, percent of the row's coloured pixels), left to right."""
  matches = np.all(np.abs(image[:, :, None] - colors) < 1.5 / 255, axis=-1)  # [H, W, C]
  found = set()
  for row in matches[matches.any(axis=2).sum(axis=1) >= 500]:
    labels = np.where(row.any(axis=1), row.argmax(axis=1), -1)
    classes, starts, ends = metrics.segments(labels, background=[-1])
    widths = ends - starts
    found.add(
      tuple(zip(classes.tolist(), np.rint(100 * widths / widths.sum()).astype(int).tolist()))
    )
  return found


def test_cli_report_renders_in_chromium(tmp_path):
  workdir = tmp_path / 'work'
  make_workdir(str(workdir))
  result = run_report(f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr
  page = workdir / 'report.html'
  assert result.stdout.strip() == f'Wrote {page}'
  # the script ran: it counted 6 timelines and 40 segments and moved every tooltip to data-tip
  dom = rendered_dom(tmp_path, str(page))
  assert re.search(r'<body data-rendered="6" data-segments="40">', dom), dom[:2000]
  assert dom.count('<rect') == 40 and dom.count('<title>') == 1  # the page's own title
  assert 'data-tip="bg\nframes 0-19 (20 frames)\nground truth"' in dom
  # the timelines are drawn: the screenshot has pixel rows with v1's ground-truth and predicted
  # bars, class colours in the order and proportions of their segments
  screenshot = tmp_path / 'page.png'
  run_chromium(tmp_path, f'--screenshot={screenshot}', '--window-size=1400,2000', f'file://{page}')
  bars = colour_runs(matplotlib.image.imread(screenshot)[..., :3], plots.class_colors(4, [0]))
  assert ((0, 20), (1, 30), (2, 40), (0, 10)) in bars  # ground truth
  assert ((0, 25), (1, 20), (2, 45), (3, 10)) in bars  # prediction


def test_page_script_errors_are_caught(tmp_path, monkeypatch):
  make_workdir(str(tmp_path / 'work'))
  monkeypatch.setattr(
    report_html,
    'SCRIPT',
    report_html.SCRIPT.replace('(function () {', '(function () { notDefined();', 1),
  )
  page = report_html.write_report(str(tmp_path / 'work'))
  with pytest.raises(AssertionError, match='Uncaught ReferenceError: notDefined'):
    rendered_dom(tmp_path, page)
  result = run_chromium(tmp_path, '--dump-dom', f'file://{page}')
  assert '<html lang="en" data-errors="1">' in result.stdout
  assert 'data-rendered' not in result.stdout


def test_cli_errors(tmp_path):
  (tmp_path / 'run' / 'eval').mkdir(parents=True)
  result = run_report(f'--workdir={tmp_path / "run"}')
  assert result.returncode == 1
  assert 'no segments.json in it or below' in result.stderr and 'Traceback' not in result.stderr
  assert not (tmp_path / 'run' / 'report.html').exists()
  result = run_report(f'--workdir={tmp_path / "missing"}')
  assert result.returncode == 1 and 'missing: no such directory' in result.stderr

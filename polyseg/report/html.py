"""The HTML report of a workdir (`python -m polyseg.report --workdir=DIR`): one self-contained page
(inline CSS, SVG and a little JS; no network needed to open it) with

  - the metrics table of every output folder's results.json (and curves.png, when there is one),
  - per output folder with a segments.json (eval, eval_val, eval_best, predict, of every run under
    DIR): per-video timelines of each timeline row (ground truth and predictions), a segment's label
    and frame range on hover; per-class frame F1 of each prediction row against its ground truth
    (`segment_files.ground_truth_of`); and a confusion matrix of frames per prediction row.

Every string that comes from data is escaped. The page's script marks the <body> with
data-rendered (number of video timelines) and data-segments (number of segment rects) when it has
run, and an error handler marks <html> with data-errors (tests read these from the rendered DOM).
"""

import base64
import html
import json
import os

import numpy as np

from polyseg.data import formats
from polyseg.report import plots
from polyseg.report import segment_files
from polyseg.report import tables

CONFUSION_COLOR = np.array([33, 102, 172])  # a full row share; white = none

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h2 { border-bottom: 1px solid #ccc; margin-top: 40px; }
summary { cursor: pointer; margin-top: 8px; }
table { border-collapse: collapse; }
td, th { padding: 2px 8px; text-align: right; }
th { background: #f2f2f2; }
td.name, th.name { text-align: left; }
.metrics tr:nth-child(even) td { background: #fafafa; }
.note { color: #555; max-width: 60em; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 8px 0 16px; font-size: 12px; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
  vertical-align: middle; border: 1px solid #999; }
.timeline { margin-bottom: 18px; }
.timeline h4 { margin: 0 0 4px; font-weight: 600; }
.tracks { display: grid; grid-template-columns: max-content 1fr; gap: 2px 8px; align-items: center; }
.tracks .label { font-size: 12px; text-align: right; }
.tracks .first { border-top: 1px solid #444; }
svg.bar { display: block; width: 100%; height: 16px; background: #fff; border: 1px solid #ddd; }
.axis { display: flex; justify-content: space-between; font-size: 11px; color: #666; }
.f1bar { display: flex; align-items: center; gap: 6px; }
.f1bar .track { width: 140px; height: 14px; background: #f0f0f0; }
.f1bar .fill { height: 100%; }
.f1bar span { font-size: 11px; min-width: 3em; }
.cm td { width: 14px; height: 14px; padding: 0; border: 1px solid #eee; }
.cm th { font-size: 11px; font-weight: normal; padding: 0 4px; }
.cm th.col { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; }
#tip { position: absolute; pointer-events: none; white-space: pre-line; background: #222;
  color: #fff; padding: 4px 8px; border-radius: 4px; font-size: 12px; z-index: 10; }
"""

ERROR_HOOK = """
window.addEventListener('error', function () {
  var root = document.documentElement;
  root.dataset.errors = String(Number(root.dataset.errors || 0) + 1);
});
"""

# Moves the SVG <title>s and title attributes (the no-JS fallback) to data-tip, shown by one
# tooltip that follows the mouse; then marks the body as rendered.
SCRIPT = """
(function () {
  var tip = document.getElementById('tip');
  document.querySelectorAll('svg title').forEach(function (title) {
    title.parentNode.setAttribute('data-tip', title.textContent);
    title.remove();
  });
  document.querySelectorAll('[title]').forEach(function (element) {
    element.setAttribute('data-tip', element.getAttribute('title'));
    element.removeAttribute('title');
  });
  document.addEventListener('mouseover', function (event) {
    var element = event.target.closest ? event.target.closest('[data-tip]') : null;
    tip.hidden = !element;
    if (element) tip.textContent = element.getAttribute('data-tip');
  });
  document.addEventListener('mousemove', function (event) {
    var left = event.pageX + 12;
    if (left + tip.offsetWidth > window.scrollX + window.innerWidth) {
      left = event.pageX - tip.offsetWidth - 12;
    }
    tip.style.left = left + 'px';
    tip.style.top = event.pageY + 12 + 'px';
  });
  document.body.dataset.rendered = document.querySelectorAll('.timeline').length;
  document.body.dataset.segments = document.querySelectorAll('svg.bar rect').length;
})();
"""


def esc(value) -> str:
  return html.escape(str(value), quote=True)


def hex_color(rgb) -> str:
  """RGB in [0, 1] -> '#rrggbb'."""
  return '#' + ''.join(f'{round(float(v) * 255):02x}' for v in rgb)


def find_outputs(workdir: str) -> tuple[list[str], list[str]]:
  """(folders holding segments.json or results.json, folders holding curves.png) under workdir,
  relative to it ('.' for workdir itself), sorted; hidden folders (temporary files) skipped."""
  outputs, curves = [], []
  for folder, subfolders, files in os.walk(workdir):
    subfolders[:] = sorted(d for d in subfolders if not d.startswith('.'))
    relative = os.path.relpath(folder, workdir)
    if 'segments.json' in files or 'results.json' in files:
      outputs.append(relative)
    if 'curves.png' in files:
      curves.append(relative)
  return outputs, curves


def read_results(path: str) -> dict:
  """results.json -> {'step', 'results': {row: {metric: value}}}; DataError when it is not one."""
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
    rows = {
      str(row): {str(k): float(v) for k, v in values.items()}
      for row, values in data['results'].items()
    }
    return {'step': data.get('step'), 'results': rows}
  except (AttributeError, KeyError, TypeError, ValueError) as error:  # ValueError: not JSON
    raise formats.DataError(f'{path}: not a results file: {error!r}') from error


def metrics_table(results: dict[str, dict]) -> str:
  """One HTML table: a line per (output folder, row), the columns of `tables.table_columns`."""
  rows = [values for data in results.values() for values in data['results'].values()]
  columns = tables.table_columns(rows)
  head = ''.join(f'<th>{esc(c)}</th>' for c in columns)
  lines = [f'<tr><th class="name">output</th><th>step</th><th class="name">row</th>{head}</tr>']
  for folder, data in results.items():
    for row, values in data['results'].items():
      cells = ''.join(f'<td>{values[c]:.1f}</td>' if c in values else '<td>-</td>' for c in columns)
      step = '' if data['step'] is None else esc(data['step'])
      lines.append(
        f'<tr><td class="name">{esc(folder)}</td><td>{step}</td>'
        f'<td class="name">{esc(row)}</td>{cells}</tr>'
      )
  return '<table class="metrics">' + ''.join(lines) + '</table>'


def legend(class_ids, classes, colors) -> str:
  return (
    '<div class="legend">'
    + ''.join(
      f'<span><span class="swatch" style="background:{hex_color(colors[c])}"></span>'
      f'{c}: {esc(classes[c])}</span>'
      for c in sorted(class_ids)
    )
    + '</div>'
  )


def timeline_tracks(video: dict, classes) -> list[tuple[str, np.ndarray, bool]]:
  """(label, segments [S, 3], starts a row block) per bar: one per row for class ids; for
  multi-hot, one per (row, class active anywhere in the video) labelled '<row>: <class>' (as
  `plots.plot_timelines`), or '<row>: none' when no class is active."""
  rows = video['rows']
  if video['kind'] == 'class ids':
    return [(row, segments, False) for row, segments in rows.items()]
  shown = sorted({int(c) for segments in rows.values() for c in segments[:, 2]})
  if not shown:
    return [(f'{row}: none', segments, True) for row, segments in rows.items()]
  return [
    (f'{row}: {classes[c]}', segments[segments[:, 2] == c], index == 0)
    for row, segments in rows.items()
    for index, c in enumerate(shown)
  ]


def timeline(video: dict, classes, colors) -> str:
  """A video's bars, aligned on the frame axis: one SVG per bar, one <rect> per segment with its
  label, frame range (inclusive) and row in a <title>."""
  length = video['length']
  parts = []
  for label, segments, first in timeline_tracks(video, classes):
    rects = ''.join(
      f'<rect x="{start}" y="0" width="{end - start}" height="1" '
      f'fill="{hex_color(colors[c])}"><title>{esc(classes[c])}\n'
      f'frames {start}-{end - 1} ({end - start} frames)\n{esc(label)}</title></rect>'
      for start, end, c in segments.tolist()
    )
    css_class = ' first' if first else ''
    parts.append(
      f'<div class="label{css_class}">{esc(label)}</div><svg class="bar{css_class}" '
      f'viewBox="0 0 {length} 1" preserveAspectRatio="none" shape-rendering="crispEdges">'
      f'{rects}</svg>'
    )
  axis = f'<div></div><div class="axis"><span>frame 0</span><span>frame {length - 1}</span></div>'
  return (
    f'<div class="timeline"><h4>{esc(video["name"])} <small>({length} frames)</small></h4>'
    f'<div class="tracks">{"".join(parts)}{axis}</div></div>'
  )


def f1_table(counts: dict[str, dict[str, np.ndarray]], classes, colors) -> str:
  """Per class (in the ground truth or a prediction of some row), a bar per prediction row: its
  frame-level F1 (`segment_files.class_f1`), the frame counts on hover; last line the mean over classes."""
  scores = {row: segment_files.class_f1(c) for row, c in counts.items()}
  present = np.flatnonzero(np.any([np.isfinite(s) for s in scores.values()], axis=0))
  head = ''.join(f'<th>{esc(row)}</th>' for row in counts)
  lines = [f'<tr><th class="name">class</th>{head}</tr>']
  for c in present:
    cells = []
    for row, f1 in scores.items():
      gt, pred = counts[row]['gt'][c], counts[row]['pred'][c]
      tp = counts[row]['confusion'][c, c]
      if np.isnan(f1[c]):
        cells.append('<td>-</td>')
        continue
      tip = (
        f'{row}, {classes[c]}: F1 {f1[c]:.1f}\n{tp} true-positive frames, {gt} ground-truth '
        f'frames, {pred} predicted'
      )
      cells.append(
        f'<td title="{esc(tip)}"><div class="f1bar"><div class="track"><div class="fill" '
        f'style="width:{f1[c]:.1f}%;background:{hex_color(colors[c])}"></div></div>'
        f'<span>{f1[c]:.1f}</span></div></td>'
      )
    lines.append(f'<tr><td class="name">{c}: {esc(classes[c])}</td>{"".join(cells)}</tr>')
  means = ''.join(
    f'<td>{np.nanmean(f1):.1f}</td>' if np.isfinite(f1).any() else '<td>-</td>'
    for f1 in scores.values()
  )
  lines.append(f'<tr><th class="name">mean over classes</th>{means}</tr>')
  return '<table class="f1">' + ''.join(lines) + '</table>'


def confusion_table(counts: dict[str, np.ndarray], classes) -> str:
  """Rows: ground-truth class, columns: predicted class, over the classes in either; a cell's colour
  is its share of the frames where the ground-truth class is active, its frame count on hover."""
  confusion, gt, pred = counts['confusion'], counts['gt'], counts['pred']
  present = np.flatnonzero((gt > 0) | (pred > 0))
  head = ''.join(f'<th class="col">{esc(classes[j])}</th>' for j in present)
  lines = [f'<tr><th class="name">ground truth \\ predicted</th>{head}</tr>']
  for i in present:
    cells = []
    for j in present:
      count = confusion[i, j]
      if count == 0:
        cells.append('<td></td>')
        continue
      share = count / gt[i]
      rgb = np.rint(255 - share * (255 - CONFUSION_COLOR)).astype(int)
      tip = (
        f'ground truth {classes[i]}, predicted {classes[j]}: {count} frames '
        f'({100 * share:.1f}% of {gt[i]} ground-truth frames)'
      )
      cells.append(
        f'<td style="background:rgb({rgb[0]},{rgb[1]},{rgb[2]})" title="{esc(tip)}"></td>'
      )
    row_tip = f'{classes[i]}: {gt[i]} ground-truth frames, {pred[i]} predicted'
    lines.append(
      f'<tr><th class="name" title="{esc(row_tip)}">{esc(classes[i])}</th>{"".join(cells)}</tr>'
    )
  return '<table class="cm">' + ''.join(lines) + '</table>'


TIMELINES_NOTE = (
  '{shown} of {total} videos (--max_videos); hover a segment for its label and frame range '
  '(inclusive).'
)
F1_NOTE = (
  "Each prediction row against its ground truth ('&lt;row&gt; ground truth' when there is one, "
  "else 'ground truth'), over all {total} videos: F1 = 2 TP / (ground-truth frames + predicted "
  'frames).'
)
CONFUSION_NOTE = (
  'Rows: ground-truth class, columns: predicted class; colour: share of the row class&#x27;s '
  'ground-truth frames; counts on hover.'
)
MULTI_HOT_NOTE = (
  ' Multi-hot rows: a cell counts the frames where ground-truth class i and predicted class j are '
  'both active (for one class per frame this is the usual confusion), so a row can sum to more or '
  'less than 100%.'
)


def output_section(folder: str, anchor: str, data: dict, max_videos: int) -> str:
  """Timelines, per-class F1 and confusion matrices of one output folder's segments.json."""
  classes = data['classes']
  colors = plots.class_colors(len(classes), data['background'])
  videos = data['videos'][:max_videos]
  shown = {int(c) for video in videos for s in video['rows'].values() for c in s[:, 2]}
  total = len(data['videos'])
  parts = [
    f'<section id="{anchor}"><h2>{esc(folder)}</h2><h3>Timelines</h3>',
    f'<p class="note">{TIMELINES_NOTE.format(shown=len(videos), total=total)}</p>',
    legend(shown, classes, colors),
    *(timeline(video, classes, colors) for video in videos),
  ]
  counts = segment_files.frame_counts(data)
  if counts:
    multi_hot = any(video['kind'] == 'multi-hot' for video in data['videos'])
    parts += [
      f'<h3>Per-class frame F1</h3><p class="note">{F1_NOTE.format(total=total)}</p>',
      f1_table(counts, classes, colors),
      f'<h3>Confusion (frames)</h3><p class="note">{CONFUSION_NOTE}',
      f'{MULTI_HOT_NOTE if multi_hot else ""}</p>',
      *(f'<h4>{esc(row)}</h4>{confusion_table(c, classes)}' for row, c in counts.items()),
    ]
  return ''.join(parts) + '</section>'


def render(workdir: str, max_videos: int = 12) -> str:
  """The report page of every output folder under workdir; DataError when none has a
  segments.json."""
  if not os.path.isdir(workdir):
    raise formats.DataError(f'{workdir}: no such directory')
  outputs, curves = find_outputs(workdir)
  segments = {
    folder: segment_files.read_segments(os.path.join(workdir, folder, 'segments.json'))
    for folder in outputs
    if os.path.exists(os.path.join(workdir, folder, 'segments.json'))
  }
  if not segments:
    raise formats.DataError(
      f'{workdir}: no segments.json in it or below (evaluation and prediction write one per '
      'output folder, e.g. eval/segments.json); nothing to report'
    )
  results = {
    folder: read_results(os.path.join(workdir, folder, 'results.json'))
    for folder in outputs
    if os.path.exists(os.path.join(workdir, folder, 'results.json'))
  }
  anchors = {folder: f'output-{index}' for index, folder in enumerate(segments)}
  nav = ' · '.join(f'<a href="#{anchors[f]}">{esc(f)}</a>' for f in segments)
  body = [
    f'<h1>polyseg report</h1><p class="note">{esc(os.path.abspath(workdir))}</p><p>{nav}</p>',
    '<h2>Metrics</h2>' + (metrics_table(results) if results else '<p>No results.json.</p>'),
  ]
  for folder in curves:
    with open(os.path.join(workdir, folder, 'curves.png'), 'rb') as f:
      png = base64.b64encode(f.read()).decode('ascii')
    body.append(
      f'<details><summary>Training curves: {esc(folder)}</summary>'
      f'<img alt="curves" src="data:image/png;base64,{png}"></details>'
    )
  body += [output_section(f, anchors[f], data, max_videos) for f, data in segments.items()]
  return (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>polyseg report</title>'
    f'<style>{CSS}</style><script>{ERROR_HOOK}</script></head><body>{"".join(body)}'
    f'<div id="tip" hidden></div><script>{SCRIPT}</script></body></html>\n'
  )


def write_report(workdir: str, output: str | None = None, max_videos: int = 12) -> str:
  """Renders workdir's report to `output` (default workdir/report.html), atomically; its path."""
  output = output or os.path.join(workdir, 'report.html')
  formats.write_atomic(output, render(workdir, max_videos).encode('utf-8'))
  return output

"""The benchmarks at tiny sizes, run as a user runs them (subprocesses): their JSON lines, op_profile.py's
costs, roofline, trace and HLO files; the trace/HLO reading of benchmarks/common.py; and
quality.py's constant HopaDIFF baseline (called directly)."""

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from polyseg.configlib import load_config
from polyseg.core import metrics
from polyseg.methods.hopadiff import task as hopadiff
from polyseg.methods.twostream import task as twostream

BENCHMARKS = REPO / 'benchmarks'
# The tiny programs compile faster without XLA's optimisation passes; the persistent compilation cache
# (conftest) lets the scripts share the programs they have in common.
ENV = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')
TINY = ['--batch_size=1']  # with --length/--frames=200: the [1, 128] train step every script shares


def run_process(script: str, *args: str) -> subprocess.CompletedProcess:
  """`python benchmarks/<script> args`, its output captured."""
  return subprocess.run(
    [sys.executable, str(BENCHMARKS / script), *args],
    cwd=REPO,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )


def run(script: str, *args: str) -> list[dict]:
  """The JSON lines `benchmarks/<script>` prints."""
  done = run_process(script, *args)
  assert done.returncode == 0, done.stderr[-3000:]
  return [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{')]


def load_benchmark(name: str):
  """benchmarks/<name>.py, imported as a module of its own (benchmarks/ is not a package)."""
  spec = importlib.util.spec_from_file_location(f'benchmarks_{name}', BENCHMARKS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def common():
  return load_benchmark('common')


def test_profile_reports_costs_roofline_trace_and_hlo(tmp_path):
  trace_dir, hlo_dir = tmp_path / 'trace', tmp_path / 'hlo'
  header, *rows = run(
    'op_profile.py',
    '--config=configs/diffact.py:runlocal=True',
    '--config.train.num_steps=1',  # overrides are accepted like polyseg.main's
    '--num_classes=5',
    '--length=200',
    *TINY,
    '--runs=2',
    '--peak_flops=1e10',
    '--peak_bandwidth=1e9',
    f'--trace_dir={trace_dir}',
    f'--hlo_dump={hlo_dir}',
  )
  assert header['benchmark'] == 'profile' and header['params'] > 0
  assert not header['peaks_measured']
  assert [r['program'] for r in rows] == ['train_step', 'ddim_sample']
  for row in rows:
    for key in ('flops', 'bytes', 'argument_bytes', 'output_bytes', 'temp_bytes', 'run_s'):
      assert row[key] > 0, (row['program'], key)
    assert row['intensity'] == pytest.approx(row['flops'] / row['bytes'], rel=1e-3)
    attainable = min(1e10, row['intensity'] * 1e9)
    assert row['attainable_flops_per_s'] == pytest.approx(attainable, rel=1e-3)
    assert row['roofline_s'] == pytest.approx(row['flops'] / attainable, rel=1e-3)
    assert row['top_ops'] and all(op['ms'] > 0 and op['source'] for op in row['top_ops'])
    assert any(op['source'].startswith('polyseg/') for op in row['top_ops'])
    traces = [f for _, _, files in os.walk(trace_dir / row['program']) for f in files]
    assert any(f.endswith('.xplane.pb') for f in traces), traces
    assert 'HloModule' in (hlo_dir / f'{row["program"]}.hlo.txt').read_text()
    assert 'func.func' in (hlo_dir / f'{row["program"]}.stablehlo.mlir').read_text()
  assert rows[0]['shape'] == [1, 128] and rows[1]['shape'] == [2, 128]  # sample rate 2: two views
  assert rows[0]['alias_bytes'] > 0  # the donated state
  assert 5 in rows[1]['loop_trip_counts']  # runlocal: 5 sampling steps in one lax.scan


def test_profile_runs_on_a_methods_own_data(tmp_path):
  """--data=config profiles any method on its own data (HAL: transcripts and a grammar that random
  videos do not have); HAL has no DDIM program, and random videos are refused for it, by name;
  Polyphony without the features of its stage 2 is a one-line usage error saying where they are."""
  common_args = [
    '--config=configs/hal.py:runlocal=True',
    f'--config.data.cache_dir={tmp_path / "data"}',
    '--peak_flops=1e10',
    '--peak_bandwidth=1e9',
    f'--trace_dir={tmp_path / "trace"}',
    '--runs=1',
  ]
  header, row = run(
    'op_profile.py', *common_args, '--data=config', '--programs=train_step', '--batch_size=2'
  )
  assert header['task'] == 'hal' and header['data'] == 'config' and header['length'] is None
  assert row['program'] == 'train_step' and row['shape'][0] == 2 and row['flops'] > 0
  for args, message in (
    (['--data=config'], 'hal has no DDIM sampling program of its own'),
    (['--data=random'], 'profile it on its own data with --data=config'),
  ):
    done = run_process('op_profile.py', *common_args, *args)
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]
  # Polyphony's stage 3 reads stage 2's output: without it, a usage error saying where it is
  done = run_process(
    'op_profile.py',
    '--config=configs/polyphony.py:runlocal=True',
    '--data=config',
    *common_args[2:],  # the peaks, the trace folder, one run
  )
  assert done.returncode != 0 and 'Traceback' not in done.stderr, done.stderr[-2000:]
  assert 'set --config.data.root to <workdir>/stage2/dataset' in done.stderr, done.stderr[-2000:]


def test_train_step_reports_throughput():
  header, row = run(
    'train_step.py', '--models=tiny_diffact', '--frames=200', *TINY, '--steps=2', '--warmup=1'
  )
  assert header['benchmark'] == 'train_step'
  assert row['model'] == 'tiny_diffact' and row['batch_shape'] == [1, 128]
  assert row['frames_per_batch'] == 100  # 200 frames at sample rate 2
  assert row['compile_s'] > 0 and row['step_s'] > 0
  assert row['frames_per_s'] == pytest.approx(100 / row['step_s'], rel=1e-3)


def test_train_step_compares_the_scan_in_alternating_blocks():
  header, unrolled, scanned = run(
    'train_step.py',
    '--models=tiny_diffact',
    '--frames=200',
    *TINY,
    '--steps=1',
    '--warmup=0',
    '--rounds=3',
    '--compare_scan',
  )
  assert header['rounds'] == 3
  assert (unrolled['scan_layers'], scanned['scan_layers']) == (False, True)
  assert unrolled['params'] == scanned['params'] and unrolled['batch_shape'] == [1, 128]
  for row in (unrolled, scanned):
    assert len(row['block_s']) == 3 and row['compile_s'] > 0
    assert row['step_s'] == pytest.approx(sorted(row['block_s'])[1], rel=1e-3)
  done = run_process('train_step.py', '--models=tiny_diffact', '--compare_scan', '--scan_layers')
  assert done.returncode == 2 and 'leave out --scan_layers' in done.stderr


def test_checkpoint_compares_packed_with_array_by_array_writes():
  header, *rows = run('checkpoint.py', '--config=configs/diffact.py:runlocal=True', '--repeats=1')
  assert header['benchmark'] == 'checkpoint' and header['task'] == 'diffact'
  assert [row['format'] for row in rows] == ['packed', 'array_by_array']
  packed, arrays = rows
  assert packed['arrays'] == arrays['arrays'] == arrays['arrays_written'] > 100
  assert packed['arrays_written'] == 2  # float32 and int32 (the step, adam's count)
  assert packed['mib'] == arrays['mib'] > 0
  for row in rows:
    assert row['save_s'] > 0 and row['restore_s'] > 0


def test_gpu_plan_reports_each_item_and_keeps_to_its_budget(tmp_path):
  out = tmp_path / 'gpu.jsonl'
  plan = 'tiny_diffact:train:float32:1,tiny_diffact:sample:float32,tiny_diffact:eval:float32'
  header, train_row, sample_row, bad = run(
    'gpu.py', f'--plan={plan}', '--matmul_n=256', f'--out={out}'
  )
  assert [json.loads(line) for line in out.read_text().splitlines()][1]['item'] == train_row['item']
  assert header['benchmark'] == 'gpu' and header['peak_bf16_flops'] > 0
  assert train_row['shape'] == [1, 128] and train_row['valid_frames'] == 100
  assert sample_row['shape'] == [2, 128] and sample_row['valid_frames'] == 200  # two views
  for row in (train_row, sample_row):
    assert row['compile_s'] > 0 and row['frames_per_s'] == pytest.approx(
      row['valid_frames'] / row['run_s'], rel=1e-3
    )
    assert row['mfu'] == pytest.approx(
      row['flops'] / row['run_s'] / header['peak_bf16_flops'], rel=1e-2
    )
  assert not train_row['flops_estimated'] and sample_row['flops_estimated']
  assert 'program must be train or sample' in bad['error']
  _, *skipped = run('gpu.py', '--plan=breakfast:train:bfloat16', '--matmul_n=64', '--budget_s=0')
  assert skipped == [{'item': 'breakfast:train:bfloat16', 'skipped': 'budget of 0 s spent'}]


def test_scaling_reports_each_device_count_with_its_efficiency():
  header, *rows = run(
    'scaling.py', '--model=tiny_diffact', '--devices=1,2', '--frames=200', '--steps=1'
  )
  assert header['benchmark'] == 'scaling'
  assert [(r['devices'], r['batch_shape']) for r in rows] == [(1, [1, 128]), (2, [2, 128])]
  assert rows[0]['efficiency'] == 1.0
  for row in rows:
    assert row['step_s'] > 0 and row['frames_per_s'] == pytest.approx(
      100 * row['devices'] / row['step_s'], rel=1e-3
    )
    assert row['efficiency'] == pytest.approx(
      row['frames_per_s'] / (row['devices'] * rows[0]['frames_per_s']), rel=1e-3
    )


def test_ddim_reports_sampling_times_per_length():
  _, *rows = run('ddim.py', '--models=tiny_diffact,tiny_hopadiff', '--lengths=200')
  assert [(r['model'], r['T']) for r in rows] == [('tiny_diffact', 200), ('tiny_hopadiff', 200)]
  for row in rows:
    assert row['compile_s'] > 0 and row['sample_s'] > 0 and row['encode_s'] > 0
    assert row['temp_bytes'] > 0
  assert rows[0]['views'] == 2 and rows[1]['views'] == 1


def test_long_video_reports_time_memory_and_growth():
  _, *rows = run(
    'long_video.py',
    '--lengths=100,200',
    '--infer_model=tiny_diffact',
    '--train_model=tiny_diffact',
  )
  runs = [r for r in rows if 'T' in r]
  growth = [r for r in rows if 'length_ratio' in r]
  assert [(r['mode'], r['T']) for r in runs] == [
    ('infer', 100),
    ('infer', 200),
    ('train', 100),
    ('train', 200),
  ]
  for row in runs:
    assert 'error' not in row, row
    assert row['run_s'] > 0 and row['temp_bytes'] > 0
    assert row['peak_rss_bytes'] >= row['run_peak_rss_bytes'] >= row['rss_before_run_bytes'] > 0
  assert [g['mode'] for g in growth] == ['infer', 'train']
  for g in growth:
    assert g['length_ratio'] == 2 and g['time_ratio'] > 0 and g['temp_ratio'] > 1


def test_cost_numbers_accept_the_list_form_of_older_jax(common):
  class Compiled:
    def cost_analysis(self):
      return [{'flops': 3.0, 'bytes accessed': 5.0}, {'flops': 1.0, 'bytes accessed': 1.0}]

    def memory_analysis(self):
      return None

  assert common.cost_numbers(Compiled()) == {'flops': 4.0, 'bytes': 6.0}


def test_top_ops_name_the_source_line_under_the_prefix(common, tmp_path):
  layer = nn.Dense(64)
  x = jnp.ones((256, 32))
  params = layer.init(jax.random.PRNGKey(0), x)
  line = sys._getframe().f_lineno + 3
  # `line` in the program too: the persistent compilation cache keys on the program, not on its
  # source lines, and would hand back the metadata of this test as it stood before an edit.
  forward = jax.jit(lambda p, x: jnp.tanh(layer.apply(p, x)) * line)
  compiled = forward.lower(params, x).compile()
  sources = common.hlo_sources(compiled.as_text(), prefix='tests/')
  assert f'tests/test_benchmarks.py:{line}' in {source for _, source in sources.values()}
  jax.block_until_ready(compiled(params, x))
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(2):
      jax.block_until_ready(compiled(params, x))
  ops = common.top_ops(str(tmp_path), compiled.as_text(), runs=2, count=100)
  assert ops and math.isclose(sum(op['share'] for op in ops), 1.0)
  assert all(op['calls'] == 1 for op in ops)


def test_quality_constant_baseline_scores_the_training_frequencies(cache_dir):
  """quality.py's constant HopaDIFF row on the runlocal data against a hand computation: the classes
  whose training frequency reaches the threshold are one predicted set P for every frame."""
  quality = load_benchmark('quality')
  config = load_config('hopadiff', 'runlocal=True')
  config.data.cache_dir = cache_dir
  data = hopadiff.load_data(config)
  train_frames = [frame for sample in data.train for frame in sample.labels.tolist()]
  num_classes = len(data.info.classes)
  frequencies = [sum(f[c] for f in train_frames) / len(train_frames) for c in range(num_classes)]
  # At the top frequency as threshold its class is predicted; just above it nothing is.
  for threshold in (max(frequencies), float(np.nextafter(max(frequencies), 1.0))):
    config.eval.threshold = threshold
    predicted = {c for c in range(num_classes) if frequencies[c] >= threshold}
    results = quality.constant_baseline(config)
    for split, samples in (('val', data.val), ('test', data.read_test())):
      sets = [
        {c for c in range(num_classes) if frame[c]}
        for sample in samples
        for frame in sample.labels.tolist()
      ]
      jaccards = [len(s & predicted) / len(s | predicted) if s | predicted else 1.0 for s in sets]
      assert list(results[split]) == ['Acc', 'Jaccard', 'Edit', 'F1@10', 'F1@25', 'F1@50', 'mAP']
      assert results[split]['Acc'] == pytest.approx(
        sum(s == predicted for s in sets) / len(sets) * 100
      )
      assert results[split]['Jaccard'] == pytest.approx(sum(jaccards) / len(jaccards) * 100)


def test_quality_majority_baseline_predicts_each_rows_most_frequent_training_class(cache_dir):
  """quality.py's constant row of the single-label tables, on the runlocal 2s-DAS data, by hand:
  every frame gets the most frequent training class, so Acc is that class's share of the split's
  frames; every row (Fused, RGB, Flow) scores the same; background is left out of Edit / F1."""
  quality = load_benchmark('quality')
  config = load_config('twostream', 'runlocal=True')
  config.data.cache_dir = cache_dir
  data = twostream.load_data(config)
  majority = np.bincount(np.concatenate([v.labels for v in data.train])).argmax()
  results = quality.majority_baseline(config)
  for split, videos in (('val', data.val), ('test', data.read_test())):
    frames = np.concatenate([v.labels for v in videos])
    assert results[split]['Fused']['Acc'] == pytest.approx(np.mean(frames == majority) * 100)
    assert results[split]['Fused'] == results[split]['RGB'] == results[split]['Flow']
    scores = metrics.SegmentationMetrics(background=data.info.background)
    for video in videos:
      scores.add(np.full(len(video.labels), majority), video.labels)
    assert results[split]['Fused'] == pytest.approx(scores.result())


def test_vs_reference_table_gives_medians_and_ratios_per_video_and_per_valid_frame():
  """vs_reference.py's table from rows as its worker processes print them (the reference itself
  needs PyTorch, an optional extra): medians over rounds, the ratio reference / polyseg per video,
  and per 1,000 valid frames against the batched step."""
  vs_reference = load_benchmark('vs_reference')
  row = {'size': 'gtea', 'frames': 1000, 'what': 'train'}
  runs = [
    ('reference', 0.9, 1000),
    ('polyseg', 0.2, 1000),
    ('polyseg_batched', 0.6, 4000),
    ('reference', 1.1, 1000),
    ('polyseg', 0.3, 1000),
    ('polyseg_batched', 0.8, 4000),
  ]
  rows = [{**row, 'implementation': i, 'seconds': s, 'valid_frames': f} for i, s, f in runs]
  rows += [
    {**row, 'what': 'ddim', 'implementation': 'reference', 'seconds': 2.0, 'valid_frames': 1000}
  ]
  rows += [
    {**row, 'what': 'ddim', 'implementation': 'polyseg', 'seconds': 0.25, 'valid_frames': 1000}
  ]
  header, train, ddim = vs_reference.table(rows).splitlines()
  # train: medians 1.0 s and 0.25 s per video -> 4.00x; batched 0.175 s per 1,000 valid frames
  # against the reference's 1.0 -> 5.71x.
  assert train.split() == [
    'gtea,',
    '1,000',
    'train',
    '1.000s',
    '0.250s',
    '4.00x',
    '0.175s',
    '5.71x',
  ]
  assert ddim.split() == ['gtea,', '1,000', 'ddim', '2.000s', '0.250s', '8.00x']
  assert 'ratio' in header


def test_default_runs_times_a_cold_run_and_reads_its_test_row(tmp_path, cache_dir):
  """default_runs.py on DiffAct's smoke config: the run's own compilation cache (the suite's shared
  one is not used), its buckets as its start-up line names them, its test row as results.json has
  it, the time against the limit; a folder it did not make is refused and left as it was."""
  workdir = tmp_path / 'runs'
  done = run_process(
    'default_runs.py',
    '--methods=diffact',
    '--config_arg=runlocal=True',
    f'--workdir={workdir}',
    '--limit_minutes=0.001',
    f'--config.data.cache_dir={cache_dir}',
  )
  assert done.returncode == 0, done.stderr[-3000:]
  header, row = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{')]
  assert header['passed'] == [f'--config.data.cache_dir={cache_dir}']
  saved = json.loads((workdir / 'diffact' / 'eval' / 'results.json').read_text())
  assert row['returncode'] == 0 and row['test_row'] == saved['selection']['row'] == 'DiffAct'
  assert row['test'] == pytest.approx(saved['results']['DiffAct'], abs=1e-3)
  output = (workdir / 'diffact' / 'output.txt').read_text()
  (buckets,) = row['buckets']
  assert (
    f'{len(buckets)} length bucket(s) in training ({", ".join(map(str, buckets))} frames' in output
  )
  compiled = [p for p in (workdir / 'diffact.xla').iterdir() if p.name != '.default_runs']
  assert compiled, 'the run compiled into a cache of its own'
  assert row['seconds'] > 1 and row['within_limit'] is False
  assert '| diffact |' in done.stdout and '| no |' in done.stdout

  foreign = tmp_path / 'mine' / 'diffact'
  foreign.mkdir(parents=True)
  (foreign / 'keep.txt').write_text('user data')
  refused = run_process('default_runs.py', '--methods=diffact', f'--workdir={tmp_path / "mine"}')
  assert refused.returncode != 0 and f'{foreign} exists and was not made by' in refused.stderr
  assert (foreign / 'keep.txt').read_text() == 'user data'
  assert run_process('default_runs.py', '--methods=nope').returncode != 0


def test_default_runs_minutes_and_table(monkeypatch):
  """The table's minutes round to the second (59.6 s is 1 min 00 s) and a failed run is marked."""
  monkeypatch.syspath_prepend(str(BENCHMARKS))  # its `import common`, as when run as a script
  default_runs = load_benchmark('default_runs')
  assert default_runs.minutes(59.6) == '1 min 00 s'
  assert default_runs.minutes(297.2) == '4 min 57 s'
  rows = [
    {
      'method': 'hal',
      'seconds': 301.0,
      'returncode': 0,
      'buckets': [[768, 1024]],
      'test_row': 'Segmentation',
      'test': {'Acc': 68.64, 'F1@50': 54.44},
      'within_limit': False,
    },
    {'method': 'polyphony', 'seconds': 3.0, 'returncode': 1},
  ]
  lines = default_runs.table(rows, 5).splitlines()
  assert lines[2] == '| hal | 5 min 01 s | no | 768, 1024 | Acc 68.6, F1@50 54.4 (Segmentation) |'
  assert lines[3] == '| polyphony | failed (1) | | | |'


def test_parse_names_keeps_the_order_and_refuses_unknown_or_no_names(common):
  """The --models / --methods type: names in the order given; an unknown name or none is an error."""
  assert common.parse_names('b,a,', {'a', 'b'}, 'thing(s)') == ['b', 'a']
  with pytest.raises(argparse.ArgumentTypeError, match=r"unknown thing\(s\) \['c'\]"):
    common.parse_names('a,c', {'a', 'b'}, 'thing(s)')
  with pytest.raises(argparse.ArgumentTypeError, match='choose from'):
    common.parse_names(',', {'a'}, 'thing(s)')
  assert common.parse_sizes('gtea,breakfast') == ['gtea', 'breakfast']

"""Faults: kills mid-training and mid-checkpoint, SIGTERM / Ctrl-C, non-finite steps; the resumed
run is bitwise the run that was never interrupted."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import tqdm
from conftest import REPO

import polyseg
from polyseg import methods
from polyseg.data import pipeline
from polyseg.engine import metric_writer
from polyseg.engine import train

STEPS = 10


def _driver_flags(cache_dir) -> list[str]:
  return [
    '--config=configs/diffact.py:runlocal=True',
    f'--config.data.cache_dir={cache_dir}',
    f'--config.train.num_steps={STEPS}',
    '--config.train.log_every=1',
    f'--config.train.eval_every={STEPS}',
    '--config.train.checkpoint_every=2',
    '--config.train.keep_checkpoints=10',
  ]


def _driver(fault: str, workdir, cache_dir, wait: bool = True, *flags: str):
  """tests/engine/fault_driver.py: the CLI on the tiny DiffAct config with `fault` injected."""
  command = [
    sys.executable,
    str(REPO / 'tests' / 'engine' / 'fault_driver.py'),
    fault,
    f'--workdir={workdir}',
    *_driver_flags(cache_dir),
    *flags,
  ]
  process = subprocess.Popen(
    command,
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  if not wait:
    return process
  process.communicate(timeout=600)
  return process


def _finish(process) -> tuple[int, str]:
  _, stderr = process.communicate(timeout=600)
  return process.returncode, stderr


def _checkpoints(workdir) -> tuple[list[int], list[str]]:
  """(complete checkpoint steps, names of orbax's temporary folders) under workdir/checkpoints."""
  names = os.listdir(os.path.join(workdir, 'checkpoints'))
  return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if 'tmp' in n)


def _metrics_without_timing(workdir) -> list[dict]:
  lines = pathlib.Path(workdir, 'metrics.jsonl').read_text().splitlines()
  return [
    {k: v for k, v in json.loads(line).items() if k != 'train/steps_per_sec'} for line in lines
  ]


def test_killed_and_stopped_run_resumes_bitwise(tiny_config, cache_dir, tmp_path):
  """SIGKILL mid-training, SIGKILL mid-checkpoint-write, SIGTERM, Ctrl-C, then a resume to the end:
  bitwise the params, metrics and results of the same run done in one go."""
  methods.get('diffact').load_data(tiny_config)  # the synthetic data, before two processes read it
  straight, chained = tmp_path / 'straight', tmp_path / 'chained'

  # SIGKILL before step 6 (5 steps done): checkpoints 2 and 4 are complete.
  assert _finish(_driver('sigkill@5', chained, cache_dir))[0] == -signal.SIGKILL
  assert _checkpoints(chained) == ([2, 4], [])
  # The uninterrupted run, beside the others: started now, it finds the programs that run compiled
  # in the compilation cache instead of compiling them a second time alongside it.
  uninterrupted = _driver('none', straight, cache_dir, wait=False)
  # Resumed from 4; killed inside the write of checkpoint 6: the half-written folder is left...
  assert _finish(_driver('checkpoint@6', chained, cache_dir))[0] == -signal.SIGKILL
  steps, partial = _checkpoints(chained)
  assert steps == [2, 4] and len(partial) == 1 and partial[0].startswith('6.')
  # ... and the next run resumes from 4, not from it, and removes it. SIGTERM before step 7: step 7
  # runs, its checkpoint is saved, and the process exits with the shell's status for SIGTERM.
  code, stderr = _finish(_driver('sigterm@6', chained, cache_dir))
  assert code == 128 + signal.SIGTERM, stderr[-2000:]
  assert 'SIGTERM received: stopped after step 7 and saved its checkpoint' in stderr
  assert 'Traceback' not in stderr
  assert _checkpoints(chained) == ([2, 4, 6, 7], [])
  code, stderr = _finish(_driver('sigint@8', chained, cache_dir))
  assert code == 128 + signal.SIGINT, stderr[-2000:]
  assert 'SIGINT received: stopped after step 9' in stderr and 'Traceback' not in stderr
  assert _checkpoints(chained)[0] == [2, 4, 6, 7, 8, 9]
  code, stderr = _finish(_driver('none', chained, cache_dir))
  assert code == 0, stderr[-3000:]

  code, stderr = _finish(uninterrupted)
  assert code == 0, stderr[-3000:]
  # Same seed, same device: identical params, metrics step by step (each step logged once), results.
  metrics = _metrics_without_timing(straight)
  assert [m['step'] for m in metrics if 'train/loss' in m] == list(range(1, STEPS + 1))
  _assert_same_run(tiny_config, straight, chained)

  # The latest checkpoint damaged on disk afterwards (a file cut short): asked for by number, it
  # is a clear error; a resume reports it in one line, sets it aside and falls back to step 9,
  # redoing the last step: the same run again.
  folder = chained / 'checkpoints' / str(STEPS)
  manifest = json.loads((folder / 'polyseg_files.json').read_text())
  name = max(manifest, key=lambda n: manifest[n][0])
  os.truncate(folder / name, manifest[name][0] // 2)
  damage = f'has {manifest[name][0] // 2} bytes, {manifest[name][0]} were written'
  code, stderr = _finish(
    _driver('none', chained, cache_dir, False, '--mode=eval', f'--checkpoint={STEPS}')
  )
  assert code == 1 and stderr.strip().splitlines()[-1] == (
    f'polyseg: DamagedCheckpoint: checkpoint {STEPS} in {chained / "checkpoints"} is damaged: '
    f'{name} {damage}'
  )
  out, stderr = _driver('none', chained, cache_dir, False).communicate(timeout=600)
  assert 'Traceback' not in stderr, stderr[-3000:]
  assert f'is damaged: {name} {damage}; moved it to {chained}/checkpoints_damaged/{STEPS}-' in out
  assert 'resuming from checkpoint 9' in out
  assert [p.name.split('-')[0] for p in (chained / 'checkpoints_damaged').iterdir()] == [str(STEPS)]
  _assert_same_run(tiny_config, straight, chained)


SMALL_DISK = """set -u
mount -t tmpfs -o size=100m tmpfs "$FS" || exit 90
"$PY" tests/engine/fault_driver.py diskfull@5:32 "$@" --workdir="$FS/run" 2>"$OUT/first.err" >/dev/null
echo $? >"$OUT/first.rc"
ls "$FS/run/checkpoints" >"$OUT/after_full.txt"
rm "$FS/filler"
"$PY" tests/engine/fault_driver.py none "$@" --workdir="$FS/run" 2>"$OUT/second.err" >/dev/null
echo $? >"$OUT/second.rc"
cp -a "$FS/run" "$OUT/run"
"""


def _on_a_small_disk(cache_dir, tmp_path) -> pathlib.Path:
  """Runs SMALL_DISK: the tiny run on a 100 MiB file system of its own (a tmpfs mounted in a new
  user and mount namespace, so no privileges are needed), filled before step 6 with 32 KiB left,
  then, the filler deleted, the same command again. Returns the folder of its outputs."""
  out, fs = tmp_path / 'out', tmp_path / 'fs'
  out.mkdir()
  fs.mkdir()
  flags = _driver_flags(cache_dir)
  done = subprocess.run(
    ['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c', SMALL_DISK, 'sh', *flags],
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS='cpu', FS=str(fs), OUT=str(out), PY=sys.executable),
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  return out


def test_a_full_disk_ends_the_run_in_one_line_and_the_rerun_finishes_it_bitwise(
  tiny_config, cache_dir, tmp_path
):
  methods.get('diffact').load_data(tiny_config)
  straight = _driver('none', tmp_path / 'straight', cache_dir, wait=False)
  out = _on_a_small_disk(cache_dir, tmp_path)
  assert _finish(straight)[0] == 0
  assert (out / 'first.rc').read_text().strip() == '1'
  last = (out / 'first.err').read_text().strip().splitlines()[-1]
  run = tmp_path / 'fs' / 'run'
  assert last.startswith(
    f'polyseg: DiskFull: workdir {run}: the disk is full (no space left to write checkpoint 6: '
  )
  assert last.endswith(
    f'{run}/checkpoints); its newest checkpoint is 4: free some space, then run the same command '
    'again to resume'
  )
  assert 'Traceback' not in (out / 'first.err').read_text()
  assert (out / 'after_full.txt').read_text().split() == ['2', '4']  # 4 stays the latest
  assert (out / 'second.rc').read_text().strip() == '0', (out / 'second.err').read_text()[-2000:]
  _assert_same_run(tiny_config, tmp_path / 'straight', out / 'run')


def _assert_same_run(config, a, b) -> None:
  """Bitwise the same params of the last checkpoint, the same metrics step by step and the same
  test results in the workdirs `a` and `b`."""
  _, _, task = train.setup(methods.get(config.task), config, str(a))
  step_a, params_a = train.restore_params(task, config, str(a))
  step_b, params_b = train.restore_params(task, config, str(b))
  assert step_a == step_b == STEPS
  for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
    np.testing.assert_array_equal(x, y)
  assert _metrics_without_timing(b) == _metrics_without_timing(a)
  results = [json.loads((w / 'eval' / 'results.json').read_text()) for w in (a, b)]
  assert results[0] == results[1]


def _nan_at(monkeypatch, *steps):
  """Training batches of the loop's `steps` (0-based batch index) carry a video of NaN features."""
  batch = pipeline.TrainLoader.batch

  def patched(self, step):
    out = batch(self, step)
    if step in steps:
      out = {**out, 'features': out['features'].copy()}
      out['features'][0] = np.nan  # every entry: no dropout mask drops them all
    return out

  monkeypatch.setattr(pipeline.TrainLoader, 'batch', patched)


def _nan_config(tiny_config, mode: str):
  config = tiny_config.copy_and_resolve_references()
  config.train.update(log_every=5, eval_every=6, checkpoint_every=2, keep_checkpoints=10)
  config.train.nonfinite = mode
  return config


def test_nan_stops_before_a_later_checkpoint(tiny_config, tmp_path, monkeypatch):
  """A NaN at step 3 stops the run at the next checkpoint step (4) before it is written, though
  the log interval (5) is not over: checkpoint 2 stays the latest."""
  _nan_at(monkeypatch, 2)
  workdir = str(tmp_path / 'run')
  with pytest.raises(train.NonFiniteError, match=r'at step 3: .*loss'):
    polyseg.train_and_evaluate(_nan_config(tiny_config, 'stop'), workdir)
  assert _checkpoints(workdir) == ([2], [])


def test_nan_skip_mode_counts_and_goes_on(tiny_config, tmp_path, monkeypatch, capsys):
  """NaNs at steps 3 and 5 are skipped, counted per log interval, and the run goes on."""
  _nan_at(monkeypatch, 2, 4)
  workdir = str(tmp_path / 'run')
  polyseg.train_and_evaluate(_nan_config(tiny_config, 'skip'), workdir)
  assert _checkpoints(workdir)[0] == [2, 4, 6]
  logged = {m['step']: m for m in _metrics_without_timing(workdir) if 'train/loss' in m}
  assert [logged[s]['train/nonfinite_steps'] for s in (2, 4, 5, 6)] == [0, 1, 1, 0]
  assert np.isfinite(logged[4]['train/loss'])  # the mean of the finite step 4 alone
  printed = ''.join(capsys.readouterr())
  assert 'skipped the update of non-finite step 3: ' in printed
  assert 'skipped the update of non-finite step 5: ' in printed


def test_skip_mode_stops_after_too_many_skipped_steps(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path), enabled=False)
  log = train.StepLog(writer, tqdm.tqdm(disable=True), 0, 'skip', max_nonfinite_steps=1)
  good = {'loss': np.float32(1.0), 'finite': np.bool_(True)}
  bad = {'loss': np.float32(np.inf), 'finite': np.bool_(False)}
  for metrics in (good, bad, good):
    log.add(metrics)
  log.write(3)
  assert log.nonfinite_steps == 1
  log.add(bad)
  with pytest.raises(
    train.NonFiniteError, match=r'2 non-finite steps .*max_nonfinite_steps=1.*step 4'
  ):
    log.write(4)


def test_unknown_nonfinite_mode_is_an_error(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path), enabled=False)
  with pytest.raises(ValueError, match="train.nonfinite='ignore'"):
    train.StepLog(writer, tqdm.tqdm(disable=True), 0, 'ignore')


def test_resume_rewinds_metrics_past_the_checkpoint(tmp_path):
  """Lines of steps after the checkpoint, and a line cut short by a kill, are dropped."""
  path = tmp_path / 'metrics.jsonl'
  path.write_text(
    '{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 3, "a": 3.0}\n{"step": 4, "a'
  )
  metric_writer.MetricWriter(str(tmp_path), resume_step=2)
  assert path.read_text() == '{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n'

"""The evaluation protocol: every choice on val, the test split read once, after training."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import polyseg
from polyseg import methods
from polyseg.configlib import load_config
from polyseg.data import formats
from polyseg.engine import train
from polyseg.methods.diffact import task as diffact
from polyseg.methods.hal import task as hal

REPO = pathlib.Path(__file__).resolve().parents[2]

_OPENED = []  # (event, path) while a test listens; None when no test does
_listening = [False]


def _audit(event, args):
  if _listening[0] and event == 'open' and isinstance(args[0], (str, bytes, os.PathLike)):
    _OPENED.append(('open', os.fsdecode(args[0])))


sys.addaudithook(_audit)  # audit hooks cannot be removed: it records only while a test listens


def _test_files(root: pathlib.Path) -> set[str]:
  """Every file of the test split of an MS-TCN-layout dataset: its bundle, features, labels and
  transcripts."""
  names = formats.read_split(root, 'test', 1)
  files = {str(formats.split_path(root, 'test', 1))}
  for folder, suffix in (('features', '.npy'), ('groundTruth', '.txt'), ('transcripts', '.txt')):
    files |= {str(root / folder / f'{name}{suffix}') for name in names}
  return files


@pytest.mark.parametrize(
  'name, module', [('diffact', diffact), ('hal', hal)], ids=['diffact', 'hal']
)
def test_test_split_is_not_opened_before_the_final_evaluation(
  name, module, cache_dir, tmp_path, monkeypatch
):
  config = load_config(name, 'runlocal=True')
  config.data.cache_dir = cache_dir
  root = pathlib.Path(module.dataset_root(config))  # generated (written) before listening
  final_test = train.final_test

  def marked(*args, **kwargs):
    _OPENED.append(('final evaluation', None))
    return final_test(*args, **kwargs)

  monkeypatch.setattr(train, 'final_test', marked)
  _OPENED.clear()
  _listening[0] = True
  try:
    polyseg.train_and_evaluate(config, str(tmp_path / 'run'))
  finally:
    _listening[0] = False
  marker = _OPENED.index(('final evaluation', None))
  test_files = _test_files(root)
  before = {path for _, path in _OPENED[:marker]}
  after = {path for _, path in _OPENED[marker + 1 :]}
  assert not before & test_files
  assert any(str(root / 'features') in path for path in before)  # training did read its data
  assert test_files - {p for p in test_files if 'transcripts' in p and name != 'hal'} <= after
  saved = json.loads((tmp_path / 'run' / 'eval' / 'results.json').read_text())
  assert saved['split'] == 'test'
  assert saved['selection']['split'] == 'val'
  assert saved['selection']['checkpoint'] == 'best'


def _fake_val_scores(monkeypatch, f1_by_step):
  """Val F1@50 of the main row replaced by `f1_by_step` {step: value} during training."""
  evaluate_val = train.evaluate_val

  def scored(task, params, data, config, outdir, step, writer=None):
    results, chosen = evaluate_val(task, params, data, config, outdir, step, writer)
    results[task.main_row]['F1@50'] = f1_by_step[step]
    return results, chosen

  monkeypatch.setattr(train, 'evaluate_val', scored)


def test_best_checkpoint_is_chosen_on_val_and_tested_once(tiny_config, tmp_path, monkeypatch):
  """Val says step 3 is best and 6 is the latest: the test split is scored with step 3, and
  --mode=eval --checkpoint=best (the command line) evaluates step 3, --checkpoint=latest step 6."""
  workdir = tmp_path / 'run'
  _fake_val_scores(monkeypatch, {3: 90.0, 6: 10.0})
  trained = polyseg.train_and_evaluate(tiny_config, str(workdir))
  monkeypatch.undo()
  saved = json.loads((workdir / 'eval' / 'results.json').read_text())
  assert saved['step'] == 3 and saved['results'] == trained
  assert saved['selection'] == {
    'split': 'val',
    'checkpoint': 'best',
    'row': 'DiffAct',
    'metric': 'F1@50',
    'step': 3,
    'last_step': 6,
  }
  assert json.loads((workdir / 'eval_val' / 'results.json').read_text())['step'] == 3

  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  command = [
    sys.executable,
    '-m',
    'polyseg.main',
    '--config=configs/diffact.py:runlocal=True',
    f'--config.data.cache_dir={tiny_config.data.cache_dir}',
    f'--workdir={workdir}',
    '--mode=eval',
    '--checkpoint=best',
  ]
  subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
  assert json.loads((workdir / 'eval_best' / 'results.json').read_text())['step'] == 3
  polyseg.evaluate(tiny_config, str(workdir), 'latest')
  assert json.loads((workdir / 'eval_latest' / 'results.json').read_text())['step'] == 6
  best = json.loads((workdir / 'eval_best' / 'results.json').read_text())['results']
  assert best == trained  # the same checkpoint and sampling seeds as the run's own test
  _, _, task = train.setup(methods.get(tiny_config.task), tiny_config, str(workdir))
  best, latest = (
    jax.tree.leaves(train.restore_params(task, tiny_config, str(workdir), which)[1])
    for which in ('best', 'latest')
  )
  assert any(not np.array_equal(a, b) for a, b in zip(best, latest, strict=True))


def test_latest_checkpoint_when_asked(tiny_config, tmp_path, monkeypatch):
  config = tiny_config.copy_and_resolve_references()
  config.eval.test_checkpoint = 'latest'
  _fake_val_scores(monkeypatch, {3: 90.0, 6: 10.0})
  polyseg.train_and_evaluate(config, str(tmp_path / 'run'))
  saved = json.loads((tmp_path / 'run' / 'eval' / 'results.json').read_text())
  assert saved['step'] == 6 and saved['selection']['checkpoint'] == 'latest'
  config.eval.test_checkpoint = 'last'
  with pytest.raises(ValueError, match='test_checkpoint'):
    train.select_checkpoint(None, config, 6, 'DiffAct')


def test_synthetic_val_split_adds_videos_and_changes_no_other(tmp_path):
  from polyseg.data import synthetic

  args = {'num_train': 3, 'num_test': 2, 'min_len': 60, 'max_len': 80, 'input_dim': 8}
  without = synthetic.make_single_stream(num_val=0, **args)
  with_val = synthetic.make_single_stream(num_val=2, **args)
  assert set(without) == {'train', 'test'} and len(with_val['val'].videos) == 2
  for subset in ('train', 'test'):
    for a, b in zip(without[subset].videos, with_val[subset].videos, strict=True):
      np.testing.assert_array_equal(a.features, b.features)
  root = synthetic.single_stream(tmp_path / 'data', num_val=2, **args)
  assert formats.read_split(root, 'val', 1) == ['val000', 'val001']


def test_diffact_val_is_the_bundle_else_a_held_out_part_of_train(tiny_config, tmp_path):
  from polyseg.data import synthetic

  args = {'num_train': 6, 'num_test': 2, 'min_len': 60, 'max_len': 80, 'input_dim': 8}
  with_bundle = synthetic.single_stream(tmp_path / 'a', num_val=2, **args)
  without = synthetic.single_stream(tmp_path / 'b', num_val=0, **args)
  config = tiny_config.copy_and_resolve_references()
  config.data.root = str(with_bundle)
  data = diffact.load_data(config)
  assert [v.name for v in data.val] == ['val000', 'val001'] and len(data.train) == 6
  config.data.root = str(without)
  data = diffact.load_data(config)
  held = formats.hold_out([f'train{i:03d}' for i in range(6)], 0.15, 0)
  assert [v.name for v in data.val] == held and len(data.train) == 5
  assert not {v.name for v in data.val} & {v.name for v in data.read_test()}


def test_a_broken_test_file_stops_the_final_evaluation_and_a_rerun_finishes(tiny_config, tmp_path):
  """Test files are first read after training, so a broken one is found then: the error names it,
  the trained checkpoints stay, and once it is fixed the same command only scores the test split."""
  from polyseg.data import synthetic

  args = {'num_train': 4, 'num_val': 2, 'num_test': 2, 'min_len': 60, 'max_len': 80}
  root = synthetic.single_stream(tmp_path / 'data', input_dim=16, **args)
  victim = root / 'groundTruth' / 'test001.txt'
  good = victim.read_text()
  victim.write_text(''.join(good.splitlines(keepends=True)[:-3]))  # 3 labels short
  config = tiny_config.copy_and_resolve_references()
  config.data.root = str(root)
  workdir = tmp_path / 'run'
  with pytest.raises(formats.DataError, match='test001.txt'):
    polyseg.train_and_evaluate(config, str(workdir))
  assert (workdir / 'checkpoints' / '6').is_dir() and not (workdir / 'eval').exists()
  victim.write_text(good)
  lines = (workdir / 'metrics.jsonl').read_text()
  results = polyseg.train_and_evaluate(config, str(workdir))
  assert (workdir / 'metrics.jsonl').read_text() == lines  # nothing trained again
  saved = json.loads((workdir / 'eval' / 'results.json').read_text())
  assert saved['results'] == results and saved['split'] == 'test'


@pytest.mark.parametrize('source', ['file', 'labels'])
def test_hal_holds_out_labelled_val_videos_from_train(source, tmp_path):
  """Without a val bundle HAL validates on a seeded part of train, with those videos' frame labels
  (read for them alone with transcripts/ files); the training videos keep only transcripts."""
  from polyseg.data import synthetic

  args = {'num_train': 6, 'num_val': 0, 'num_test': 2, 'min_len': 60, 'max_len': 80}
  root = synthetic.single_stream(tmp_path / 'data', transcripts=True, input_dim=8, **args)
  config = load_config('hal', 'runlocal=True')
  config.data.update(root=str(root), transcripts=source)
  data = hal.load_data(config)
  held = formats.hold_out([f'train{i:03d}' for i in range(6)], 0.15, 0)
  assert [v.name for v in data.val] == held and len(data.train) == 5
  for video in data.val:
    expected = formats.read_labels(root / 'groundTruth' / f'{video.name}.txt', data.info.classes)
    np.testing.assert_array_equal(video.labels, expected)
  assert all(v.labels is None for v in data.train)

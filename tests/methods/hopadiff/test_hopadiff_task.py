"""HopaDIFF task end to end on tiny configs: train + val/test eval + outputs, predict on a new video
with a new text reference, the MiniLM text path, the ablation switches, and learning a tiny dataset."""

import json
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

import polyseg
from polyseg import methods
from polyseg.configlib import load_config
from polyseg.data import formats
from polyseg.data import synthetic
from polyseg.engine import parallel
from polyseg.engine import train
from polyseg.methods.hopadiff import task as hopadiff_task

pytestmark = pytest.mark.usefixtures('fast_compile')


def _config(cache_dir, arg=''):
  config = load_config('hopadiff', ','.join(['runlocal=True', *([arg] if arg else [])]))
  config.data.cache_dir = cache_dir
  return config


def test_train_evaluates_val_and_test_and_writes_every_output(cache_dir, tmp_path):
  config = _config(cache_dir)
  workdir = str(tmp_path / 'run')
  results = polyseg.train_and_evaluate(config, workdir)
  assert set(results) == {'HopaDIFF', 'holistic', 'partial'}
  assert list(results['HopaDIFF']) == ['Acc', 'Jaccard', 'Edit', 'F1@10', 'F1@25', 'F1@50', 'mAP']
  tested = json.loads(pathlib.Path(workdir, 'eval', 'results.json').read_text())
  assert tested['results'] == results and tested['selection']['split'] == 'val'
  for folder in ('eval_val', 'eval'):  # both describe the checkpoint chosen on val
    saved = json.loads(pathlib.Path(workdir, folder, 'results.json').read_text())
    assert saved['step'] == tested['selection']['step'] and set(saved['results']) == set(results)
    table = pathlib.Path(workdir, folder, 'results.txt').read_text()
    assert all(row in table for row in ('HopaDIFF', 'holistic', 'partial', 'mAP'))
  lines = [
    json.loads(line) for line in pathlib.Path(workdir, 'metrics.jsonl').read_text().splitlines()
  ]
  assert any('eval_val/F1@50' in line for line in lines) and any(
    'eval_val/mAP' in line for line in lines
  )
  assert not any(key.startswith('eval/') for line in lines for key in line)  # test: not logged
  assert any('train/partial/decoder_boundary' in line for line in lines)

  _, data, task = train.setup(methods.get(config.task), config, workdir)
  assert data.val and data.read_test() and data.info.input_dim == {'holistic': 12, 'partial': 10}
  for sample in data.read_test():
    for row in task.rows:
      path = os.path.join(workdir, 'eval', 'predictions', f'{sample.name}.{row}.txt')
      frames = pathlib.Path(path).read_text().split('\n')[:-1]
      assert len(frames) == len(sample.labels)
      assert {name for frame in frames for name in frame.split(',') if name} <= set(task.classes)
  pngs = os.listdir(os.path.join(workdir, 'eval', 'timelines'))
  assert len(pngs) == 1 and pathlib.Path(workdir, 'eval', 'timelines', pngs[0]).read_bytes()[:4]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints')))[:2] == ['2', '4']

  # --mode=predict on a new video's features with a new text reference.
  new = tmp_path / 'new'
  shutil.copytree(task_root(config), new)
  shutil.rmtree(new / 'labels')
  (new / 'mapping.txt').unlink()
  video = data.read_test()[0].video
  (new / 'references.json').write_text(json.dumps({video: {'p9': 'the tall man in a red hat'}}))
  person = data.read_test()[0].person
  shutil.copy(
    new / 'features_partial' / f'{video}__{person}.npy',
    new / 'features_partial' / f'{video}__p9.npy',
  )
  holistic = new / 'features_holistic' / f'{video}__{person}.npy'
  if holistic.exists():
    shutil.copy(holistic, new / 'features_holistic' / f'{video}__p9.npy')
  config.predict.features = str(new)
  outdir = pathlib.Path(train.predict(methods.get(config.task), config, workdir))
  frames = (outdir / 'predictions' / f'{video}__p9.HopaDIFF.txt').read_text().split('\n')[:-1]
  assert len(frames) == len(data.read_test()[0].holistic)  # runlocal samples are whole videos
  assert (outdir / 'timelines' / f'{video}__p9.png').exists()


def task_root(config):
  return hopadiff_task.dataset_root(config)


def test_text_path_conditions_the_holistic_branch(cache_dir, tmp_path):
  """Per-video holistic features (no text in them) + MiniLM embeddings of the references. The text
  conditions the holistic features only, so the partial branch is off here (half the train step to
  compile); the whole model with a text path is in test_hopadiff.py."""
  config = _config(cache_dir, 'text=film,ablation=no_partial')
  assert not config.data.synthetic.cross_modal
  config.train.update(num_steps=2, eval_every=2, checkpoint_every=2)
  config.eval.use_decoder = False  # the text path is in the encoders; DDIM is tested elsewhere
  workdir = str(tmp_path / 'text')
  polyseg.train_and_evaluate(config, workdir)
  _, data, task = train.setup(methods.get(config.task), config, workdir)
  batch = task.train_loader(data.train).batch(0)
  assert batch['text'].shape == (4, 384) and batch['text_tokens'].shape == (4, 16, 384)
  np.testing.assert_allclose(np.linalg.norm(batch['text'], axis=-1), 1.0, atol=1e-5)
  # Different references of the same video give different embeddings.
  same_video = [s for s in data.train if s.video == data.train[0].video]
  arrays = task._text_arrays([s.reference for s in same_video])
  assert len(same_video) >= 2 and not np.allclose(arrays['text'][0], arrays['text'][1])
  _, params = train.restore_params(task, config, workdir)
  assert 'text' in params['params']


@pytest.mark.parametrize(
  'ablation, rows, modules',
  [
    ('no_partial', ('HopaDIFF',), {'hp_xlstm', 'holistic_dft'}),
    ('no_xlstm', ('HopaDIFF', 'holistic', 'partial'), {'holistic_dft', 'partial_dft'}),
    ('no_bcaf', ('HopaDIFF', 'holistic', 'partial'), {'hp_xlstm', 'holistic_dft', 'partial_dft'}),
    ('no_dft', ('HopaDIFF', 'holistic', 'partial'), {'hp_xlstm'}),
    ('no_all', ('HopaDIFF',), set()),
  ],
)
@pytest.mark.parametrize('dft', ['global', 'windowed'])
def test_ablation_switches(cache_dir, ablation, rows, modules, dft):
  config = _config(cache_dir, f'ablation={ablation},dft={dft}')
  data = hopadiff_task.load_data(config)
  task = hopadiff_task.Task(config, data.info)
  assert task.rows == rows
  params = jax.eval_shape(task.init, jax.random.PRNGKey(0), task.example_batch())['params']
  assert {'hp_xlstm', 'holistic_dft', 'partial_dft'} & set(params) == modules
  for name in {'holistic_dft', 'partial_dft'} & modules:  # 'windowed' projects zhat first
    assert ('proj' in params[name]) == (dft == 'windowed')
  if ablation == 'no_bcaf':
    assert not any('cross' in name.lower() for name in params['hp_xlstm'])
  if ablation in ('no_partial', 'no_all'):
    assert not any(name.startswith('partial') for name in params)


def test_bad_referring_data_fails_before_training(cache_dir, tmp_path):
  root = tmp_path / 'data'
  synthetic.referring(root, num_videos=3, min_len=40, max_len=50, holistic_dim=4, partial_dim=3)
  label = min((root / 'labels').iterdir())
  label.write_text(label.read_text() + 'walk\n')
  config = _config(cache_dir)
  config.data.root = str(root)
  workdir = tmp_path / 'run'
  with pytest.raises(formats.DataError, match=label.name):
    polyseg.train_and_evaluate(config, str(workdir))
  assert not (workdir / 'checkpoints').exists()


def test_hopadiff_learns_a_tiny_dataset(cache_dir, tmp_path):
  """90 steps on a tiny synthetic set: the loss falls and the encoders beat the untrained model
  (the run's own initial parameters, scored on the same test videos). The runlocal config's
  learning rate, so that the run's train step is the one the other runlocal tests compiled."""
  config = _config(cache_dir)
  config.train.update(num_steps=90, log_every=10, eval_every=90, checkpoint_every=90)
  config.eval.use_decoder = False
  workdir = str(tmp_path / 'learn')
  after = polyseg.train_and_evaluate(config, workdir)['HopaDIFF']
  _, data, task = train.setup(methods.get(config.task), config, workdir)
  tx = train.make_optimizer(config)
  # The run's initial state as the run made it (its key and shardings: the programs it compiled).
  shardings = train.state_shardings(task, tx, parallel.make_mesh(config), config)
  initial = train.init_state(
    task, tx, jax.random.split(jax.random.PRNGKey(config.seed))[0], shardings
  )
  # PyTorch's default initialisation, the reference code's: every kernel, the HP-xLSTM's and the
  # decoders' included, within its bound 1 / sqrt(fan_in) (Flax's lecun_normal exceeds it).
  kernels = [
    np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(initial['params'])
    if path[-1].key == 'kernel'
  ]
  assert len(kernels) > 50
  for kernel in kernels:
    assert np.abs(kernel).max() <= 1 / np.sqrt(np.prod(kernel.shape[:-1]))
  videos = data.read_test()
  predictions = train.run_predictions(
    task, initial['params'], videos, jax.random.PRNGKey(config.eval.seed), 'untrained'
  )
  before = train.score(task, videos, predictions)['HopaDIFF']
  lines = [
    json.loads(line) for line in pathlib.Path(workdir, 'metrics.jsonl').read_text().splitlines()
  ]
  losses = [line['train/loss'] for line in lines if 'train/loss' in line]
  assert losses[-1] < 0.7 * losses[0]
  assert after['Acc'] > before['Acc'] + 15 and after['mAP'] > before['mAP'] + 10

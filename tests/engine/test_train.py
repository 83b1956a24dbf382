"""The engine end to end on a tiny config: outputs, resume, eval/predict, checkpoints, NaN guard."""

import collections
import json
import os
import pathlib
import re
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import widest_fusion

import polyseg
from polyseg import methods
from polyseg.configlib import load_config
from polyseg.data import formats
from polyseg.engine import checkpoint as checkpoint_lib
from polyseg.engine import parallel
from polyseg.engine import train
from polyseg.engine import workdir as workdir_lib


def _params_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _engine(config, workdir):
  """(loader, state, jitted step) of a fresh run of `config`, as train_and_evaluate builds them."""
  _, data, task = train.setup(methods.get(config.task), config, workdir)
  tx = train.make_optimizer(config)
  state = train.init_state(task, tx, jax.random.PRNGKey(0))
  return (
    task.train_loader(data.train),
    state,
    train.make_train_step(task, tx, jax.random.PRNGKey(1)),
  )


def _restore_latest(config, workdir):
  _, _data, task = train.setup(methods.get(config.task), config, workdir)
  return train.restore_params(task, config, workdir)


def test_train_writes_every_output(tiny_config, tmp_path):
  workdir = str(tmp_path / 'run')
  results = polyseg.train_and_evaluate(tiny_config, workdir)
  assert set(results) == {'DiffAct'}
  assert set(results['DiffAct']) >= {'Acc', 'Edit', 'F1@10', 'F1@25', 'F1@50'}
  files = set(os.listdir(workdir))
  assert {
    'checkpoints',
    'metrics.jsonl',
    'config.json',
    'data.json',
    'eval',
    'curves.png',
    'tensorboard',
  } <= files
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())
  assert steps == [3, 6]
  lines = [json.loads(l) for l in pathlib.Path(workdir, 'metrics.jsonl').read_text().splitlines()]
  assert any('train/loss' in l for l in lines) and any('eval_val/Acc' in l for l in lines)
  assert not any(k.startswith('eval/') for l in lines for k in l)  # test scores are not logged
  assert all(np.isfinite(l['train/loss']) for l in lines if 'train/loss' in l)
  assert any(
    f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(workdir, 'tensorboard'))
  )
  # Predictions in the ground-truth format: one known class name per frame, full length.
  _, data, _ = train.setup(methods.get(tiny_config.task), tiny_config, workdir)
  classes = set(data.info.classes)
  for video in data.read_test():
    lines = pathlib.Path(workdir, 'eval', 'predictions', f'{video.name}.txt').read_text().split()
    assert len(lines) == len(video.labels) and set(lines) <= classes
  pngs = os.listdir(os.path.join(workdir, 'eval', 'timelines'))
  assert len(pngs) == tiny_config.eval.num_timelines
  with open(os.path.join(workdir, 'eval', 'timelines', pngs[0]), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_resume_continues_the_same_run(tiny_config, tmp_path):
  """3 steps, stop, resume to 6 == 6 steps in one go (same step counter, same random stream)."""
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  polyseg.train_and_evaluate(tiny_config, straight)
  first = tiny_config.copy_and_resolve_references()
  first.train.num_steps = 3
  polyseg.train_and_evaluate(first, resumed)
  assert _restore_latest(tiny_config, resumed)[0] == 3
  polyseg.train_and_evaluate(tiny_config, resumed)
  step_a, params_a = _restore_latest(tiny_config, straight)
  step_b, params_b = _restore_latest(tiny_config, resumed)
  assert step_a == step_b == 6
  assert _params_equal(params_a, params_b)


def test_checkpoint_restore_gives_identical_next_step(tiny_config, tmp_path):
  loader, state, step = _engine(tiny_config, str(tmp_path / 'w'))
  state, _ = step(state, loader.batch(0))
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / 'w'))
  ckpt.save(1, state)
  abstract = jax.eval_shape(lambda: state)
  restored = ckpt.restore(abstract)
  ckpt.close()
  assert int(restored['step']) == 1
  copy = jax.tree.map(jnp.array, state)  # the step donates its input
  next_a, metrics_a = step(copy, loader.batch(1))
  next_b, metrics_b = step(restored, loader.batch(1))
  assert float(metrics_a['loss']) == float(metrics_b['loss'])
  assert _params_equal(next_a['params'], next_b['params'])


def test_checkpointer_keeps_latest_and_best(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=2, best_metric='F1@50')
  state = {'step': jnp.zeros((), jnp.int32), 'params': {'w': jnp.ones(3)}}
  for step, f1 in [(1, 50.0), (2, 90.0), (3, 10.0), (4, 20.0), (5, 30.0)]:
    ckpt.save(step, state, metrics={'F1@50': f1})
  assert ckpt.latest_step() == 5
  assert ckpt.best_step() == 2
  assert sorted(ckpt.manager.all_steps()) == [2, 4, 5]
  ckpt.close()


def test_nan_stops_naming_step_and_term(tiny_config, tmp_path):
  loader, state, step = _engine(tiny_config, str(tmp_path / 'w'))
  before = jax.tree.map(np.asarray, {k: state[k] for k in ('params', 'opt_state')})
  batch = dict(loader.batch(0))
  batch['features'] = batch['features'].copy()
  batch['features'][0] = np.nan  # every entry: no dropout mask drops them all
  state, metrics = step(state, batch)
  history = [jax.device_get(metrics)]
  with pytest.raises(train.NonFiniteError, match=r'step 7: .*encoder_ce'):
    train.check_finite(7, history)
  for key in before:  # the bad update was not applied
    assert _params_equal(before[key], state[key]), key
  assert int(state['step']) == 1


def test_train_step_updates_the_donated_state_in_place(tiny_config, tmp_path):
  """Nothing but the update reads the donated params and optimizer state, so XLA copies none of
  them first (a where(finite, new, old) per leaf, or the old params' norm, made it copy every
  leaf: a tenth of a Breakfast-size step's instruction time)."""
  loader, state, step = _engine(tiny_config, str(tmp_path / 'w'))
  hlo = step.lower(state, loader.batch(0)).compile().as_text()
  assert re.search(r' copy\(%state__(params|opt_state)', hlo) is None
  assert re.search(r'%state__params', hlo) is not None  # the pattern's names are the HLO's


def test_eval_and_predict_modes(tiny_config, tmp_path):
  workdir = str(tmp_path / 'run')
  trained = polyseg.train_and_evaluate(tiny_config, workdir)
  again = polyseg.evaluate(tiny_config, workdir, 'best')
  assert again == trained  # the checkpoint chosen on val, same sampling seeds
  _, data, _ = train.setup(methods.get(tiny_config.task), tiny_config, workdir)
  test = data.read_test()
  folder = tmp_path / 'new_features'
  folder.mkdir()
  long_video = np.concatenate([test[0].features] * 3)  # longer than any training video
  np.save(folder / 'long.npy', long_video.T)
  np.save(folder / 'short.npy', test[1].features.T)
  config = tiny_config.copy_and_resolve_references()
  config.predict.features = str(folder)
  outdir = train.predict(methods.get(config.task), config, workdir)
  for name, video in [('long', long_video), ('short', test[1].features)]:
    lines = pathlib.Path(outdir, 'predictions', f'{name}.txt').read_text().split()
    assert len(lines) == len(video) and set(lines) <= set(data.info.classes)


def test_predict_rejects_wrong_feature_dim(tiny_config, tmp_path):
  workdir = str(tmp_path / 'run')
  polyseg.train_and_evaluate(tiny_config, workdir)
  folder = tmp_path / 'bad'
  folder.mkdir()
  np.save(folder / 'v.npy', np.zeros((tiny_config.data.synthetic.input_dim + 1, 20), np.float32))
  config = tiny_config.copy_and_resolve_references()
  config.predict.features = str(folder)
  with pytest.raises(formats.DataError, match='v.npy'):
    train.predict(methods.get(config.task), config, workdir)


def test_unwritable_workdir_fails_before_training(tiny_config, tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(OSError, match='not writable'):
    polyseg.train_and_evaluate(tiny_config, str(blocker / 'run'))


def test_a_full_disk_fails_at_start_up_naming_the_sizes(tiny_config, tmp_path, monkeypatch):
  state = {'params': np.zeros((1024, 256), np.float32), 'step': np.zeros((), np.int32)}  # 1 MiB
  usage = collections.namedtuple('usage', 'total used free')
  monkeypatch.setattr(workdir_lib.shutil, 'disk_usage', lambda path: usage(0, 0, 70 << 20))
  workdir_lib.check_free_space(
    str(tmp_path), state, keep=3
  )  # enough: 5 checkpoints + 64 MiB < 70 MiB
  monkeypatch.setattr(workdir_lib.shutil, 'disk_usage', lambda path: usage(0, 0, 60 << 20))
  with pytest.raises(
    OSError, match=r'60 MiB free .* needs about 69 MiB more \(5 checkpoints of 1.0 MiB'
  ):
    workdir_lib.check_free_space(str(tmp_path), state, keep=3)
  # A resumed run's checkpoints are already on disk: with 3.5 MiB of them, 1.5 MiB more is enough.
  (tmp_path / 'checkpoints' / '4').mkdir(parents=True)
  (tmp_path / 'checkpoints' / '4' / 'data').write_bytes(bytes(7 << 19))
  monkeypatch.setattr(
    workdir_lib.shutil, 'disk_usage', lambda path: usage(0, 0, (64 << 20) + (2 << 20))
  )
  workdir_lib.check_free_space(str(tmp_path), state, keep=3)
  monkeypatch.setattr(
    workdir_lib.shutil, 'disk_usage', lambda path: usage(0, 0, (64 << 20) + (1 << 20))
  )
  with pytest.raises(OSError, match=r'3.5 MiB of them already written'):
    workdir_lib.check_free_space(str(tmp_path), state, keep=3)
  monkeypatch.setattr(workdir_lib.shutil, 'disk_usage', lambda path: usage(0, 0, 60 << 20))
  workdir = tmp_path / 'run'
  with pytest.raises(OSError, match='MiB free'):  # before the first checkpoint or step
    polyseg.train_and_evaluate(tiny_config, str(workdir))
  assert not (workdir / 'checkpoints').exists() and not (workdir / 'metrics.jsonl').exists()


def test_workdir_of_other_data_is_refused(tiny_config, tmp_path):
  workdir = str(tmp_path / 'run')
  train.setup(methods.get(tiny_config.task), tiny_config, workdir)
  other = tiny_config.copy_and_resolve_references()
  other.data.synthetic.input_dim = tiny_config.data.synthetic.input_dim + 2
  with pytest.raises(formats.DataError, match='different data'):
    train.setup(methods.get(other.task), other, workdir)


def test_tiny_model_overfits_tiny_dataset(tiny_config, tmp_path):
  """Full DiffAct (encoder + decoder + DDIM) reaches > 95% frame accuracy on its training videos."""
  config = tiny_config.copy_and_resolve_references()
  config.data.synthetic.update(num_train=2, num_test=1)
  config.model.encoder.update(dropout=0.0, channel_dropout=0.0, temporal_dropout=0.0)
  config.model.decoder.dropout = 0.0
  config.data.sample_rate = 1
  config.optim.learning_rate = 3e-3
  config.train.update(
    num_steps=500, log_every=100, eval_every=500, checkpoint_every=500, batch_size=2
  )
  config.eval.postprocess = 'none'
  workdir = str(tmp_path / 'run')
  polyseg.train_and_evaluate(config, workdir)
  _, data, task = train.setup(methods.get(config.task), config, workdir)
  _, params = train.restore_params(task, config, workdir)
  predictions = train.run_predictions(task, params, data.train, jax.random.PRNGKey(0), 'train')
  result = train.score(task, data.train, predictions)['DiffAct']
  assert result['Acc'] > 95, result


def _widest_activation_fusion(config, workdir) -> int:
  """The most operands any fusion of activation size ([B, T, F] elements or more) reads in the
  compiled train step of `config`."""
  loader, state, step = _engine(config, workdir)
  batch = loader.batch(0)
  activation = batch['mask'].size * config.model.encoder.num_f_maps
  return widest_fusion(step.lower(state, batch).compile().as_text(), activation)


def test_train_step_does_not_recompute_earlier_layers(tiny_config, tmp_path):
  """XLA:CPU used to fuse the residual sums (forward) and residual-gradient sums (backward) of all
  earlier layers into every layer's fusions: the widest fusion grew with depth (from 4 to 8 encoder
  layers, 11 -> 18 operands on jax 0.10 as the suite compiles, 30 -> 50 on 0.12; from 2 to 4 layers
  jax 0.10 showed no growth) and the Breakfast-size step took 23.3 s instead of 5.8 s (jax 0.10).
  `layers.fusion_fence` at each layer's output keeps it independent of depth (11 and 11)."""
  widths = []
  for num_layers in (4, 8):
    config = tiny_config.copy_and_resolve_references()
    config.model.encoder.update(
      num_layers=num_layers, num_f_maps=32, feature_layer_indices=(num_layers - 1,)
    )
    config.model.decoder.num_f_maps = 32
    widths.append(_widest_activation_fusion(config, str(tmp_path / str(num_layers))))
  assert widths[1] == widths[0], widths


def test_gradient_accumulation_updates_every_k_steps(tiny_config, tmp_path):
  config = tiny_config.copy_and_resolve_references()
  config.optim.grad_accum_steps = 2
  loader, state, step = _engine(config, str(tmp_path / 'w'))
  initial = jax.tree.map(np.asarray, state['params'])
  state, _ = step(state, loader.batch(0))
  assert _params_equal(initial, state['params'])  # first micro-batch: gradients only accumulated
  state, _ = step(state, loader.batch(1))
  assert not _params_equal(initial, state['params'])


@pytest.mark.parametrize('task_name', ['diffact', 'hopadiff'])
def test_bfloat16_compute_keeps_float32_params_and_a_finite_loss(task_name, cache_dir, tmp_path):
  """model.dtype='bfloat16': matmuls in bfloat16, params and optimizer state in float32, and the
  loss of a few train steps finite and close to the float32 model's loss at the same params, batch
  and key (the float32 loss alone is computed: its train step would add a compile, not a check)."""
  tasks = {}
  for dtype in ('float32', 'bfloat16'):
    config = load_config(task_name, 'runlocal=True')
    config.data.cache_dir = cache_dir
    config.model.dtype = dtype
    _, data, tasks[dtype] = train.setup(methods.get(config.task), config, str(tmp_path / dtype))
  task = tasks['bfloat16']
  tx = train.make_optimizer(config)
  loader, state = task.train_loader(data.train), train.init_state(task, tx, jax.random.key(0))
  float32_loss = jax.jit(lambda *args: tasks['float32'].loss(*args)[0])
  step = train.make_train_step(task, tx, jax.random.key(1))
  # Their traces (which the calls below reuse): bfloat16 in the step, none in the float32 loss.
  batch = loader.batch(0)
  assert 'bf16[' in str(step.trace(state, batch).jaxpr)
  assert 'bf16[' not in str(float32_loss.trace(state['params'], batch, jax.random.key(1)).jaxpr)
  losses = {'float32': [], 'bfloat16': []}
  for i in range(3):
    batch = loader.batch(i)
    rng = jax.random.fold_in(jax.random.key(1), i)  # the step's key at step i
    losses['float32'].append(float(float32_loss(state['params'], batch, rng)))
    state, metrics = step(state, batch)
    losses['bfloat16'].append(float(metrics['loss']))
  floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  assert np.all(np.isfinite(losses['bfloat16'])) and losses['bfloat16'][0] != losses['bfloat16'][2]
  np.testing.assert_allclose(losses['bfloat16'], losses['float32'], rtol=0.05)


def test_unknown_compute_dtype_is_a_clear_error(tiny_config, tmp_path):
  tiny_config.model.dtype = 'float16'
  with pytest.raises(ValueError, match="model.dtype='float16'"):
    train.setup(methods.get(tiny_config.task), tiny_config, str(tmp_path / 'run'))


def test_predict_api_on_arrays_and_folders(tiny_config, tmp_path):
  """polyseg.predict: the run's own config from config.json; arrays [T, D] or a folder; any length."""
  workdir = str(tmp_path / 'run')
  polyseg.train_and_evaluate(tiny_config, workdir)
  _, data, _ = train.setup(methods.get(tiny_config.task), tiny_config, workdir)
  longest = max(len(v.features) for v in data.train)
  test = data.read_test()
  long_video = np.concatenate([test[0].features] * (longest // len(test[0].features) + 2))
  assert len(long_video) > longest
  arrays = {'long': long_video, 'short': test[1].features}
  predicted = polyseg.predict(workdir, arrays)
  assert set(predicted) == {'long', 'short'}
  for name, features in arrays.items():
    (pred,) = predicted[name].values()
    assert pred.shape == (len(features),) and pred.min() >= 0
    assert pred.max() < len(data.info.classes)
  assert not os.path.exists(os.path.join(workdir, 'predict'))  # nothing written without output=
  folder = tmp_path / 'features'
  folder.mkdir()
  for name, features in arrays.items():
    np.save(folder / f'{name}.npy', features.T)
  outdir = str(tmp_path / 'out')
  from_folder = polyseg.predict(workdir, folder, checkpoint='latest', output=outdir)
  for name in arrays:  # same inputs, same sampling seeds, same checkpoint
    np.testing.assert_array_equal(from_folder[name]['DiffAct'], predicted[name]['DiffAct'])
    lines = pathlib.Path(outdir, 'predictions', f'{name}.txt').read_text().split()
    assert lines == [data.info.classes[i] for i in predicted[name]['DiffAct']]
  with pytest.raises(formats.DataError, match=r'bad\.npy: feature dimension'):
    polyseg.predict(workdir, {'bad': np.zeros((30, long_video.shape[1] + 1))})
  with pytest.raises(ValueError, match=r"'bad': features must be \[T, D\]"):
    polyseg.predict(workdir, {'bad': np.zeros(30)})
  with pytest.raises(FileNotFoundError, match='config.json not found'):
    polyseg.predict(str(tmp_path / 'nothing'), arrays)


def test_a_run_traces_its_initialisation_once(tiny_config, tmp_path):
  """The state's shardings (from its shapes) and the state itself come from one trace of the
  model's initialisation, as a run makes them."""
  _, _, task = train.setup(methods.get(tiny_config.task), tiny_config, str(tmp_path / 'run'))
  traces = []
  init = task.init
  task.init = lambda *args, **kwargs: traces.append(1) or init(*args, **kwargs)
  tx = train.make_optimizer(tiny_config)
  shardings = train.state_shardings(task, tx, parallel.make_mesh(tiny_config), tiny_config)
  state = train.init_state(task, tx, jax.random.PRNGKey(0), shardings)
  assert len(traces) == 1 and jax.tree.structure(state) == jax.tree.structure(shardings)


def test_model_init_torch_redraws_the_parameters_as_pytorch_and_bad_values_are_refused(
  tiny_config, tmp_path
):
  """model.init='torch' (the published dataset configs): every decoder / encoder kernel within
  PyTorch's default bound 1/sqrt(fan_in), with nonzero biases; 'flax' keeps lecun_normal kernels
  (beyond that bound somewhere) and zero biases."""
  assert load_config('diffact', 'dataset=gtea').model.init == 'torch'
  states = {}
  for kind in ('flax', 'torch'):
    config = tiny_config.copy_and_resolve_references()
    config.model.init = kind
    _, state, _ = _engine(config, str(tmp_path / kind))
    states[kind] = state['params']['params']
  encoder = {k: jax.tree.map(np.asarray, v['encoder']) for k, v in states.items()}
  dense = encoder['torch']['input_proj']
  assert np.abs(dense['kernel']).max() <= 1 / np.sqrt(dense['kernel'].shape[0])
  assert np.abs(dense['bias']).max() > 0 and not encoder['flax']['input_proj']['bias'].any()
  flax_kernel = encoder['flax']['input_proj']['kernel']
  assert np.abs(flax_kernel).max() > 1 / np.sqrt(flax_kernel.shape[0])
  tiny_config.model.init = 'xavier'
  with pytest.raises(ValueError, match="model.init='xavier'"):
    _engine(tiny_config, str(tmp_path / 'bad'))


def test_timeline_rows_show_each_rows_own_ground_truth_above_it():
  """One ground-truth bar when the rows share the video's labels; each row's own above it when
  they have their own (Polyphony's hands); predictions only for an unlabelled video."""
  hands = ('LH', 'RH')
  own = types.SimpleNamespace(
    row_labels=lambda video, row: video.labels[:, hands.index(row)], timeline=lambda p: p + 10
  )
  video = types.SimpleNamespace(name='v', labels=np.array([[0, 1], [2, 1]]))
  predictions = {'LH': np.array([0, 0]), 'RH': np.array([1, 1])}
  rows = train.timeline_rows(own, video, predictions)
  assert list(rows) == ['LH ground truth', 'LH', 'RH ground truth', 'RH']
  np.testing.assert_array_equal(rows['LH ground truth'], [0, 2])
  np.testing.assert_array_equal(rows['RH ground truth'], [1, 1])
  np.testing.assert_array_equal(rows['RH'], [11, 11])  # through task.timeline
  shared = types.SimpleNamespace(row_labels=lambda video, row: video.labels, timeline=lambda p: p)
  single = types.SimpleNamespace(name='v', labels=np.array([0, 2]))
  rows = train.timeline_rows(shared, single, predictions)
  assert list(rows) == ['ground truth', 'LH', 'RH'] and rows['ground truth'] is single.labels
  unlabelled = types.SimpleNamespace(name='v', labels=None)
  assert list(train.timeline_rows(own, unlabelled, predictions)) == ['LH', 'RH']


def test_train_loop_keeps_at_most_one_step_behind_the_running_one(monkeypatch):
  """After dispatching step i the loop waits for step i - 1, never for a later one: the device
  always has the next step queued, and nothing more (the bar counts steps that ran)."""
  events = []

  def train_step(state, batch):
    events.append(('dispatch', batch))
    return {'step': state['step'] + 1}, {'loss': np.float32(batch), 'finite': np.bool_(True)}

  def wait(metrics):
    if metrics is not None:
      events.append(('wait', int(metrics['loss'])))
    return metrics

  monkeypatch.setattr(train.jax, 'block_until_ready', wait)
  quiet = types.SimpleNamespace(write=lambda *a, **k: None, save=lambda *a, **k: None)
  settings = {'num_steps': 4, 'log_every': 10, 'eval_every': 10, 'checkpoint_every': 10}
  state, _ = train.train_loop(
    {'step': 0},
    train_step,
    lambda step: step,
    ml_collections.ConfigDict(settings),
    ckpt=quiet,
    writer=quiet,
    evaluate=lambda step, state: (state, None),
    desc='test',
    show=False,
  )
  assert state['step'] == 4
  assert events == [
    ('dispatch', 0),
    ('dispatch', 1),
    ('wait', 0),
    ('dispatch', 2),
    ('wait', 1),
    ('dispatch', 3),
    ('wait', 2),
  ]


def test_global_norm_is_the_norm_of_every_leaf_together():
  rng = np.random.default_rng(0)
  tree = {
    'a': rng.normal(size=3).astype(np.float32),
    'b': {'c': rng.normal(size=(2, 4)).astype(np.float32), 'd': np.float32(-2.5)},
    'e': jnp.asarray(rng.normal(size=(1, 1, 5)), jnp.bfloat16),
  }
  leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)]
  expected = np.sqrt(sum(np.sum(x**2) for x in leaves))
  np.testing.assert_allclose(train.global_norm(tree), expected, rtol=1e-6)
  np.testing.assert_allclose(train.global_norm({'x': np.float32([3, 4])}), 5.0, rtol=1e-7)


def test_the_train_steps_norm_is_per_leaf_only_for_split_states():
  """Concatenating leaves split over devices (FSDP) would gather them: there each leaf's norm is
  taken where its shards are; replicated or single-device states use one concatenation."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), parallel.BATCH_AXES)
  replicated = parallel.replicated(mesh)
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(parallel.FSDP_AXIS))
  assert train.norm_for(None) is train.global_norm
  assert train.norm_for(replicated) is train.global_norm
  assert train.norm_for({'a': replicated, 'b': replicated}) is train.global_norm
  assert train.norm_for({'a': replicated, 'b': split}) is optax.tree.norm

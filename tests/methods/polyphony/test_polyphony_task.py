"""Polyphony stage 3: cross-hand fusion, the two-hand model, adaptive loss weighting, data, engine."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import polyseg
from polyseg import methods
from polyseg.configlib import load_config
from polyseg.core import diffusion
from polyseg.data import formats
from polyseg.data import pipeline
from polyseg.data import synthetic
from polyseg.engine import checkpoint
from polyseg.engine import train
from polyseg.methods.polyphony import fusion
from polyseg.methods.polyphony import model as polyphony_model
from polyseg.methods.polyphony import task as polyphony
from polyseg.nn import asformer

REPO = pathlib.Path(__file__).resolve().parents[3]
CLASSES = ['background', 'take cup', 'pour water into cup', 'screw lid onto box using wrench']
PARTS = {'shared': 6, 'logits': len(CLASSES), 'semantic': 5}


def _segments(rng, length, num_classes, mean_len):
  labels, t = np.zeros(length, np.int32), 0
  while t < length:
    n = int(rng.integers(mean_len // 2, mean_len * 3 // 2))
    labels[t : t + n] = rng.integers(num_classes)
    t += n
  return labels


def write_mas_dataset(root, seed=0, num_train=8, num_test=2, val=False, noise=0.3):
  """A tiny two-hands MAS dataset: features = [shared | logits | semantic] whose logits part is
  the hand's one-hot label plus noise (so a model can learn it)."""
  rng = np.random.default_rng(seed)
  names = [f'vid{i}' for i in range(num_train + num_test + (2 if val else 0))]
  videos = []
  for name in names:
    length = int(rng.integers(40, 64))
    labels = np.stack([_segments(rng, length, len(CLASSES), 12) for _ in polyphony.HANDS], 1)
    shared = rng.normal(size=(length, PARTS['shared']))
    features = {}
    for h, hand in enumerate(polyphony.HANDS):
      logits = np.eye(len(CLASSES))[labels[:, h]] * 2 + noise * rng.normal(size=(length, 4))
      semantic = rng.normal(size=(length, PARTS['semantic']))
      features[hand] = np.concatenate([shared, logits, semantic], 1).astype(np.float32)
    videos.append(formats.MultiStreamVideo(name, features, labels))
  splits = {'train': names[:num_train], 'test': names[num_train : num_train + num_test]}
  if val:
    splits['val'] = names[num_train + num_test :]
  return formats.write_two_hands(
    root, CLASSES, splits, videos, extra_files={'mas.json': json.dumps(PARTS).encode()}
  )


def tiny_config(root, **overrides):
  config = load_config('polyphony', 'runlocal=True')
  config.stage = '3'
  config.data.root = str(root)
  config.data.sample_rate = 1
  for key, value in overrides.items():
    node, *path = key.split('.')
    target = config[node]
    for part in path[:-1]:
      target = target[part]
    target[path[-1]] = value
  return config


@pytest.fixture(scope='module', autouse=True)
def _fast(fast_compile):
  yield


@pytest.fixture(scope='module')
def single_stream_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('single') / 'data'
  return synthetic.single_stream(
    root, num_classes=4, input_dim=8, num_train=4, num_test=2, min_len=40, max_len=60, blend=2
  )


@pytest.fixture(scope='module')
def mas_root(tmp_path_factory):
  return write_mas_dataset(tmp_path_factory.mktemp('mas') / 'data')


@pytest.fixture(scope='module')
def task_and_params(mas_root):
  config = tiny_config(mas_root)
  data = polyphony.load_data(config)
  task = polyphony.Task(config, data.info, data.train)
  loader = task.train_loader(data.train)
  batch = loader.batch(0)
  params = task.init(jax.random.PRNGKey(0), batch)
  return task, params, batch, data


# -- cross-hand fusion -----------------------------------------------------------------------


def test_cross_hand_fusion_matches_reference():
  rng = np.random.default_rng(0)
  b, t, f = 2, 7, 5
  feats = {h: jnp.asarray(rng.normal(size=(b, t, f)), jnp.float32) for h in ('lh', 'rh')}
  mask = jnp.asarray(np.arange(t)[None] < np.array([[7], [4]]), jnp.float32)
  module = fusion.CrossHandFusion()
  params = module.init(jax.random.PRNGKey(1), feats, mask)
  out = module.apply(params, feats, mask)
  p = jax.tree.map(np.asarray, params['params'])
  for own, other in (('lh', 'rh'), ('rh', 'lh')):
    x = np.concatenate([feats[own], feats[other]], -1)
    h = np.maximum(x @ p[f'{own}_in']['kernel'] + p[f'{own}_in']['bias'], 0)
    ref = (h @ p[f'{own}_out']['kernel'] + p[f'{own}_out']['bias'] + feats[own]) * mask[..., None]
    np.testing.assert_allclose(out[own], ref, rtol=1e-5, atol=1e-5)
  assert not np.allclose(p['lh_in']['kernel'], p['rh_in']['kernel'])  # own weights per hand
  assert float(jnp.abs(out['lh'][1, 4:]).max()) == 0.0


def test_cross_hand_fusion_needs_two_hands():
  with pytest.raises(ValueError, match='two hands'):
    fusion.CrossHandFusion().init(
      jax.random.PRNGKey(0), {'lh': jnp.zeros((1, 3, 2))}, jnp.ones((1, 3))
    )


# -- model -----------------------------------------------------------------------------------


def _model(with_fusion):
  enc = asformer.Encoder(
    num_layers=2,
    num_f_maps=8,
    kernel_size=3,
    num_classes=3,
    dropout=0.0,
    channel_dropout=0.0,
    temporal_dropout=0.0,
    feature_layer_indices=(0, 1),
  )
  dec = lambda: asformer.Decoder(
    num_layers=1, num_f_maps=4, kernel_size=3, num_classes=3, dropout=0.0, time_emb_dim=8
  )
  return polyphony_model.PolyphonyModel(
    enc, dec(), dec(), fusion.CrossHandFusion() if with_fusion else None
  )


@pytest.mark.parametrize('with_fusion', [False, True])
def test_shared_encoder_and_fusion_wiring(with_fusion):
  rng = np.random.default_rng(0)
  inputs = {h: jnp.asarray(rng.normal(size=(2, 9, 4)), jnp.float32) for h in ('lh', 'rh')}
  mask = jnp.ones((2, 9))
  model = _model(with_fusion)
  params = model.init(
    jax.random.PRNGKey(0), inputs, jnp.zeros((2, 9, 3)), jnp.zeros(2, int), mask, False
  )
  logits, cond = model.apply(params, inputs, mask, False, method=model.encode)
  # One encoder for both hands: each hand's logits are the encoder applied to that hand alone.
  for hand in ('lh', 'rh'):
    alone, _ = model.encoder.apply(
      {'params': params['params']['encoder']}, inputs[hand], mask, False
    )
    np.testing.assert_allclose(logits[hand], alone, rtol=1e-5, atol=1e-6)
  changed = dict(inputs, rh=inputs['rh'] + 1.0)
  _, cond2 = model.apply(params, changed, mask, False, method=model.encode)
  lh_moved = not np.allclose(cond['lh'], cond2['lh'])
  assert lh_moved == with_fusion  # LH's condition sees RH only through the fusion
  assert set(params['params']) >= {'encoder', 'lh_decoder', 'rh_decoder'}


# -- adaptive loss weighting -----------------------------------------------------------------


def _state(lh, rh, count=None):
  window = 5
  acc = np.zeros((2, window), np.float32)
  acc[0, window - len(lh) :], acc[1, window - len(rh) :] = lh, rh
  return {
    'val_acc': jnp.asarray(acc),
    'num_evals': jnp.asarray(len(lh) if count is None else count),
  }


def test_hand_boosts_hand_worked():
  boosts = lambda s: np.asarray(polyphony.hand_boosts(s, 5, 0.95, 2.0))
  np.testing.assert_allclose(boosts(_state([50.0] * 5, [60.0] * 5)), [1.2, 1.0], rtol=1e-5)
  np.testing.assert_allclose(boosts(_state([60.0] * 5, [50.0] * 5)), [1.0, 1.2], rtol=1e-5)
  np.testing.assert_allclose(boosts(_state([58.0] * 5, [60.0] * 5)), [1.0, 1.0])  # within 5%
  np.testing.assert_allclose(boosts(_state([10.0] * 5, [60.0] * 5)), [2.0, 1.0])  # clipped
  np.testing.assert_allclose(boosts(_state([], [], count=0)), [1.0, 1.0])  # no evaluation yet
  # Only the evaluations so far count: means over [40, 50] and [60, 60] -> r = 0.75.
  np.testing.assert_allclose(boosts(_state([40.0, 50.0], [60.0, 60.0])), [1 / 0.75, 1.0], rtol=1e-5)
  # The window slides: older accuracies drop out.
  state = _state([50.0] * 5, [60.0] * 5, count=9)
  np.testing.assert_allclose(boosts(state), [1.2, 1.0], rtol=1e-5)


def test_update_task_state_keeps_the_last_window(task_and_params):
  task = task_and_params[0]
  state = task.initial_task_state()
  for i in range(7):
    results = {'LH': {'Acc': 10.0 + i}, 'RH': {'Acc': 50.0 + i}}
    state = task.update_task_state(state, results)
  np.testing.assert_allclose(state['val_acc'][0], [12, 13, 14, 15, 16])
  np.testing.assert_allclose(state['val_acc'][1], [52, 53, 54, 55, 56])
  assert int(state['num_evals']) == 7


def test_lagging_hand_gets_larger_weight_and_gradients(task_and_params):
  task, params, batch, _ = task_and_params
  rng = jax.random.PRNGKey(3)

  @jax.jit
  def terms_and_grads(task_state):
    loss = lambda p: task.loss(p, batch, rng, task_state)
    (_, terms), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return terms, grads['params']

  neutral, lagging = _state([60.0] * 5, [60.0] * 5), _state([40.0] * 5, [60.0] * 5)
  terms0, g0 = terms_and_grads(neutral)
  terms1, g1 = terms_and_grads(lagging)
  assert float(terms0['lh/boost']) == 1.0 and float(terms1['lh/boost']) == 1.5
  assert float(terms1['rh/boost']) == 1.0
  norm = lambda tree: float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree))))
  # The lagging hand's decoder sees only its own decoder losses: its gradient scales by the boost.
  np.testing.assert_allclose(norm(g1['lh_decoder']) / norm(g0['lh_decoder']), 1.5, rtol=1e-4)
  np.testing.assert_allclose(norm(g1['rh_decoder']) / norm(g0['rh_decoder']), 1.0, rtol=1e-5)
  assert norm(g1['encoder']) != pytest.approx(norm(g0['encoder']), rel=1e-4)
  # Switched off (the "w/o weighting" ablation), the state gives both hands weight 1.
  task.config.loss.adaptive.enabled = False
  try:
    np.testing.assert_array_equal(task.boosts(lagging), [1.0, 1.0])
  finally:
    task.config.loss.adaptive.enabled = True


def test_each_hand_draws_its_own_time_and_mask(task_and_params, monkeypatch):
  task, params, batch, _ = task_and_params
  drawn = {'t': [], 'mask': []}
  real_noisy, real_mask = diffusion.noisy_labels, diffusion.condition_mask

  def noisy(*args):
    x01, t = real_noisy(*args)
    drawn['t'].append(t)
    return x01, t

  def cond_mask(*args):
    keep = real_mask(*args)
    drawn['mask'].append(args[0])
    return keep

  monkeypatch.setattr(diffusion, 'noisy_labels', noisy)
  monkeypatch.setattr(diffusion, 'condition_mask', cond_mask)
  task.loss(params, batch, jax.random.PRNGKey(0), task.initial_task_state())
  assert len(drawn['t']) == 2 and not np.array_equal(drawn['t'][0], drawn['t'][1])
  assert not np.array_equal(
    jax.random.key_data(drawn['mask'][0]), jax.random.key_data(drawn['mask'][1])
  )


def test_batches_carry_each_hands_boundary_target(task_and_params):
  task, _, batch, data = task_and_params
  loader = task.train_loader(data.train)
  assert batch['boundary'].shape == (*batch['mask'].shape, 2)
  for row, index in enumerate(loader.batch_indices(0)):
    video = loader.videos[index]
    n = int(batch['mask'][row].sum())
    for h in range(2):  # sample_rate 1, no crop: the batch holds each whole video
      expected = pipeline.boundary_target(video.labels[:, h], task.config.data.boundary_sigma)
      np.testing.assert_allclose(batch['boundary'][row, :n, h], expected)


def test_class_weights_per_hand(task_and_params):
  task, _, _, data = task_and_params
  for h in range(2):
    counts = np.bincount(np.concatenate([v.labels[:, h] for v in data.train]), minlength=4)
    expected = counts.sum() / ((counts + 10.0) * 4)
    np.testing.assert_allclose(task.class_weights[h], expected, rtol=1e-6)
  assert not np.allclose(task.class_weights[0], task.class_weights[1])


# -- data ------------------------------------------------------------------------------------


def test_val_is_held_out_of_train_never_test(mas_root):
  data = polyphony.load_data(tiny_config(mas_root))
  names = lambda videos: {v.name for v in videos}
  assert len(data.val) == 1 and len(data.train) == 7  # round(0.15 * 8)
  assert not names(data.val) & names(data.train) and not names(data.val) & names(data.read_test())
  assert names(data.read_test()) == {'vid8', 'vid9'}


def test_val_bundle_is_used_when_present(tmp_path):
  root = write_mas_dataset(tmp_path / 'd', val=True)
  data = polyphony.load_data(tiny_config(root))
  assert {v.name for v in data.val} == {'vid10', 'vid11'} and len(data.train) == 8


@pytest.mark.parametrize(
  ('parts', 'dim'), [('mf', 6), ('mf+af', 10), ('mf+af+sf', 15), ('all', 15)]
)
def test_feature_parts(mas_root, parts, dim):
  data = polyphony.load_data(tiny_config(mas_root, **{'data.features': parts}))
  assert data.info.input_dim == dim
  video = data.train[0]
  full = formats.read_features(mas_root / 'features' / 'lh' / f'{video.name}.npy')
  np.testing.assert_array_equal(video.features['lh'], full[:, :dim])


def test_feature_parts_errors(mas_root, tmp_path):
  with pytest.raises(ValueError, match='data.features'):
    polyphony.load_data(tiny_config(mas_root, **{'data.features': 'mf+sf'}))
  root = write_mas_dataset(tmp_path / 'd')
  os.remove(root / 'mas.json')
  with pytest.raises(formats.DataError, match='mas.json not found'):
    polyphony.load_data(tiny_config(root, **{'data.features': 'mf'}))
  (root / 'mas.json').write_text('{"shared": 6}')
  with pytest.raises(formats.DataError, match='sizes'):
    polyphony.load_data(tiny_config(root, **{'data.features': 'mf'}))


def test_single_stream_mode_duplicates_the_labels(tmp_path, single_stream_root):
  config = tiny_config(single_stream_root, **{'data.layout': 'single_stream'})
  data = polyphony.load_data(config)
  video = data.train[0]
  np.testing.assert_array_equal(video.labels[:, 0], video.labels[:, 1])
  assert video.features['lh'] is video.features['rh']


def test_stage_parsing():
  assert polyphony.parse_stages('2,3') == (2, 3)
  assert polyphony.parse_stages(3) == (3,)
  assert polyphony.parse_stages('1,2,3') == (1, 2, 3)
  for bad in ('1,3', '4', '', 'two'):
    with pytest.raises(ValueError, match='config.stage'):
      polyphony.parse_stages(bad)


def test_prepare_refuses_single_stream_with_earlier_stages(tmp_path, single_stream_root):
  config = tiny_config(single_stream_root, **{'data.layout': 'single_stream'})
  config.stage = '2,3'
  with pytest.raises(ValueError, match='stage 3 only'):
    polyphony.prepare(config, str(tmp_path), 'train')


# -- engine ----------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def trained_run(mas_root, tmp_path_factory):
  """(config, workdir, results) of 4 training steps with evaluations at steps 2 and 4."""
  config = tiny_config(mas_root)
  config.train.update(num_steps=4, eval_every=2, checkpoint_every=2, log_every=2)
  config.eval.test_checkpoint = 'latest'  # eval_val/ then holds the last validation
  workdir = tmp_path_factory.mktemp('polyphony') / 'run'
  return config, workdir, polyseg.train_and_evaluate(config, str(workdir))


def _restored_task_state(config, workdir):
  task = polyphony.Task(config, polyphony.load_data(config).info)
  state = train.init_state(task, train.make_optimizer(config), jax.random.PRNGKey(0))
  ckpt = checkpoint.Checkpointer(str(workdir))
  try:
    return ckpt.restore(state)['task_state']
  finally:
    ckpt.close()


def test_results_rows_and_outputs(trained_run, mas_root):
  _, workdir, results = trained_run
  assert set(results) == {'LH', 'RH', 'mean', 'gap'}
  for metric in results['LH']:
    lh, rh = results['LH'][metric], results['RH'][metric]
    np.testing.assert_allclose(results['mean'][metric], (lh + rh) / 2)
    np.testing.assert_allclose(results['gap'][metric], rh - lh)
  for hand in polyphony.HANDS:  # predictions in the ground-truth layout, one folder per hand
    lines = (workdir / 'eval' / 'predictions' / hand / 'vid8.txt').read_text().splitlines()
    gt = (mas_root / 'groundTruth' / hand / 'vid8.txt').read_text().splitlines()
    assert len(lines) == len(gt)
    assert set(lines) <= set(CLASSES)
  assert (workdir / 'eval' / 'timelines' / 'vid8.png').exists()


def test_validation_accuracies_are_checkpointed_and_resumed(trained_run):
  config, workdir, _ = trained_run
  task_state = _restored_task_state(config, workdir)
  assert int(task_state['num_evals']) == 2
  val = json.loads((workdir / 'eval_val' / 'results.json').read_text())['results']
  np.testing.assert_allclose(
    task_state['val_acc'][:, -1], [val['LH']['Acc'], val['RH']['Acc']], rtol=1e-5
  )
  # Resuming continues from the checkpointed state: one more evaluation is added to it.
  config = config.copy_and_resolve_references()
  config.train.num_steps = 6
  polyseg.train_and_evaluate(config, str(workdir))
  resumed = _restored_task_state(config, workdir)
  assert int(resumed['num_evals']) == 3
  np.testing.assert_allclose(resumed['val_acc'][:, -2], task_state['val_acc'][:, -1])


def test_predict_mode_reads_two_hand_features(trained_run, mas_root):
  config, workdir, _ = trained_run
  config = config.copy_and_resolve_references()
  config.predict.features = str(mas_root)
  outdir = train.predict(methods.get(config.task), config, str(workdir))
  for hand in polyphony.HANDS:
    assert len(os.listdir(os.path.join(outdir, 'predictions', hand))) == 10


def test_registered():
  assert methods.get('polyphony') is polyphony


def test_prepare_chains_the_stages_through_the_workdir(tmp_path, monkeypatch):
  from polyseg.methods.polyphony import stage1
  from polyseg.methods.polyphony import stage2

  calls = []

  def fake_stage(stage):
    def run(config, workdir, root):
      calls.append((stage, pathlib.Path(root)))
      out = polyphony.stage_output(workdir, stage)
      out.mkdir(parents=True)
      return out

    return run

  monkeypatch.setattr(stage1, 'run', fake_stage(1))
  monkeypatch.setattr(stage2, 'run', fake_stage(2))
  config = load_config('polyphony', 'runlocal=True')
  config.data.root = str(tmp_path / 'videos')
  workdir = tmp_path / 'run'
  config.stage = '1'
  assert polyphony.prepare(config, str(workdir), 'train') is None
  assert calls == [(1, tmp_path / 'videos')]
  config.stage = '2'  # reads stage 1's output of the earlier run
  assert polyphony.prepare(config, str(workdir), 'train') is None
  assert calls[-1] == (2, polyphony.stage_output(workdir, 1))
  config.stage = '3'
  stage3 = polyphony.prepare(config, str(workdir), 'train')
  assert stage3.data.root == str(polyphony.stage_output(workdir, 2)) and len(calls) == 2
  assert config.data.root == str(tmp_path / 'videos')  # the caller's config is unchanged
  # eval / predict never run a stage, whatever config.stage says.
  config.stage = '1,2,3'
  assert polyphony.prepare(config, str(workdir), 'eval').data.root == stage3.data.root
  assert len(calls) == 2
  # In one run, each stage reads the one before.
  calls.clear()
  polyphony.prepare(config, str(tmp_path / 'run2'), 'train')
  assert calls == [(1, tmp_path / 'videos'), (2, polyphony.stage_output(tmp_path / 'run2', 1))]


def test_all_three_stages_from_the_command_line(tmp_path):
  """Synthetic frames -> tiny ADH-ViT (stage 1) -> semantic TCN (stage 2) -> segmenter (stage 3)."""
  workdir = tmp_path / 'run'
  command = [
    sys.executable,
    '-m',
    'polyseg.main',
    f'--config={REPO / "configs" / "polyphony.py"}:runlocal=True',
    f'--workdir={workdir}',
    '--config.stage=1,2,3',
    f'--config.data.cache_dir={tmp_path / "cache"}',
    # 6 videos (4 train, 1 val, 1 test) of 60-80 frames; 2 steps per stage, one evaluation.
    '--config.data.synthetic.num_videos=6',
    '--config.data.synthetic.min_len=60',
    '--config.data.synthetic.max_len=80',
    '--config.stage1.num_steps=2',
    '--config.train.num_steps=2',
    '--config.train.eval_every=2',
  ]
  done = subprocess.run(
    command, capture_output=True, text=True, timeout=900, cwd=tmp_path, check=False
  )
  assert done.returncode == 0, done.stderr[-3000:]
  stage1, stage2 = polyphony.stage_output(workdir, 1), polyphony.stage_output(workdir, 2)
  assert sorted(os.listdir(stage1 / 'features')) == ['lh', 'rh', 'shared']
  parts = json.loads((stage2 / 'mas.json').read_text())
  mas = formats.read_two_hands(stage2, 'train', 1)
  assert mas.input_dims['lh'] == parts['shared'] + parts['logits'] + parts['semantic']
  assert parts['semantic'] == 384 and parts['logits'] == len(mas.classes)
  results = json.loads((workdir / 'eval' / 'results.json').read_text())['results']
  assert set(results) == {'LH', 'RH', 'mean', 'gap'}
  assert 'test results at step 2' in done.stdout and 'Polyphony stage 3 reads' in done.stdout


def test_single_stream_mode_trains_and_scores_both_hands(single_stream_root, tmp_path):
  config = tiny_config(single_stream_root, **{'data.layout': 'single_stream'})
  config.train.update(num_steps=2, eval_every=2, checkpoint_every=2, log_every=2)
  config.eval.use_decoder = False  # the sampler is compiled and tested in the two-hand runs
  results = polyseg.train_and_evaluate(config, str(tmp_path / 'run'))
  np.testing.assert_allclose(
    results['mean']['Acc'], (results['LH']['Acc'] + results['RH']['Acc']) / 2
  )
  assert (tmp_path / 'run' / 'eval' / 'predictions' / 'rh').is_dir()


def test_config_variants_carry_the_paper_settings():
  full = load_config('polyphony')
  assert (full.optim.learning_rate, full.diffusion.sampling_steps) == (1e-3, 5)
  assert (full.loss.encoder_smooth, full.loss.decoder_smooth, full.loss.decoder_boundary) == (
    0.05,
    0.05,
    0.2,
  )
  assert full.loss.adaptive.to_dict() == {
    'enabled': True,
    'window': 5,
    'gap': 0.95,
    'max_boost': 2.0,
  }
  assert (full.data.features, full.model.fusion, full.stage) == ('mf+af+sf', True, '2,3')
  assert not full.model.decoder.condition_in_value  # the paper's (DiffAct's) decoder
  assert load_config('polyphony', 'decoder=conditioned_values').model.decoder.condition_in_value
  rows = {
    'mf': ('mf', True, True),
    'mf_af': ('mf+af', True, True),
    'no_fusion': ('mf+af+sf', False, True),
    'no_weighting': ('mf+af+sf', True, False),
    'no_fusion_weighting': ('mf+af+sf', False, False),
  }
  for ablation, expected in rows.items():
    c = load_config('polyphony', f'ablation={ablation}')
    assert (c.data.features, c.model.fusion, c.loss.adaptive.enabled) == expected
  breakfast = load_config('polyphony', 'dataset=breakfast')
  assert (breakfast.data.layout, breakfast.data.features) == ('single_stream', 'all')
  assert breakfast.model.encoder.num_f_maps == 256  # DiffAct's Breakfast sizes
  # HA-ViD: the reference code's model sizes (DiffAct's Breakfast ones), the paper's learning rate,
  # deterministic 5-step DDIM, and each hand's class weights applied to the soft-label CE.
  havid = load_config('polyphony', 'dataset=havid')
  assert (havid.model.encoder.num_layers, havid.model.encoder.num_f_maps) == (12, 256)
  assert (havid.model.decoder.num_layers, havid.model.decoder.num_f_maps) == (8, 128)
  assert havid.optim.learning_rate == 1e-3 and havid.loss.soft_label == 4.0
  assert (havid.diffusion.sampling_steps, havid.diffusion.eta) == (5, 0.0)
  assert havid.loss.weight_soft_labels and havid.loss.class_weighting
  assert load_config('polyphony', 'vit=vit_b').stage1.model.width == 768
  with pytest.raises(ValueError, match='ablation'):
    load_config('polyphony', 'ablation=no_semantic')

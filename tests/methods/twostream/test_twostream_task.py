"""2s-DAS end to end on tiny data: two DiffAct streams in one loss, fusion, the weight search on val
(never test), predict mode, the config's switches."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import polyseg
from polyseg import methods
from polyseg.configlib import load_config
from polyseg.core import diffusion
from polyseg.data import formats
from polyseg.engine import train
from polyseg.methods.diffact import task as diffact
from polyseg.methods.twostream import late_fusion
from polyseg.methods.twostream import task as twostream


@pytest.fixture
def tiny(cache_dir):
  config = load_config('twostream', 'runlocal=True')
  config.data.cache_dir = cache_dir
  return config


@pytest.fixture
def built(tiny):
  data = twostream.load_data(tiny)
  return data, twostream.Task(tiny, data.info, train_videos=data.train)


def test_streams_keep_their_own_dims_and_weights(built):
  data, task = built
  assert data.info.input_dim == {'rgb': 16, 'flow': 12}
  params = jax.eval_shape(task.init, jax.random.PRNGKey(0), task.example_batch())
  kernels = {s: params[s]['params']['encoder']['input_proj']['kernel'] for s in ('rgb', 'flow')}
  assert kernels['rgb'].shape[0] == 16 and kernels['flow'].shape[0] == 12
  assert kernels['rgb'].shape[1:] == kernels['flow'].shape[1:]  # one architecture


def test_loss_is_the_sum_of_each_streams_diffact_loss_and_trains_both(built, tiny):
  data, task = built
  batch = task.train_loader(data.train).batch(0)
  params = task.init(jax.random.PRNGKey(0), task.example_batch())
  rng = jax.random.PRNGKey(3)
  total, terms = jax.jit(task.loss)(params, batch, rng)
  expected = 0.0
  for i, stream in enumerate(('rgb', 'flow')):
    single = diffact.Task(
      tiny,
      data.info.__class__(data.info.classes, data.info.input_dim[stream], data.info.background),
      train_videos=data.train,
    )
    stream_batch = {k: batch[k] for k in ('labels', 'boundary', 'mask')} | {
      'features': batch[stream]
    }
    loss, stream_terms = jax.jit(single.loss)(
      params[stream], stream_batch, jax.random.fold_in(rng, i)
    )
    expected += loss
    for key, value in stream_terms.items():
      np.testing.assert_allclose(terms[f'{stream}/{key}'], value, rtol=1e-6)
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  grads = jax.jit(jax.grad(lambda p: task.loss(p, batch, rng)[0]))(params)
  for stream in ('rgb', 'flow'):
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads[stream]['params']))


def test_each_stream_draws_its_own_condition_mask(built, monkeypatch):
  data, task = built
  batch = task.train_loader(data.train).batch(0)
  params = task.init(jax.random.PRNGKey(0), task.example_batch())
  keys = []
  real = diffusion.condition_mask
  monkeypatch.setattr(
    diffusion,
    'condition_mask',
    lambda key, *args: keys.append(np.asarray(jax.random.key_data(key))) or real(key, *args),
  )
  task.loss(params, batch, jax.random.PRNGKey(5))
  assert len(keys) == 2 and not np.array_equal(keys[0], keys[1])


def test_fused_row_follows_the_fusion_weights(built):
  data, task = built
  params = task.init(jax.random.PRNGKey(0), task.example_batch())
  video, rng = data.read_test()[0], jax.random.PRNGKey(1)
  rgb_only, flow_only = task, twostream.Task(task.config, data.info)
  rgb_only.fusion_weights, flow_only.fusion_weights = (1.0, 0.0), (0.0, 1.0)
  first, second = rgb_only.predict(params, video, rng), flow_only.predict(params, video, rng)
  np.testing.assert_array_equal(first['Fused'], first['RGB'])
  np.testing.assert_array_equal(second['Fused'], second['Flow'])
  np.testing.assert_array_equal(first['RGB'], second['RGB'])
  assert len(first['Fused']) == len(video.labels)


def test_calibration_searches_val_only_once_per_video_and_predicts_with_the_best(built, tmp_path):
  data, task = built
  params = task.init(jax.random.PRNGKey(0), task.example_batch())
  calls = []
  for single in task.streams.values():
    real = single.predict_probs
    single.predict_probs = lambda p, v, r, real=real: calls.append(v.name) or real(p, v, r)
  rng = jax.random.PRNGKey(task.config.eval.seed)
  task.calibrate(params, data.val, rng, str(tmp_path))
  assert sorted(set(calls)) == sorted(v.name for v in data.val)
  assert not {v.name for v in data.read_test()} & set(calls)
  saved = json.loads((tmp_path / 'fusion_search.json').read_text())
  assert tuple(saved['weights']) == task.fusion_weights
  assert len(saved['curve']) == len(late_fusion.weight_grid(2, task.config.fusion.step))
  assert (tmp_path / 'fusion_search.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  before = len(calls)
  predictions = train.run_predictions(task, params, data.val, rng, 'val')
  assert len(calls) == before  # the search's probabilities are reused, not sampled again
  probs = [task.stream_probs(params, v, jax.random.fold_in(rng, i)) for i, v in enumerate(data.val)]
  for video, stream_probs in zip(data.val, probs):
    fused = late_fusion.fuse(stream_probs, task.fusion_weights)
    np.testing.assert_array_equal(
      predictions[video.name]['Fused'], task.decode(fused, len(video.labels))
    )


def test_train_evaluates_every_row_and_writes_the_search(tiny, tmp_path):
  workdir = tmp_path / 'run'
  results = polyseg.train_and_evaluate(tiny, str(workdir))
  assert set(results) == {'Fused', 'RGB', 'Flow'}
  assert set(results['Fused']) >= {'Acc', 'Edit', 'F1@10', 'F1@25', 'F1@50'}
  search = json.loads((workdir / 'eval_val' / 'fusion_search.json').read_text())
  assert search['streams'] == ['rgb', 'flow'] and abs(sum(search['weights']) - 1) < 1e-6
  names = os.listdir(workdir / 'eval' / 'predictions')
  assert {n.rsplit('.', 2)[1] for n in names} == {'Fused', 'RGB', 'Flow'}
  # --mode=predict on a folder of both streams: calibrates on val, writes every row.
  data = twostream.load_data(tiny)
  features = tmp_path / 'unlabelled'
  for stream in ('rgb', 'flow'):
    (features / f'features_{stream}').mkdir(parents=True)
    np.save(features / f'features_{stream}' / 'clip.npy', data.read_test()[0].features[stream].T)
  tiny.predict.features = str(features)
  outdir = train.predict(methods.get(tiny.task), tiny, str(workdir))
  lines = (tmp_path / outdir / 'predictions' / 'clip.Fused.txt').read_text().split()
  assert len(lines) == len(data.read_test()[0].labels)
  assert os.path.exists(os.path.join(outdir, 'fusion_search.json'))


def test_unlabelled_streams_must_name_the_same_videos(built, tiny, tmp_path):
  data, _ = built
  for stream, name in (('rgb', 'a'), ('flow', 'b')):
    (tmp_path / f'features_{stream}').mkdir()
    np.save(
      tmp_path / f'features_{stream}' / f'{name}.npy',
      np.zeros((data.info.input_dim[stream], 9), np.float32),
    )
  tiny.predict.features = str(tmp_path)
  with pytest.raises(formats.DataError, match='different videos'):
    twostream.load_unlabelled(tiny, data.info)


def test_config_switches():
  fixed = load_config('twostream', 'masks=boundary')
  assert tuple(fixed.diffusion.condition_types) == ('boundary',)
  # The paper's importance sampling: full, boundary and random-action masks, uniformly; no zero.
  breakfast = load_config('twostream', 'dataset=breakfast')
  assert tuple(breakfast.diffusion.condition_types) == ('full', 'boundary', 'segment=1')
  salads = load_config('twostream', 'dataset=50salads')
  assert tuple(salads.diffusion.condition_types) == ('full', 'boundary', 'segment=2')
  diffact_list = load_config('twostream', 'dataset=breakfast,masks=diffact')
  assert tuple(diffact_list.diffusion.condition_types) == (
    'full',
    'zero',
    'boundary',
    'segment=1',
    'segment=1',
  )
  assert breakfast.model.encoder.num_f_maps == 256 and breakfast.data.sample_rate == 1
  assert breakfast.fusion.weights == (0.6, 0.4)
  with pytest.raises(ValueError, match='masks'):
    load_config('twostream', 'masks=sometimes')

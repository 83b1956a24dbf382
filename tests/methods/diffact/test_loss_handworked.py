"""DiffAct's loss against independent numpy computations: the published GTEA config (soft labels)
term by term and through one train step, the term weights, the class-weighted CE of hard labels, and
the condition mask acting on the decoder only.

The model's logits are read off the calls the loss makes (`_Recorder` stands in for `task.model`),
so every reference below starts from exactly the logits the loss saw; everything after them is
numpy (float64) written from the definitions, not from `polyseg.core.losses`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from polyseg.configlib import load_config
from polyseg.core import diffusion
from polyseg.core import losses
from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.data import pipeline
from polyseg.engine import diffusion_task
from polyseg.engine import train
from polyseg.methods.diffact import model as diffact_model
from polyseg.methods.diffact import task as diffact

pytestmark = pytest.mark.usefixtures('fast_compile')

NUM_CLASSES, INPUT_DIM = 4, 6
INFO = dataset_lib.DataInfo(('a', 'b', 'c', 'd'), INPUT_DIM, ())
# Training frames per class n = (30, 10, 0, 50): N = 90, C = 4, so DiffAct's class weights
# w_c = N / ((n_c + 10) C) = 90 / (160, 80, 40, 240) = (0.5625, 1.125, 2.25, 0.375).
TRAIN_VIDEOS = [
  formats.Video('v0', np.zeros((60, INPUT_DIM), np.float32), np.repeat([0, 1, 3], [20, 10, 30])),
  formats.Video('v1', np.zeros((30, INPUT_DIM), np.float32), np.repeat([3, 0], [20, 10])),
]
CLASS_WEIGHTS = np.array([0.5625, 1.125, 2.25, 0.375])
# The batch: B = 2, T = 12, the second video 7 frames long (5 padded frames).
LABELS = np.array([[0, 0, 0, 1, 1, 1, 1, 3, 3, 2, 2, 2], [3, 3, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]])
LENGTHS = (12, 7)
LOSS_TERMS = ('encoder_ce', 'encoder_smooth', 'decoder_ce', 'decoder_smooth', 'decoder_boundary')


def _config(arg='dataset=gtea', **loss):
  """`configs/diffact.py:<arg>` with a tiny model; the loss, diffusion and data settings untouched
  unless given in `loss`."""
  config = load_config('diffact', arg)
  config.model.encoder.update(num_layers=3, num_f_maps=8, feature_layer_indices=(0, 1, 2))
  config.model.decoder.update(num_layers=2, num_f_maps=8, time_emb_dim=16)
  config.loss.update(loss)
  return config


def _batch(config, seed=0):
  """The batch a loader would give for LABELS / LENGTHS: padded features, labels, boundary, mask."""
  mask = (np.arange(LABELS.shape[1])[None] < np.asarray(LENGTHS)[:, None]).astype(np.float32)
  features = np.random.default_rng(seed).normal(size=(*LABELS.shape, INPUT_DIM)) * mask[..., None]
  boundary = np.zeros(LABELS.shape, np.float32)
  for row, n in enumerate(LENGTHS):
    boundary[row, :n] = pipeline.boundary_target(LABELS[row, :n], config.data.boundary_sigma)
  labels = np.where(mask > 0, LABELS, 0).astype(np.int32)
  return {
    'features': features.astype(np.float32),
    'labels': labels,
    'boundary': boundary,
    'mask': mask,
  }


class _Recorder:
  """Stands in for `task.model`: forwards `apply` and keeps each method's (args, output)."""

  def __init__(self, model):
    self.model, self.calls = model, {}

  def apply(self, params, *args, method, **kwargs):
    out = self.model.apply(params, *args, method=method, **kwargs)
    self.calls[method.__name__] = (args, out)
    return out

  def __getattr__(self, name):  # init and the rest: the model's own
    return getattr(self.model, name)


def _recording_task(config, train_videos=TRAIN_VIDEOS):
  task = diffact.Task(config, INFO, train_videos)
  task.model = _Recorder(task.model)
  return task


def _task_terms(config, seed):
  """(task recording its model's calls, params, batch, loss terms) of `config`: params from
  PRNGKey(0), the loss of `_batch(config)` at PRNGKey(seed)."""
  task = _recording_task(config)
  batch = _batch(config)
  params = task.init(jax.random.PRNGKey(0), batch)
  _, terms = task.loss(params, batch, jax.random.PRNGKey(seed))
  return task, params, batch, terms


def _logits(task):
  """(encoder logits, decoder logits) of the last loss call, float64 numpy."""
  calls, chain = task.model.calls, diffact_model.CHAIN
  enc = np.asarray(calls['encode'][1][0][chain], np.float64)
  dec = np.asarray(calls['denoise'][1][chain], np.float64) if 'denoise' in calls else None
  return enc, dec


# -- numpy references (float64, valid frames only) ------------------------------------------


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reflect(index, length):
  """scipy's 'reflect' boundary (d c b a | a b c d | d c b a) as a loop."""
  while not 0 <= index < length:
    index = -index - 1 if index < 0 else 2 * length - 1 - index
  return index


def _soft_targets(labels, length, sigma):
  """One-hot [length, C] of the valid frames, each class channel filtered along time by scipy's
  gaussian kernel (radius int(4 sigma + 0.5), weights exp(-k^2 / 2 sigma^2) normalised to sum 1)
  over this video's own frames only (reflected at both of its ends, padding never read)."""
  radius = int(4 * sigma + 0.5)
  offsets = np.arange(-radius, radius + 1)
  kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
  kernel /= kernel.sum()
  onehot = np.eye(NUM_CLASSES)[labels[:length]]
  smoothed = np.zeros_like(onehot)
  for t in range(length):
    for k, weight in zip(offsets, kernel):
      smoothed[t] += weight * onehot[_reflect(t + k, length)]
  return smoothed


# Every loss is DiffAct's reference's: one video at a time, the mean over its own valid frames
# (or frame pairs), then the mean over the batch's videos.


def _soft_ce(logits, sigma, weights=None):
  """Per video, the mean over its valid frames of -sum_c w_c q_c log p_c (w = 1 when None);
  mean over videos."""
  weights = np.ones(NUM_CLASSES) if weights is None else weights
  return np.mean(
    [
      np.mean(
        -(weights * _soft_targets(LABELS[row], n, sigma) * _log_softmax(logits[row, :n])).sum(-1)
      )
      for row, n in enumerate(LENGTHS)
    ]
  )


def _weighted_ce(logits, weights):
  """Per video, sum_t w_y (-log p_y) / (its frames), as the reference's CrossEntropyLoss(weight=w,
  reduction='none').mean(); mean over videos."""
  per_video = []
  for row, n in enumerate(LENGTHS):
    y = LABELS[row, :n]
    per_video.append(np.mean(weights[y] * -_log_softmax(logits[row, :n])[np.arange(n), y]))
  return np.mean(per_video)


def _smoothing(logits):
  """Per video, the mean over its (t-1, t) pairs and classes of min((log p_t - log p_{t-1})^2, 16);
  mean over videos."""
  squared = []
  for row, n in enumerate(LENGTHS):
    log_p = _log_softmax(logits[row, :n])
    squared.append(np.minimum((log_p[1:] - log_p[:-1]) ** 2, 16.0).mean())
  return np.mean(squared)


def _boundary(logits, target):
  """Per video, the mean over its pairs of BCE(b_t, target_t), b_t = 1 - sum_c p_t(c) p_{t-1}(c)
  clipped to [1e-6, 1 - 1e-6]; mean over videos."""
  bce = []
  for row, n in enumerate(LENGTHS):
    p = np.exp(_log_softmax(logits[row, :n]))
    change = np.clip(1 - (p[1:] * p[:-1]).sum(-1), 1e-6, 1 - 1e-6)
    y = target[row, 1:n]
    bce.append(np.mean(-(y * np.log(change) + (1 - y) * np.log(1 - change))))
  return np.mean(bce)


# -- 1a: the published GTEA config ------------------------------------------------------------


def test_soft_target_reference_is_scipys_filter_of_each_video():
  """The loop reference above is scipy.ndimage.gaussian_filter1d of each video's own frames (the
  check of the reference itself, so the loss tests below compare against the right thing)."""
  for row, n in enumerate(LENGTHS):
    onehot = np.eye(NUM_CLASSES)[LABELS[row, :n]]
    np.testing.assert_allclose(
      _soft_targets(LABELS[row], n, 1.4), ndimage.gaussian_filter1d(onehot, 1.4, axis=0), atol=1e-12
    )


def test_gtea_config_loss_terms_and_total_match_hand_computation():
  config = _config()
  # The published GTEA settings (DiffAct release): soft labels of sigma 1.4, smoothing weight 0.1,
  # CE weights 0.5, boundary weight 0.1, class weighting on, boundary targets of sigma 1.
  assert config.loss.soft_label == 1.4 and config.loss.class_weighting
  assert config.data.boundary_sigma == 1.0 and config.diffusion.boundary_threshold == 0.3
  weights = {
    'encoder_ce': 0.5,
    'encoder_smooth': 0.1,
    'decoder_ce': 0.5,
    'decoder_smooth': 0.1,
    'decoder_boundary': 0.1,
  }
  assert {k: config.loss[k] for k in LOSS_TERMS} == weights
  task = _recording_task(config)
  assert task.class_weights is None  # soft labels: DiffAct's reference CE is unweighted
  batch = _batch(config)
  params = task.init(jax.random.PRNGKey(0), task.example_batch())
  total, terms = task.loss(params, batch, jax.random.PRNGKey(1))
  enc, dec = _logits(task)
  expected = {
    # The soft-label CE is DiffAct's unweighted one: -sum_c q_c log p_c, mean over frames.
    'encoder_ce': _soft_ce(enc, 1.4),
    'encoder_smooth': _smoothing(enc),
    'decoder_ce': _soft_ce(dec, 1.4),
    'decoder_smooth': _smoothing(dec),
    'decoder_boundary': _boundary(dec, batch['boundary']),
  }
  assert set(terms) == set(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(terms[name], value, rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(total, sum(weights[k] * expected[k] for k in weights), rtol=1e-5)
  # Not a degenerate case: the soft targets differ from the one-hot ones near the boundaries.
  assert abs(expected['encoder_ce'] - _weighted_ce(enc, np.ones(NUM_CLASSES))) > 1e-3


def test_gtea_train_step_takes_one_adam_step_on_the_fold_in_loss():
  config = _config()
  task = diffact.Task(config, INFO, TRAIN_VIDEOS)
  batch = _batch(config)
  tx = train.make_optimizer(config)
  state = train.init_state(task, tx, jax.random.PRNGKey(0))
  before = jax.tree.map(np.array, state['params'])  # a copy: the step donates the state
  base = jax.random.PRNGKey(7)
  rng0 = jax.random.fold_in(base, 0)  # what the step at state['step'] = 0 draws from
  expected_loss, _ = task.loss(before, batch, rng0)
  step = train.make_train_step(task, tx, base)
  state, metrics = step(state, batch)
  assert bool(metrics['finite']) and np.isfinite(float(metrics['loss']))
  np.testing.assert_allclose(metrics['loss'], expected_loss, rtol=1e-5)
  assert int(state['step']) == 1
  # Adam's first step moves each parameter by lr * g / (|g| + 1e-8), g the gradient plus the weight
  # decay 1e-6 * param: never more than lr = 5e-4 (the GTEA learning rate), and exactly lr (up to
  # float32 rounding) wherever |g| >> 1e-8, i.e. almost everywhere.
  assert config.optim.learning_rate == 5e-4 and config.optim.weight_decay == 1e-6
  delta = np.concatenate(
    [
      np.abs(np.asarray(new) - old).ravel()
      for old, new in zip(*map(jax.tree.leaves, (before, state['params'])))
    ]
  )
  assert delta.max() <= 5e-4 * 1.002
  assert np.mean(np.abs(delta - 5e-4) < 1e-6) > 0.9, np.quantile(delta, [0.01, 0.1, 0.5])


# -- 1b: term weights, class-weighted hard-label CE, condition masks ----------------------------


def test_each_term_is_scaled_by_its_weight_and_a_zero_weight_removes_exactly_it():
  weights = {
    'encoder_ce': 0.3,
    'encoder_smooth': 0.7,
    'decoder_ce': 1.1,
    'decoder_smooth': 0.2,
    'decoder_boundary': 0.9,
  }
  config = _config(**weights)
  batch = _batch(config)
  params = diffact.Task(config, INFO, TRAIN_VIDEOS).init(jax.random.PRNGKey(0), batch)
  rng = jax.random.PRNGKey(2)

  def loss(**changed):
    task = diffact.Task(_config(**{**weights, **changed}), INFO, TRAIN_VIDEOS)
    total, terms = task.loss(params, batch, rng)
    return float(total), {k: float(v) for k, v in terms.items()}

  total, terms = loss()
  assert set(terms) == set(LOSS_TERMS) and all(v > 0 for v in terms.values())
  np.testing.assert_allclose(total, sum(weights[k] * terms[k] for k in LOSS_TERMS), rtol=1e-6)
  for name in LOSS_TERMS:
    without, same_terms = loss(**{name: 0.0})
    assert same_terms == terms, name  # the terms are unweighted: the same numbers
    np.testing.assert_allclose(
      without, total - weights[name] * terms[name], rtol=1e-6, err_msg=name
    )
    doubled, _ = loss(**{name: 2 * weights[name]})
    np.testing.assert_allclose(
      doubled, total + weights[name] * terms[name], rtol=1e-6, err_msg=name
    )
  # All decoder weights 0: the decoder is not run and its terms are gone.
  no_decoder = dict.fromkeys(diffact.DECODER_TERMS, 0.0)
  task = _recording_task(_config(**{**weights, **no_decoder}))
  total, terms_enc = task.loss(params, batch, rng)
  assert set(terms_enc) == {'encoder_ce', 'encoder_smooth'} and set(task.model.calls) == {'encode'}
  np.testing.assert_allclose(total, 0.3 * terms['encoder_ce'] + 0.7 * terms['encoder_smooth'])


def test_class_weighted_cross_entropy_of_hard_labels():
  # By hand first: C = 4, the class weights above. Frame 0: label 0, logits (ln 3, 0, 0, 0), so
  # p_0 = 3 / 6, nll = ln 2; frame 1: label 3, logits 0, nll = ln 4; frame 2 is padding.
  # Weighted CE = (0.5625 ln 2 + 0.375 ln 4) / 2 frames = (0.5625 + 0.75) / 2 ln 2 = 0.65625 ln 2
  # (the reference divides by the frames, not by the sum of the weights).
  logits = jnp.asarray([[[np.log(3.0), 0, 0, 0], [0, 0, 0, 0], [9.0, -9.0, 9.0, 0]]])
  labels, mask = jnp.asarray([[0, 3, 2]]), jnp.asarray([[1.0, 1.0, 0.0]])
  hand = diffact.classification_loss(logits, labels, mask, None, jnp.asarray(CLASS_WEIGHTS))
  np.testing.assert_allclose(hand, 0.65625 * np.log(2), rtol=1e-6)
  plain = diffact.classification_loss(logits, labels, mask, None, None)
  np.testing.assert_allclose(plain, (np.log(2) + np.log(4)) / 2, rtol=1e-6)

  # Through the task: soft_label None, class weights from the training videos' label counts.
  config = _config(soft_label=None)
  assert config.loss.class_weighting
  task, params, batch, terms = _task_terms(config, seed=3)
  np.testing.assert_allclose(task.class_weights, CLASS_WEIGHTS, rtol=1e-6)
  enc, dec = _logits(task)
  np.testing.assert_allclose(terms['encoder_ce'], _weighted_ce(enc, CLASS_WEIGHTS), rtol=1e-5)
  np.testing.assert_allclose(terms['decoder_ce'], _weighted_ce(dec, CLASS_WEIGHTS), rtol=1e-5)
  unweighted = _weighted_ce(enc, np.ones(NUM_CLASSES))
  assert abs(unweighted - _weighted_ce(enc, CLASS_WEIGHTS)) > 1e-3  # the weights matter here
  # class_weighting off: plain mean CE of the same logits (same params, same rng).
  config.loss.class_weighting = False
  task = _recording_task(config)
  assert task.class_weights is None
  _, terms = task.loss(params, batch, jax.random.PRNGKey(3))
  np.testing.assert_allclose(terms['encoder_ce'], unweighted, rtol=1e-5)


def test_soft_labels_are_class_weighted_only_when_asked():
  # By hand: logits 0 (p = 1/4 each), soft target q = (1/2, 0, 0, 1/2), the class weights above:
  # -sum_c w_c q_c log p_c = (0.5625 / 2 + 0.375 / 2) ln 4 = 0.46875 ln 4; unweighted: ln 4.
  logits, mask = jnp.zeros((1, 1, NUM_CLASSES)), jnp.ones((1, 1))
  q = jnp.asarray([[[0.5, 0.0, 0.0, 0.5]]])
  weighted = losses.soft_cross_entropy(logits, q, mask, jnp.asarray(CLASS_WEIGHTS))
  np.testing.assert_allclose(weighted, 0.46875 * np.log(4), rtol=1e-6)
  np.testing.assert_allclose(losses.soft_cross_entropy(logits, q, mask), np.log(4), rtol=1e-6)

  # Through the task: DiffAct's published settings leave the soft-label CE unweighted (above);
  # loss.weight_soft_labels (Polyphony's configs: each hand's weights) weights it.
  assert load_config('polyphony', 'dataset=havid').loss.weight_soft_labels
  config = _config(weight_soft_labels=True)
  task, _, _, terms = _task_terms(config, seed=4)
  np.testing.assert_allclose(task.class_weights, CLASS_WEIGHTS, rtol=1e-6)
  enc, dec = _logits(task)
  np.testing.assert_allclose(terms['encoder_ce'], _soft_ce(enc, 1.4, CLASS_WEIGHTS), rtol=1e-5)
  np.testing.assert_allclose(terms['decoder_ce'], _soft_ce(dec, 1.4, CLASS_WEIGHTS), rtol=1e-5)
  assert abs(_soft_ce(enc, 1.4, CLASS_WEIGHTS) - _soft_ce(enc, 1.4)) > 1e-3


def _condition_run(kinds, params, batch, rng):
  """(terms, (encoder logits, encoder condition), the condition the decoder was given) of the loss
  with condition masks drawn from `kinds`."""
  config = _config()
  config.diffusion.condition_types = kinds
  task = _recording_task(config)
  _, terms = task.loss(params, batch, rng)
  calls, chain = task.model.calls, diffact_model.CHAIN
  encoded = tuple(np.asarray(x[chain]) for x in calls['encode'][1])
  return terms, encoded, np.asarray(calls['project_condition'][0][0][chain])


def test_condition_mask_acts_on_the_decoder_only():
  config = _config()
  batch = _batch(config)
  params = diffact.Task(config, INFO).init(jax.random.PRNGKey(0), batch)
  rng = jax.random.PRNGKey(4)
  valid = batch['mask'] > 0
  threshold = config.diffusion.boundary_threshold  # 0.3 for GTEA
  # Frames each kind keeps, by hand: full all, zero none, boundary those with target < 0.3.
  expected_keep = {
    ('full',): np.ones_like(valid),
    ('zero',): np.zeros_like(valid),
    ('boundary',): ~(valid & (batch['boundary'] >= threshold)),
  }
  assert 0 < (~expected_keep[('boundary',)]).sum() < valid.sum()
  runs = {
    kinds: _condition_run(kinds, params, batch, rng) for kinds in [*expected_keep, ('segment=1',)]
  }
  reference_terms, (reference_logits, reference_cond), _ = runs[('full',)]
  assert np.abs(reference_cond[valid]).max() > 0
  for kinds, (terms, (logits, cond), given) in runs.items():
    # The encoder never sees the mask: the same logits, condition features and encoder terms.
    np.testing.assert_array_equal(logits, reference_logits)
    np.testing.assert_array_equal(cond, reference_cond)
    for name in ('encoder_ce', 'encoder_smooth'):
      assert float(terms[name]) == float(reference_terms[name]), (kinds, name)
    if kinds in expected_keep:  # the decoder is given cond * mask
      np.testing.assert_array_equal(given, cond * expected_keep[kinds][..., None])
  # segment=1 zeroes every valid frame of one class present in the video, and only those.
  _, (_, cond), given = runs[('segment=1',)]
  for row, n in enumerate(LENGTHS):
    dropped = np.all(given[row, :n] == 0, axis=-1) & np.any(cond[row, :n] != 0, axis=-1)
    classes = set(LABELS[row, :n][dropped])
    assert len(classes) == 1 and np.array_equal(dropped, np.isin(LABELS[row, :n], list(classes)))
  # The decoder terms do depend on what the decoder is given.
  assert float(runs[('zero',)][0]['decoder_ce']) != float(reference_terms['decoder_ce'])


@pytest.mark.parametrize('kind, encoder_gets_gradient', [('zero', False), ('full', True)])
def test_decoder_terms_reach_the_encoder_only_through_the_condition(kind, encoder_gets_gradient):
  """condition_types=('zero',): the decoder sees an all-zero condition, so its terms have no
  gradient w.r.t. the encoder's params; with ('full',) they do. The encoder terms never have a
  gradient w.r.t. the decoder's params."""
  config = _config()
  config.diffusion.condition_types = (kind,)
  task = diffact.Task(config, INFO, TRAIN_VIDEOS)
  batch = _batch(config)
  params = task.init(jax.random.PRNGKey(0), batch)
  rng = jax.random.PRNGKey(5)

  def decoder_and_encoder_terms(p):
    terms = task.loss(p, batch, rng)[1]
    return jnp.stack(
      [sum(terms[k] for k in diffact.DECODER_TERMS), terms['encoder_ce'] + terms['encoder_smooth']]
    )

  # Eager (no jit): one compilation per op shape, shared by both parametrisations.
  grads = jax.jacrev(decoder_and_encoder_terms)(params)['params']
  norm = lambda tree, i: float(sum(jnp.abs(x[i]).sum() for x in jax.tree.leaves(tree)))
  assert norm(grads['decoder'], 0) > 0 and norm(grads['encoder'], 1) > 0
  assert norm(grads['decoder'], 1) == 0
  assert (norm(grads['encoder'], 0) > 0) == encoder_gets_gradient


@pytest.mark.parametrize('kind', ['full', 'boundary', 'segment=1'])
def test_padded_batch_is_the_mean_of_its_videos_in_loss_and_gradient(kind):
  """DiffAct's reference trains one video at a time and averages the gradients of a batch: the
  padded batch's loss terms and gradient equal the mean of each video's alone (same noisy labels,
  t, condition mask), whatever the padded frames hold."""
  config = _config('dataset=synthetic')
  task = diffact.Task(config, INFO, TRAIN_VIDEOS)
  params = task.init(jax.random.PRNGKey(0), task.example_batch())
  batch = _batch(config)
  one_hot = jax.nn.one_hot(batch['labels'], NUM_CLASSES)
  x01, t = diffusion.noisy_labels(jax.random.PRNGKey(1), one_hot, task.schedule, 0.5)
  cond_mask = diffusion.condition_mask(
    jax.random.PRNGKey(2), batch['labels'], batch['boundary'], batch['mask'], (kind,), 0.3
  )
  padded = batch['mask'] == 0
  junk = np.random.default_rng(3)
  batch['features'] = np.where(padded[..., None], 50.0, batch['features']).astype(np.float32)
  x01 = jnp.where(padded[..., None], junk.uniform(size=x01.shape), x01)
  chain = diffact_model.CHAIN
  diffused = lambda x01, t, keep: {chain: diffusion_task.Diffused(x01, t, keep)}
  loss = jax.jit(jax.value_and_grad(lambda p, b, d: task.forward(p, b, d), has_aux=True))
  (_, terms), grads = loss(params, batch, diffused(x01, t, cond_mask))
  alone = []
  for row, n in enumerate(LENGTHS):
    video = {k: v[row : row + 1, :n] for k, v in batch.items()}
    alone.append(
      loss(
        params,
        video,
        diffused(x01[row : row + 1, :n], t[row : row + 1], cond_mask[row : row + 1, :n]),
      )
    )
  for name in LOSS_TERMS:
    np.testing.assert_allclose(terms[name], np.mean([a[0][1][name] for a in alone]), rtol=1e-5)
  mean_grads = jax.tree.map(lambda *g: np.mean(g, 0), *[a[1] for a in alone])
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(mean_grads))
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(mean_grads), strict=True):
    np.testing.assert_allclose(got, want, atol=1e-5 * scale)


def test_scan_layers_gives_the_same_loss_gradients_and_sampling():
  """model.scan_layers=True (the layers as one lax.scan) on the same parameters, dropout off: the
  loss, its terms, every gradient and a whole DDIM sampling as the unrolled model's."""
  config = _config()
  config.model.encoder.update(dropout=0.0, channel_dropout=0.0, temporal_dropout=0.0)
  config.model.decoder.dropout = 0.0
  tasks = {}
  for scan in (False, True):
    c = config.copy_and_resolve_references()
    c.model.scan_layers = scan
    tasks[scan] = diffact.Task(c, INFO, TRAIN_VIDEOS)
    assert tasks[scan].model.encoder.scan == tasks[scan].model.decoder.scan == scan
  params = tasks[False].init(jax.random.PRNGKey(0), tasks[False].example_batch())
  batch, rng = _batch(config), jax.random.PRNGKey(1)
  results = {
    scan: jax.value_and_grad(task.loss, has_aux=True)(params, batch, rng)
    for scan, task in tasks.items()
  }
  (total, terms), grads = results[True]
  (want_total, want_terms), want_grads = results[False]
  np.testing.assert_allclose(total, want_total, rtol=1e-5)
  for key in want_terms:
    np.testing.assert_allclose(terms[key], want_terms[key], rtol=1e-5, atol=1e-7)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  video = formats.Video('v', np.asarray(batch['features'][0]), LABELS[0])
  inputs, mask = tasks[True].view_inputs(video)
  np.testing.assert_allclose(
    tasks[True]._sample(params, inputs, mask, rng),
    tasks[False]._sample(params, inputs, mask, rng),
    atol=1e-5,
  )

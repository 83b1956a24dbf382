"""Polyphony stage 2: label parsing and sentences, MiniLM label vectors, the alignment loss by
hand, validation split, a tiny TCN that learns, early stopping, MAS features, end-to-end run and
resume."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import widest_fusion

from polyseg.data import formats
from polyseg.data import synthetic
from polyseg.engine import train as train_lib
from polyseg.methods.polyphony import stage2
from polyseg.nn import text

pytestmark = pytest.mark.usefixtures('fast_compile')

CLASSES = ['background', 'take cup', 'screw nut onto bolt', 'screw nut onto shaft']


@pytest.mark.parametrize(
  'name, parts',
  [
    ('screw nut onto bolt', ('screw', 'nut', 'bolt', 'none')),
    ('screw_nut_onto_bolt', ('screw', 'nut', 'bolt', 'none')),  # real label names use '_'
    ('screw nut onto bolt using wrench', ('screw', 'nut', 'bolt', 'wrench')),
    ('take cup', ('take', 'cup', 'none', 'none')),
    ('take', ('take', 'none', 'none', 'none')),  # no object
    ('background', ('background', 'none', 'none', 'none')),
    ('null', ('null', 'none', 'none', 'none')),
    ('tighten_screw_using_screwdriver', ('tighten', 'screw', 'none', 'screwdriver')),
    ('cut using knife', ('cut', 'none', 'none', 'knife')),  # 'using' right after the verb
    ('insert into box', ('insert', 'none', 'box', 'none')),  # no manipulated object
    ('put screw into hole onto board', ('put', 'screw', 'hole onto board', 'none')),  # first wins
    ('place lid onto box into bag', ('place', 'lid', 'box into bag', 'none')),
    ('pour water into cup using jug', ('pour', 'water', 'cup', 'jug')),
    ('pick up cup', ('pick', 'up cup', 'none', 'none')),  # verb = the first word only
    ('Place Lid Onto Box', ('Place', 'Lid', 'Box', 'none')),  # keywords in any case
    ('put bolt into', ('put', 'bolt', 'none', 'none')),  # keyword at the end: empty target
    ('insert  pin__intoslot', ('insert', 'pin intoslot', 'none', 'none')),  # whole words only
    ('screw_nut_onto_bolt_using_hex_key', ('screw', 'nut', 'bolt', 'hex key')),
  ],
)
def test_parse_label(name, parts):
  assert tuple(stage2.parse_label(name)) == parts


@pytest.mark.parametrize('name', ['', '   ', '__'])
def test_parse_label_rejects_empty_names(name):
  with pytest.raises(ValueError, match='no words'):
    stage2.parse_label(name)


def test_label_sentence():
  assert stage2.label_sentence('screw_nut_onto_bolt_using_wrench') == (
    'The action is to screw. The manipulated object is nut. The target object is bolt. '
    'The tool used is wrench.'
  )
  assert stage2.label_sentence('take') == (
    'The action is to take. The manipulated object is none. The target object is none. '
    'The tool used is none.'
  )


def test_label_vectors_are_minilm_means_of_the_sentences():
  vectors = stage2.label_vectors(CLASSES)
  assert vectors.shape == (4, 384) and vectors.dtype == np.float32
  encoder = text.load_sentence_encoder()
  sentences = [stage2.label_sentence(name) for name in CLASSES]
  np.testing.assert_allclose(vectors, encoder.mean_last_hidden(sentences, 64), atol=1e-6)
  unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
  cos = unit @ unit.T
  # The confusable pair (only the target differs) is the closest pair, yet distinct.
  assert 0.9 < cos[2, 3] < 0.999
  assert cos[2, 3] == cos[np.triu_indices(4, 1)].max()


# ---------------------------------------------------------------------------------------------
# Loss.


def _explicit_loss(pred, target, mask, alpha=0.7):
  """The alignment loss written out on pred and target [B, T, H, S] (the slow reference)."""
  norms = jnp.sqrt(jnp.maximum((pred**2).sum(-1) * (target**2).sum(-1), stage2.COS_EPS**2))
  cos = (pred * target).sum(-1) / norms
  mse = ((pred - target) ** 2).mean(-1)
  weight = jnp.broadcast_to(mask[..., None], cos.shape)
  cos, mse = ((v * weight).sum() / weight.sum() for v in (cos, mse))
  return alpha * (1 - cos) + (1 - alpha) * mse, {'cos': cos, 'mse': mse}


def _loss_of(pred, target, mask, alpha=0.7):
  """`stage2.alignment_loss` of a given pred and target [B, T, H, S]: hidden = pred with the hands
  side by side [B, T, H * S], a projector that picks each hand's block, no bias; every (frame, hand)
  its own label vector."""
  b, t, h, s = pred.shape
  kernel = jnp.eye(h * s).reshape(h * s, h, s)
  labels = jnp.arange(b * t * h).reshape(b, t, h)
  return stage2.alignment_loss(
    pred.reshape(b, t, h * s), kernel, jnp.zeros((h, s)), target.reshape(-1, s), labels, mask, alpha
  )


def test_alignment_loss_by_hand():
  # Frame 0: orthogonal, cos 0, MSE (1 + 1) / 2 = 1 -> 0.7 + 0.3 = 1.0 (both hands).
  # Frame 1: same direction, cos 1, MSE (1 + 0) / 2 = 0.5 -> 0.15 (both hands).
  # Frame 2: padding, huge values ignored.
  pred = jnp.array([[[[1.0, 0.0]] * 2, [[2.0, 0.0]] * 2, [[1e6, -1e6]] * 2]])
  target = jnp.array([[[[0.0, 1.0]] * 2, [[1.0, 0.0]] * 2, [[1.0, 1.0]] * 2]])
  mask = jnp.array([[1.0, 1.0, 0.0]])
  loss, terms = _loss_of(pred, target, mask)
  np.testing.assert_allclose(terms['cos'], 0.5, rtol=1e-6)
  np.testing.assert_allclose(terms['mse'], 0.75, rtol=1e-6)
  np.testing.assert_allclose(loss, (1.0 + 0.15) / 2, rtol=1e-6)
  # alpha = 1: cosine only; opposite vectors give 1 - (-1) = 2.
  loss, _ = _loss_of(-target[:, :1], target[:, :1], mask[:, :1], alpha=1.0)
  np.testing.assert_allclose(loss, 2.0, rtol=1e-6)


def test_alignment_loss_hands_and_frames_weigh_equally():
  pred = jnp.array([[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]]])  # [1, 2, 2, 2]
  target = jnp.array([[[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]]])
  _, terms = _loss_of(pred, target, jnp.ones((1, 2)))
  np.testing.assert_allclose(terms['cos'], 3 / 4, rtol=1e-6)  # one pair of four is orthogonal


def test_alignment_loss_has_finite_gradients_at_zero_predictions():
  target = jnp.ones((1, 3, 2, 4))
  mask = jnp.array([[1.0, 1.0, 0.0]])
  grad = jax.grad(lambda p: _loss_of(p, target, mask)[0])(jnp.zeros((1, 3, 2, 4)))
  assert np.isfinite(grad).all()
  assert not np.asarray(grad[0, 2]).any()  # padding gets no gradient


@pytest.mark.parametrize('zero_kernel', [False, True])
def test_alignment_loss_is_the_loss_of_the_projection(zero_kernel):
  """The loss from the projector's input (no [B, T, H, S] array) against the loss written out on the
  projection and the gathered label vectors: value, terms and every gradient, padded frames with
  other labels included; also at a zero projector kernel (the initialisation: every frame predicts
  the bias)."""
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(2, 7, 5)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(5, 2, 6)) * (0.0 if zero_kernel else 0.5), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(2, 6)), jnp.float32)
  vectors = jnp.asarray(rng.normal(size=(4, 6)) * 2.0, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, size=(2, 7, 2)), jnp.int32)
  mask = jnp.asarray([[1.0] * 7, [1.0] * 4 + [0.0] * 3])

  def explicit(hidden, kernel, bias):
    pred = jnp.einsum('btf,fhs->bths', hidden, kernel) + bias
    return _explicit_loss(pred, vectors[labels], mask, alpha=0.6)

  def projected(hidden, kernel, bias):
    return stage2.alignment_loss(hidden, kernel, bias, vectors, labels, mask, alpha=0.6)

  (want, want_terms), want_grads = jax.value_and_grad(explicit, (0, 1, 2), has_aux=True)(
    hidden, kernel, bias
  )
  (got, got_terms), got_grads = jax.value_and_grad(projected, (0, 1, 2), has_aux=True)(
    hidden, kernel, bias
  )
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for name in ('cos', 'mse'):
    np.testing.assert_allclose(got_terms[name], want_terms[name], rtol=1e-5)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
  assert not np.asarray(got_grads[0][1, 4:]).any()  # padded frames get no gradient


def test_objective_loss_is_the_alignment_loss_of_the_model_output():
  """`Alignment.loss` (the TCN's hidden state and projector parameters) against the loss written
  out on the whole TCN's output, with a trained-looking (non-zero) projector."""
  config = stage2.default_config()
  config.model.update(num_layers=3, channels=8)
  rng = np.random.default_rng(1)
  vectors = rng.normal(size=(5, 12)).astype(np.float32)
  model = stage2.make_model(config, 12)
  objective = stage2.Alignment(model, vectors, 4, config.loss_alpha)
  batch = {
    'features': rng.normal(size=(2, 16, 4)).astype(np.float32),
    'labels': rng.integers(0, 5, size=(2, 16, 2)).astype(np.int32),
    'mask': np.ones((2, 16), np.float32),
  }
  batch['mask'][1, 10:] = 0.0  # padding
  params = objective.init(jax.random.key(0), batch)
  params['projector']['kernel'] = jnp.asarray(rng.normal(size=(8, 2, 12)), jnp.float32)
  pred = model.apply({'params': params}, batch['features'], batch['mask'])
  want, _ = _explicit_loss(pred, vectors[batch['labels']], batch['mask'], config.loss_alpha)
  got, _ = objective.loss(params, batch)
  np.testing.assert_allclose(got, want, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Tiny datasets.


def _video(rng, name, length, prototypes, swap=False):
  """Shared features from both hands' labels (+ noise); logits = noisy one-hot; labels [T, 2]."""
  num_classes, dim = prototypes.shape
  labels = np.repeat(rng.integers(0, num_classes, size=(4, 2)), -(-length // 4), axis=0)[:length]
  shared = prototypes[labels[:, 0]] + 0.5 * prototypes[labels[:, 1]]
  shared = (shared + 0.3 * rng.normal(size=(length, dim))).astype(np.float32)
  logits = {
    hand: (2.0 * np.eye(num_classes)[labels[:, h]] + rng.normal(size=(length, num_classes)))
    for h, hand in enumerate(formats.HANDS)
  }
  if swap:  # labels 0 and 1 exchanged: what the training videos teach is wrong here
    labels = np.choose(labels, [1, 0, *range(2, num_classes)])
  features = {'shared': shared, **{k: v.astype(np.float32) for k, v in logits.items()}}
  return formats.MultiStreamVideo(name, features, labels.astype(np.int32))


def _videos(seed, count, prefix, swap=False, num_classes=4, dim=6):
  rng = np.random.default_rng(seed)
  prototypes = np.random.default_rng(123).normal(size=(num_classes, dim))
  return [
    _video(rng, f'{prefix}{i}', int(rng.integers(20, 40)), prototypes, swap) for i in range(count)
  ]


def _write_root(path, splits, seed=0):
  names = [name for subset in splits.values() for name in subset]
  videos = [
    formats.MultiStreamVideo(name, v.features, v.labels)
    for name, v in zip(names, _videos(seed, len(names), 'v'), strict=True)
  ]
  return formats.write_two_hands(path, CLASSES, splits, videos)


def _tiny_config(**train):
  config = stage2.default_config()
  config.model.update(num_layers=2, channels=16, dropout=0.0)
  config.optim.learning_rate = 1e-2
  config.train.update(batch_size=2, log_every=2, **train)
  return config


def _val_log(stage_dir):
  rows = [json.loads(line) for line in (stage_dir / 'metrics.jsonl').read_text().splitlines()]
  return [(r['step'], r['val/loss'], r['val/cos']) for r in rows if 'val/loss' in r]


def _steps_trained(stage_dir):
  rows = [json.loads(line) for line in (stage_dir / 'metrics.jsonl').read_text().splitlines()]
  return max(r['step'] for r in rows if 'train/loss' in r)


# ---------------------------------------------------------------------------------------------
# Validation split.


def test_training_data_uses_the_val_bundle_else_part_of_train_never_test(tmp_path):
  splits = {'train': ['a', 'b', 'c', 'd'], 'val': ['e'], 'test': ['f', 'g']}
  root = _write_root(tmp_path / 'with_val', splits)
  train, val = stage2.training_data(root, 1, 0.5, seed=0)
  assert [v.name for v in train.videos] == splits['train'] and [v.name for v in val] == ['e']
  assert train.classes == CLASSES and set(val[0].features) == {'shared', 'lh', 'rh'}
  del splits['val']
  root = _write_root(tmp_path / 'without_val', splits)
  train, val = stage2.training_data(root, 1, 0.5, seed=0)
  held = formats.hold_out(splits['train'], 0.5, seed=0)
  assert [v.name for v in val] == held
  assert sorted(v.name for v in train.videos + val) == splits['train']
  root = _write_root(tmp_path / 'one_train', {'train': ['a'], 'test': ['b']})
  with pytest.raises(formats.DataError, match=r'train\.split1\.bundle: no .*val\.split1\.bundle'):
    stage2.training_data(root, 1, 0.1, seed=0)


# ---------------------------------------------------------------------------------------------
# Training.


def test_train_step_does_not_recompute_earlier_layers():
  """Without `layers.fusion_fence` at each TCN layer's output, XLA:CPU fused the residual-gradient
  sums of all the layers above into each layer's backward fusion (from 4 to 8 layers the widest
  activation-sized fusion of the train step read 12 -> 19 operands; stage 2's step at 4 x 768
  frames took 0.14 s instead of 0.115 s). The widest fusion must not grow with depth."""
  widths = []
  for num_layers in (4, 8):
    config = stage2.default_config()
    config.model.update(num_layers=num_layers, channels=16)
    vectors = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    objective = stage2.Alignment(stage2.make_model(config, 8), vectors, 4, config.loss_alpha)
    tx = train_lib.make_optimizer(config)
    state = train_lib.init_state(objective, tx, jax.random.key(0))
    step = train_lib.make_train_step(objective, tx, jax.random.key(1))
    batch = {
      'features': np.ones((2, 64, 4), np.float32),
      'labels': np.zeros((2, 64, 2), np.int32),
      'mask': np.ones((2, 64), np.float32),
    }
    widths.append(widest_fusion(step.lower(state, batch).compile().as_text(), 2 * 64 * 16))
  assert widths[1] == widths[0], widths


def test_tiny_tcn_learns_and_resume_continues_the_run(tmp_path):
  train, val = _videos(0, 6, 't'), _videos(1, 2, 'v')
  vectors = 2.0 * np.eye(4, 8, dtype=np.float32)
  config = _tiny_config(num_epochs=16, patience=100)
  _, best_step = stage2.fit(config, tmp_path, train, val, vectors)
  log = _val_log(tmp_path)
  assert [step for step, _, _ in log] == list(range(3, 49, 3))  # 3 steps per epoch
  # It starts at the mean label vector (cos 0.5 with each of these vectors) and learns the rest.
  assert log[0][2] < 0.65 and log[-1][2] > log[0][2] + 0.1 and log[-1][1] < 0.7 * log[0][1], log
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  train_cos = [row['train/cos'] for row in rows if 'train/cos' in row]
  assert train_cos[0] < 0.55 and train_cos[-1] > 0.9, train_cos
  assert best_step == min(log, key=lambda row: row[1])[0]
  # More epochs in the same workdir: training resumes at step 48 and goes on to 60.
  config.train.num_epochs = 20
  stage2.fit(config, tmp_path, train, val, vectors)
  assert [step for step, _, _ in _val_log(tmp_path)] == list(range(3, 61, 3))


def test_early_stopping_keeps_the_best_validation_step(tmp_path):
  # One validation video agrees with the training videos, the other has labels 0 and 1 exchanged:
  # fitting the training videos first helps, then hurts.
  train = _videos(0, 4, 't')
  val = _videos(1, 1, 'v') + _videos(2, 1, 'w', swap=True)
  vectors = 2.0 * np.eye(4, 8, dtype=np.float32)
  config = _tiny_config(num_epochs=40, patience=4)
  params, best_step = stage2.fit(config, tmp_path, train, val, vectors)
  log = _val_log(tmp_path)
  best = min(log, key=lambda row: row[1])
  assert best_step == best[0] and log[0][0] < best_step < log[-1][0]
  assert log[-1][0] == best_step + 4 * 2 < 40 * 2  # stopped 4 validations after the best
  assert _steps_trained(tmp_path) == log[-1][0]
  objective = stage2.Alignment(
    stage2.make_model(config, vectors.shape[1]), vectors, 6, config.loss_alpha
  )
  np.testing.assert_allclose(stage2.validate(objective, params, val)['loss'], best[1], rtol=1e-5)
  # Resuming a stopped run trains no further and returns the same best params.
  again, again_step = stage2.fit(config, tmp_path, train, val, vectors)
  assert again_step == best_step and _steps_trained(tmp_path) == log[-1][0]
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_fit_needs_validation_videos(tmp_path):
  with pytest.raises(formats.DataError, match='validation videos'):
    stage2.fit(_tiny_config(), tmp_path, _videos(0, 2, 't'), [], np.eye(4, 8, dtype=np.float32))


# ---------------------------------------------------------------------------------------------
# End to end.


def test_run_writes_mas_features_and_resumes(tmp_path, monkeypatch):
  splits = {'train': ['a', 'b', 'c', 'd', 'e'], 'test': ['f', 'g']}
  root = _write_root(tmp_path / 'stage1', splits)
  config = _tiny_config(num_epochs=3)
  out = stage2.run(config, tmp_path / 'work', root)
  stage_dir = tmp_path / 'work' / 'stage2'
  assert out == stage_dir / 'dataset'
  assert json.loads((out / 'mas.json').read_text()) == {'shared': 6, 'logits': 4, 'semantic': 384}
  # The videos stage 2 held out for validation are the output's val bundle, so stage 3 validates
  # on them too and never on what stage 2 trained on.
  held = formats.hold_out(splits['train'], config.val_fraction, config.seed)
  expected = {
    'train': [n for n in splits['train'] if n not in held],
    'val': held,
    'test': splits['test'],
  }
  assert held and all(formats.read_split(out, k, 1) == v for k, v in expected.items())
  cached = np.load(stage_dir / 'label_vectors.npy')
  np.testing.assert_array_equal(cached, stage2.label_vectors(CLASSES))

  # Resuming the finished run restores the best params without training or encoding again.
  monkeypatch.setattr(stage2, 'label_vectors', lambda *a, **k: pytest.fail('recomputed'))
  train_set, val = stage2.training_data(root, 1, config.val_fraction, config.seed)
  params, _ = stage2.fit(config, stage_dir, train_set.videos, val, cached)
  source = {
    v.name: v for subset in splits for v in formats.read_hand_streams(root, subset, 1).videos
  }
  for subset, names in expected.items():
    mas = formats.read_two_hands(out, subset, 1, classes=CLASSES, input_dim=6 + 4 + 384)
    assert [v.name for v in mas.videos] == names
    for video, mas_video in zip([source[n] for n in names], mas.videos, strict=True):
      np.testing.assert_array_equal(mas_video.labels, video.labels)
      semantic_vectors = stage2.semantic_features(params, video.features['shared'])
      for h, hand in enumerate(formats.HANDS):
        features = mas_video.features[hand]
        np.testing.assert_array_equal(features[:, :6], video.features['shared'])
        np.testing.assert_array_equal(features[:, 6:10], video.features[hand])
        np.testing.assert_allclose(features[:, 10:], semantic_vectors[:, h], rtol=1e-5, atol=1e-6)

  # A complete output is returned as is; a lost output is rewritten from the checkpoints, equal.
  monkeypatch.setattr(stage2, 'fit', lambda *a, **k: pytest.fail('trained again'))
  assert stage2.run(config, tmp_path / 'work', root) == out
  first = np.load(out / 'features' / 'rh' / 'g.npy')
  (out.parent / 'old').mkdir()
  out.rename(out.parent / 'old' / 'dataset')
  monkeypatch.undo()
  monkeypatch.setattr(stage2, 'label_vectors', lambda *a, **k: pytest.fail('recomputed'))
  assert stage2.run(config, tmp_path / 'work', root) == out
  np.testing.assert_array_equal(np.load(out / 'features' / 'rh' / 'g.npy'), first)


def test_run_on_synthetic_two_hands_uses_and_copies_the_val_bundle(tmp_path):
  root = synthetic.make_two_hands(
    tmp_path / 'stage1', num_videos=6, min_len=40, max_len=60, shared_dim=8, rank=4
  )
  out = stage2.run(_tiny_config(num_epochs=2), tmp_path / 'work', root)
  assert json.loads((out / 'mas.json').read_text()) == {'shared': 8, 'logits': 24, 'semantic': 384}
  rows = (tmp_path / 'work' / 'stage2' / 'metrics.jsonl').read_text().splitlines()
  assert sum('val/loss' in row for row in rows) == 2  # one validation per epoch, on the val bundle
  for subset in ('train', 'val', 'test'):
    names = formats.read_split(root, subset, 1)
    assert formats.read_split(out, subset, 1) == names
    mas = formats.read_two_hands(out, subset, 1, input_dim=8 + 24 + 384)
    assert [video.name for video in mas.videos] == names


def test_semantic_features_are_causal_and_independent_of_padding(tmp_path):
  train, val = _videos(0, 2, 't'), _videos(1, 1, 'v')
  params, _ = stage2.fit(
    _tiny_config(num_epochs=1), tmp_path, train, val, np.eye(4, 8, dtype=np.float32)
  )
  shared = train[0].features['shared']
  full = stage2.semantic_features(params, shared)
  assert full.shape == (len(shared), 2, 8) and full.dtype == np.float32
  for length in (1, 7, 20):  # other bucket lengths and padding amounts
    np.testing.assert_allclose(
      stage2.semantic_features(params, shared[:length]), full[:length], rtol=1e-5, atol=1e-6
    )


def test_workdir_of_other_classes_is_an_error(tmp_path):
  stage2.cached_label_vectors(tmp_path, CLASSES[:2], 64, None)
  assert np.load(tmp_path / 'label_vectors.npy').shape == (2, 384)
  with pytest.raises(formats.DataError, match='other classes'):
    stage2.cached_label_vectors(tmp_path, CLASSES, 64, None)
  with pytest.raises(formats.DataError, match='other classes'):
    stage2.cached_label_vectors(tmp_path, CLASSES[:2], 32, None)
  with pytest.raises(formats.DataError, match='other classes'):
    stage2.cached_label_vectors(tmp_path, CLASSES[:2], 64, str(text.find_model_dir()))

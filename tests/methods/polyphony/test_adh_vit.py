"""Stage 1 (ADH-ViT): alternating schedule and frozen heads, the clip loss, per-frame feature
extraction, and tiny end-to-end runs (layout, resume, a video file, learning)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyseg.data import formats
from polyseg.data import synthetic
from polyseg.data import video
from polyseg.engine import train as train_lib
from polyseg.methods.polyphony import stage1
from polyseg.methods.polyphony import vit

pytestmark = pytest.mark.usefixtures('fast_compile')

MODEL = {
  'width': 16,
  'depth': 1,
  'num_heads': 2,
  'mlp_dim': 32,
  'patch_size': 8,
  'tubelet_size': 2,
  'num_frames': 4,
  'image_size': 16,
}


def tiny_config(**overrides):
  c = stage1.default_config('tiny')
  c.model.update(MODEL)
  c.update(
    num_steps=12,
    batch_size=8,
    alternate_every=5,
    log_every=3,
    eval_every=6,
    checkpoint_every=6,
    extract_batch=32,
    eval_stride=2,
  )
  c.update(overrides)
  return c


def test_default_config():
  tiny, big = stage1.default_config('tiny'), stage1.default_config('vit_b')
  assert big.model.width == 768 and big.model.image_size == 224 and big.model.num_frames == 16
  assert tiny.model.image_size == 32 and tiny.model.width == 64
  assert big.alternate_every == tiny.alternate_every == 50
  assert big.optim.learning_rate == 1e-3
  model = vit.build(big.model, 10)
  assert model.num_tokens == 1568 and model.drop_path == 0.1
  with pytest.raises(ValueError, match="ViT size 'huge'"):
    stage1.default_config('huge')


def test_alternating_schedule():
  hands = [int(stage1.active_hand(step, 50)) for step in (0, 49, 50, 99, 100, 149, 150)]
  assert hands == [0, 0, 1, 1, 0, 0, 1]
  np.testing.assert_array_equal(stage1.active_hand(jnp.arange(6), 2), [0, 0, 1, 1, 0, 0])
  np.testing.assert_array_equal(stage1.batch_hands(51, 4, 50), [1, 1, 1, 1])
  np.testing.assert_array_equal(stage1.batch_hands(7, 5, 0), [0, 1, 0, 1, 0])  # joint


# ---------------------------------------------------------------------------------------------
# The objective and the frozen head.


def _small_task(num_classes=3):
  return stage1.ClipClassification(vit.VideoViT(num_classes, **MODEL))


def _batch(rng, task, hands):
  size = len(hands)
  return {
    'frames': rng.integers(0, 256, (size, *task.model.clip_shape), dtype=np.uint8),
    'labels': rng.integers(0, task.model.num_classes, size).astype(np.int32),
    'hands': np.asarray(hands, np.int32),
  }


def test_clip_loss_uses_each_clips_hand_head():
  task = _small_task()
  params = jax.jit(task.init)(jax.random.PRNGKey(0), task.example_batch())
  batch = _batch(np.random.default_rng(0), task, [0, 1, 1])
  loss_and_grads = jax.jit(jax.value_and_grad(task.loss, has_aux=True))
  (loss, terms), grads = loss_and_grads(params, batch, jax.random.PRNGKey(1))
  out = stage1.make_apply(task.model)(params, batch['frames'])
  logits = np.stack([out['lh'][0], out['rh'][1], out['rh'][2]])
  log_probs = jax.nn.log_softmax(logits)
  np.testing.assert_allclose(loss, -np.mean(log_probs[np.arange(3), batch['labels']]), rtol=1e-5)
  assert terms['acc'] == np.mean(logits.argmax(-1) == batch['labels'])
  assert (
    np.abs(grads['head_lh']['kernel']).sum() > 0 and np.abs(grads['head_rh']['kernel']).sum() > 0
  )
  _, grads = loss_and_grads(params, {**batch, 'hands': np.ones(3, np.int32)}, jax.random.PRNGKey(1))
  assert not np.any(grads['head_lh']['kernel']) and not np.any(grads['head_lh']['bias'])


def _head_leaves(tree, head):
  """The leaves under `head` (params or optimizer moments), as numpy arrays."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return [np.asarray(x) for path, x in leaves if head in [getattr(k, 'key', None) for k in path]]


def _changed(before, after, head) -> bool:
  pairs = zip(_head_leaves(before, head), _head_leaves(after, head), strict=True)
  return any(not np.array_equal(a, b) for a, b in pairs)


def test_alternate_heads_updates_only_the_active_head():
  """Delta = 2: steps 0, 1 train LH (the RH head and its Adam moments stay untouched), steps 2, 3
  train RH (the LH head stays, although its Adam momentum from steps 0, 1 would move it)."""
  task = _small_task()
  config = tiny_config(alternate_every=2, num_steps=20)
  config.optim.warmup_fraction = 0.0
  tx = stage1.make_optimizer(config)
  state = train_lib.init_state(task, tx, jax.random.PRNGKey(0))
  step_fn = train_lib.make_train_step(task, tx, jax.random.PRNGKey(1))
  rng = np.random.default_rng(0)
  history = [jax.device_get(state)]
  for step in range(4):
    batch = _batch(rng, task, stage1.batch_hands(step, 4, config.alternate_every))
    state, metrics = step_fn(state, batch)
    assert metrics['finite']
    history.append(jax.device_get(state))
  for step in range(4):
    before, after = history[step], history[step + 1]
    active, inactive = ('head_lh', 'head_rh') if step < 2 else ('head_rh', 'head_lh')
    assert _changed(before['params'], after['params'], active), step
    assert not _changed(before['params'], after['params'], inactive), step
    assert not _changed(before['opt_state'], after['opt_state'], inactive), step
    assert _changed(before['params'], after['params'], 'blocks_0'), step
  assert not any(np.any(x) for x in _head_leaves(history[2]['opt_state'], 'head_rh'))
  # Without the wrapper, AdamW's momentum from steps 0, 1 would move the LH head at step 2 even
  # with a zero gradient.
  config.alternate_every = 0
  plain = stage1.make_optimizer(config)
  params = history[2]['params']
  zero = jax.tree.map(np.zeros_like, params)
  updates, _ = plain.update(zero, history[2]['opt_state'].inner, params)
  assert np.abs(updates['head_lh']['bias']).min() > 0


def test_make_optimizer_warmup_cosine_and_decay_mask():
  config = tiny_config(num_steps=10, alternate_every=0)
  config.optim.update(learning_rate=0.1, weight_decay=0.5, warmup_fraction=0.2)
  tx = stage1.make_optimizer(config)
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  steps = []
  for _ in range(10):
    updates, state = tx.update(zero, state, params)
    steps.append(float(-updates['kernel'][0, 0]))
    assert not np.any(updates['bias'])  # no decay on vectors
  # lr(k) = 0.1 k / 2 for k < 2, then 0.1 (1 + cos(pi (k - 2) / 8)) / 2; update = lr * 0.5 * 1.
  expected = [0.0, 0.025] + [0.025 * (1 + np.cos(np.pi * (k - 2) / 8)) for k in range(2, 10)]
  np.testing.assert_allclose(steps, expected, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Feature extraction.


def test_extract_equals_the_model_on_each_frames_window():
  task = _small_task(num_classes=4)
  params = jax.jit(task.init)(jax.random.PRNGKey(2), task.example_batch())
  frames = np.random.default_rng(3).integers(0, 256, (11, 16, 16, 3), dtype=np.uint8)
  apply = stage1.make_apply(task.model)
  out = stage1.extract(apply, params, frames, num_frames=4, batch=4)  # 11 = 4 + 4 + 3 (+1 pad)
  assert {k: v.shape for k, v in out.items()} == {'shared': (11, 16), 'lh': (11, 4), 'rh': (11, 4)}
  single = jax.jit(lambda p, clip: task.model.apply({'params': p}, vit.normalize(clip[None])))
  for t in range(11):  # the slow reference: one frame at a time
    window = np.clip(np.arange(t - 2, t + 2), 0, 10)
    expected = single(params, frames[window])
    for name in out:
      np.testing.assert_allclose(out[name][t], expected[name][0], rtol=1e-4, atol=1e-5)
  strided = stage1.extract(apply, params, frames, num_frames=4, batch=4, stride=3)
  for name in out:
    np.testing.assert_allclose(strided[name], out[name][::3], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# End to end.


def _encode_mkv(path, frames):
  import av

  with av.open(str(path), 'w') as container:
    stream = container.add_stream('ffv1', rate=25)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], 'bgr0'
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    container.mux(stream.encode())


def _metric_steps(workdir, name):
  with open(os.path.join(workdir, 'stage1', 'metrics.jsonl')) as f:
    return [row['step'] for row in map(json.loads, f) if name in row]


def test_run_end_to_end_resume_and_video_file(tmp_path, capsys):
  raw = synthetic.make_two_hands(
    tmp_path / 'raw', num_videos=6, num_parts=1, min_len=30, max_len=40, frames=True, frame_size=16
  )
  # One video as a (lossless) video file at another size: decoded, resized and cached.
  big = video.resize_frames(np.load(raw / 'videos' / 'video001.npy'), 24)
  (raw / 'videos' / 'video001.npy').unlink()
  _encode_mkv(raw / 'videos' / 'video001.mkv', big)
  workdir = tmp_path / 'work'
  config = tiny_config()
  out = stage1.run(config, str(workdir), str(raw))
  assert out == workdir / 'stage1' / 'dataset'
  classes = formats.read_mapping(raw / 'mapping.txt')
  for subset in ('train', 'val', 'test'):
    assert formats.read_split(out, subset, 1) == formats.read_split(raw, subset, 1)
    data = formats.read_hand_streams(out, subset, 1, classes, {'shared': 16})
    assert data.input_dims == {'shared': 16, 'lh': len(classes), 'rh': len(classes)}
    _, raw_videos = video.read_raw_videos(raw, subset, 1)
    assert [v.name for v in data.videos] == [v.name for v in raw_videos]
    for item, source in zip(data.videos, raw_videos, strict=True):
      np.testing.assert_array_equal(item.labels, source.labels)
  cached = np.load(workdir / 'stage1' / 'frames_16' / 'video001.npy')
  assert cached.shape == (len(big), 16, 16, 3) and cached.dtype == np.uint8
  assert not (workdir / 'stage1' / 'frames_16' / 'video000.npy').exists()  # used in place

  # The written features are the saved weights' outputs on each frame's window.
  model = vit.build(config.model, len(classes))
  fresh = jax.jit(model.init)(jax.random.PRNGKey(5), jnp.zeros((1, *model.clip_shape)))['params']
  params = vit.load_pretrained(fresh, workdir / 'stage1' / 'adh_vit.npz')
  frames = np.load(raw / 'videos' / 'video000.npy')
  expected = stage1.extract(stage1.make_apply(model), params, frames, 4, 32)
  split_of = {n: s for s in ('train', 'val', 'test') for n in formats.read_split(raw, s, 1)}
  got = formats.read_hand_streams(out, split_of['video000'], 1).videos
  got = next(v for v in got if v.name == 'video000')
  for name in ('shared', 'lh', 'rh'):
    np.testing.assert_allclose(got.features[name], expected[name], rtol=1e-4, atol=1e-5)
  assert _metric_steps(workdir, 'val/acc') == [6, 12]

  # Complete: returned as is.
  stamp = os.stat(out / 'mapping.txt').st_mtime_ns
  assert stage1.run(config, str(workdir), str(raw)) == out
  assert os.stat(out / 'mapping.txt').st_mtime_ns == stamp

  # Resume: a longer run continues from the checkpoint of step 12.
  capsys.readouterr()
  os.rename(out, tmp_path / 'old_dataset')
  stage1.run(tiny_config(num_steps=18), str(workdir), str(raw))
  assert 'resumed from' in capsys.readouterr().out
  assert _metric_steps(workdir, 'train/loss') == [3, 6, 9, 12, 15, 18]
  assert _metric_steps(workdir, 'val/acc') == [6, 12, 18]


def test_run_errors(tmp_path):
  raw = synthetic.make_two_hands(
    tmp_path / 'raw', num_videos=3, num_parts=1, min_len=30, max_len=30, frames=True, frame_size=16
  )
  frames = np.load(raw / 'videos' / 'video002.npy')
  np.save(raw / 'videos' / 'video002.npy', frames[:-2])
  with pytest.raises(formats.DataError, match=r'video002\.npy: 28 frames but .*has 30 labels'):
    stage1.run(tiny_config(), str(tmp_path / 'work'), str(raw))
  (raw / 'videos' / 'video002.npy').unlink()
  with pytest.raises(formats.DataError, match="no video file for video 'video002'"):
    stage1.run(tiny_config(), str(tmp_path / 'work'), str(raw))


# ---------------------------------------------------------------------------------------------
# Learning.

CLASSES = ['background', 'take cup', 'pour water']
COLOURS = np.array(  # hand-specific appearance [hand, class, RGB]
  [[[90, 90, 90], [200, 40, 40], [40, 40, 200]], [[90, 90, 90], [40, 200, 40], [200, 200, 40]]]
)


def _colour_root(root, seed=0):
  """Videos whose left / right half shows the LH / RH class colour (plus noise)."""
  rng = np.random.default_rng(seed)
  names = [f'v{i}' for i in range(8)]
  splits = {'train': names[:5], 'val': names[5:6], 'test': names[6:]}
  (root / 'splits').mkdir(parents=True)
  (root / 'mapping.txt').write_text(''.join(f'{i} {c}\n' for i, c in enumerate(CLASSES)))
  for subset, members in splits.items():
    formats.split_path(root, subset, 1).write_text(''.join(f'{n}.txt\n' for n in members))
  for folder in ('groundTruth/lh', 'groundTruth/rh', 'videos'):
    (root / folder).mkdir(parents=True)
  for name in names:
    labels = np.stack(
      [np.repeat(rng.integers(0, 3, 5), rng.integers(8, 15, 5))[:40] for _ in range(2)], axis=1
    )  # 5 segments of 8-14 frames: at least 40 frames
    frames = np.concatenate(
      [np.broadcast_to(COLOURS[h, labels[:, h]][:, None, None], (40, 16, 8, 3)) for h in (0, 1)],
      axis=2,
    )
    frames = np.clip(frames + rng.normal(0, 25, frames.shape), 0, 255).astype(np.uint8)
    np.save(root / 'videos' / f'{name}.npy', frames)
    for h, hand in enumerate(formats.HANDS):
      formats.write_labels(
        root / 'groundTruth' / hand / f'{name}.txt', [CLASSES[c] for c in labels[:, h]]
      )
  return root


def test_tiny_vit_learns_both_hands(tmp_path):
  root = _colour_root(tmp_path / 'raw')
  config = tiny_config(
    num_steps=120, batch_size=16, alternate_every=10, eval_every=60, eval_stride=1
  )
  config.optim.learning_rate = 3e-3
  out = stage1.run(config, str(tmp_path / 'work'), str(root))
  test = formats.read_hand_streams(out, 'test', 1)
  for h, hand in enumerate(formats.HANDS):
    labels = np.concatenate([v.labels[:, h] for v in test.videos])
    predicted = np.concatenate([v.features[hand].argmax(-1) for v in test.videos])
    majority = np.bincount(labels).max() / len(labels)
    accuracy = np.mean(predicted == labels)
    assert accuracy > 0.85 and accuracy > majority + 0.3, (hand, accuracy, majority)


def test_held_out_validation_videos_become_the_outputs_val_bundle(tmp_path, monkeypatch):
  """Without a val bundle, stage 1 validates on a seeded part of train; its output dataset lists
  exactly those videos as val, so later stages validate on them too and never train on them."""
  raw = synthetic.make_two_hands(
    tmp_path / 'raw', num_videos=8, num_parts=1, min_len=30, max_len=40, frames=True, frame_size=16
  )
  names = formats.read_split(raw, 'train', 1) + formats.read_split(raw, 'val', 1)
  formats.split_path(raw, 'val', 1).unlink()
  formats.split_path(raw, 'train', 1).write_text(''.join(f'{n}\n' for n in names))
  seen = {}

  def fit(config, stage_dir, model, train_videos, val_videos, frames):
    seen.update(train=[v.name for v in train_videos], val=[v.name for v in val_videos])
    return {}

  def write_features(out, classes, subsets, *args):
    seen['written'] = {k: [v.name for v in videos] for k, videos in subsets.items()}
    return out

  monkeypatch.setattr(stage1, 'fit', fit)
  monkeypatch.setattr(stage1, 'write_features', write_features)
  monkeypatch.setattr(stage1.vit, 'to_state_dict', lambda params: {})
  config = tiny_config()
  stage1.run(config, str(tmp_path / 'work'), str(raw))
  held = formats.hold_out(names, config.val_fraction, config.seed)
  assert seen['val'] == seen['written']['val'] == held
  assert seen['train'] == seen['written']['train'] == [n for n in names if n not in held]
  assert seen['written']['test'] == formats.read_split(raw, 'test', 1)

"""HAL end to end on tiny data: transcripts only reach the loss (shuffled frame labels change
nothing), the pyramid model, the losses it adds, the alignment metrics, transcript handling and
errors, grammar decoding, the config switches."""

import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import polyseg
from polyseg import methods
from polyseg.configlib import load_config
from polyseg.core import losses
from polyseg.core import metrics
from polyseg.data import formats
from polyseg.data import pipeline
from polyseg.engine import parallel
from polyseg.engine import train
from polyseg.methods.hal import align
from polyseg.methods.hal import pyramid
from polyseg.methods.hal import task as hal
from polyseg.report import tables

LEARN_STEPS = 60
LEARN_MARGIN = 20.0  # points of MoF (measured: 79.7 against 39.0)


@pytest.fixture
def tiny(tmp_path):
  config = load_config('hal', 'runlocal=True')
  config.data.cache_dir = str(tmp_path / 'cache')
  return config


@pytest.fixture
def built(tiny):
  data = hal.load_data(tiny)
  return data, hal.Task(tiny, data.info, train_videos=data.train)


def copy_dataset(config, to: pathlib.Path) -> pathlib.Path:
  shutil.copytree(hal.dataset_root(config), to)
  return to


# ------------------------------------------------------------------------------------- data --


def test_training_videos_carry_transcripts_only(built, tiny):
  data, _ = built
  assert data.train and all(v.labels is None for v in data.train)
  assert all(v.labels is not None for v in data.read_test())
  root = hal.dataset_root(tiny)
  for video in data.read_test():  # transcripts/ of the synthetic data are the label segments
    assert list(formats.segment_classes(video.labels)) == list(video.transcript)
  grammar = data.info.task_info['grammar']
  assert len(grammar) == len({tuple(v.transcript) for v in data.train})
  assert grammar[0] == list(data.train[0].transcript)
  means = np.asarray(data.info.task_info['mean_lengths'])
  assert means.shape == (len(data.info.classes),) and (means >= 1).all()
  assert (root / 'transcripts').is_dir()


def test_shuffled_training_labels_change_nothing(tiny, tmp_path):
  """The frame labels of training videos never reach the loss: permuting every training
  groundTruth file (or deleting them) gives bitwise the same trained parameters (3 steps of the
  engine's loader, train step and seeds, as `train_and_evaluate` runs them)."""
  original = copy_dataset(tiny, tmp_path / 'original')
  shuffled = copy_dataset(tiny, tmp_path / 'shuffled')
  rng = np.random.default_rng(0)
  for name in formats.read_split(shuffled, 'train', 1):
    path = shuffled / 'groundTruth' / f'{name}.txt'
    lines = path.read_text().splitlines()
    path.write_text(''.join(f'{line}\n' for line in rng.permutation(lines)))
  params = {}
  for run, root in (('original', original), ('shuffled', shuffled)):
    tiny.data.root = str(root)
    _, data, task = train.setup(methods.get(tiny.task), tiny, str(tmp_path / run))
    loader = train.make_train_loader(task, data.train, tiny, parallel.make_mesh(tiny))
    init_rng, step_rng = jax.random.split(jax.random.PRNGKey(tiny.seed))
    tx = train.make_optimizer(tiny)
    state = train.init_state(task, tx, init_rng)
    step = train.make_train_step(task, tx, step_rng)
    for i in range(3):
      state, _ = step(state, loader.batch(i))
    params[run] = state['params']
  leaves = jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b), *params.values()))
  assert leaves and all(leaves)
  for name in formats.read_split(shuffled, 'train', 1):
    (shuffled / 'groundTruth' / f'{name}.txt').unlink()
  tiny.data.root = str(shuffled)
  assert all(v.labels is None for v in hal.load_data(tiny).train)


def test_transcripts_can_be_derived_from_the_labels(tiny, tmp_path):
  from_files = hal.load_data(tiny)
  root = copy_dataset(tiny, tmp_path / 'data')
  shutil.rmtree(root / 'transcripts')
  tiny.data.update(root=str(root), transcripts='labels')
  derived = hal.load_data(tiny)
  assert derived.info == from_files.info
  for a, b in zip(
    derived.train + derived.read_test(), from_files.train + from_files.read_test(), strict=True
  ):
    assert a.name == b.name and np.array_equal(a.transcript, b.transcript)
  assert all(v.labels is None for v in derived.train)
  tiny.data.transcripts = 'file'
  with pytest.raises(formats.DataError, match=r'transcripts/train000\.txt: .*not found'):
    hal.load_data(tiny)


def test_a_transcript_longer_than_the_video_bins_is_refused(tiny, tmp_path):
  root = copy_dataset(tiny, tmp_path / 'data')
  name = formats.read_split(root, 'train', 1)[0]
  frames = len(
    formats.read_labels(
      root / 'groundTruth' / f'{name}.txt', formats.read_mapping(root / 'mapping.txt')
    )
  )
  bins = -(-frames // hal.window(tiny))
  (root / 'transcripts' / f'{name}.txt').write_text('background\n' * (bins + 1))
  tiny.data.update(root=str(root), transcripts='file')
  with pytest.raises(formats.DataError, match=rf'transcripts/{name}\.txt: {bins + 1} actions'):
    hal.load_data(tiny)


def test_crops_and_subsampling_are_refused(tiny):
  tiny.data.max_train_len = 100
  with pytest.raises(ValueError, match='max_train_len'):
    hal.load_data(tiny)


# ------------------------------------------------------------------------------------ model --


def test_pool_pairs_is_a_masked_mean():
  x = jnp.asarray([[[1.0], [3.0], [5.0], [100.0]]])
  mask = jnp.asarray([[1.0, 1.0, 1.0, 0.0]])
  pooled, pooled_mask = pyramid.pool_pairs(x, mask)
  np.testing.assert_allclose(pooled[0, :, 0], [2.0, 5.0])
  np.testing.assert_array_equal(pooled_mask, [[1.0, 1.0]])
  np.testing.assert_array_equal(pyramid.to_frames(jnp.asarray([[1, 2]]), 2), [[1, 1, 2, 2]])
  np.testing.assert_array_equal(pyramid.pool_mask(mask, 2), [[1.0, 1.0]])


def test_pyramid_outputs_and_padding_invariance():
  model = pyramid.PyramidTransformer(
    num_classes=5,
    num_f_maps=8,
    num_levels=3,
    layers_per_level=1,
    kernel_size=3,
    action_level=1,
    dropout=0.0,
    channel_dropout=0.0,
  )
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 16, 6))
  mask = jnp.ones((1, 16))
  params = model.init(jax.random.PRNGKey(1), x, mask, train=False)
  apply = jax.jit(lambda x, mask: model.apply(params, x, mask, train=False))
  frames, actions = apply(x, mask)
  assert frames.shape == (1, 16, 5) and actions.shape == (1, 8, 5)
  padded = jnp.concatenate([x, 50.0 * jnp.ones((1, 16, 6))], axis=1)
  padded_mask = jnp.concatenate([mask, jnp.zeros((1, 16))], axis=1)
  frames_p, actions_p = apply(padded, padded_mask)
  np.testing.assert_allclose(frames_p[:, :16], frames, atol=1e-5)
  np.testing.assert_allclose(actions_p[:, :8], actions, atol=1e-5)
  assert not np.asarray(frames_p[:, 16:]).any()
  with pytest.raises(ValueError, match='multiple'):
    model.apply(params, x[:, :6], mask[:, :6], train=False)


def test_loss_aligns_to_the_transcript_and_trains_every_parameter(built):
  data, task = built
  batch = task.train_loader(data.train).batch(0)
  assert 'labels' not in batch and 'boundary' not in batch
  params = task.init(jax.random.PRNGKey(0), task.example_batch())
  (total, terms), grads = jax.jit(jax.value_and_grad(task.loss, has_aux=True))(
    params, batch, jax.random.PRNGKey(1)
  )
  assert set(terms) == {'action_ce', 'frame_ce', 'smooth', 'sparse'}  # the paper's
  assert np.isfinite(float(total))
  norms = jax.tree.leaves(jax.tree.map(lambda g: float(jnp.abs(g).sum()), grads))
  assert all(n > 0 for n in norms)
  # the pseudo-labels the loss trains on follow each video's transcript
  _, action_logits = task.model.apply(params, batch['features'], batch['mask'], False)
  bins = pyramid.pool_mask(batch['mask'], task.window)
  aligned = jax.jit(align.align)
  for i in range(len(batch['mask'])):
    n, used = int(batch['num_actions'][i]), int(bins[i].sum())
    result = aligned(
      task.class_log_probs(action_logits[i]),
      batch['transcript'][i],
      task.length_prior(task.max_bins, task.window),
      used,
      n,
    )
    segments = np.asarray(result.positions[:used])
    assert segments[0] == 0 and segments[-1] == n - 1 and (np.diff(segments) >= 0).all()


@pytest.mark.parametrize(
  'arg, presence, terms',
  [
    ('objective=ctc', 0.0, {'ctc', 'frame_ce', 'smooth', 'sparse'}),
    ('variant=hal', 1.0, {'action_ce', 'frame_ce', 'smooth', 'sparse', 'presence'}),
    ('variant=nn_viterbi', 1.0, {'frame_ce', 'smooth'}),  # no latent to classify
    ('variant=nn_viterbi,objective=ctc', 0.0, {'ctc', 'smooth'}),
  ],
)
def test_variants_and_objectives(tiny, arg, presence, terms):
  config = load_config('hal', f'runlocal=True,{arg}')
  config.data.cache_dir = tiny.data.cache_dir
  config.loss.presence = presence
  data = hal.load_data(config)
  task = hal.Task(config, data.info)
  assert task.window == (1 if 'nn_viterbi' in arg else 4)
  params = task.init(jax.random.PRNGKey(0), task.example_batch())
  total, got = jax.jit(task.loss)(
    params, task.train_loader(data.train).batch(0), jax.random.PRNGKey(1)
  )
  assert set(got) == terms and np.isfinite(float(total))
  rows = task.predict(params, data.read_test()[0], jax.random.PRNGKey(0))
  assert rows.keys() == {'Segmentation', 'Alignment'}
  assert rows['Segmentation'].shape == data.read_test()[0].labels.shape
  # aligned to the given transcript: its segments are the transcript
  assert list(formats.segment_classes(rows['Alignment'])) == list(
    formats.segment_classes(data.read_test()[0].transcript)
  )


def test_grammar_decoding_picks_a_training_transcript(built):
  data, task = built
  params = task.init(jax.random.PRNGKey(0), task.example_batch())
  grammar = {tuple(t) for t in data.info.task_info['grammar']}
  for video in data.read_test():
    segmentation = task.predict(params, video, jax.random.PRNGKey(0))['Segmentation']
    segments = tuple(int(c) for c in formats.segment_classes(segmentation))
    assert any(tuple(formats.segment_classes(np.asarray(t))) == segments for t in grammar)
  task.config.eval.decode = 'argmax'
  unlabelled = formats.Video('x', data.read_test()[0].features, None)
  assert task.predict(params, unlabelled, jax.random.PRNGKey(0)).keys() == {'Segmentation'}


def test_config_switches_are_checked(tiny):
  data = hal.load_data(tiny)
  for key, value, message in (
    ('loss.objective', 'mle', 'loss.objective'),
    ('align.length_model', 'gamma', 'length_model'),
    ('eval.decode', 'beam', 'eval.decode'),
  ):
    config = load_config('hal', 'runlocal=True')
    section, name = key.split('.')
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
      hal.Task(config, data.info)
  with pytest.raises(ValueError, match='variant'):
    load_config('hal', 'variant=cdfl')
  tiny.data.transcripts = 'groundtruth'
  with pytest.raises(ValueError, match=r"data.transcripts='groundtruth'; choose one of"):
    hal.load_data(tiny)


# ---------------------------------------------------------------------- losses and metrics --


def test_transition_penalty_hand_worked():
  probs = jnp.asarray([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])
  # pairs: 0, 1, 0.5; the last pair is masked out -> (0 + 1) / 2
  assert float(losses.transition_penalty(probs, jnp.asarray([[1.0, 1.0, 1.0, 0.0]]))) == 0.5
  assert float(losses.transition_penalty(probs, jnp.ones((1, 4)))) == pytest.approx(0.5)


def test_presence_loss_hand_worked():
  probs = jnp.asarray([[[0.9, 0.1], [0.2, 0.8], [0.0, 1.0]]])  # last frame masked out
  got = losses.presence_loss(
    jnp.log(probs), jnp.asarray([[1.0, 1.0, 0.0]]), jnp.asarray([[1.0, 0.0]])
  )
  assert float(got) == pytest.approx(-(np.log(0.9) + np.log(1 - 0.8)) / 2, rel=1e-5)


def test_ctc_hand_worked():
  # T = 2 frames, classes (a, b, blank), transcript [a]: paths aa, a-, -a
  p = np.asarray([[0.5, 0.2, 0.3], [0.6, 0.1, 0.3]])
  expected = -np.log(p[0, 0] * p[1, 0] + p[0, 0] * p[1, 2] + p[0, 2] * p[1, 0]) / 2
  got = losses.ctc(
    jnp.log(jnp.asarray(p))[None],
    jnp.ones((1, 2)),
    jnp.asarray([[0, 1]]),
    jnp.asarray([1]),
  )
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_segment_overlaps_and_alignment_metrics_hand_worked():
  gt = np.asarray([0, 1, 1, 1, 1, 2, 2, 0])
  pred = np.asarray([0, 0, 1, 1, 2, 2, 2, 2])
  iou, iod = metrics.segment_overlaps(pred, gt, background=(0,))
  np.testing.assert_allclose(
    iou, [2 / 4, 2 / 4]
  )  # class 1: [2, 4) vs [1, 5); class 2: [4, 8) vs [5, 7)
  np.testing.assert_allclose(iod, [2 / 2, 2 / 4])
  m = metrics.AlignmentMetrics(background=(0,))
  m.add(pred, gt)
  m.add(gt, gt)
  result = m.result()
  assert result['MoF'] == pytest.approx((5 + 8) / 16 * 100)
  assert result['IoU'] == pytest.approx((0.5 + 1.0) / 2 * 100)
  assert result['IoD'] == pytest.approx((0.75 + 1.0) / 2 * 100)
  assert metrics.segment_overlaps(np.asarray([1, 1]), np.asarray([2, 2]))[0].tolist() == [0.0]


def test_results_table_with_rows_of_different_metrics():
  table = tables.format_table({'Seg': {'Acc': 50.0}, 'Align': {'MoF': 60.0, 'IoU': 1.25}})
  assert table == '        Acc   MoF  IoU\nSeg    50.0     -    -\nAlign     -  60.0  1.2'


def test_loader_without_labels_or_boundary(built):
  data, task = built
  loader = task.train_loader(data.train)
  batch = loader.batch(0)
  lengths = [pipeline.num_frames(data.train[i]) for i in loader.batch_indices(0)]
  np.testing.assert_array_equal(batch['mask'].sum(1), lengths)
  assert batch['transcript'].shape == (len(lengths), task.grammar.shape[1])


# ------------------------------------------------------------------------------- end to end --


def test_train_eval_and_predict_end_to_end(tiny, tmp_path):
  workdir = str(tmp_path / 'run')
  results = polyseg.train_and_evaluate(tiny, workdir)
  assert set(results) == {'Segmentation', 'Alignment'}
  assert set(results['Alignment']) == {'MoF', 'IoU', 'IoD'}
  text = (tmp_path / 'run' / 'eval' / 'results.txt').read_text()
  assert 'MoF' in text and 'F1@50' in text
  name = formats.read_split(hal.dataset_root(tiny), 'test', 1)[0]
  assert (tmp_path / 'run' / 'eval' / 'predictions' / f'{name}.Alignment.txt').exists()
  features = tmp_path / 'features'
  features.mkdir()
  root = hal.dataset_root(tiny)
  long = np.concatenate([np.load(root / 'features' / f'{name}.npy')] * 3, axis=1)  # longer than any
  np.save(features / 'long.npy', long)
  tiny.predict.features = str(features)
  outdir = pathlib.Path(train.predict(methods.get(tiny.task), tiny, workdir))
  lines = (outdir / 'predictions' / 'long.Segmentation.txt').read_text().splitlines()
  assert len(lines) == long.shape[1]


def test_tfds_format_loads_the_same_data(tiny, tmp_path):
  folder = hal.load_data(tiny)
  tiny.data.update(format='tfds', tfds_dir=str(tmp_path / 'tfds'))
  converted = hal.load_data(tiny)
  assert converted.info == folder.info
  for a, b in zip(
    converted.train + converted.read_test(), folder.train + folder.read_test(), strict=True
  ):
    assert a.name == b.name and np.array_equal(a.features, b.features)
    assert np.array_equal(a.transcript, b.transcript)
    assert (a.labels is None) == (b.labels is None)
  assert all(v.labels is None for v in converted.train)
  tiny.data.transcripts = 'labels'
  with pytest.raises(ValueError, match="data.transcripts='file'"):
    hal.load_data(tiny)


def test_hal_learns_from_transcripts_alone(tiny, tmp_path):
  """A few dozen steps on the tiny data: aligning the trained model's scores to the test
  transcripts places clearly more frames right than the length prior alone (zero scores)."""
  tiny.train.update(num_steps=LEARN_STEPS, eval_every=LEARN_STEPS, checkpoint_every=LEARN_STEPS)
  results = polyseg.train_and_evaluate(tiny, str(tmp_path / 'run'))
  data = hal.load_data(tiny)
  task = hal.Task(tiny, data.info)
  prior_only = metrics.AlignmentMetrics(task.background)
  for video in data.read_test():
    zeros = jnp.zeros((len(video.features), task.num_classes))
    prior_only.add(task._align_frames(zeros, video.transcript, len(video.features)), video.labels)
  assert results['Alignment']['MoF'] > prior_only.result()['MoF'] + LEARN_MARGIN

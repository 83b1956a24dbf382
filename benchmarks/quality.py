r"""Does each method's idea pay off? Same synthetic split and training budget per table.

  python benchmarks/quality.py [--task=diffact|hopadiff|polyphony|stage1|twostream|hal] [--steps=N] \
      [--workdir=/tmp/polyseg-quality]

--task=diffact (default):
(a) a per-frame linear classifier (softmax regression on the features, Adam, the same steps),
(b) the DiffAct encoder alone (decoder losses off, prediction = encoder argmax),
(c) full DiffAct (encoder + denoising decoder, DDIM sampling).
All three get the same post-processing.

--task=hopadiff: the paper's Table 5 on the synthetic referring data — full HopaDIFF (the paper's
global DFT condition and DiffAct's decoder), full HopaDIFF with polyseg's conditioned-values
decoder instead, full HopaDIFF with the windowed DFT condition instead, full HopaDIFF with Flax's
initialisation instead of PyTorch's (the paper's), w/o the partial branch, w/o
HP-xLSTM, w/o the cross-attention gates (BCAF), w/o the DFT condition, and w/o all (= DiffAct with
sigmoid outputs on the holistic features alone), the last also with the conditioned-values
decoder; val and test (the best checkpoint is picked on val). `--ablations=none,no_all` runs a subset. Each table also has the untrained constant
baseline (`constant_baseline`: every frame gets the training class frequencies).

--task=polyphony: the paper's ablation on the synthetic two-hand data — stage 2 once, then stage 3
with the MAS parts MF, MF+AF, MF+AF+SF (full), the full model with polyseg's conditioned-values
decoder instead of the paper's, and the full model w/o cross-hand fusion, w/o adaptive loss
weighting, w/o both; per hand Acc, the gap RH - LH and the hands' mean F1@50, on val and test.

--task=stage1: Polyphony's stage 1 (the tiny ADH-ViT on the synthetic two-hand frames, the config's
600 steps) with the paper's alternating hands (Delta = 50) against joint training (both hands in
every batch, `alternate_every=0`), once per seed of `--seeds=0,1,2`: each hand head's frame
accuracy on val and test, and the gap, the mean over the seeds.

--task=twostream: 2s-DAS on the synthetic two-stream data — RGB alone, flow alone and the fused
output (fusion weights searched on val), with the paper's random condition-mask selection (full,
boundary, segment), with DiffAct's list (which adds the zero mask), and with one fixed mask type (no
mask; boundary mask), on val and test.

--task=hal: weak supervision on the synthetic data with transcripts — HAL, HAL with the video-level
presence loss (not in the paper), the NN-Viterbi-style pseudo-label learner on the same backbone and
HAL with the CTC objective, all from transcripts only,
and DiffAct trained on the frame labels of the same videos (the fully supervised upper bound);
segmentation from the video alone (Acc = MoF, Edit, F1) and alignment given the transcript (MoF,
IoU, IoD), on test.

--task=watch: real sensor data, seglearn's smartwatch recordings (polyseg/data/watch.py: 10
subjects, both wrists, 7 shoulder exercises joined into one sequence per subject and side;
cross-subject train / val / test): a constant baseline, the per-frame linear classifier, DiffAct,
2s-DAS (accelerometer and gyroscope as its two streams: each alone and fused) and HAL (from the
transcripts only), each with its config's defaults and `--config.data.root` the converted data
(`--data_root`, default: converted from the installed seglearn into --workdir); on test.

--task=hal_defaults: how HAL's alignment defaults were chosen, on val only — uniform against
least-squares mean lengths, scaled likelihoods against posteriors — each scored on the val split at
every 250 steps up to --steps (1500).

Every run picks its best checkpoint on val and scores the test split once, at the end (the
engine's protocol); the tables show those test results, and val where a choice was made on it.

Prints one table and one JSON line per model (and split). Finished runs in --workdir are reused.
"""

import argparse
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import polyseg
from polyseg import methods
from polyseg.configlib import load_config
from polyseg.core import postprocess
from polyseg.data import formats
from polyseg.engine import parallel
from polyseg.engine import train
from polyseg.methods.diffact import task as diffact
from polyseg.methods.hal import task as hal
from polyseg.methods.hopadiff import task as hopadiff
from polyseg.methods.polyphony import stage1
from polyseg.methods.polyphony import task as polyphony
from polyseg.report import tables

parallel.keep_ynnpack_to_matmuls()  # as `python -m polyseg.main` runs, before any device is used


def linear_baseline(config, steps: int) -> dict[str, float]:
  """Per-frame softmax regression trained with class-weighted CE on all training frames."""
  data = diffact.load_data(config)
  x = np.concatenate([v.features for v in data.train])
  y = np.concatenate([v.labels for v in data.train])
  num_classes = len(data.info.classes)
  counts = np.bincount(y, minlength=num_classes)
  weights = jnp.asarray(len(y) / ((counts + 10) * num_classes), jnp.float32)
  params = {'w': jnp.zeros((x.shape[1], num_classes)), 'b': jnp.zeros(num_classes)}
  tx = optax.adam(config.optim.learning_rate * 10)

  def loss_fn(p, xb, yb):
    logp = jax.nn.log_softmax(xb @ p['w'] + p['b'])
    nll = -jnp.take_along_axis(logp, yb[:, None], 1)[:, 0]
    return jnp.sum(weights[yb] * nll) / jnp.sum(weights[yb])

  @jax.jit
  def step(p, s, xb, yb):
    grads = jax.grad(loss_fn)(p, xb, yb)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  state, rng = tx.init(params), np.random.default_rng(0)
  for _ in range(steps):
    idx = rng.integers(0, len(y), 4096)
    params, state = step(params, state, x[idx], y[idx])
  task = diffact.Task(config, data.info)
  scores = task.new_metrics()
  for video in data.read_test():
    probs = np.asarray(jax.nn.softmax(video.features @ params['w'] + params['b']))
    pred = postprocess.postprocess(
      probs, len(probs), 1, config.eval.postprocess, config.eval.postprocess_value
    )
    scores.add(pred, video.labels)
  return scores.result()


HOPADIFF_ROWS = {  # --ablations name -> (configs/hopadiff.py arg, table row)
  'none': ('ablation=none', "HopaDIFF (the paper's settings)"),
  'conditioned_values': (
    'decoder=conditioned_values',
    'HopaDIFF, conditioned values (not the paper)',
  ),
  'windowed': ('dft=windowed', 'HopaDIFF, windowed DFT (not the paper)'),
  'flax_init': ('init=flax', "HopaDIFF, Flax's initialisation (not the paper)"),
  'no_partial': ('ablation=no_partial', 'w/o partial branch'),
  'no_xlstm': ('ablation=no_xlstm', 'w/o HP-xLSTM'),
  'no_bcaf': ('ablation=no_bcaf', 'w/o BCAF'),
  'no_dft': ('ablation=no_dft', 'w/o DFT-cond'),
  'no_all': ('ablation=no_all', 'w/o all (DiffAct, holistic)'),
  'no_all_conditioned_values': (
    'ablation=no_all,decoder=conditioned_values',
    'w/o all, conditioned values (not the paper)',
  ),
}


CONSTANT_ROW = 'constant (training class frequencies)'


def constant_baseline(config) -> dict[str, dict[str, float]]:
  """{'val', 'test'} -> the HopaDIFF task's metrics of one constant prediction: at every frame,
  each class's probability is the fraction of training frames on which it is active. No training."""
  data = hopadiff.load_data(config)
  task = hopadiff.Task(config, data.info)
  frequencies = np.concatenate([sample.labels for sample in data.train]).mean(axis=0)  # [C]
  results = {}
  for split, samples in (('val', data.val), ('test', data.read_test())):
    scores = task.new_metrics(task.main_row)
    for sample in samples:
      labels = task.row_labels(sample, task.main_row)
      scores.add(np.broadcast_to(frequencies, labels.shape), labels)
    results[split] = scores.result()
  return results


MAJORITY_ROW = 'constant (most frequent training class)'


def majority_baseline(config) -> dict[str, dict[str, dict[str, float]]]:
  """{'val', 'test'} -> {row: metrics} of a single-label task (`config.task`) predicting, for each
  of its rows, that row's most frequent training class at every frame. No training."""
  module = methods.get(config.task)
  data = module.load_data(config)
  task = module.Task(config, data.info, train_videos=data.train)
  results = {}
  for split, videos in (('val', data.val), ('test', data.read_test())):
    scores = {}
    for row in task.rows:
      majority = np.bincount(np.concatenate([task.row_labels(v, row) for v in data.train])).argmax()
      metrics = task.new_metrics(row)
      for video in videos:
        labels = task.row_labels(video, row)
        metrics.add(np.full_like(labels, majority), labels)
      scores[row] = metrics.result()
    results[split] = task.summarize(scores)
  return results


def _read_results(path: str, row: str) -> dict[str, float] | None:
  """A results.json's row, with the step of the checkpoint scored and the run's last step."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  last_step = saved.get('selection', {}).get('last_step', saved['step'])
  return saved['results'][row] | {'step': saved['step'], 'last_step': last_step}


def _train_once(config, workdir: str, steps: int, row: str) -> None:
  """Trains `config` for `steps` steps in `workdir` (no timelines, a checkpoint at every
  evaluation), unless a finished run of as many steps is there (its test results have `row`)."""
  config.train.update(num_steps=steps, checkpoint_every=config.train.eval_every)
  config.eval.num_timelines = 0
  done = _read_results(os.path.join(workdir, 'eval', 'results.json'), row)
  if not done or done['last_step'] != steps:
    polyseg.train_and_evaluate(config, workdir)


def hopadiff_table(args) -> None:
  """Trains each ablation of configs/hopadiff.py; prints val and test of its fused row, from the
  DDIM decoders (the model's output) and from the encoders alone (the same checkpoint: the best on
  val), with the constant baseline."""
  rows = {}
  for ablation in args.ablations.split(','):
    arg, row = HOPADIFF_ROWS[ablation]
    config = load_config('hopadiff', arg)
    steps = args.steps or config.train.num_steps
    workdir = os.path.join(args.workdir, f'hopadiff_{ablation}')
    _train_once(config, workdir, steps, 'HopaDIFF')
    encoders = config.copy_and_resolve_references()
    encoders.eval.use_decoder = False
    _, data, task = train.setup(methods.get(encoders.task), encoders, workdir)
    step, params = train.restore_params(task, encoders, workdir, 'best')
    videos = {'val': data.val, 'test': data.read_test()}
    for split, folder in (('val', 'eval_val'), ('test', 'eval')):
      decoded = _read_results(os.path.join(workdir, folder, 'results.json'), 'HopaDIFF')
      rows.setdefault(f'{split}, DDIM decoders (the model)', {})[row] = decoded
      encoded = train.evaluate_and_write(
        task,
        params,
        videos[split],
        encoders,
        os.path.join(workdir, f'encoders_{folder}'),
        step,
        split=split,
      )['HopaDIFF']
      rows.setdefault(f'{split}, encoders alone', {})[row] = encoded
  for split, constant in constant_baseline(load_config('hopadiff')).items():
    for title in (f'{split}, DDIM decoders (the model)', f'{split}, encoders alone'):
      rows[title][CONSTANT_ROW] = constant
  for title, table in rows.items():
    table = {
      name: {k: v for k, v in r.items() if k not in ('step', 'last_step')}
      for name, r in table.items()
    }
    print(f'{title} ({steps} steps):\n{tables.format_table(table)}\n')
    for name, result in table.items():
      print(
        json.dumps(
          {
            'benchmark': 'quality',
            'task': 'hopadiff',
            'table': title,
            'model': name,
            'steps': steps,
            **result,
          }
        )
      )


POLYPHONY_ROWS = {  # --ablations name -> (configs/polyphony.py arg, table row)
  'mf': ('ablation=mf', 'MF'),
  'mf_af': ('ablation=mf_af', 'MF+AF'),
  'full': ('ablation=full', 'MF+AF+SF (full)'),
  'full_conditioned_values': (
    'ablation=full,decoder=conditioned_values',
    'full, conditioned values (not the paper)',
  ),
  'no_fusion': ('ablation=no_fusion', 'full w/o fusion'),
  'no_weighting': ('ablation=no_weighting', 'full w/o weighting'),
  'no_fusion_weighting': ('ablation=no_fusion_weighting', 'full w/o fusion & weighting'),
}


def polyphony_columns(results: dict[str, dict[str, float]]) -> dict[str, float]:
  """A Polyphony results dict ({'LH', 'RH', 'gap', ...: metrics}) -> the table's columns."""
  return {
    'LH Acc': results['LH']['Acc'],
    'RH Acc': results['RH']['Acc'],
    'gap': results['gap']['Acc'],
    'LH F1@50': results['LH']['F1@50'],
    'RH F1@50': results['RH']['F1@50'],
  }


def polyphony_table(args) -> None:
  """Stage 2 once (its MAS features feed every row), then stage 3 per ablation of
  configs/polyphony.py; prints per-hand Acc, the gap and mean F1@50 on val and test."""
  stages_dir = os.path.join(args.workdir, 'polyphony_stage2')
  config = load_config('polyphony')
  config.stage = '2'
  polyseg.train_and_evaluate(config, stages_dir)  # writes (or finds) the MAS features
  rows = {}
  for ablation in args.ablations.split(','):
    arg, row = POLYPHONY_ROWS[ablation]
    config = load_config('polyphony', arg)
    steps = args.steps or config.train.num_steps
    config.update(stage='3')
    config.data.root = str(polyphony.stage_output(stages_dir, 2))
    workdir = os.path.join(args.workdir, f'polyphony_{ablation}')
    _train_once(config, workdir, steps, 'mean')
    for split, folder in (('val', 'eval_val'), ('test', 'eval')):
      with open(os.path.join(workdir, folder, 'results.json')) as f:
        results = json.load(f)['results']
      rows.setdefault(split, {})[row] = polyphony_columns(results)
  for split, results in majority_baseline(config).items():
    rows[split][MAJORITY_ROW] = polyphony_columns(results)
  for split, table in rows.items():
    columns = list(next(iter(table.values())))
    print(f'{split} ({steps} steps):\n{tables.format_table(table, columns)}\n')
    for name, result in table.items():
      record = {'benchmark': 'quality', 'task': 'polyphony', 'split': split, 'model': name}
      print(json.dumps({**record, 'steps': steps, **result}))


STAGE1_ROWS = {  # --ablations name -> (stage-1 alternate_every, table row)
  'alternating': (50, 'alternating hands, Delta = 50 (the paper)'),
  'joint': (0, 'joint training (both hands in every batch)'),
}


def _hand_columns(videos, predict) -> dict[str, float]:
  """{'lh Acc', 'rh Acc', 'gap' (rh - lh)} in % of `predict(video, h) -> [T]` hand-h class ids."""
  columns = {}
  for h, hand in enumerate(formats.HANDS):
    hits = np.concatenate([predict(v, h) == v.labels[:, h] for v in videos])
    columns[f'{hand} Acc'] = 100 * float(np.mean(hits))
  columns['gap'] = columns['rh Acc'] - columns['lh Acc']
  return columns


def stage1_table(args) -> None:
  """Polyphony's stage 1 (the tiny ADH-ViT on the synthetic two-hand frames) trained with
  alternating hands and jointly, once per seed of --seeds (initialisation, data order and the
  held-out val videos); per-hand frame accuracy of its hand heads (argmax of the logits it writes
  for every frame) on val and test, the mean over the seeds, with each hand's most frequent
  training class."""
  config = load_config('polyphony')
  steps = args.steps or config.stage1.num_steps
  root = polyphony.input_root(config, frames=True)
  seeds = [int(s) for s in args.seeds.split(',')]
  read = lambda out, split: formats.read_hand_streams(out, split, config.stage1.split).videos
  runs = {}  # (row, seed) -> the run's output root
  for ablation in args.ablations.split(','):
    every, row = STAGE1_ROWS[ablation]
    for seed in seeds:
      settings = config.stage1.copy_and_resolve_references()
      settings.update(alternate_every=every, num_steps=steps, seed=seed)
      name = f'stage1_{ablation}' + (f'_seed{seed}' if seed else '')
      runs[row, seed] = stage1.run(settings, os.path.join(args.workdir, name), str(root))
  first = runs[next(iter(runs))]  # the constant row: on the first run's held-out split
  train_videos = read(first, 'train')
  majority = [
    np.bincount(np.concatenate([v.labels[:, h] for v in train_videos])).argmax()
    for h in range(len(formats.HANDS))
  ]
  for split in ('val', 'test'):
    per_run = {
      key: _hand_columns(read(out, split), lambda v, h: v.features[formats.HANDS[h]].argmax(-1))
      for key, out in runs.items()
    }
    table = {
      row: {c: float(np.mean([per_run[row, s][c] for s in seeds])) for c in per_run[row, seeds[0]]}
      for row in dict.fromkeys(row for row, _ in runs)
    }
    table[MAJORITY_ROW] = _hand_columns(
      read(first, split), lambda v, h: np.full(len(v.labels), majority[h])
    )
    title = f'{split} ({steps} steps, mean over seeds {args.seeds})'
    print(f'{title}:\n{tables.format_table(table, ["lh Acc", "rh Acc", "gap"])}\n')
    record = {'benchmark': 'quality', 'task': 'stage1', 'split': split, 'steps': steps}
    for (row, seed), result in per_run.items():
      print(json.dumps({**record, 'model': row, 'seed': seed, **result}))
    print(json.dumps({**record, 'model': MAJORITY_ROW, **table[MAJORITY_ROW]}))


TWOSTREAM_ROWS = {  # --ablations name -> condition masks of configs/twostream.py (the masks= arg)
  'random': "paper: random of full / boundary / segment",
  'diffact': "DiffAct's list (adds zero)",
  'full': 'fixed: no mask (full)',
  'boundary': 'fixed: boundary mask',
}


def twostream_table(args) -> None:
  """Trains configs/twostream.py with random condition-mask selection and with single fixed mask
  types; prints RGB alone, flow alone and the fused output (weights searched on val) per run, on
  val and test, with the searched weights."""
  rows = {}
  for masks in args.ablations.split(','):
    config = load_config('twostream', f'masks={masks}')
    steps = args.steps or config.train.num_steps
    workdir = os.path.join(args.workdir, f'twostream_{masks}')
    _train_once(config, workdir, steps, 'Fused')
    with open(os.path.join(workdir, 'eval_val', 'fusion_search.json')) as f:
      weights = json.load(f)['weights']
    for split, folder in (('val', 'eval_val'), ('test', 'eval')):
      with open(os.path.join(workdir, folder, 'results.json')) as f:
        results = json.load(f)['results']
      for row in ('RGB', 'Flow', 'Fused'):
        name = f'{TWOSTREAM_ROWS[masks]}: {row}'
        if row == 'Fused':
          name += f' (rgb {weights[0]:.2f}, flow {weights[1]:.2f})'
        rows.setdefault(split, {})[name] = results[row]
  for split, results in majority_baseline(load_config('twostream')).items():
    rows[split][MAJORITY_ROW] = results['Fused']
  for split, table in rows.items():
    print(f'{split} ({steps} steps):\n{tables.format_table(table)}\n')
    for name, result in table.items():
      record = {'benchmark': 'quality', 'task': 'twostream', 'split': split, 'model': name}
      print(json.dumps({**record, 'steps': steps, **result}))


HAL_ROWS = {  # --ablations name -> (config, its arg, loss overrides, table row)
  'hal': ('hal', '', {}, 'HAL'),
  'presence': ('hal', '', {'presence': 1.0}, 'HAL + video-level loss (not in the paper)'),
  'nn_viterbi': ('hal', 'variant=nn_viterbi', {}, 'NN-Viterbi-style (same backbone)'),
  'ctc': ('hal', 'objective=ctc', {}, 'HAL, CTC objective'),
  'diffact': ('diffact', '', {}, 'DiffAct, fully supervised (upper bound)'),
}


def hal_table(args) -> None:
  """Trains HAL, the NN-Viterbi-style baseline (and HAL with CTC) from transcripts, and DiffAct
  with the frame labels of the same synthetic videos; prints segmentation from the video alone
  (all rows) and alignment given the transcript (the weakly supervised rows), on test."""
  root = str(hal.dataset_root(load_config('hal')))  # the videos every row trains on
  by_title = {'segmentation from video alone': {}, 'alignment given the transcript': {}}
  for ablation in args.ablations.split(','):
    name, arg, loss, row = HAL_ROWS[ablation]
    config = load_config(name, arg)
    config.loss.update(loss)
    config.data.root = root
    steps = args.steps or config.train.num_steps
    main_row = 'Segmentation' if name == 'hal' else 'DiffAct'
    workdir = os.path.join(args.workdir, f'hal_{ablation}')
    _train_once(config, workdir, steps, main_row)
    with open(os.path.join(workdir, 'eval', 'results.json')) as f:
      saved = json.load(f)
    results = saved['results']
    row = f'{row}, step {saved["step"]} of {steps}'  # the checkpoint val chose
    by_title['segmentation from video alone'][row] = results[main_row]
    if 'Alignment' in results:
      by_title['alignment given the transcript'][row] = results['Alignment']
  columns = {'alignment given the transcript': ('MoF', 'IoU', 'IoD')}
  for title, table in by_title.items():
    print(f'test, {title}:\n{tables.format_table(table, columns.get(title))}\n')
    for row, result in table.items():
      record = {'benchmark': 'quality', 'task': 'hal', 'table': title, 'model': row}
      print(json.dumps({**record, **result}))


HAL_DEFAULTS = {  # --ablations name -> (config overrides, table row)
  'default': ({}, 'uniform mean lengths, scaled likelihoods'),
  'least_squares': ({'mean_lengths': 'least_squares'}, 'least-squares mean lengths'),
  'posteriors': ({'prior_normalization': 0.0}, 'posteriors (no class-prior division)'),
}


def hal_defaults_table(args) -> None:
  """HAL's measured defaults, derived on val: each alignment variant of configs/hal.py trains for
  --steps (default 1500) with a checkpoint every 250 steps; every checkpoint is then scored on the
  val split (segmentation from the video alone, alignment MoF given the transcript)."""
  every = 250
  table = {}
  for name in args.ablations.split(','):
    overrides, row = HAL_DEFAULTS[name]
    config = load_config('hal')
    config.align.update(overrides)
    steps = args.steps or 1500
    config.train.update(eval_every=every, keep_checkpoints=steps // every + 1)
    workdir = os.path.join(args.workdir, f'hal_defaults_{name}')
    _train_once(config, workdir, steps, 'Segmentation')
    _, data, task = train.setup(methods.get(config.task), config, workdir)
    for step in range(every, steps + 1, every):
      _, params = train.restore_params(task, config, workdir, step)
      results = train.evaluate_and_write(
        task, params, data.val, config, os.path.join(workdir, f'val_{step}'), step, split='val'
      )
      segmentation = {k: results['Segmentation'][k] for k in ('Acc', 'Edit', 'F1@50')}
      table[f'{row}, step {step}'] = segmentation | {'align MoF': results['Alignment']['MoF']}
  print(f'val:\n{tables.format_table(table)}\n')
  for name, result in table.items():
    print(json.dumps({'benchmark': 'quality', 'task': 'hal_defaults', 'model': name, **result}))


WATCH_ROWS = {  # --ablations name -> (config, table rows: {result row: table row})
  'diffact': ('diffact', {'DiffAct': 'DiffAct'}),
  'twostream': (
    'twostream',
    {'RGB': '2s-DAS, accelerometer alone', 'Flow': '2s-DAS, gyroscope alone', 'Fused': '2s-DAS'},
  ),
  'hal': ('hal', {'Segmentation': 'HAL (transcripts only)'}),
}


def watch_table(args) -> None:
  """Trains each method on the converted smartwatch data with its config's defaults; prints the
  test results of the checkpoint each picked on val, with the constant and linear baselines."""
  from polyseg.data import watch

  root = args.data_root or os.path.join(args.workdir, 'watch_data')
  if not os.path.isdir(root):
    watch.convert(watch.installed_file(), pathlib.Path(root))
  table = {}
  base = load_config('diffact')
  base.data.root = root
  table[MAJORITY_ROW] = majority_baseline(base)['test']['DiffAct']
  table['per-frame linear (all 24 features)'] = linear_baseline(base, args.steps or 2000)
  for ablation in args.ablations.split(','):
    name, rows = WATCH_ROWS[ablation]
    config = load_config(name)
    config.data.root = root
    steps = args.steps or config.train.num_steps
    workdir = os.path.join(args.workdir, f'watch_{ablation}')
    _train_once(config, workdir, steps, next(iter(rows)))
    with open(os.path.join(workdir, 'eval', 'results.json')) as f:
      saved = json.load(f)
    for row, title in rows.items():
      table[f'{title}, step {saved["step"]} of {steps}'] = saved['results'][row]
  print(f'test (subjects 9, 10):\n{tables.format_table(table)}\n')
  for row, result in table.items():
    print(json.dumps({'benchmark': 'quality', 'task': 'watch', 'model': row, **result}))


ABLATIONS = {
  'hopadiff': HOPADIFF_ROWS,
  'polyphony': POLYPHONY_ROWS,
  'twostream': TWOSTREAM_ROWS,
  'hal': HAL_ROWS,
  'hal_defaults': HAL_DEFAULTS,
  'stage1': STAGE1_ROWS,
  'watch': WATCH_ROWS,
}
TABLES = {
  'hopadiff': hopadiff_table,
  'polyphony': polyphony_table,
  'twostream': twostream_table,
  'hal': hal_table,
  'hal_defaults': hal_defaults_table,
  'stage1': stage1_table,
  'watch': watch_table,
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--task', choices=('diffact', *ABLATIONS), default='diffact')
  parser.add_argument('--steps', type=int, default=None, help='training steps (default: config)')
  parser.add_argument('--workdir', default='/tmp/polyseg-quality')
  parser.add_argument('--data_root', default=None, help='--task=watch: the converted data')
  parser.add_argument('--seeds', default='0', help='--task=stage1: comma-separated seeds')
  parser.add_argument(
    '--ablations',
    default=None,
    help='--task=hopadiff|polyphony|twostream|hal: the rows (default: all)',
  )
  args = parser.parse_args()
  if args.task in ABLATIONS:
    args.ablations = args.ablations or ','.join(ABLATIONS[args.task])
    return TABLES[args.task](args)
  config = load_config('diffact')
  steps = args.steps or config.train.num_steps
  config.train.update(num_steps=steps, eval_every=steps, checkpoint_every=steps)
  config.eval.num_timelines = 0

  rows = {'(a) per-frame linear': linear_baseline(config, steps)}
  encoder_only = config.copy_and_resolve_references()
  encoder_only.loss.update(decoder_ce=0.0, decoder_smooth=0.0, decoder_boundary=0.0)
  encoder_only.eval.use_decoder = False
  rows['(b) DiffAct encoder alone'] = polyseg.train_and_evaluate(
    encoder_only, os.path.join(args.workdir, 'encoder')
  )['DiffAct']
  rows['(c) DiffAct'] = polyseg.train_and_evaluate(config, os.path.join(args.workdir, 'diffact'))[
    'DiffAct'
  ]
  print(tables.format_table(rows))
  for name, result in rows.items():
    print(json.dumps({'benchmark': 'quality', 'model': name, 'steps': steps, **result}))


if __name__ == '__main__':
  main()

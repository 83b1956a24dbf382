r"""polyseg's DiffAct and the public reference code trained side by side on the same data.

  pip install -e '.[parity]'            # PyTorch CPU; polyseg itself never imports it
  git clone https://github.com/Finspire13/DiffAct /tmp/DiffAct
  python benchmarks/parity_training.py --reference=/tmp/DiffAct [--seeds=0,1,2] [--epochs=67] \
      [--config=dataset=synthetic] [--set=key=value] [--implementations=polyseg,reference,crossed] \
      [--exact-reference-masking] [--draws=3] [--workdir=/tmp/polyseg-parity-training] [--json=FILE]

Both train on the training split of configs/diffact.py's data (the embedded synthetic dataset by
default, or `--set=data.root=DIR` for your own MS-TCN folders) with the same settings: the model
sizes, dropouts, condition masks, loss weights, soft labels or class weights, learning rate and
weight decay, batch size, sampling rate and boundary sigma of that config, for the same number of
epochs (polyseg: epochs x training videos / batch size steps). The reference runs through its own
`Trainer` (main.py), on CPU: its batches are one video at a time with the gradient accumulated
over `batch_size` videos, its training views pick one temporal offset per video, and it samples
with its own DDIM and post-processing.

Protocol: nothing is selected; each run's last parameters are scored on the test split, once, with
the encoder alone (argmax of its class probabilities averaged over the temporal views) and with the
decoder (DDIM on each view, averaged), post-processed as the config says. One DDIM draw of the same
weights spreads by 1-2 points of Edit, so the decoder row is the mean over --draws draws (polyseg:
eval seeds 0, 1, ...; the reference: its own seeding by the video's index i, then i + 1000 k). Both implementations'
predictions are scored with polyseg's metrics (background left out of Edit and F1); the reference's
own scorer (`func_eval`) is recorded beside them. `crossed` samples and scores the reference's
trained weights (of the same seed) with polyseg: it separates training from inference. Prints one
row per implementation, output and seed, and their mean; --json writes every row (with the
reference scorer's numbers). Finished runs in --workdir are reused.
"""

import argparse
import ast
import contextlib
import functools
import json
import os
import sys
import types

import jax
import numpy as np
import torch

import polyseg
from polyseg.configlib import load_config
from polyseg.engine import parallel
from polyseg.engine import train
from polyseg.methods.diffact import task as diffact
from polyseg.report import tables

parallel.keep_ynnpack_to_matmuls()  # as `python -m polyseg.main` runs, before any device is used

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parity_diffact  # the reference's model arguments, masks and loss weights

METRICS = ('Acc', 'Edit', 'F1@10', 'F1@25', 'F1@50')
OUTPUTS = {'encoder': 'encoder', 'decoder': 'decoder-agg'}  # ours -> the reference's test mode


def polyseg_config(arg: str, overrides: list[str], seed: int, epochs: int):
  """configs/diffact.py:`arg` with `overrides` (key=value), seeded, `epochs` over its training
  split, scored at the last step."""
  config = load_config('diffact', arg)
  for item in overrides:
    key, text = item.split('=', 1)
    try:
      value = ast.literal_eval(text)  # numbers, None, True
    except (ValueError, SyntaxError):
      value = text
    config.update_from_flattened_dict({key: value})
  config.seed = seed
  data = diffact.load_data(config)
  steps = epochs * len(data.train) // config.train.batch_size
  config.train.update(num_steps=steps, eval_every=steps, checkpoint_every=steps)
  config.eval.update(test_checkpoint='latest', num_timelines=0)
  return config, data


def training_params(config) -> dict:
  """The reference's training settings (its default_configs.py keys) for polyseg's `config`."""
  return {
    'loss_weights': parity_diffact.reference_loss_weights(config),
    'batch_size': config.train.batch_size,
    'learning_rate': config.optim.learning_rate,
    'weight_decay': config.optim.weight_decay,
    'class_weighting': config.loss.class_weighting,
    'soft_label': config.loss.soft_label,
  }


def import_trainer(path: str, exact_masking: bool = False):
  """The reference's main.py (its Trainer), with TensorBoard logging stubbed out and numpy's
  `np.float` (removed in numpy 1.24; its scorer uses it) restored as `float`; `exact_masking`:
  see parity_diffact.import_reference."""
  np.float = float
  board = types.ModuleType('torch.utils.tensorboard')
  board.SummaryWriter = lambda *args, **kwargs: types.SimpleNamespace(
    add_scalar=lambda *a, **k: None, close=lambda: None
  )
  sys.modules['torch.utils.tensorboard'] = board
  model_and_dataset = parity_diffact.import_reference(path, exact_masking)  # `path` on sys.path
  import main as reference_main  # the reference's own modules
  import utils as reference_utils

  return (*model_and_dataset, reference_main, reference_utils)


def reference_model(reference, config, data):
  """An untrained reference ASDiffusionModel of polyseg's `config`."""
  args = parity_diffact.reference_params(config, data.info.input_dim, len(data.info.classes))
  return reference[0].ASDiffusionModel(**args)


def run_reference(
  reference, config, data, workdir: str, epochs: int, seed: int, draws: int
) -> dict:
  """Trains the reference for `epochs` (its last weights go to `workdir`/final.model; with that file
  present it is not trained again) and scores them on test: {output: {metric}}, the decoder's
  the mean over `draws` DDIM draws (`_over_draws`)."""
  _, dataset, main, utils = reference
  root = diffact.dataset_root(config)
  classes = list(data.info.classes)
  label_dir = os.path.join(root, 'groundTruth')
  sample_rate = config.data.sample_rate
  read = lambda videos: dataset.get_data_dict(
    feature_dir=os.path.join(root, 'features'),
    label_dir=label_dir,
    video_list=[v.name for v in videos],
    event_list=classes,
    sample_rate=sample_rate,
    temporal_aug=True,
    boundary_smooth=config.data.boundary_sigma,
  )
  train_dict, val_dict, test_dict = read(data.train), read(data.val), read(data.read_test())
  make = lambda d, mode: dataset.VideoFeatureDataset(d, len(classes), mode=mode)
  utils.set_random_seed(seed)
  np.random.seed(seed)
  args = parity_diffact.reference_params(config, data.info.input_dim, len(classes))
  trainer = main.Trainer(
    args['encoder_params'],
    args['decoder_params'],
    args['diffusion_params'],
    classes,
    sample_rate,
    True,  # temporal_aug: a random temporal offset per training view, every offset at test
    True,  # set_sampling_seed: DDIM noise seeded by the video's index
    {'type': config.eval.postprocess, 'value': config.eval.postprocess_value},
    device=torch.device('cpu'),
  )
  final = os.path.join(workdir, 'final.model')
  if os.path.exists(final):  # trained before (its own resume would restart from epoch 0)
    trainer.model.load_state_dict(torch.load(final))
  else:
    t = training_params(config)
    # The reference scores its test argument at every log_freq-th epoch (and epoch 0): it gets the
    # val split here, and log_freq past the last epoch, so test is read once, below.
    trainer.train(
      make(train_dict, 'train'),
      make(train_dict, 'test'),
      make(val_dict, 'test'),
      t['loss_weights'],
      t['class_weighting'],
      t['soft_label'],
      epochs,
      t['batch_size'],
      t['learning_rate'],
      t['weight_decay'],
      label_dir=label_dir,
      result_dir=workdir,
      log_freq=epochs + 1,
      log_train_results=False,
    )
    torch.save(trainer.model.state_dict(), final)
  test = make(test_dict, 'test')
  sample = trainer.model.ddim_sample  # seeded with the video's index by the Trainer

  def scored(mode, outdir):
    own = trainer.test(test, mode, torch.device('cpu'), label_dir, result_dir=outdir)
    predictions = {}
    for video in data.read_test():
      with open(os.path.join(outdir, 'prediction', f'{video.name}.txt')) as f:
        names = f.read().split('\n')[1].split()
      predictions[video.name] = {'DiffAct': np.array([classes.index(n) for n in names])}
    return _scored(config, data, predictions) | {
      f'reference scorer {k}': float(v) for k, v in own.items()
    }

  results = {'encoder': scored(OUTPUTS['encoder'], os.path.join(workdir, 'encoder'))}
  runs = []
  for draw in range(draws):  # draw k seeds video i with i + 1000 k (k = 0: the reference's own)
    trainer.model.ddim_sample = lambda feats, seed, k=draw: sample(feats, seed + 1000 * k)
    runs.append(scored(OUTPUTS['decoder'], os.path.join(workdir, f'decoder_draw{draw}')))
  trainer.model.ddim_sample = sample
  return results | _over_draws(runs)


def _over_draws(runs: list[dict]) -> dict:
  """{'decoder': the mean of each metric over the DDIM draws, 'decoder draws': every draw's}."""
  return {
    'decoder': {k: float(np.mean([r[k] for r in runs])) for k in runs[0]},
    'decoder draws': runs,
  }


def _scored(config, data, predictions) -> dict[str, float]:
  task = diffact.Task(config, data.info)
  return train.score(task, data.read_test(), predictions)['DiffAct']


def score_params(config, data, params, draws: int) -> dict:
  """polyseg's encoder and decoder outputs of `params` on the test split: {output: {metric}}, the
  decoder's the mean over `draws` DDIM draws (eval seeds 0, 1, ...; `_over_draws`)."""
  videos = data.read_test()

  def scored(use_decoder: bool, eval_seed: int) -> dict[str, float]:
    c = config.copy_and_resolve_references()
    c.eval.update(use_decoder=use_decoder, seed=eval_seed)
    task = diffact.Task(c, data.info)
    name = 'decoder' if use_decoder else 'encoder'
    rng = jax.random.PRNGKey(eval_seed)
    return train.score(task, videos, train.run_predictions(task, params, videos, rng, name))[
      'DiffAct'
    ]

  runs = [scored(True, draw) for draw in range(draws)]
  return {'encoder': scored(False, 0)} | _over_draws(runs)


def run_polyseg(config, data, workdir: str, draws: int) -> dict:
  """Trains polyseg's DiffAct (resuming in `workdir`) and scores its last parameters on test."""
  polyseg.train_and_evaluate(config, workdir)
  task = diffact.Task(config, data.info)
  _, params = train.restore_params(task, config, workdir, 'latest')
  return score_params(config, data, params, draws)


def run_crossed(reference, config, data, reference_workdir: str, draws: int) -> dict:
  """polyseg's sampling and scoring of the reference's trained weights (from run_reference)."""
  path = os.path.join(reference_workdir, 'final.model')
  if not os.path.exists(path):
    raise SystemExit(f'{path}: train the reference first (--implementations=reference)')
  model = reference_model(reference, config, data)
  model.load_state_dict(torch.load(path))
  return score_params(config, data, parity_diffact.to_flax(model), draws)


def _polyseg(reference, config, data, workdir, epochs, seed, draws):
  del reference, epochs, seed  # in the config
  return run_polyseg(config, data, workdir, draws)


def _crossed(reference, config, data, workdir, epochs, seed, draws):
  del epochs  # the reference run's
  reference_workdir = os.path.join(os.path.dirname(workdir), f'reference_seed{seed}')
  return run_crossed(reference, config, data, reference_workdir, draws)


RUNS = {'polyseg': _polyseg, 'reference': run_reference, 'crossed': _crossed}


def cached(path: str, compute) -> dict:
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  results = compute()
  with open(path + '.tmp', 'w') as f:
    json.dump(results, f, indent=1)
  os.replace(path + '.tmp', path)
  return results


def table(rows: list[dict]) -> str:
  """One line per implementation, output and seed, then the mean over seeds."""
  cells = [['', 'seed', *METRICS]]
  groups = {}
  for r in rows:
    groups.setdefault((r['implementation'], r['output']), []).append(r)
  for (implementation, output), group in groups.items():
    for r in group:
      cells.append(
        [f'{implementation} {output}', str(r['seed'])] + [f'{r[m]:.1f}' for m in METRICS]
      )
    if len(group) > 1:
      cells.append(
        [f'{implementation} {output}', 'mean']
        + [f'{np.mean([r[m] for r in group]):.1f}' for m in METRICS]
      )
  return '\n'.join(tables.align_columns(cells))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parity_diffact.add_reference_arguments(parser)
  parser.add_argument('--config', default='dataset=synthetic', help='configs/diffact.py argument')
  parser.add_argument('--set', action='append', default=[], help='config override key=value')
  parser.add_argument('--epochs', type=int, default=67)
  parser.add_argument('--seeds', default='0')
  parser.add_argument(
    '--implementations',
    default='polyseg,reference',
    help="any of polyseg, reference, crossed (the reference's trained weights sampled and scored "
    'by polyseg: separates training from inference)',
  )
  parser.add_argument(
    '--draws',
    type=int,
    default=3,
    help='DDIM draws per decoder score (the mean is reported; one draw spreads by 1-2 Edit)',
  )
  parser.add_argument('--workdir', default='/tmp/polyseg-parity-training')
  parser.add_argument('--json', help='write every row here')
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count() or 1)
  reference = None
  rows = []
  for seed in [int(s) for s in args.seeds.split(',')]:
    config, data = polyseg_config(args.config, args.set, seed, args.epochs)
    for implementation in args.implementations.split(','):
      workdir = os.path.join(args.workdir, f'{implementation}_seed{seed}')
      os.makedirs(workdir, exist_ok=True)
      if implementation != 'polyseg':
        reference = reference or import_trainer(args.reference, args.exact_reference_masking)
      compute = functools.partial(
        RUNS[implementation], reference, config, data, workdir, args.epochs, seed, args.draws
      )
      with contextlib.redirect_stdout(sys.stderr):  # progress of both; the tables go to stdout
        results = cached(os.path.join(workdir, f'results_draws{args.draws}.json'), compute)
      draws = {'draws': results.pop('decoder draws')}
      for output, metrics in results.items():
        row = {'implementation': implementation, 'output': output, 'seed': seed} | metrics
        rows.append(row | (draws if output == 'decoder' else {}))
      print(table(rows), flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  main()

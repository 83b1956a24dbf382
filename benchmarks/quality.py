r"""Does each method's idea pay off? Same synthetic split and training budget per table.

  python benchmarks/quality.py [--task=diffact|hopadiff] [--steps=N] [--workdir=/tmp/polyseg-quality]

--task=diffact (default):
(a) a per-frame linear classifier (softmax regression on the features, Adam, the same steps),
(b) the DiffAct encoder alone (decoder losses off, prediction = encoder argmax),
(c) full DiffAct (encoder + denoising decoder, DDIM sampling).
All three get the same post-processing.

--task=hopadiff: the paper's Table 5 on the synthetic referring data — full HopaDIFF, w/o the partial
branch, w/o HP-xLSTM, w/o the cross-attention gates (BCAF), w/o the DFT condition, and w/o all
(= DiffAct with sigmoid outputs on the holistic features alone), the last also with DiffAct's own
decoder (attention values from the noisy labels only); val and test (the best checkpoint is picked
on val). `--ablations=none,no_all` runs a subset.

Prints one table and one JSON line per model (and split). Finished runs in --workdir are reused.
"""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from polyseg import postprocess
from polyseg import report
from polyseg import train
from polyseg.main import load_config
from polyseg.tasks import diffact


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
  for video in data.test:
    probs = np.asarray(jax.nn.softmax(video.features @ params['w'] + params['b']))
    pred = postprocess.postprocess(
      probs, len(probs), 1, config.eval.postprocess, config.eval.postprocess_value
    )
    scores.add(pred, video.labels)
  return scores.result()


HOPADIFF_ROWS = {  # --ablations name -> (configs/hopadiff.py arg, table row)
  'none': ('ablation=none', 'HopaDIFF'),
  'no_partial': ('ablation=no_partial', 'w/o partial branch'),
  'no_xlstm': ('ablation=no_xlstm', 'w/o HP-xLSTM'),
  'no_bcaf': ('ablation=no_bcaf', 'w/o BCAF'),
  'no_dft': ('ablation=no_dft', 'w/o DFT-cond'),
  'no_all': ('ablation=no_all', 'w/o all (DiffAct, holistic)'),
  'no_all_diffact_decoder': (
    'ablation=no_all,decoder=diffact',
    "w/o all, DiffAct's decoder (V of labels only)",
  ),
}


def _read_results(path: str, row: str) -> dict[str, float] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  return saved['results'][row] | {'step': saved['step']}


def hopadiff_table(args) -> None:
  """Trains each ablation of configs/hopadiff.py; prints val and test of its fused row, from the
  DDIM decoders (the model's output) and from the encoders alone (same checkpoint)."""
  rows = {}
  for ablation in args.ablations.split(','):
    arg, row = HOPADIFF_ROWS[ablation]
    config = load_config('hopadiff', arg)
    steps = args.steps or config.train.num_steps
    config.train.update(num_steps=steps, checkpoint_every=config.train.eval_every)
    config.eval.num_timelines = 0
    workdir = os.path.join(args.workdir, f'hopadiff_{ablation}')
    done = _read_results(os.path.join(workdir, 'eval', 'results.json'), 'HopaDIFF')
    if not done or done['step'] != steps:
      train.train_and_evaluate(config, workdir)
    encoders = config.copy_and_resolve_references()
    encoders.eval.use_decoder = False
    _, data, task = train.setup(encoders, workdir)
    step, params = train.restore_params(task, encoders, workdir)
    for split, folder in (('val', 'eval_val'), ('test', 'eval')):
      decoded = _read_results(os.path.join(workdir, folder, 'results.json'), 'HopaDIFF')
      rows.setdefault(f'{split}, DDIM decoders (the model)', {})[row] = decoded
      encoded = train.evaluate_and_write(
        task,
        params,
        getattr(data, split),
        encoders,
        os.path.join(workdir, f'encoders_{folder}'),
        step,
        split=split,
      )['HopaDIFF']
      rows.setdefault(f'{split}, encoders alone', {})[row] = encoded
  for title, table in rows.items():
    table = {name: {k: v for k, v in r.items() if k != 'step'} for name, r in table.items()}
    print(f'{title} ({steps} steps):\n{report.format_table(table)}\n')
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--task', choices=('diffact', 'hopadiff'), default='diffact')
  parser.add_argument('--steps', type=int, default=None, help='training steps (default: config)')
  parser.add_argument('--workdir', default='/tmp/polyseg-quality')
  parser.add_argument('--ablations', default=','.join(HOPADIFF_ROWS), help='--task=hopadiff rows')
  args = parser.parse_args()
  if args.task == 'hopadiff':
    return hopadiff_table(args)
  config = load_config('diffact')
  steps = args.steps or config.train.num_steps
  config.train.update(num_steps=steps, eval_every=steps, checkpoint_every=steps)
  config.eval.num_timelines = 0

  rows = {'(a) per-frame linear': linear_baseline(config, steps)}
  encoder_only = config.copy_and_resolve_references()
  encoder_only.loss.update(decoder_ce=0.0, decoder_smooth=0.0, decoder_boundary=0.0)
  encoder_only.eval.use_decoder = False
  rows['(b) DiffAct encoder alone'] = train.train_and_evaluate(
    encoder_only, os.path.join(args.workdir, 'encoder')
  )['DiffAct']
  rows['(c) DiffAct'] = train.train_and_evaluate(config, os.path.join(args.workdir, 'diffact'))[
    'DiffAct'
  ]
  print(report.format_table(rows))
  for name, result in rows.items():
    print(json.dumps({'benchmark': 'quality', 'model': name, 'steps': steps, **result}))


if __name__ == '__main__':
  main()

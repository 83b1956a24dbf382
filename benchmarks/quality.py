r"""Does the diffusion pay off? Three models, same synthetic split, same training budget.

  python benchmarks/quality.py [--steps=1200] [--workdir=/tmp/polyseg-quality]

(a) a per-frame linear classifier (softmax regression on the features, Adam, the same steps),
(b) the DiffAct encoder alone (decoder losses off, prediction = encoder argmax),
(c) full DiffAct (encoder + denoising decoder, DDIM sampling).
All three get the same post-processing. Prints one table and one JSON line per model.
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=None, help='training steps (default: config)')
  parser.add_argument('--workdir', default='/tmp/polyseg-quality')
  args = parser.parse_args()
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

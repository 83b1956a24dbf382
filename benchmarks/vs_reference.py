r"""polyseg against the DiffAct reference code (PyTorch, CPU), side by side, in one run.

  pip install -e '.[parity]'            # PyTorch CPU; polyseg itself never imports it
  git clone https://github.com/Finspire13/DiffAct /tmp/DiffAct
  python benchmarks/vs_reference.py --reference=/tmp/DiffAct [--sizes=gtea,breakfast] \
      [--frames=1000,4000] [--rounds=2] [--repeats=3] [--threads=2]

For each published size (benchmarks/common.py SIZES: GTEA, Breakfast; DiffAct's configs on 2048-d
features) and video length T, every figure is measured in a fresh process of its own, the
implementations alternating (reference, polyseg, polyseg batched, reference, ...) for --rounds
rounds; a process builds its model, runs once to warm up (polyseg: its compilation is timed apart
and excluded) and reports the median of --repeats timed runs. Each process is pinned to --threads
cores (PyTorch also runs that many threads).

- train: one optimizer step. The reference: its `get_training_loss` on one video (the way its own
  trainer steps, one video at a time), the weighted sum of the terms, backward and Adam. polyseg: the
  engine's jitted train step (train.make_train_step) on a batch of one video, and batched: the
  config's train.batch_size videos in one step, per valid frame.
- ddim: one whole DDIM sampling of one video (the reference's `ddim_sample`, polyseg's jitted
  sampler `task._sample` over its temporal views), the config's 25 steps.

Prints one JSON line per process and a table of seconds per video (and per 1,000 valid frames) with
the ratio reference / polyseg: how many times faster polyseg is.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

IMPLEMENTATIONS = ('reference', 'polyseg', 'polyseg_batched')


def reference_seconds(args) -> dict:
  """One worker process: the reference's train step or DDIM sampling at args.size, args.frames."""
  import common
  import parity_diffact
  import torch

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  size = common.SIZES[args.size]
  config = common.size_config(args.size)
  ref_model, _ = parity_diffact.import_reference(args.reference)
  model = ref_model.ASDiffusionModel(
    **parity_diffact.reference_params(config, size.input_dim, size.num_classes)
  )
  rng = np.random.default_rng(0)
  features, labels = parity_diffact.random_video(rng, args.frames, size.input_dim, size.num_classes)
  features = torch.from_numpy(features.T[None].copy())  # [1, D, T]
  if args.what == 'ddim':
    model.eval()

    def run():
      with torch.no_grad():
        model.ddim_sample(features, seed=0)

  else:
    from polyseg.data import pipeline

    model.train()
    optimizer = torch.optim.Adam(
      model.parameters(), lr=config.optim.learning_rate, weight_decay=config.optim.weight_decay
    )
    onehot = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), size.num_classes)
    onehot = onehot.T[None].float()
    boundary = pipeline.boundary_target(labels, config.data.boundary_sigma)
    boundary = torch.from_numpy(boundary)[None, None].float()
    class_weights = None
    if config.loss.class_weighting:
      class_weights = pipeline.class_weights(np.bincount(labels, minlength=size.num_classes))
    weights = parity_diffact.reference_loss_weights(config)

    def run():
      terms = parity_diffact.reference_terms(
        model, features, onehot, boundary, class_weights, config.loss.soft_label
      )
      sum(weights[k] * v for k, v in terms.items()).backward()
      optimizer.step()
      optimizer.zero_grad()

  run()  # warm-up
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return {'seconds': statistics.median(times), 'valid_frames': args.frames, 'videos': 1}


def polyseg_seconds(args) -> dict:
  """One worker process: polyseg's jitted train step (one video, or the config's batch) or DDIM
  sampler at args.size, args.frames; compilation timed apart."""
  import common

  size = common.SIZES[args.size]
  task = common.build_task(common.size_config(args.size), size.num_classes, size.input_dim)
  if args.what == 'ddim':
    program = common.sample_program(task, common.random_video(task, args.frames))
    videos = 1
  else:
    videos = task.config.train.batch_size if args.implementation == 'polyseg_batched' else 1
    program = common.train_step_program(task, common.train_batch(task, args.frames, videos))
  _, compiled, lower_s, compile_s = common.compile_timed(program.jitted, *program.args)
  seconds = common.run_seconds(lambda *_: program.run(compiled), program.args, repeats=args.repeats)
  return {
    'seconds': seconds,
    'valid_frames': program.frames if args.what == 'train' else args.frames,
    'videos': videos,
    'compile_s': lower_s + compile_s,
  }


def worker(args) -> None:
  """Runs in a fresh process: pinned to --threads cores, then one implementation's figure."""
  os.sched_setaffinity(0, range(args.threads))
  seconds = reference_seconds if args.implementation == 'reference' else polyseg_seconds
  row = {'size': args.size, 'frames': args.frames, 'what': args.what}
  print(json.dumps({**row, 'implementation': args.implementation, **seconds(args)}))


def run_worker(args, size: str, frames: int, what: str, implementation: str) -> dict:
  """The JSON row of a fresh worker process (its output is passed through on failure)."""
  command = [
    sys.executable,
    os.path.abspath(__file__),
    f'--reference={args.reference}',
    f'--worker={implementation}',
    f'--size={size}',
    f'--frames={frames}',
    f'--what={what}',
    f'--repeats={args.repeats}',
    f'--threads={args.threads}',
  ]
  env = {**os.environ, 'OMP_NUM_THREADS': str(args.threads)}
  done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  if done.returncode:
    raise SystemExit(f'{" ".join(command)} failed:\n{done.stdout}\n{done.stderr}')
  row = json.loads(done.stdout.strip().splitlines()[-1])
  print(json.dumps(row), flush=True)
  return row


def table(rows: list[dict]) -> str:
  """Seconds per video and per 1,000 valid frames, the median over rounds, and the ratios."""
  lines = [
    f'{"size, T":<18}{"what":<7}{"reference":>11}{"polyseg":>10}{"ratio":>8}'
    + f'{"batched/1k":>12}{"ratio/frame":>13}'
  ]
  groups = {}  # (size, frames, what) -> implementation -> rows
  for r in rows:
    groups.setdefault((r['size'], r['frames'], r['what']), {}).setdefault(
      r['implementation'], []
    ).append(r)
  seconds = lambda rs: statistics.median(r['seconds'] for r in rs)
  per_kframe = lambda rs: statistics.median(1e3 * r['seconds'] / r['valid_frames'] for r in rs)
  for (size, frames, what), runs in groups.items():
    ref, ours = seconds(runs['reference']), seconds(runs['polyseg'])
    line = f'{f"{size}, {frames:,}":<18}{what:<7}{ref:>10.3f}s{ours:>9.3f}s{ref / ours:>7.2f}x'
    if 'polyseg_batched' in runs:
      batched = per_kframe(runs['polyseg_batched'])
      line += f'{batched:>11.3f}s{per_kframe(runs["reference"]) / batched:>12.2f}x'
    lines.append(line)
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--reference', required=True, help='a checkout of the DiffAct code')
  parser.add_argument('--sizes', default='gtea,breakfast')
  parser.add_argument('--frames', default='1000,4000')
  parser.add_argument('--what', default='train,ddim')
  parser.add_argument('--rounds', type=int, default=2, help='A B A B: processes per figure')
  parser.add_argument('--repeats', type=int, default=3, help='timed runs per process')
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--worker', choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
  parser.add_argument('--size', help=argparse.SUPPRESS)
  parser.add_argument('--implementation', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if not os.path.isfile(os.path.join(args.reference, 'model.py')):
    raise SystemExit(f'--reference={args.reference}: no model.py there; expected DiffAct')
  if args.worker:
    args.implementation = args.worker
    args.frames = int(args.frames)
    return worker(args)
  print(
    json.dumps(
      {
        'benchmark': 'vs_reference',
        'cpus': os.cpu_count(),
        'load': os.getloadavg(),
        'threads': args.threads,
        'repeats': args.repeats,
        'rounds': args.rounds,
      }
    ),
    flush=True,
  )
  rows = []
  for size in args.sizes.split(','):
    for frames in (int(f) for f in args.frames.split(',')):
      for what in args.what.split(','):
        impls = IMPLEMENTATIONS if what == 'train' else IMPLEMENTATIONS[:2]
        for _ in range(args.rounds):
          for implementation in impls:
            rows.append(run_worker(args, size, frames, what, implementation))
  print(table(rows))


if __name__ == '__main__':
  main()

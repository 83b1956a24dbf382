r"""Multi-device scaling of the train step: the engine's sharded step on N devices.

  python benchmarks/scaling.py [--model=gtea] [--devices=1,2,4] [--per_device_batch=1] \
      [--frames=0] [--steps=5] [--fsdp=1]

For each N, a fresh process with N devices (on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)
builds the task at the model's published size (benchmarks/common.py SIZES), a mesh over its N devices
(polyseg/engine/parallel.py), params replicated (or FSDP over `--fsdp`), and a batch of N x per_device_batch
random videos split over the devices (weak scaling: the work per device is fixed). Prints one JSON line
per N: step time, frames/s, and efficiency = (frames/s per device at N) / (the same at the first
N of --devices); 1.0 is perfect scaling.
On a CPU host the forced devices share the same cores, so efficiency shows the cost of sharding
(collectives, partitioning) rather than a speed-up; on GPU/TPU each device is a chip.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import common

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(args: argparse.Namespace) -> dict:
  """Runs in the child process: times the sharded step on every device of this process."""
  import jax

  from polyseg.engine import parallel
  from polyseg.engine import train

  size = common.SIZES[args.model]
  config = common.size_config(args.model)
  config.parallel.fsdp = args.fsdp
  task = common.build_task(config, size.num_classes, size.input_dim)
  mesh = parallel.make_mesh(config)
  batch_size = mesh.size * args.per_device_batch
  batch = common.train_batch(task, args.frames or size.frames, batch_size)
  tx = train.make_optimizer(config)
  rng = jax.random.PRNGKey(0)
  shardings = train.state_shardings(task, tx, mesh, config)
  state = train.init_state(task, tx, rng, shardings)
  step = train.make_train_step(task, tx, rng, mesh, shardings)
  global_batch = parallel.global_batch(batch, mesh)
  _, compiled, _, compile_s = common.compile_timed(step, state, global_batch)
  state, _ = compiled(state, global_batch)  # warm-up
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, global_batch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - start) / args.steps
  return {
    'devices': mesh.size,
    'mesh': dict(mesh.shape),
    'batch_shape': list(batch['mask'].shape),
    'compile_s': compile_s,
    'step_s': step_s,
    'frames_per_s': float(batch['mask'].sum()) / step_s,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='gtea', choices=sorted(common.SIZES))
  parser.add_argument('--devices', type=common.parse_ints, default='1,2,4')
  parser.add_argument('--per_device_batch', type=int, default=1)
  parser.add_argument('--frames', type=int, default=0, help='frames per video (0: typical)')
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--fsdp', type=int, default=1, help='size of the mesh fsdp axis')
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(common._rounded(worker(args))))
    return
  print(json.dumps(common.header('scaling', model=args.model, fsdp=args.fsdp)))
  base = None
  for n in args.devices:
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={n}')
    argv = [a for a in sys.argv[1:] if not a.startswith('--devices')]
    out = subprocess.run(
      [sys.executable, os.path.join(HERE, 'scaling.py'), '--worker', *argv],
      env=env,
      check=True,
      capture_output=True,
      text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    base = base or result['frames_per_s'] / result['devices']
    result['efficiency'] = result['frames_per_s'] / (result['devices'] * base)
    print(json.dumps({'benchmark': 'scaling', 'model': args.model, **common._rounded(result)}))


if __name__ == '__main__':
  main()

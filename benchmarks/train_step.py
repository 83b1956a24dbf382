r"""Train-step throughput of each task at its published size, on random batches.

  python benchmarks/train_step.py [--models=gtea,50salads,breakfast,blip2] [--steps=5] \
      [--batch_size=4] [--frames=0] [--scan_layers | --compare_scan --rounds=5]

For each model size (benchmarks/common.py SIZES: the config, its dataset's classes, feature dimension
and typical video length), builds the task, the engine's jitted train step (train.make_train_step,
state donated) and one batch of --batch_size random videos of --frames frames (0: the size's typical
length) through the task's train loader, so sample rate, crop and bucket padding are those of
training. Times compilation, then --warmup steps (excluded), then --rounds blocks of --steps steps,
each with a single sync at its end, as the engine's loop runs between log intervals. With
--compare_scan, the unrolled and the scanned step (model.scan_layers) of each size are compiled
one after the other in this process and their blocks alternate, so that both see the same machine
(its speed drifts by 20% within an hour here; fresh processes compare worse). Prints one JSON line
per model and variant: {"model", "task", "scan_layers", "params", "batch_shape", "frames_per_batch"
(valid frames at the sampled rate), "compile_s", "step_s" (the median block's time per step),
"block_s" (every block's), "steps_per_s", "frames_per_s"}.
"""

import argparse
import statistics
import time

import common
import jax

from polyseg.nn import layers


def compiled_step(name: str, scan_layers: bool, args: argparse.Namespace) -> dict:
  """The size's train step compiled and warmed up: {'program', 'compiled', 'row'} (the row without
  its times per step)."""
  size = common.SIZES[name]
  task = common.build_task(common.size_config(name, scan_layers), size.num_classes, size.input_dim)
  batch_size = args.batch_size or task.config.train.batch_size
  program = common.train_step_program(
    task, common.train_batch(task, args.frames or size.frames, batch_size)
  )
  _, compiled, lower_s, compile_s = common.compile_timed(program.jitted, *program.args)
  for _ in range(args.warmup):
    program.run(compiled)
  jax.block_until_ready(program.args)
  row = {
    'model': name,
    'task': task.config.task,
    'scan_layers': scan_layers,
    'params': layers.count_params(program.args[0]['params']),
    'batch_shape': program.shape,
    'frames_per_batch': program.frames,
    'compile_s': lower_s + compile_s,
  }
  return {'program': program, 'compiled': compiled, 'row': row}


def block_time(step: dict, steps: int) -> float:
  """Seconds per step over `steps` steps with one sync at the end."""
  start = time.perf_counter()
  for _ in range(steps):
    step['program'].run(step['compiled'])
  jax.block_until_ready(step['program'].args)
  return (time.perf_counter() - start) / steps


def benchmark(name: str, args: argparse.Namespace) -> list[dict]:
  """One row per variant of the size (unrolled and scanned with --compare_scan), blocks alternated."""
  variants = (False, True) if args.compare_scan else (args.scan_layers,)
  steps = [compiled_step(name, scan, args) for scan in variants]
  blocks = [[] for _ in steps]
  for _ in range(args.rounds):
    for step, times in zip(steps, blocks):
      times.append(block_time(step, args.steps))
  rows = []
  for step, times in zip(steps, blocks):
    step_s = statistics.median(times)
    rows.append(
      step['row']
      | {
        'step_s': step_s,
        'block_s': times,
        'steps_per_s': 1 / step_s,
        'frames_per_s': step['row']['frames_per_batch'] / step_s,
      }
    )
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_models_argument(parser, default='gtea,50salads,breakfast,blip2')
  parser.add_argument('--steps', type=int, default=5, help='timed steps per block')
  parser.add_argument('--rounds', type=int, default=1, help='timed blocks per model and variant')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps after compilation')
  parser.add_argument('--batch_size', type=int, default=0, help='0: the config\'s train.batch_size')
  parser.add_argument(
    '--frames', type=int, default=0, help='frames per video; 0: the size\'s typical'
  )
  common.add_scan_argument(parser)
  parser.add_argument(
    '--compare_scan',
    action='store_true',
    help='the unrolled and the scanned step of each model, their blocks alternated',
  )
  args = parser.parse_args()
  if args.compare_scan and args.scan_layers:
    parser.error('--compare_scan times both variants; leave out --scan_layers')
  if args.steps < 1 or args.rounds < 1:
    parser.error(f'--steps and --rounds must be >= 1, got {args.steps}, {args.rounds}')
  common.emit(common.header('train_step', steps=args.steps, rounds=args.rounds, warmup=args.warmup))
  for name in args.models:
    for row in benchmark(name, args):
      common.emit(row)


if __name__ == '__main__':
  main()

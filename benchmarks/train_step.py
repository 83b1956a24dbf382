r"""Train-step throughput of each task at its published size, on random batches.

  python benchmarks/train_step.py [--models=gtea,50salads,breakfast,blip2] [--steps=5] \
      [--batch_size=4] [--frames=0]

For each model size (benchmarks/common.py SIZES: the config, its dataset's classes, feature dimension
and typical video length), builds the task, the engine's jitted train step (train.make_train_step,
state donated) and one batch of --batch_size random videos of --frames frames (0: the size's typical
length) through the task's train loader, so sample rate, crop and bucket padding are those of
training. Times compilation, then --warmup steps (excluded), then --steps steps with a single sync at
the end, as the engine's loop runs between log intervals. Prints one JSON line per model:
{"model", "task", "params", "batch_shape", "frames_per_batch" (valid frames at the sampled rate),
"compile_s", "step_s", "steps_per_s", "frames_per_s"}.
"""

import argparse
import time

import common
import jax

from polyseg.nn import layers


def benchmark(name: str, args: argparse.Namespace) -> dict:
  size = common.SIZES[name]
  task = common.build_task(
    common.size_config(name, args.scan_layers), size.num_classes, size.input_dim
  )
  batch_size = args.batch_size or task.config.train.batch_size
  program = common.train_step_program(
    task, common.train_batch(task, args.frames or size.frames, batch_size)
  )
  _, compiled, lower_s, compile_s = common.compile_timed(program.jitted, *program.args)
  for _ in range(args.warmup):
    program.run(compiled)
  jax.block_until_ready(program.args)
  start = time.perf_counter()
  for _ in range(args.steps):
    program.run(compiled)
  jax.block_until_ready(program.args)
  step_s = (time.perf_counter() - start) / args.steps
  return {
    'model': name,
    'task': task.config.task,
    'params': layers.count_params(program.args[0]['params']),
    'batch_shape': program.shape,
    'frames_per_batch': program.frames,
    'compile_s': lower_s + compile_s,
    'step_s': step_s,
    'steps_per_s': 1 / step_s,
    'frames_per_s': program.frames / step_s,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_models_argument(parser, default='gtea,50salads,breakfast,blip2')
  parser.add_argument('--steps', type=int, default=5, help='timed steps per model')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps after compilation')
  parser.add_argument('--batch_size', type=int, default=0, help='0: the config\'s train.batch_size')
  parser.add_argument(
    '--frames', type=int, default=0, help='frames per video; 0: the size\'s typical'
  )
  common.add_scan_argument(parser)
  args = parser.parse_args()
  common.emit(common.header('train_step', steps=args.steps, warmup=args.warmup))
  for name in args.models:
    common.emit(benchmark(name, args))


if __name__ == '__main__':
  main()

r"""Train step and whole DDIM sampling at the published sizes on an accelerator: one short run.

  python benchmarks/gpu.py [--budget_s=300] [--plan=gtea:train:bfloat16,...] [--out=FILE]

Runs the items of --plan in order (`model:program:dtype[:batch]`; model a benchmarks/common.py size,
program `train` (the engine's jitted train step, state donated, batch of the config's
train.batch_size unless `:batch` says otherwise) or `sample` (the task's whole jitted DDIM sampler
over the temporal views of one video of the size's typical length), dtype the config's
`model.dtype`), and stops starting new items once --budget_s seconds have passed, so a leased
machine's time is never overrun. For each item it prints one JSON line: compile seconds, seconds per
run (median of timed runs after warm-up, each synchronised), valid frames per second, XLA's FLOP
count and the model FLOP utilisation it gives against the bfloat16 matmul rate measured first on
the same device (`peak_bf16_flops`). XLA counts a loop body once: a sampler's FLOPs are therefore
estimated as encoder + sampling_steps x (one pass of the loop body), and flagged `flops_estimated`.

benchmarks/gpu.sh runs it with the plan of the README's GPU table.
"""

import argparse
import json
import statistics
import time

import common
import jax
import jax.numpy as jnp

DEFAULT_PLAN = (
  'gtea:train:bfloat16,gtea:sample:bfloat16,breakfast:train:bfloat16,breakfast:sample:bfloat16,'
  'blip2:train:bfloat16,blip2:sample:bfloat16,gtea:train:float32,breakfast:sample:float32,'
  'gtea:train:bfloat16:8,50salads:train:bfloat16,50salads:sample:bfloat16'
)


def matmul_rate(dtype, n: int = 8192, runs: int = 10) -> float:
  """FLOP/s of an n x n x n matmul in `dtype` on random data (median of `runs` after warm-up)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  matmul = jax.jit(lambda a, b: a @ b)
  return 2 * n**3 / common.run_seconds(matmul, (a, b), repeats=runs)


def timed_runs(program, compiled, min_runs: int, min_s: float) -> float:
  """Median seconds of one synchronised run, over at least `min_runs` runs and `min_s` seconds
  (two warm-up runs first)."""
  for _ in range(2):
    jax.block_until_ready(program.run(compiled))
  times, start = [], time.perf_counter()
  while len(times) < min_runs or time.perf_counter() - start < min_s:
    t0 = time.perf_counter()
    jax.block_until_ready(program.run(compiled))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def item_row(item: str, peak: float) -> dict:
  name, program_kind, dtype, *batch = item.split(':')
  size = common.SIZES[name]
  config = common.size_config(name)
  config.model.dtype = dtype
  task = common.build_task(config, size.num_classes, size.input_dim)
  batch_size = int(batch[0]) if batch else config.train.batch_size
  if program_kind == 'train':
    program = common.train_step_program(task, common.train_batch(task, size.frames, batch_size))
  elif program_kind == 'sample':
    program = common.sample_program(task, common.random_video(task, size.frames))
  else:
    raise ValueError(f'{item}: program must be train or sample')
  _, compiled, lower_s, compile_s = common.compile_timed(program.jitted, *program.args)
  flops = common.cost_numbers(compiled).get('flops', 0.0)
  estimated = False
  if program_kind == 'sample':  # the loop body counted once: add the other sampling steps
    params, inputs, mask, _ = program.args
    _, encoder, _, _ = common.compile_timed(task._encode, params, inputs, mask)
    encoder_flops = common.cost_numbers(encoder).get('flops', 0.0)
    steps = config.diffusion.sampling_steps
    flops = encoder_flops + steps * max(flops - encoder_flops, 0.0)
    estimated = True
  run_s = timed_runs(program, compiled, min_runs=5, min_s=2.0)
  return {
    'item': item,
    'task': config.task,
    'dtype': dtype,
    'shape': program.shape,
    'valid_frames': program.frames,
    'compile_s': lower_s + compile_s,
    'run_s': run_s,
    'frames_per_s': program.frames / run_s,
    'flops': flops,
    'flops_estimated': estimated,
    'mfu': flops / run_s / peak if flops else None,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    '--plan', default=DEFAULT_PLAN, help='comma-separated model:program:dtype[:batch]'
  )
  parser.add_argument('--budget_s', type=float, default=300.0, help='start no item after this')
  parser.add_argument('--out', default='', help='also append the JSON lines to this file')
  parser.add_argument('--matmul_n', type=int, default=8192, help='size of the peak-rate matmuls')
  args = parser.parse_args()
  start = time.perf_counter()

  def emit(row):
    common.emit(row)
    if args.out:
      with open(args.out, 'a') as f:
        f.write(json.dumps(row) + '\n')

  peak = matmul_rate(jnp.bfloat16, args.matmul_n)
  emit(
    common.header(
      'gpu',
      device_kind=jax.devices()[0].device_kind,
      peak_bf16_flops=peak,
      peak_f32_flops=matmul_rate(jnp.float32, args.matmul_n // 2),
    )
  )
  for item in args.plan.split(','):
    if time.perf_counter() - start > args.budget_s:
      emit({'item': item, 'skipped': f'budget of {args.budget_s:.0f} s spent'})
      continue
    try:
      emit(item_row(item, peak))
    except Exception as error:  # noqa: BLE001  (one item failing, e.g. out of memory, keeps the rest)
      emit({'item': item, 'error': f'{type(error).__name__}: {str(error)[:300]}'})


if __name__ == '__main__':
  main()

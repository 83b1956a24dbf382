r"""Inference and training on one long video: time and memory against its length T.

  python benchmarks/long_video.py [--lengths=2000,8000,32000] [--modes=infer,train] \
      [--infer_model=breakfast] [--train_model=gtea] [--timeout=1800]

infer  whole DDIM sampling (`task._sample`, as `task.predict` runs it) of one random video of T frames
       with the --infer_model size (default: DiffAct at its Breakfast size);
train  one train step (forward, backward, Adam update; train.make_train_step) of the --train_model size
       (default: DiffAct at its GTEA size) on a batch of that one video, uncropped.
Each (mode, T) runs in a fresh subprocess, so its memory numbers are its own: the compiled program's
`memory_analysis()` (temp and argument bytes) and the process's resident set (Linux /proc): before
the runs, the peak during the runs (the high-water mark is reset after compilation) and the peak of
the whole process including compilation. One warm-up run, then one timed run. Prints one JSON line
per (mode, T), then per mode the growth from the shortest to the longest T: "time_ratio",
"temp_ratio", "run_rss_ratio" (growth of the RSS during the run) against "length_ratio" (linear
memory and time give ratios near the length ratio). A subprocess that fails (e.g. killed when out of
memory) gives a row with "error" and its exit code.
"""

import argparse
import json
import subprocess
import sys
import time

import common
import jax

MODES = ('infer', 'train')


def worker(mode: str, model: str, num_frames: int) -> dict:
  """Builds, compiles and runs one program; returns its row."""
  size = common.SIZES[model]
  task = common.build_task(common.size_config(model), size.num_classes, size.input_dim)
  if mode == 'infer':
    program = common.sample_program(task, common.random_video(task, num_frames))
  else:
    program = common.train_step_program(
      task, common.train_batch(task, num_frames, batch_size=1, max_len=None)
    )
  _, compiled, lower_s, compile_s = common.compile_timed(program.jitted, *program.args)
  memory = common.cost_numbers(compiled)
  compiled_rss = common.rss_bytes()
  common.reset_peak_rss()
  jax.block_until_ready(program.run(compiled))  # warm-up: first-run costs are not per-frame costs
  start = time.perf_counter()
  jax.block_until_ready(program.run(compiled))
  run_s = time.perf_counter() - start
  run_peak = common.rss_bytes()['peak_rss']
  return {
    'mode': mode,
    'model': model,
    'T': num_frames,
    'shape': program.shape,
    'compile_s': lower_s + compile_s,
    'run_s': run_s,
    'us_per_frame': run_s / num_frames * 1e6,
    'temp_bytes': memory['temp_bytes'],
    'argument_bytes': memory['argument_bytes'],
    'rss_before_run_bytes': compiled_rss['rss'],
    'run_peak_rss_bytes': run_peak,
    'run_rss_bytes': run_peak - compiled_rss['rss'],
    'peak_rss_bytes': max(compiled_rss['peak_rss'], run_peak),
  }


def run_subprocess(mode: str, model: str, num_frames: int, timeout: float) -> dict:
  """`worker(...)` in a fresh python process; a row with 'error' when it fails."""
  command = [
    sys.executable,
    __file__,
    f'--worker={mode}',
    f'--model={model}',
    f'--length={num_frames}',
  ]
  try:
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {'mode': mode, 'model': model, 'T': num_frames, 'error': f'timeout after {timeout} s'}
  if done.returncode != 0:
    return {
      'mode': mode,
      'model': model,
      'T': num_frames,
      'returncode': done.returncode,
      'error': done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no output',
    }
  return json.loads(done.stdout.strip().splitlines()[-1])


def growth(rows: list[dict]) -> dict:
  """Ratios of the longest to the shortest successful T of one mode."""
  first, last = rows[0], rows[-1]
  return {
    'mode': first['mode'],
    'from_T': first['T'],
    'to_T': last['T'],
    'length_ratio': last['T'] / first['T'],
    'time_ratio': last['run_s'] / first['run_s'],
    'temp_ratio': last['temp_bytes'] / first['temp_bytes'],
    'run_rss_ratio': last['run_rss_bytes'] / max(first['run_rss_bytes'], 1),
    'peak_rss_ratio': last['peak_rss_bytes'] / first['peak_rss_bytes'],
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--lengths', type=common.parse_ints, default='2000,8000,32000')
  parser.add_argument('--modes', default='infer,train', help=f'comma-separated, of {MODES}')
  parser.add_argument('--infer_model', default='breakfast', choices=sorted(common.SIZES))
  parser.add_argument('--train_model', default='gtea', choices=sorted(common.SIZES))
  parser.add_argument('--timeout', type=float, default=1800, help='seconds per subprocess')
  parser.add_argument('--worker', choices=MODES, help=argparse.SUPPRESS)
  parser.add_argument('--model', help=argparse.SUPPRESS)
  parser.add_argument('--length', type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    common.emit(worker(args.worker, args.model, args.length))
    return
  modes = [m for m in args.modes.split(',') if m]
  if set(modes) - set(MODES):
    parser.error(f'--modes: unknown {sorted(set(modes) - set(MODES))}; choose from {MODES}')
  common.emit(
    common.header(
      'long_video', infer_model=args.infer_model, train_model=args.train_model, lengths=args.lengths
    )
  )
  for mode in modes:
    model = args.infer_model if mode == 'infer' else args.train_model
    rows = []
    for num_frames in args.lengths:
      row = run_subprocess(mode, model, num_frames, args.timeout)
      common.emit(row)
      if 'error' not in row:
        rows.append(row)
    if len(rows) > 1:
      common.emit(growth(rows))


if __name__ == '__main__':
  main()

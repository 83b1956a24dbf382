r"""Speed and memory of the three mLSTM forms (recurrent, parallel, chunkwise) against T.

  python benchmarks/xlstm.py --lengths=1024,4096,16384 [--heads=4 --head_dim=16 --chunk_size=64]

Times the jitted cell forward and forward+backward (compile excluded, median of --repeats runs) for
one sequence of T frames, and reads the compiled forward+backward program's temp buffer size
(`memory_analysis().temp_size_in_bytes`). Prints one JSON line per (form, T):
{"form", "T", "fwd_ms", "fwd_bwd_ms", "temp_bytes"}, or {"form", "T", "skipped": reason} when the
parallel form's [T, T] matrices would exceed --max_quadratic_bytes or the recurrent form's T is above
--max_recurrent_frames.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from polyseg.engine import parallel
from polyseg.methods.hopadiff import xlstm

parallel.keep_ynnpack_to_matmuls()  # as `python -m polyseg.main` runs, before any device is used


def cell_inputs(batch: int, heads: int, num_frames: int, head_dim: int, seed: int = 0):
  """Random q, k / sqrt(dh), v [B, H, T, dh], gates [B, H, T], all-valid mask [B, T]."""
  rng = np.random.default_rng(seed)
  shape = (batch, heads, num_frames, head_dim)
  q, k, v = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(3))
  i_pre = jnp.asarray(rng.normal(size=shape[:3]), jnp.float32)
  log_f = jax.nn.log_sigmoid(jnp.asarray(rng.normal(size=shape[:3]) + 4.0, jnp.float32))
  return q, k / np.sqrt(head_dim), v, i_pre, log_f, jnp.ones((batch, num_frames), jnp.float32)


def median_ms(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def benchmark(form: str, args, chunk_size: int, repeats: int) -> dict[str, float]:
  def forward(*a):
    return xlstm.mlstm(form, *a, chunk_size=chunk_size)

  def loss(*a):
    return jnp.sum(forward(*a) ** 2)

  fwd = jax.jit(forward)
  fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
  compiled = fwd_bwd.lower(*args).compile()
  return {
    'fwd_ms': round(median_ms(fwd, args, repeats), 3),
    'fwd_bwd_ms': round(median_ms(compiled, args, repeats), 3),
    'temp_bytes': int(compiled.memory_analysis().temp_size_in_bytes),
  }


def skip_reason(form: str, num_frames: int, args: argparse.Namespace) -> str | None:
  quadratic_bytes = args.batch * args.heads * num_frames * num_frames * 4
  if form == 'parallel' and quadratic_bytes > args.max_quadratic_bytes:
    return (
      f'one [B, H, T, T] float32 matrix is {quadratic_bytes / 2**30:.1f} GiB '
      f'> --max_quadratic_bytes={args.max_quadratic_bytes / 2**30:.1f} GiB'
    )
  if form == 'recurrent' and num_frames > args.max_recurrent_frames:
    return f'T > --max_recurrent_frames={args.max_recurrent_frames} (one scan step per frame)'
  return None


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--lengths', default='1024,4096,16384', help='comma-separated T values')
  parser.add_argument('--forms', default='recurrent,parallel,chunkwise')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--heads', type=int, default=4)
  parser.add_argument('--head_dim', type=int, default=16)
  parser.add_argument('--chunk_size', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--max_quadratic_bytes', type=float, default=2**30)
  parser.add_argument('--max_recurrent_frames', type=int, default=16384)
  args = parser.parse_args()
  print(
    json.dumps(
      {
        'benchmark': 'xlstm',
        'backend': jax.default_backend(),
        'batch': args.batch,
        'heads': args.heads,
        'head_dim': args.head_dim,
        'chunk_size': args.chunk_size,
      }
    )
  )
  for num_frames in (int(t) for t in args.lengths.split(',')):
    inputs = cell_inputs(args.batch, args.heads, num_frames, args.head_dim)
    for form in args.forms.split(','):
      row = {'form': form, 'T': num_frames}
      reason = skip_reason(form, num_frames, args)
      if reason:
        row['skipped'] = reason
      else:
        row.update(benchmark(form, inputs, args.chunk_size, args.repeats))
      print(json.dumps(row), flush=True)


if __name__ == '__main__':
  main()

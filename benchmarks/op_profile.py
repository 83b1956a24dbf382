r"""Compiled cost, memory, roofline and an XLA trace of a task's train step and DDIM sampler.

  python benchmarks/op_profile.py --config=configs/diffact.py:dataset=breakfast --input_dim=2048 \
      --num_classes=48 --length=2048 --trace_dir=/tmp/polyseg-profile [--hlo_dump=DIR] \
      [--peak_flops=1e11 --peak_bandwidth=2e10] [--config.model.decoder.num_layers=4 ...]
  python benchmarks/op_profile.py --config=configs/hal.py --data=config --programs=train_step \
      --trace_dir=/tmp/polyseg-profile

With --data=random (the default; DiffAct and HopaDIFF), builds the task of the config for random
videos of the given shapes (no dataset is read or generated); with --data=config, for the config's
own data (every method: its synthetic dataset, generated on first use, or --config.data.root; for
Polyphony's stage 3 the features stage 2 wrote, `--config.data.root=<workdir>/stage2/dataset`;
--length, --num_classes and --input_dim do not apply). Then compiles with
`jax.jit(...).lower(...).compile()`:
  train_step   the engine's jitted train step (train.make_train_step) on a batch of --batch_size
               videos (random ones of --length frames, or the first training videos) through the
               task's train loader (sample rate, crop, bucket);
  ddim_sample  the task's whole DDIM sampling program (`task._sample`: encoder, condition
               projections, `lax.scan` over the sampling steps, `vmap` over the temporal views) on
               one video (random, of --length frames, or the longest validation video); DiffAct,
               HopaDIFF and Polyphony (HAL and 2s-DAS predict otherwise).
For each it prints one JSON line: `cost_analysis()` FLOPs and bytes accessed (XLA counts a while
loop's body once: the sampler's 'flops' are the encoder plus ONE denoising step, and so is its
roofline; "loop_trip_counts" lists the programs' loop lengths), `memory_analysis()`
sizes (argument, output, alias, temp, generated code), arithmetic intensity, the roofline (attainable
FLOP/s = min(peak_flops, intensity * peak_bandwidth) and the time it implies) against --peak_flops /
--peak_bandwidth (measured on this device with a matmul and a copy when not given), the measured time
per run, and the --top_ops most expensive HLO instructions of the trace with the polyseg source line
that made them. A `jax.profiler` trace of --runs executions (after one warm-up) goes to
<trace_dir>/<program>/ (view with `tensorboard --logdir=<trace_dir>/<program>` and the profile
plugin, or XProf); --hlo_dump writes <program>.stablehlo.mlir (lowered) and <program>.hlo.txt
(optimised) there.
"""

import os
import time

import common
import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from polyseg import methods
from polyseg.data import pipeline
from polyseg.nn import layers

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Path to a config file (configs/<method>.py[:arg]).', lock_config=True
)
flags.DEFINE_enum(
  'data', 'random', ['random', 'config'], 'random: videos of --length frames; config: its own data.'
)
flags.DEFINE_string('trace_dir', None, 'Directory for the jax.profiler traces (one per program).')
flags.DEFINE_float('peak_flops', 0.0, 'Peak FLOP/s of the device (0: measure a matmul).')
flags.DEFINE_float('peak_bandwidth', 0.0, 'Peak memory bandwidth in bytes/s (0: measure a copy).')
flags.DEFINE_string('hlo_dump', None, 'Directory to write the programs\' HLO text to.')
flags.DEFINE_integer('length', 2048, 'Frames per video, at the full frame rate.')
flags.DEFINE_integer('batch_size', 0, 'Videos per train batch (0: config.train.batch_size).')
flags.DEFINE_integer(
  'num_classes', 11, 'Classes (GTEA 11, 50Salads 19, Breakfast 48, RHAS133 137).'
)
flags.DEFINE_integer(
  'input_dim', 0, 'Feature dimension (0: the config\'s, else its synthetic data\'s).'
)
flags.DEFINE_list('programs', ['train_step', 'ddim_sample'], 'Programs to profile.')
flags.DEFINE_integer('runs', 3, 'Traced executions per program (after one warm-up).')
flags.DEFINE_integer('top_ops', 8, 'Most expensive HLO instructions to list per program.')
flags.mark_flags_as_required(['config', 'trace_dir'])

PROGRAMS = ('train_step', 'ddim_sample')


def profile(name: str, program: common.Program, peaks: tuple[float, float]) -> dict:
  """Compiles, reads costs, traces FLAGS.runs executions; returns the program's JSON row."""
  lowered, compiled, lower_s, compile_s = common.compile_timed(program.jitted, *program.args)
  row = {'program': name, 'shape': program.shape, 'lower_s': lower_s, 'compile_s': compile_s}
  row.update(common.cost_numbers(compiled))
  if 'flops' in row:
    row.update(common.roofline(row['flops'], row['bytes'], *peaks))
  jax.block_until_ready(program.run(compiled))  # warm-up, outside the trace
  trace_dir = os.path.join(FLAGS.trace_dir, name)
  times = []
  with jax.profiler.trace(trace_dir):
    for index in range(FLAGS.runs):
      with jax.profiler.StepTraceAnnotation(name, step_num=index):
        start = time.perf_counter()
        jax.block_until_ready(program.run(compiled))
        times.append(time.perf_counter() - start)
  row['run_s'] = sorted(times)[len(times) // 2]
  if 'flops' in row:
    row['achieved_flops_per_s'] = row['flops'] / row['run_s']
    row['roofline_fraction'] = row['roofline_s'] / row['run_s']
  row['trace_dir'] = trace_dir
  hlo_text = compiled.as_text()
  row['loop_trip_counts'] = common.loop_trip_counts(hlo_text)
  if FLAGS.hlo_dump:
    os.makedirs(FLAGS.hlo_dump, exist_ok=True)
    for suffix, text in (('stablehlo.mlir', lowered.as_text()), ('hlo.txt', hlo_text)):
      with open(os.path.join(FLAGS.hlo_dump, f'{name}.{suffix}'), 'w') as f:
        f.write(text)
  row['top_ops'] = common.top_ops(trace_dir, hlo_text, FLAGS.runs, FLAGS.top_ops)
  return row


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  unknown = set(FLAGS.programs) - set(PROGRAMS)
  if unknown:
    raise app.UsageError(f'--programs: unknown {sorted(unknown)}; choose from {PROGRAMS}')
  config = FLAGS.config
  batch_size = FLAGS.batch_size or config.train.batch_size
  if FLAGS.data == 'config':
    method = methods.get(config.task)
    try:  # Polyphony without the features its stage 2 wrote, a root that is not a dataset, ...
      data = method.load_data(config)
    except (ValueError, OSError) as error:
      raise app.UsageError(str(error)) from None
    task = method.Task(config, data.info, train_videos=data.train)
    train_batch = lambda: common.loader_batch(task, data.train[:batch_size])
    sample_video = lambda: max(data.val or data.train, key=pipeline.num_frames)
  else:
    try:  # a task random videos are not made for, or HopaDIFF with text conditioning
      task = common.build_task(config, FLAGS.num_classes, FLAGS.input_dim or None)
    except ValueError as error:
      raise app.UsageError(str(error)) from None
    train_batch = lambda: common.train_batch(task, FLAGS.length, batch_size)
    sample_video = lambda: common.random_video(task, FLAGS.length)
  if 'ddim_sample' in FLAGS.programs and not hasattr(task, '_sample'):
    raise app.UsageError(
      f'{config.task} has no DDIM sampling program of its own: --programs=train_step'
    )
  peak_flops, peak_bandwidth = FLAGS.peak_flops, FLAGS.peak_bandwidth
  peaks_measured = not (peak_flops and peak_bandwidth)
  if peaks_measured:
    measured = common.measure_peaks()
    peak_flops, peak_bandwidth = peak_flops or measured[0], peak_bandwidth or measured[1]
  common.emit(
    common.header(
      'profile',
      task=config.task,
      params=layers.count_params(common.init_params(task)),
      data=FLAGS.data,
      length=FLAGS.length if FLAGS.data == 'random' else None,
      batch_size=batch_size,
      peak_flops=peak_flops,
      peak_bandwidth=peak_bandwidth,
      peaks_measured=peaks_measured,
    )
  )
  builders = {
    'train_step': lambda: common.train_step_program(task, train_batch()),
    'ddim_sample': lambda: common.sample_program(task, sample_video()),
  }
  for name in FLAGS.programs:
    common.emit(profile(name, builders[name](), (peak_flops, peak_bandwidth)))


if __name__ == '__main__':
  app.run(main)

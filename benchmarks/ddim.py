r"""Whole-video DDIM sampling time against the video length T.

  python benchmarks/ddim.py [--models=breakfast,blip2] [--lengths=1000,2000,4000,8000] [--repeats=1]

For each model size (benchmarks/common.py SIZES) and T, one random video of T frames goes through the
task's temporal views (sample rate, bucket padding) into its jitted sampler `task._sample` (one
program: encoder, condition projections, `lax.scan` over the sampling steps, `vmap` over the views),
as `task.predict` runs it. Compilation is timed apart from the runs (one warm-up run, then the median
of --repeats). The encoder-only program (`task._encode`, what `eval.use_decoder=False` runs) is timed
the same way, so the share of the denoising steps is visible. Prints one JSON line per (model, T):
{"model", "task", "T", "views", "view_length", "sampling_steps", "compile_s", "sample_s",
"encode_s", "us_per_frame", "temp_bytes"}.
"""

import argparse

import common


def benchmark(task, num_frames: int, repeats: int) -> dict:
  program = common.sample_program(task, common.random_video(task, num_frames))
  params, inputs, mask, _ = program.args
  _, sampler, lower_s, compile_s = common.compile_timed(program.jitted, *program.args)
  sample_s = common.run_seconds(sampler, program.args, repeats=repeats)
  _, encoder, _, _ = common.compile_timed(task._encode, params, inputs, mask)
  return {
    'T': num_frames,
    'views': program.shape[0],
    'view_length': program.shape[1],
    'sampling_steps': task.config.diffusion.sampling_steps,
    'compile_s': lower_s + compile_s,
    'sample_s': sample_s,
    'encode_s': common.run_seconds(encoder, (params, inputs, mask), repeats=repeats),
    'us_per_frame': sample_s / num_frames * 1e6,
    'temp_bytes': common.cost_numbers(sampler)['temp_bytes'],
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_models_argument(parser, default='breakfast,blip2')
  parser.add_argument('--lengths', type=common.parse_ints, default='1000,2000,4000,8000')
  parser.add_argument('--repeats', type=int, default=1, help='timed runs after one warm-up')
  common.add_scan_argument(parser)
  args = parser.parse_args()
  common.emit(common.header('ddim', repeats=args.repeats))
  for name in args.models:
    size = common.SIZES[name]
    task = common.build_task(
      common.size_config(name, args.scan_layers), size.num_classes, size.input_dim
    )
    for num_frames in args.lengths:
      row = benchmark(task, num_frames, args.repeats)
      common.emit({'model': name, 'task': task.config.task, **row})


if __name__ == '__main__':
  main()

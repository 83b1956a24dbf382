"""Shared pieces of the benchmarks: tasks of a published size on random data, compiled programs,
their cost numbers, timing, and the most expensive ops of a profiler trace.

No dataset is generated: a task is built from its config and a `dataset_lib.DataInfo` of the given shapes,
and its inputs are random videos (random features, labels in random segments) batched by the task's
own train loader and temporal views, so shapes, padding and buckets are those of a real run.
"""

import argparse
import collections
import dataclasses
import gzip
import json
import os
import platform
import re
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from polyseg import methods
from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.engine import fused_random
from polyseg.engine import parallel
from polyseg.engine import train

parallel.keep_ynnpack_to_matmuls()  # as `python -m polyseg.main` runs, before any device is used


@dataclasses.dataclass(frozen=True)
class ModelSize:
  """A config and the shapes of the data it is meant for."""

  config: str  # configs/<config>.py
  arg: str  # its get_config arg
  num_classes: int
  input_dim: int | None  # feature dimension; None: the config's synthetic feature dimensions
  frames: int  # a typical video (hopadiff: sample) length in frames, at the full frame rate


SIZES = {
  # The published DiffAct settings on I3D features (2048-d); lengths are the datasets' approximate
  # mean video lengths (50Salads is trained at sample rate 8: 1444 frames per view).
  'gtea': ModelSize('diffact', 'dataset=gtea', 11, 2048, 1115),
  '50salads': ModelSize('diffact', 'dataset=50salads', 19, 2048, 11552),
  'breakfast': ModelSize('diffact', 'dataset=breakfast', 48, 2048, 2097),
  # HopaDIFF on RHAS133 BLIP-2 features: 137 actions, samples of 3000 frames.
  'blip2': ModelSize('hopadiff', 'features=blip2', 137, 768, 3000),
  # The configs' runlocal sizes, for smoke runs.
  'tiny_diffact': ModelSize('diffact', 'runlocal=True', 5, None, 200),
  'tiny_hopadiff': ModelSize('hopadiff', 'runlocal=True', 6, None, 128),
}


def parse_names(text: str, known, what: str) -> list[str]:
  """'a,b' -> ['a', 'b'], each one of `known` (an argparse type's body: unknown names, or none at
  all, are errors naming `what`)."""
  names = [x for x in text.split(',') if x]
  unknown = [x for x in names if x not in known]
  if unknown or not names:
    raise argparse.ArgumentTypeError(f'unknown {what} {unknown}; choose from {sorted(known)}')
  return names


def parse_sizes(text: str) -> list[str]:
  """'gtea,blip2' -> ['gtea', 'blip2'] (an argparse type)."""
  return parse_names(text, SIZES, 'model size(s)')


def add_models_argument(parser: argparse.ArgumentParser, default: str) -> None:
  """--models: comma-separated names of SIZES."""
  parser.add_argument(
    '--models', type=parse_sizes, default=default, help=f'comma-separated, of {sorted(SIZES)}'
  )


def parse_ints(text: str) -> list[int]:
  """'1000,2000' -> [1000, 2000] (an argparse type)."""
  return [int(x) for x in text.split(',') if x]


def size_config(name: str, scan_layers: bool = False) -> ml_collections.ConfigDict:
  """The config of `SIZES[name]` (`scan_layers`: its model.scan_layers)."""
  from polyseg.configlib import load_config  # here: importing polyseg.main defines its absl flags

  size = SIZES[name]
  config = load_config(size.config, size.arg)
  config.model.scan_layers = scan_layers
  return config


def add_scan_argument(parser: argparse.ArgumentParser) -> None:
  """--scan_layers: the configs' model.scan_layers (the layers as one lax.scan)."""
  parser.add_argument(
    '--scan_layers', action='store_true', help='model.scan_layers=True: layers as one lax.scan'
  )


def data_info(config: ml_collections.ConfigDict, num_classes: int, input_dim: int | None):
  """`dataset_lib.DataInfo` of `num_classes` classes and features of `input_dim` (None: the config's
  feature dimensions if set, else its synthetic data's)."""
  classes = tuple(f'class{i}' for i in range(num_classes))
  d = config.data
  if config.task == 'hopadiff':
    dims = {
      branch: input_dim or d[f'{branch}_dim'] or d.synthetic[f'{branch}_dim']
      for branch in ('holistic', 'partial')
    }
    return dataset_lib.DataInfo(classes, dims, background=())
  return dataset_lib.DataInfo(
    classes, input_dim or d.input_dim or d.synthetic.input_dim, background=()
  )


RANDOM_DATA_TASKS = ('diffact', 'hopadiff')  # the tasks whose videos `random_video` makes


def build_task(config: ml_collections.ConfigDict, num_classes: int, input_dim: int | None = None):
  """The task of `config` for data of the given shapes (no dataset is read)."""
  if config.task not in RANDOM_DATA_TASKS:
    raise ValueError(
      f'random data is made for {", ".join(RANDOM_DATA_TASKS)}, not {config.task} (its transcripts, '
      'streams or hands): profile it on its own data with --data=config (op_profile.py)'
    )
  if config.task == 'hopadiff' and config.model.text.condition != 'none':
    raise ValueError('benchmarks run hopadiff without text conditioning (text=none)')
  task_module = methods.get(config.task)
  return task_module.Task(config, data_info(config, num_classes, input_dim))


def _random_segments(rng: np.random.Generator, num_frames: int, num_classes: int) -> np.ndarray:
  """Class ids [T] int32 in segments of random lengths (mean ~ T / 10 frames)."""
  lengths = rng.geometric(min(1.0, 10 / num_frames), size=num_frames)
  ends = np.minimum(np.cumsum(lengths), num_frames)
  ends = ends[: np.searchsorted(ends, num_frames) + 1]
  segment_classes = rng.integers(num_classes, size=len(ends))
  return np.repeat(segment_classes, np.diff(ends, prepend=0)).astype(np.int32)


def random_video(task, num_frames: int, seed: int = 0):
  """A labelled video of the task's input type, random features [T, D] and segment labels."""
  rng = np.random.default_rng(seed)
  labels = _random_segments(rng, num_frames, task.num_classes)
  dims = task.info.input_dim
  if task.config.task == 'hopadiff':
    second = _random_segments(rng, num_frames, task.num_classes)  # a second action in parallel
    multi_hot = np.zeros((num_frames, task.num_classes), bool)
    multi_hot[np.arange(num_frames), labels] = True
    multi_hot[np.arange(num_frames), second] = True
    features = {b: rng.normal(size=(num_frames, dims[b])).astype(np.float32) for b in dims}
    return formats.ReferringSample(
      name=f'random{seed}__p0',
      video=f'random{seed}',
      person='p0',
      reference='the person',
      labels=multi_hot,
      **features,
    )
  features = rng.normal(size=(num_frames, dims)).astype(np.float32)
  return formats.Video(f'random{seed}', features, labels)


def train_batch(task, num_frames: int, batch_size: int, **overrides) -> dict[str, np.ndarray]:
  """A batch of `batch_size` random videos of `num_frames` frames (`loader_batch`)."""
  videos = [random_video(task, num_frames, seed) for seed in range(batch_size)]
  return loader_batch(task, videos, **overrides)


def loader_batch(task, videos: list, **overrides) -> dict[str, np.ndarray]:
  """`videos` as one batch of the task's train loader (sample rate, crop to data.max_train_len and
  bucket padding as in training; `overrides` go to the loader, e.g. max_len=None: no crop). The
  loader plans its buckets over this one batch, not over the config's train.num_steps (318,000 at
  Breakfast size: 13 s of planning per call)."""
  return task.train_loader(videos, batch_size=len(videos), num_steps=1, **overrides).batch(0)


def init_params(task, seed: int = 0):
  """`task.init`'s parameters, its draws fused as `train.init_state` fuses them (the same values, a
  program that compiles faster)."""
  init = fused_random.fuse_random_draws(task.init)
  return jax.jit(init)(jax.random.PRNGKey(seed), task.example_batch())


class Program:
  """A jitted program and its arguments; `run(compiled)` executes it once. A train step's state is
  donated, so `run` passes each step's new state to the next."""

  def __init__(self, jitted, args: tuple, mask: np.ndarray, carries_state: bool = False):
    self.jitted, self.args, self.carries_state = jitted, args, carries_state
    self.shape = tuple(mask.shape)  # [batch or views, frames] after sample rate and bucket padding
    self.frames = int(mask.sum())  # valid frames

  def run(self, compiled):
    out = compiled(*self.args)
    if self.carries_state:
      self.args = (out[0], *self.args[1:])
    return out


def train_step_program(task, batch: dict[str, np.ndarray]) -> Program:
  """The engine's train step (train.make_train_step) on `batch` (`train_batch`, `loader_batch`)."""
  tx = train.make_optimizer(task.config)
  state = train.init_state(task, tx, jax.random.PRNGKey(task.config.seed))
  step = train.make_train_step(task, tx, jax.random.PRNGKey(1))
  return Program(step, (state, jax.device_put(batch)), batch['mask'], carries_state=True)


def sample_program(task, video) -> Program:
  """The task's whole DDIM sampler (`task._sample`) on the temporal views of `video` (e.g.
  `random_video`)."""
  inputs, mask = task.view_inputs(video)
  return Program(task._sample, (init_params(task), inputs, mask, jax.random.PRNGKey(0)), mask)


def compile_timed(jitted, *args):
  """(lowered, compiled, lower seconds, compile seconds)."""
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return lowered, compiled, lowered_at - start, time.perf_counter() - lowered_at


def cost_numbers(compiled) -> dict[str, float]:
  """FLOPs, bytes accessed and buffer sizes of a compiled program.

  `cost_analysis()` is a dict in current jax, a list of dicts (one per program) in older ones, and
  may be None on some backends (then flops and bytes are absent).
  """
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = {k: sum(c.get(k, 0.0) for c in cost) for k in ('flops', 'bytes accessed')}
  numbers = {}
  if cost:
    numbers.update(
      flops=float(cost.get('flops', 0.0)), bytes=float(cost.get('bytes accessed', 0.0))
    )
  memory = compiled.memory_analysis()
  if memory is not None:
    for field in ('argument', 'output', 'alias', 'temp', 'generated_code'):
      numbers[f'{field}_bytes'] = int(getattr(memory, f'{field}_size_in_bytes'))
  return numbers


def roofline(flops: float, num_bytes: float, peak_flops: float, peak_bandwidth: float):
  """Arithmetic intensity (FLOP/byte), attainable FLOP/s = min(peak, intensity * bandwidth) and the
  time that gives."""
  intensity = flops / max(num_bytes, 1.0)
  attainable = min(peak_flops, intensity * peak_bandwidth)
  return {
    'intensity': intensity,
    'attainable_flops_per_s': attainable,
    'bound': 'compute' if attainable >= peak_flops else 'memory',
    'roofline_s': flops / attainable,
  }


def measure_peaks(seconds: float = 1.0) -> tuple[float, float]:
  """(FLOP/s of a 2048^2 float32 matmul, bytes/s of a 256 MiB scale) on the default device: the
  practical peaks of this machine, for a roofline when none are given."""
  a = jnp.ones((2048, 2048), jnp.float32)
  x = jnp.ones((1 << 26,), jnp.float32)
  matmul_s = run_seconds(jax.jit(lambda a: a @ a), (a,), seconds)
  copy_s = run_seconds(jax.jit(lambda x: x * 2.0), (x,), seconds)
  return 2 * 2048**3 / matmul_s, 2 * x.nbytes / copy_s


def run_seconds(fn, args, seconds: float = 0.0, repeats: int = 1) -> float:
  """Median wall time of `fn(*args)` (after one warm-up call) over `repeats` runs, or as many as fit
  in `seconds`."""
  jax.block_until_ready(fn(*args))
  times = []
  deadline = time.perf_counter() + seconds
  while len(times) < repeats or time.perf_counter() < deadline:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def rss_bytes() -> dict[str, int]:
  """This process's resident set size now ('rss') and its peak ('peak_rss') since start or the last
  `reset_peak_rss()` (Linux /proc)."""
  with open('/proc/self/status') as f:
    fields = dict(line.split(':', 1) for line in f)
  kib = lambda key: int(fields[key].split()[0]) * 1024
  return {'rss': kib('VmRSS'), 'peak_rss': kib('VmHWM')}


def reset_peak_rss() -> None:
  """Restarts the peak RSS count at the current RSS (Linux: /proc/self/clear_refs, value 5)."""
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')


def header(benchmark: str, **settings) -> dict:
  """The first JSON line of a benchmark: what ran where, and how loaded the machine was."""
  return {
    'benchmark': benchmark,
    'backend': jax.default_backend(),
    'devices': jax.device_count(),
    'jax': jax.__version__,
    'python': platform.python_version(),
    'cpus': os.cpu_count(),
    'loadavg_1m': os.getloadavg()[0],
    **settings,
  }


def _rounded(value):
  """`value` with every float rounded to 4 significant digits (in nested dicts and lists too)."""
  if isinstance(value, float):
    return float(f'{value:.4g}')
  if isinstance(value, dict):
    return {k: _rounded(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_rounded(v) for v in value]
  return value


def emit(row: dict) -> None:
  """Prints one JSON line (floats rounded to 4 significant digits)."""
  print(json.dumps(_rounded(row)), flush=True)


# ---------------------------------------------------------------------------------------------
# Reading a profiler trace back: time per HLO instruction, with the source line that made it.

_INSTRUCTION = re.compile(
  r'^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\(.*?metadata=\{([^}]*)\}', re.MULTILINE
)
_CONTROL_FLOW = ('while', 'conditional', 'call')  # their time is the time of the ops inside
_FILE_NAME = re.compile(r'^(\d+) "(.*)"$', re.MULTILINE)
_FILE_LOCATION = re.compile(
  r'^(\d+) \{file_name_id=(\d+) function_name_id=\d+ line=(\d+)', re.MULTILINE
)
_STACK_FRAME = re.compile(r'^(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)', re.MULTILINE)


def _section(hlo_text: str, title: str) -> str:
  match = re.search(rf'^{title}\n(.*?)\n\n', hlo_text, re.DOTALL | re.MULTILINE)
  return match.group(1) if match else ''


def hlo_sources(hlo_text: str, prefix: str = 'polyseg/') -> dict[str, tuple[str, str]]:
  """{instruction name: (jax op name, 'file:line')} of a compiled module's text, leaving out control
  flow; the line is the innermost stack frame in a file under `prefix` (the library's own code), else
  the innermost."""
  files = dict(_FILE_NAME.findall(_section(hlo_text, 'FileNames')))
  locations = {
    i: (files.get(f, '?'), line)
    for i, f, line in _FILE_LOCATION.findall(_section(hlo_text, 'FileLocations'))
  }
  # The text prints a frame's parent id plus one (a root's parent reads 1: id 0, none).
  frames = {i: (loc, str(int(parent) - 1)) for i, loc, parent in _STACK_FRAME.findall(hlo_text)}

  def source(metadata: str) -> str:
    old_style = re.search(r'source_file="([^"]*)" source_line=(\d+)', metadata)
    if old_style:
      return _short_path(old_style.group(1), prefix) + ':' + old_style.group(2)
    frame = re.search(r'stack_frame_id=(\d+)', metadata)
    chain, seen = [], set()
    frame_id = frame.group(1) if frame else None
    while frame_id in frames and frame_id not in seen:
      seen.add(frame_id)
      location_id, frame_id = frames[frame_id]
      chain.append(locations.get(location_id, ('?', '0')))
    own = [loc for loc in chain if prefix in loc[0]] or chain
    return f'{_short_path(own[0][0], prefix)}:{own[0][1]}' if own else '?'

  result = {}
  for name, opcode, metadata in _INSTRUCTION.findall(hlo_text):
    if opcode not in _CONTROL_FLOW:
      op_name = re.search(r'op_name="(?:jit\([^)]*\)/)?([^"]*)"', metadata)
      result[name] = (op_name.group(1) if op_name else '', source(metadata))
  return result


def _short_path(path: str, prefix: str) -> str:
  return path[path.rindex(prefix) :] if prefix in path else os.path.basename(path)


def loop_trip_counts(hlo_text: str) -> list[int]:
  """The distinct known trip counts of a compiled module's while loops (XLA's cost analysis counts
  a loop body once, whatever its trip count)."""
  return sorted({int(n) for n in re.findall(r'known_trip_count":\{"n":"(\d+)"', hlo_text)})


def trace_events(trace_dir: str) -> list[dict]:
  """The complete ('X') events of the newest `*.trace.json.gz` under `trace_dir`."""
  paths = [
    os.path.join(root, name)
    for root, _, names in os.walk(trace_dir)
    for name in names
    if name.endswith('.trace.json.gz')
  ]
  if not paths:
    raise FileNotFoundError(f'no *.trace.json.gz under {trace_dir}')
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    return [e for e in json.load(f)['traceEvents'] if e.get('ph') == 'X']


def top_ops(trace_dir: str, hlo_text: str, runs: int, count: int) -> list[dict]:
  """The `count` HLO instructions with the most time in the trace: [{'op', 'ms' per run, 'share' of
  all instruction time, 'calls' per run, 'jax_op', 'source'}]."""
  sources = hlo_sources(hlo_text)
  total_us, calls = collections.Counter(), collections.Counter()
  for event in trace_events(trace_dir):
    if event['name'] in sources:
      total_us[event['name']] += event['dur']
      calls[event['name']] += 1
  all_us = max(sum(total_us.values()), 1e-9)
  return [
    {
      'op': name,
      'ms': us / runs / 1e3,
      'share': us / all_us,
      'calls': calls[name] // runs,
      'jax_op': sources[name][0],
      'source': sources[name][1],
    }
    for name, us in total_us.most_common(count)
  ]

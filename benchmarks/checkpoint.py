r"""What a checkpoint of a task's train state costs: written packed (one array per dtype, what
polyseg's Checkpointer writes in a single process) against array by array (what orbax writes of
the state as it is, and what the Checkpointer wrote before it packed).

  python benchmarks/checkpoint.py --config=configs/hopadiff.py [--repeats=5] \
      [--config.model.decoder.num_layers=4 ...]

Builds the task of the config for random data (DiffAct and HopaDIFF) and its train state's shapes
(`train.abstract_state`, the config's optimizer), fills them with numbers, then alternates the two
formats `--repeats` times in one process, each save to a fresh step of its own folder and each
restore into the state's shapes. Prints a header line, then one JSON line per format: the state's
arrays and MiB, the arrays orbax wrote, and the median save and restore seconds. Both sides'
restores check the values. The array-by-array save is orbax's call alone; the packed one is
`Checkpointer.save` whole (the host copy, the concatenation and the CRC-32 manifest included).
"""

import statistics
import tempfile
import time

import common
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from polyseg.engine import checkpoint as checkpoint_lib
from polyseg.engine import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Path to a config file (configs/<method>.py[:arg]).', lock_config=True
)
flags.DEFINE_integer('repeats', 5, 'Saves and restores per format (alternated).')
flags.DEFINE_integer('num_classes', 11, 'Classes of the random data the task is built for.')
flags.mark_flags_as_required(['config'])


def filled_state(config) -> dict:
  """The train state of `config`'s task and optimizer, each array filled with distinct numbers."""
  try:
    task = common.build_task(config, FLAGS.num_classes)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  abstract = train.abstract_state(task, train.make_optimizer(config))
  rng = np.random.default_rng(0)
  return jax.tree.map(
    lambda a: jax.numpy.asarray(rng.normal(size=a.shape).astype(a.dtype)), abstract
  )


def timed(fn, *args) -> tuple:
  """(fn(*args) ready, its seconds)."""
  start = time.perf_counter()
  result = jax.block_until_ready(fn(*args))
  return result, time.perf_counter() - start


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.ERROR)  # orbax logs every save at INFO
  state = filled_state(FLAGS.config)
  abstract = jax.eval_shape(lambda: state)
  expected = jax.tree.leaves(jax.device_get(state))
  common.emit(common.header('checkpoint', task=FLAGS.config.task, repeats=FLAGS.repeats))

  def save_arrays(ckpt, step):
    ckpt.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    ckpt.manager.wait_until_finished()

  formats = {'packed': lambda ckpt, step: ckpt.save(step, state), 'array_by_array': save_arrays}
  times = {name: {'save_s': [], 'restore_s': []} for name in formats}
  with tempfile.TemporaryDirectory() as directory:
    ckpts = {name: checkpoint_lib.Checkpointer(f'{directory}/{name}') for name in formats}
    for step in range(1, FLAGS.repeats + 1):
      for name, save in formats.items():
        times[name]['save_s'].append(timed(save, ckpts[name], step)[1])
        restored, restore_s = timed(ckpts[name].restore, abstract)
        times[name]['restore_s'].append(restore_s)
        for a, b in zip(jax.tree.leaves(restored), expected, strict=True):
          np.testing.assert_array_equal(np.asarray(a), b)
    for name, ckpt in ckpts.items():
      written = jax.tree.leaves(ckpt.manager.item_metadata(ckpt.latest_step()).tree)
      common.emit(
        {
          'format': name,
          'arrays': len(expected),
          'mib': checkpoint_lib.state_bytes(state) / 2**20,
          'arrays_written': len(written),
          **{key: statistics.median(values) for key, values in times[name].items()},
        }
      )
      ckpt.close()


if __name__ == '__main__':
  app.run(main)

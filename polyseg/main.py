r"""polyseg command line: train, evaluate or predict with any method's config.

  python -m polyseg.main --config=configs/diffact.py --workdir=runs/diffact
  python -m polyseg.main --config=configs/diffact.py --workdir=runs/diffact --mode=eval
  python -m polyseg.main --config=configs/diffact.py --workdir=runs/diffact --mode=predict \
      --config.predict.features=DIR
  python -m polyseg.main --config=configs/diffact.py --workdir=runs/check \
      --config.data.check_only=True   # validate the data, print its statistics, train nothing

Any config field can be overridden (`--config.train.num_steps=200`); the config is locked, so a
misspelt field is an error instead of a silent no-op.
"""

import os
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from polyseg import configlib
from polyseg import methods
from polyseg.data import formats
from polyseg.engine import checkpoint as checkpoint_lib
from polyseg.engine import config as engine_config
from polyseg.engine import data_check
from polyseg.engine import parallel
from polyseg.engine import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Path to a config file (configs/<method>.py[:arg]).', lock_config=True
)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, predictions and plots.')
flags.DEFINE_enum(
  'mode',
  'train',
  ['train', 'eval', 'predict'],
  'train (resumes from the latest checkpoint), eval or predict.',
)
flags.DEFINE_string(
  'checkpoint',
  'latest',
  'Which checkpoint --mode=eval/predict uses: latest, best (on val) or a step number.',
)
flags.register_validator(
  'checkpoint',
  lambda value: value in ('latest', 'best') or value.isdigit(),
  message='--checkpoint must be latest, best or a step number',
)
flags.DEFINE_string(
  'compilation_cache',
  os.path.join(
    os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'polyseg', 'xla'
  ),
  'Persistent XLA compilation cache: the compiled train step (one per length bucket), samplers and '
  'evaluation programs are reused by later runs, resumes, eval and predict. "" turns it off; '
  'JAX_COMPILATION_CACHE_DIR, when set, wins.',
)
flags.mark_flags_as_required(['config', 'workdir'])


def use_compilation_cache(directory: str) -> None:
  """Points jax's persistent compilation cache at `directory` ('' = off) unless
  JAX_COMPILATION_CACHE_DIR already chose one."""
  if directory and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', directory)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:  # orbax logs every save at INFO; keep the console readable
    logging.set_verbosity(logging.WARNING)
  config = FLAGS.config
  try:
    method = methods.get(config.task)
    if config.data.check_only:  # validate the data, print its statistics; no device, no step
      data_check.run(method, config, FLAGS.workdir)
      return
    use_compilation_cache(FLAGS.compilation_cache)
    parallel.keep_ynnpack_to_matmuls()
    parallel.initialize(config)  # before anything touches a device
    which = int(FLAGS.checkpoint) if FLAGS.checkpoint.isdigit() else FLAGS.checkpoint
    if FLAGS.mode == 'train':
      train.train_and_evaluate(method, config, FLAGS.workdir)
    elif FLAGS.mode == 'eval':
      train.evaluate(method, config, FLAGS.workdir, which)
    else:
      train.predict(method, config, FLAGS.workdir, which)
  except (
    engine_config.ConfigError,
    formats.DataError,
    train.NonFiniteError,
    checkpoint_lib.CheckpointMismatch,
    OSError,
  ) as e:
    sys.exit(f'polyseg: {type(e).__name__}: {e}')
  except train.Interrupted as e:  # SIGTERM / Ctrl-C: checkpoint saved; the shell's exit status
    print(f'polyseg: {e}', file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)


if __name__ == '__main__':
  app.run(main, flags_parser=configlib.parse_flags)

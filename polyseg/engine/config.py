"""The engine's part of every config: the keys the engine, the data pipeline and the command line
read, with their defaults, declared once. A method's config file (configs/<method>.py) starts from
`base_config(task)`, sets the values its settings differ in, and adds its own sections (`model`,
`diffusion`, `loss`, ...) and keys."""

import ml_collections
from ml_collections import config_dict

from polyseg.engine import parallel


class ConfigError(ValueError):
  """A config value the engine cannot run with (the command line prints it in one line)."""


# The engine's counts and the least value each may take: (section, key, least).
_COUNTS = (
  ('train', 'batch_size', 1),
  ('train', 'num_steps', 1),
  ('train', 'log_every', 1),
  ('train', 'eval_every', 1),
  ('train', 'checkpoint_every', 1),
  ('train', 'keep_checkpoints', 1),
  ('train', 'max_nonfinite_steps', 0),
  ('optim', 'grad_accum_steps', 1),
  ('data', 'sample_rate', 1),
  ('data', 'length_grouping', 0),
  ('data', 'min_bucket_batches', 0),
  ('data', 'prefetch', 0),
  ('eval', 'num_timelines', 0),
)


def check(config: ml_collections.ConfigDict) -> None:
  """ConfigError naming the first of the engine's counts (`_COUNTS`) that is not an integer at
  least its least value (a step count of 0 would divide by zero mid-run; a negative one train
  nothing): called before a run touches its workdir."""
  for section, key, least in _COUNTS:
    value = config[section][key]
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ConfigError(f'config.{section}.{key}={value!r}: must be an integer >= {least}')


def base_config(task: str) -> ml_collections.ConfigDict:
  """The engine's keys for the method registered as `task` (`polyseg.methods`)."""
  c = ml_collections.ConfigDict()
  c.task = task
  c.seed = 0
  c.parallel = parallel.default_config()  # mesh, FSDP, multi-host (docs/usage.md: Scale)

  c.data = ml_collections.ConfigDict()
  c.data.root = config_dict.placeholder(str)  # unset -> the method's synthetic dataset
  c.data.check_only = False  # True: validate the data, print its statistics, train nothing
  c.data.classes = config_dict.placeholder(tuple)  # unset -> read from mapping.txt
  c.data.sample_rate = 1  # every k-th frame, with random offsets in training (see pipeline)
  c.data.max_train_len = config_dict.placeholder(int)  # random crop of longer training videos
  c.data.length_grouping = 0  # > 1: batches of similar lengths (less padding); see pipeline
  # A length bucket fewer than this many of the run's batches fall in is padded up to the next
  # longer one: each bucket compiles the train step once (10-40 s on CPU). 0: keep every bucket.
  c.data.min_bucket_batches = 50
  c.data.prefetch = 2  # training batches built ahead on a background thread (grain); 0: in the loop
  c.data.cache_dir = '~/.cache/polyseg'  # where synthetic datasets are generated, once
  c.data.format = 'folder'  # 'folder': read the files; 'tfds': the TFDS conversion (docs/data.md)
  c.data.tfds_dir = config_dict.placeholder(str)  # unset -> <dataset root>/tfds

  c.optim = ml_collections.ConfigDict(
    {'learning_rate': 5e-4, 'weight_decay': 0.0, 'grad_accum_steps': 1}
  )

  c.train = ml_collections.ConfigDict(
    {
      'batch_size': 4,
      'num_steps': 1000,
      'log_every': 50,
      'eval_every': 250,
      'checkpoint_every': 250,
      'keep_checkpoints': 3,
      # A NaN/Inf loss or gradient: 'stop' the run naming the step, or 'skip' its update and go on
      # (stopping after more than max_nonfinite_steps skipped steps).
      'nonfinite': 'stop',
      'max_nonfinite_steps': 100,
      'best_metric': 'F1@50',  # of the main row on val: picks the best checkpoint
    }
  )

  c.eval = ml_collections.ConfigDict(
    {
      'num_timelines': 4,  # PNG timelines of this many videos per evaluation
      'seed': 0,
      # The checkpoint the test split is scored with, once, after training: 'best' on val
      # (by train.best_metric of the main row) or 'latest'.
      'test_checkpoint': 'best',
    }
  )

  c.predict = ml_collections.ConfigDict()
  c.predict.features = config_dict.placeholder(str)  # the inputs of --mode=predict
  c.predict.output = config_dict.placeholder(str)  # unset -> <workdir>/predict
  return c

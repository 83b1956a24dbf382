r"""Padding and bucket shapes of a dataset's training batches, with and without length grouping.

  python benchmarks/padding.py --config=configs/diffact.py[:arg] [--grouping=0,4,16] [--epochs=5] \
      [--config.data.root=DIR ...]

Reads the train split the config points at (its synthetic data when data.root is unset) and builds
the config's train loader for each --grouping value (data.length_grouping: 0 = random batches,
g > 1 = batches sorted by length in windows of g batches). Over --epochs epochs prints one JSON line
per value: "valid_fraction" (valid frames / padded frames: the share of the train step's work that
is not padding), "buckets" (distinct padded lengths, i.e. train-step compilations) and
"padded_frames". No model runs.
"""

import time

import common
from absl import app
from absl import flags
from ml_collections import config_flags

from polyseg import methods

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Path to a config file (configs/<method>.py[:arg]).', lock_config=True
)
flags.DEFINE_list('grouping', ['0', '4', '16'], 'data.length_grouping values to compare.')
flags.DEFINE_integer('epochs', 5, 'Epochs of batches to count.')
flags.mark_flags_as_required(['config'])


def padding_row(task, videos, grouping: int, epochs: int) -> dict:
  loader = task.train_loader(videos, length_grouping=grouping)
  valid, padded, buckets = 0, 0, set()
  for step in range(epochs * loader.steps_per_epoch):
    mask = loader.batch(step)['mask']
    valid, padded = valid + int(mask.sum()), padded + mask.size
    buckets.add(mask.shape[1])
  return {
    'grouping': grouping,
    'steps': epochs * loader.steps_per_epoch,
    'valid_fraction': valid / padded,
    'buckets': sorted(buckets),
    'padded_frames': padded,
  }


def main(argv):
  del argv
  config = FLAGS.config
  start = time.perf_counter()
  data = methods.get(config.task).load_data(config)
  task = methods.get(config.task).Task(config, data.info, train_videos=data.train)
  common.emit(
    common.header(
      'padding',
      task=config.task,
      videos=len(data.train),
      batch_size=config.train.batch_size,
      load_s=time.perf_counter() - start,
    )
  )
  for grouping in FLAGS.grouping:
    common.emit(padding_row(task, data.train, int(grouping), FLAGS.epochs))


if __name__ == '__main__':
  app.run(main)

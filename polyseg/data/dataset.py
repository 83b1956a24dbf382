"""A dataset as the engine sees it: its splits (`Data`), what a trained model must know of it
(`DataInfo`, saved as data.json), and the MS-TCN split reader every feature method shares."""

import dataclasses
import pathlib
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from polyseg.data import formats
from polyseg.data import tfds


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What a trained model needs to know about its data (saved as <workdir>/data.json)."""

  classes: tuple[str, ...]
  input_dim: (
    int | dict[str, int]
  )  # feature dimension, or one per input stream ({'holistic': 768, ...})
  background: tuple[int, ...]
  # What a task learned from the training data beyond these, JSON values only (HAL: the grammar of
  # training transcripts and the mean segment lengths).
  task_info: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):  # JSON gives lists; keep tuples so equality is by value.
    object.__setattr__(self, 'classes', tuple(self.classes))
    object.__setattr__(self, 'background', tuple(self.background))


@dataclasses.dataclass
class Data:
  """The splits of a dataset. `val` (never empty) is what every choice is made on: the best
  checkpoint, calibration, adaptive weights. The test split is not read with the others: the engine
  calls `read_test()` once, after training, so nothing before the final evaluation can look at it.
  `train` is every process's whole training set, or this process's share (`train_shard`)."""

  info: DataInfo
  train: list
  val: list
  read_test: Callable[[], list]  # () -> the test videos, read (and validated) on call
  # Which training videos `train` holds: every count-th from index, as (index, count). (0, 1) =
  # all of them; data.format='tfds' reads only this process's share (jax.process_index/count).
  train_shard: tuple[int, int] = (0, 1)


def load_splits(
  config: ml_collections.ConfigDict,
  root: pathlib.Path,
  spec: tfds.Spec,
  read_folder: Callable[[str, Sequence[str] | None, Any], Any],
  dims: Mapping[str, int | None],
) -> tuple[list[str], dict[str, list], Callable[[], list], tuple[int, int]]:
  """(classes, {'train', 'val': videos}, read_test, train_shard) of an MS-TCN-split dataset (`root`):
  val is `splits/val.split<k>.bundle`, or else a seeded `data.val_fraction` of train
  (`formats.hold_out`, `data.val_seed`; never test). `read_test()` reads the test videos; until it
  is called no test file is opened (only the test bundle's existence is checked here).

  data.format='folder': `read_folder(subset, classes, train)` reads a subset with these classes
  (`data.classes` or None for train, then train's); `train` is None when reading train, else the
  train dataset (for its dimensions). data.format='tfds': the TFDS
  conversion of `spec` in `data.tfds_dir` (made on first use); this process reads only its share
  of train, and `dims` ({feature path: D or None}) and `data.classes` are checked against it."""
  d = config.data
  classes = tuple(d.classes) if d.classes else None
  if tfds.check_format(d.format) == 'tfds':
    shard = (jax.process_index(), jax.process_count())
    subsets, read_records = tfds.load(
      root,
      d.tfds_dir,
      spec,
      classes=classes,
      dims=dims,
      train_shard=shard,
      hold_out=(d.val_fraction, d.val_seed),
    )
    videos = {k: v.videos for k, v in subsets.items()}
    return subsets['train'].classes, videos, lambda: read_records().videos, shard
  formats.require_split(root, 'test', d.split)
  train = read_folder('train', classes, None)
  videos = {'train': train.videos}
  if formats.split_path(root, 'val', d.split).exists():
    videos['val'] = read_folder('val', train.classes, train).videos
  else:
    kept, held = formats.hold_out_split(
      [v.name for v in train.videos],
      d.val_fraction,
      d.val_seed,
      f'{formats.split_path(root, "train", d.split)}: no val bundle',
    )
    videos['train'] = [train.videos[i] for i in kept]
    videos['val'] = [train.videos[i] for i in held]
  return train.classes, videos, lambda: read_folder('test', train.classes, train).videos, (0, 1)

"""Tasks: one per method. A task owns its data loading, model, loss and per-video prediction.

The engine (`polyseg.train`) only sees this interface, implemented by `<module>.Task`:

  load_data(config) -> Data                     module-level; train and val validated before any
                                                training step, test only read by Data.read_test()
  load_unlabelled(config, info) -> [video]      module-level; --mode=predict inputs
  Task(config, info: DataInfo, train_videos)    builds model, schedule, class weights
  .classes / .background / .rows                class names, background ids, output row names
  .train_loader(videos, **overrides) -> pipeline.TrainLoader (.batch(step) -> dict of numpy
                                                arrays, pure in step; overrides: batch_size, pad_to)
  .example_batch() -> a tiny batch with the right shapes (to build abstract params)
  .init(rng, batch) -> params
  .loss(params, batch, rng) -> (scalar loss, {term: scalar})     jit-able
  .predict(params, video, rng) -> {row: prediction}   class ids [T], or probabilities [T, C] (multi-label)
  .label_lines(prediction) -> [str]             one line per frame, the ground-truth file format
  .timeline(prediction) -> class ids [T] or multi-hot [T, C]   what a timeline plot shows
  .new_metrics() -> object with .add(prediction, gt) and .result() -> {metric: value}

Optional module-level functions: `prepare(config, workdir, mode)` runs a multi-stage task's earlier
stages (the engine's `prepare_stages`), and `check_data(config, workdir) -> Data` is what
`--config.data.check_only` validates instead of `load_data` (Polyphony: the first stage's input).

Optional, with defaults in `BaseTask` (for tasks whose rows have their own ground truth, add summary
rows, or carry state that is not trained by gradients, e.g. Polyphony's adaptive loss weights):

  .main_row                                     the row whose metrics pick the best checkpoint
  .row_labels(video, row) -> gt                 the ground truth a row is scored against
  .summarize(results) -> results                adds rows computed from the rows (e.g. a mean)
  .row_metrics(row) -> metrics object           a row's own metrics (default .new_metrics())
  .prediction_file(name, row) -> str            where a row's predictions go under predictions/
  .timeline_rows(video, predictions) -> {name: [T] or [T, C]}   the bars of a timeline plot
  .parameter_init -> 'flax' | 'torch'           how the engine draws the initial parameters
                                                (default: `config.model.init`, else 'flax')
  .initial_task_state() -> pytree | None        carried in the train state and its checkpoints;
                                                when not None, the engine calls
                                                .loss(params, batch, rng, task_state=...)
  .update_task_state(task_state, val_results) -> task_state   after each validation
  .calibrates / .calibrate(params, val_videos, rng, outdir)   fits what is chosen on validation
                                                data, not by gradients (2s-DAS's fusion weights):
                                                called before val and test are predicted (and by
                                                --mode=predict, on the val split) when `calibrates`;
                                                it writes what it chose to `outdir` (if not None)
                                                and returns it as JSON ({} if nothing), which the
                                                test results.json records

A video is any object with `.name` and `.labels` (None when unlabelled); the task reads the rest.
"""

import dataclasses
import importlib
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from polyseg import metrics
from polyseg.data import formats
from polyseg.data import tfds

from polyseg.models.layers import count_params  # noqa: F401  (re-exported for the engine)

REGISTRY = {
  'diffact': 'polyseg.tasks.diffact',
  'hopadiff': 'polyseg.tasks.hopadiff',
  'polyphony': 'polyseg.tasks.polyphony',
  'twostream': 'polyseg.tasks.twostream',
  'hal': 'polyseg.tasks.hal',
}


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


class BaseTask:
  """Defaults of the optional part of the task interface (see the module docstring)."""

  rows: tuple[str, ...]

  @property
  def main_row(self) -> str:
    return self.rows[0]

  def row_labels(self, video, row: str):
    del row
    return video.labels

  def summarize(self, results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return results

  def row_metrics(self, row: str):
    del row
    return self.new_metrics()

  def prediction_file(self, name: str, row: str) -> str:
    return f'{name}.txt' if len(self.rows) == 1 else f'{name}.{row}.txt'

  def timeline_rows(self, video, predictions: dict) -> dict:
    rows = {} if video.labels is None else {'ground truth': video.labels}
    rows.update({row: self.timeline(pred) for row, pred in predictions.items()})
    return rows

  @property
  def parameter_init(self) -> str:
    config = getattr(self, 'config', None)
    return 'flax' if config is None else config.model.get('init', 'flax')

  calibrates = False

  def calibrate(self, params, videos: list, rng, outdir: str | None) -> dict:
    del params, videos, rng, outdir
    return {}

  def initial_task_state(self):
    return None

  def update_task_state(self, task_state, val_results: dict[str, dict[str, float]]):
    del val_results
    return task_state


class SingleLabelTask(BaseTask):
  """Rows that predict one class id per frame [T]: label lines, timelines and segmentation metrics
  (Acc, Edit, F1@k with `self.background` left out of Edit / F1)."""

  classes: list[str]
  background: tuple[int, ...]

  def label_lines(self, pred: np.ndarray) -> list[str]:
    return [self.classes[i] for i in pred]

  def timeline(self, pred: np.ndarray) -> np.ndarray:
    return pred

  def new_metrics(self) -> metrics.SegmentationMetrics:
    return metrics.SegmentationMetrics(background=self.background)


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


def get(name: str):
  """The task module registered as `name`."""
  if name not in REGISTRY:
    raise ValueError(f'unknown task {name!r}; registered: {sorted(REGISTRY)}')
  return importlib.import_module(REGISTRY[name])

"""The task interface: what a method module (`polyseg/methods/<method>/task.py`) defines for the
engine (`polyseg.engine.train`), which is handed the module and sees only this.

Module-level functions:

  load_data(config) -> Data               (polyseg.data.dataset) train and val, read and validated
                                          before any training step; test read only by
                                          Data.read_test(), once
  load_unlabelled(config, info) -> [video]   the inputs of --mode=predict
  prepare(config, workdir, mode)          optional: runs a multi-stage method's earlier stages and
                                          returns the config the engine runs (Polyphony)
  check_data(config, workdir) -> Data     optional: what --config.data.check_only validates
                                          instead of load_data (Polyphony: its first stage's input)

`Task(config, info, train_videos)`, a subclass of `Task` below; the abstract methods are required,
the rest have defaults. A video is any object with `.name` and `.labels` (None when unlabelled);
the task reads the rest. `Trainable` is the part the train step needs; Polyphony's stage-1 and
stage-2 objectives are Trainables too.
"""

import abc

import numpy as np

from polyseg.core import metrics


class Trainable(abc.ABC):
  """What `train.init_state` and `train.make_train_step` train."""

  parameter_init = 'flax'  # how init_state draws the parameters: 'flax' | 'torch' (PyTorch's)

  @abc.abstractmethod
  def example_batch(self) -> dict[str, np.ndarray]:
    """A tiny batch with the right shapes and dtypes (to build the parameters)."""

  @abc.abstractmethod
  def init(self, rng, batch: dict):
    """The parameters for `batch`'s shapes."""

  @abc.abstractmethod
  def loss(self, params, batch: dict, rng):
    """(scalar loss, {term: scalar}) of a batch; jit-able. With a task state (below), called as
    loss(params, batch, rng, task_state=...)."""

  def initial_task_state(self):
    """Optional state that gradients do not train, carried in the train state and its
    checkpoints (Polyphony's adaptive hand weights); None: none."""
    return


class Task(Trainable):
  """A method's task: data, model, loss, prediction and scoring of its output rows."""

  rows: tuple[str, ...]  # the names of its outputs, e.g. ('DiffAct',) or ('LH', 'RH')

  def __init__(self, config, info):
    self.config = config
    self.info = info
    self.classes = list(info.classes)
    self.background = info.background
    self.num_classes = len(self.classes)

  @property
  def parameter_init(self) -> str:
    return self.config.model.get('init', 'flax')

  @abc.abstractmethod
  def train_loader(self, videos: list, **overrides):
    """A `pipeline.TrainLoader` of `videos` (`.batch(step)`: numpy arrays, pure in step;
    overrides: batch_size, pad_to)."""

  @abc.abstractmethod
  def predict(self, params, video, rng) -> dict:
    """{row: prediction}: class ids [T], or probabilities [T, C] (multi-label)."""

  @abc.abstractmethod
  def label_lines(self, prediction) -> list[str]:
    """One line per frame, in the ground-truth file format."""

  @abc.abstractmethod
  def timeline(self, prediction) -> np.ndarray:
    """What a timeline plot shows: class ids [T] or multi-hot [T, C]."""

  @abc.abstractmethod
  def new_metrics(self, row: str):
    """An object with .add(prediction, ground truth) and .result() -> {metric: value} for `row`
    (HAL scores its alignment row with other metrics)."""

  # -- optional -------------------------------------------------------------------------------

  @property
  def main_row(self) -> str:
    """The row whose val metrics pick the best checkpoint (Polyphony: the mean of its hands)."""
    return self.rows[0]

  def row_labels(self, video, row: str):
    """The ground truth `row` is scored against (Polyphony: each hand's own column)."""
    del row
    return video.labels

  def summarize(self, results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Adds rows computed from the rows' results (Polyphony: the hands' mean and gap)."""
    return results

  def prediction_file(self, name: str, row: str) -> str:
    """Where a row's predictions of video `name` go under predictions/ (Polyphony: lh/, rh/, as
    its ground truth is laid out)."""
    return f'{name}.txt' if len(self.rows) == 1 else f'{name}.{row}.txt'

  calibrates = False  # True: the engine calls `calibrate` (2s-DAS's fusion weights)

  def calibrate(self, params, videos: list, rng, outdir: str | None) -> dict:
    """Fits what is chosen on validation data, not by gradients, before val and test are
    predicted (and by --mode=predict, on the val split); writes what it chose to `outdir` (if not
    None) and returns it as JSON ({} if nothing), which the test results.json records."""
    del params, videos, rng, outdir
    return {}

  def update_task_state(self, task_state, val_results: dict[str, dict[str, float]]):
    """The task state after a validation (Polyphony: the hands' accuracies)."""
    del val_results
    return task_state


class SingleLabelTask(Task):
  """Rows that predict one class id per frame [T]: label lines, timelines and segmentation metrics
  (Acc, Edit, F1@k with `self.background` left out of Edit / F1)."""

  def label_lines(self, pred: np.ndarray) -> list[str]:
    return [self.classes[i] for i in pred]

  def timeline(self, pred: np.ndarray) -> np.ndarray:
    return pred

  def new_metrics(self, row: str | None = None) -> metrics.SegmentationMetrics:
    del row
    return metrics.SegmentationMetrics(background=self.background)

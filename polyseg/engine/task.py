"""The task interface: what a method module (`polyseg/methods/<method>/task.py`) defines for the
engine. A task owns its data loading, model, loss and per-video prediction; the engine
(`polyseg.engine.train`) is handed the module and sees only this:

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

import numpy as np

from polyseg.core import metrics


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

"""The run's metric log: metrics.jsonl lines and TensorBoard scalars."""

import json
import math
import os

import tensorboardX

from polyseg.data import formats


class MetricWriter:
  """Appends `{'step', **scalars}` lines to workdir/metrics.jsonl and TensorBoard scalars to
  workdir/tensorboard. Does nothing when not enabled (e.g. on processes other than 0).

  TensorBoard tags are the metric names with characters outside [-/\\w.] replaced by '_'
  (tensorboardX), e.g. 'eval/F1@50' -> 'eval/F1_50'; metrics.jsonl keeps the names as given.

  A run resumed from the checkpoint of `resume_step` forgets what the run before it logged after
  that step (it will log those steps again): the later metrics.jsonl lines (and a last line cut
  short by a kill) are dropped, and TensorBoard purges those steps.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
    self.enabled = enabled
    self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    self.tensorboard = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if resume_step is not None and os.path.exists(self.jsonl_path):
        self._rewind(resume_step)
      self.tensorboard = tensorboardX.SummaryWriter(
        os.path.join(workdir, 'tensorboard'),
        purge_step=None if resume_step is None else resume_step + 1,
      )

  def _rewind(self, step: int) -> None:
    kept = []
    with open(self.jsonl_path, 'rb') as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:  # a line cut short by a kill (or undecodable bytes)
          continue
        if record.get('step', math.inf) <= step:
          kept.append(line if line.endswith(b'\n') else line + b'\n')
    formats.write_atomic(self.jsonl_path, b''.join(kept))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    """Logs scalars (python/numpy/jax scalars) at `step`."""
    if not self.enabled:
      return
    values = {}
    for name, value in scalars.items():
      try:
        values[name] = float(value)
      except (TypeError, ValueError) as error:
        raise ValueError(f'metric {name!r} at step {step} is not a scalar: {value!r}') from error
    try:
      with open(self.jsonl_path, 'a') as f:
        f.write(json.dumps({'step': int(step), **values}) + '\n')
    except OSError as error:  # e.g. a full disk: say which file (a cut line is dropped on resume)
      raise OSError(error.errno, error.strerror, self.jsonl_path) from error
    for name, value in values.items():
      self.tensorboard.add_scalar(name, value, int(step))

  def flush(self) -> None:
    if self.enabled:
      self.tensorboard.flush()

  def close(self) -> None:
    if self.enabled:
      self.tensorboard.close()

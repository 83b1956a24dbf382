"""Tasks: one per method. A task owns its data loading, model, loss and per-video prediction.

The engine (`polyseg.train`) only sees this interface, implemented by `<module>.Task`:

  load_data(config) -> Data                     module-level; validated before any training step
  Task(config, info: DataInfo, train_videos)    builds model, schedule, class weights
  .classes / .background / .input_dim / .rows   class names, background ids, D, output row names
  .train_loader(videos) -> object with .batch(step) -> dict of numpy arrays (pure in step)
  .example_batch() -> a tiny batch with the right shapes (to build abstract params)
  .init(rng, batch) -> params
  .loss(params, batch, rng) -> (scalar loss, {term: scalar})     jit-able
  .predict(params, video, rng) -> {row: class ids [T]}
  .new_metrics() -> object with .add(pred, gt) and .result() -> {metric: value}
"""

import dataclasses
import importlib

from polyseg.data import formats
from polyseg.models.layers import count_params  # noqa: F401  (re-exported for the engine)

REGISTRY = {
  'diffact': 'polyseg.tasks.diffact',
}


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What a trained model needs to know about its data (saved as <workdir>/data.json)."""

  classes: tuple[str, ...]
  input_dim: int
  background: tuple[int, ...]

  def __post_init__(self):  # JSON gives lists; keep tuples so equality is by value.
    object.__setattr__(self, 'classes', tuple(self.classes))
    object.__setattr__(self, 'background', tuple(self.background))


@dataclasses.dataclass
class Data:
  info: DataInfo
  train: list[formats.Video]
  test: list[formats.Video]


def get(name: str):
  """The task module registered as `name`."""
  if name not in REGISTRY:
    raise ValueError(f'unknown task {name!r}; registered: {sorted(REGISTRY)}')
  return importlib.import_module(REGISTRY[name])

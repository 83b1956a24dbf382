"""polyseg: diffusion-based temporal action segmentation in JAX/Flax.

  config = polyseg.configlib.load_config('diffact')
  results = polyseg.train_and_evaluate(config, 'runs/diffact')       # test results of val's pick
  predictions = polyseg.predict('runs/diffact', {'clip': features})   # features [T, D]

Each looks up the method `config.task` names (`polyseg.methods`) and hands it to the engine
(`polyseg.engine.train`), as `python -m polyseg.main` does.
"""

import os
import tempfile
from collections.abc import Mapping

import numpy as np


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config`'s method in `workdir` (resuming), then scores val's pick on test; returns
  the test results ({row: {metric: value}})."""
  from polyseg import methods
  from polyseg.engine import train

  return train.train_and_evaluate(methods.get(config.task), config, workdir)


def evaluate(config, workdir: str, which: str = 'latest') -> dict:
  """Scores the latest (or 'best' on val) checkpoint of `workdir` on val and test; returns the
  test results."""
  from polyseg import methods
  from polyseg.engine import train

  return train.evaluate(methods.get(config.task), config, workdir, which)


def predict(
  workdir: str,
  inputs: 'str | os.PathLike | Mapping[str, object]',
  *,
  config=None,
  checkpoint: str = 'latest',
  output: str | None = None,
) -> dict:
  """Predictions of a trained run on new videos of any length: {video: {row: prediction}}, where
  a prediction is class ids [T] (or per-class probabilities [T, C] for a multi-label task, e.g.
  HopaDIFF), as `--mode=predict` computes them.

  workdir: the run's workdir (its checkpoints, data.json and config.json).
  inputs: what `--config.predict.features` takes for the run's method (a folder of `<vid>.npy`
    features, or that method's dataset layout without labels), or {video name: features [T, D]}
    for the methods that read a folder of `<vid>.npy` (DiffAct, HAL): the arrays go through the
    same checks as files.
  config: default the run's own (config.json); a ConfigDict to change e.g. `eval.*` settings.
  checkpoint: 'latest' or 'best'.
  output: a folder to also write the predictions (ground-truth text format) and timelines to.
  """
  from polyseg import methods
  from polyseg.engine import train

  config = (train.read_config(workdir) if config is None else config).copy_and_resolve_references()
  method = methods.get(config.task)
  if not isinstance(inputs, Mapping):
    config.predict.features = os.fspath(inputs)
    return train.predict_videos(method, config, workdir, checkpoint, output)
  with tempfile.TemporaryDirectory(prefix='polyseg-predict-') as folder:
    for name, features in inputs.items():
      if not name or os.sep in name or name.startswith('.'):
        raise ValueError(f'video name {name!r}: must be a file name (no {os.sep!r}, no leading .)')
      features = np.asarray(features)
      if features.ndim != 2:
        raise ValueError(f'video {name!r}: features must be [T, D], got shape {features.shape}')
      np.save(os.path.join(folder, f'{name}.npy'), features.T)  # the files' layout, [D, T]
    config.predict.features = folder
    return train.predict_videos(method, config, workdir, checkpoint, output)

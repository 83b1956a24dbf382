"""The methods polyseg implements, one folder each; the entry point looks a config's method up here
(`get(config.task)`) and hands it to the engine. A method module defines the task interface of
`polyseg.engine.task`."""

import importlib

REGISTRY = {
  'diffact': 'polyseg.methods.diffact.task',
  'hopadiff': 'polyseg.methods.hopadiff.task',
  'polyphony': 'polyseg.methods.polyphony.task',
  'twostream': 'polyseg.methods.twostream.task',
  'hal': 'polyseg.methods.hal.task',
}


def get(name: str):
  """The task module registered as `name`."""
  if name not in REGISTRY:
    raise ValueError(f'unknown task {name!r}; registered: {sorted(REGISTRY)}')
  return importlib.import_module(REGISTRY[name])

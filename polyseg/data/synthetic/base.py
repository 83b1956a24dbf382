"""What the synthetic generators share: AR(1) noise, random directions and projections, subset
counts, and the cache (a folder per generator version and arguments, written once, atomically).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import pathlib

import numpy as np

from polyseg.data import formats

OFFSET_STD = 0.3  # per-video offset std per feature dimension


def ar1_noise(rng: np.random.Generator, length: int, dim: int, ar_coef: float) -> np.ndarray:
  """Stationary AR(1) noise [length, dim] with coefficient `ar_coef` and std 1."""
  noise = rng.standard_normal((length, dim))
  noise[1:] *= np.sqrt(1.0 - ar_coef**2)  # keeps the AR(1) process stationary, std 1
  # x[t] = innovation[t] + ar_coef x[t - 1], a frame at a time: the values of scipy.signal's
  # lfilter([1], [1, -ar_coef]) to the bit, without its import (1.2-2 s in every process).
  for t in range(1, length):
    noise[t] += ar_coef * noise[t - 1]
  return noise


def subset_counts(num_train: int, num_test: int, num_val: int) -> dict[str, int]:
  """{subset: number of videos} in drawing order: val last, so adding it changes no other video."""
  return {'train': num_train, 'test': num_test, **({'val': num_val} if num_val else {})}


def cache_key(prefix: str, generator, version: int, kwargs: dict) -> str:
  """'<prefix>-<hash>' of the generator's arguments (defaults filled in) and its version."""
  arguments = inspect.signature(generator).bind(**kwargs)
  arguments.apply_defaults()
  key = json.dumps({'version': version, **arguments.arguments}, sort_keys=True)
  return f'{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:16]}'


def ensure(root: pathlib.Path, write) -> pathlib.Path:
  """Calls `write()` (an atomic writer of `root`) unless `root` is complete; returns root.

  Safe against concurrent callers: a loser of the race, whose write is refused,
  reuses the winner's (identical) dataset.
  """
  if not (root / 'mapping.txt').is_file():
    try:
      write()
    except (formats.DataError, OSError):
      if not (root / 'mapping.txt').is_file():
        raise
  return root


def ensure_generated(cache_dir, name: str, write, kwargs: dict) -> pathlib.Path:
  """`ensure` of `write(root, **kwargs)` in root = `cache_dir/name` (a `cache_key`): the dataset is
  generated on first use and reused after; returns that root."""
  root = pathlib.Path(cache_dir).expanduser() / name
  return ensure(root, lambda: write(root, **kwargs))


def random_directions(rng: np.random.Generator, count: int, dim: int, norm: float) -> np.ndarray:
  """[count, dim] random vectors of the given norm."""
  vectors = rng.standard_normal((count, dim))
  return norm * vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def random_projection(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
  """[rows, cols] random, orthonormal rows (an isometry) when rows <= cols, else columns."""
  basis, _ = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
  return basis.T if rows <= cols else basis

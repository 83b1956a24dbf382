"""Late fusion of per-stream class probabilities (2s-DAS, docs/methods/twostream.md), numpy.

Each stream (e.g. RGB and optical flow) predicts probabilities [T, C] on its own; the fused
prediction is the weighted sum sum_s w_s p_s with weights on the simplex (>= 0, summing to 1).
`search_weights` picks the weights on validation videos: it scores every point of `weight_grid`
with the caller's decoding (post-processing) and metrics, and `plot_search` draws the scores.
"""

import dataclasses
import itertools
from collections.abc import Callable
from collections.abc import Sequence

import numpy as np

from polyseg.report import plots

WEIGHT_SUM_TOLERANCE = 1e-6


def check_weights(weights: Sequence[float], num_streams: int) -> tuple[float, ...]:
  """Validates fusion weights: one per stream, each >= 0, summing to 1. Returns them as floats."""
  weights = tuple(float(w) for w in weights)
  if len(weights) != num_streams:
    raise ValueError(f'fusion weights {weights}: expected one per stream ({num_streams})')
  if not (all(w >= 0.0 for w in weights) and abs(sum(weights) - 1.0) <= WEIGHT_SUM_TOLERANCE):
    raise ValueError(f'fusion weights {weights}: expected weights >= 0 summing to 1')
  return weights


def fuse(stream_probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
  """sum_s w_s p_s: S x [T_s, C] -> [min_s T_s, C] (streams are aligned; lengths normally agree)."""
  if len(stream_probs) == 0:
    raise ValueError('fuse: no streams')
  weights = check_weights(weights, len(stream_probs))
  stream_probs = [np.asarray(probs) for probs in stream_probs]
  shapes = [probs.shape for probs in stream_probs]
  if any(len(shape) != 2 or shape[1] != shapes[0][1] for shape in shapes):
    raise ValueError(f'fuse: expected [T, C] arrays with the same C, got shapes {shapes}')
  length = min(shape[0] for shape in shapes)
  return sum(w * probs[:length] for w, probs in zip(weights, stream_probs))


def weight_grid(num_streams: int, step: float) -> np.ndarray:
  """Every weight vector on the simplex with coordinates multiples of `step`: [G, num_streams].

  Rows in lexicographic order of the weights, ascending; two streams at step 0.05 give (0, 1),
  (0.05, 0.95), ..., (1, 0). 1 / step must be an integer.
  """
  if not isinstance(num_streams, (int, np.integer)) or num_streams < 1:
    raise ValueError(f'weight_grid: num_streams must be a positive int, got {num_streams!r}')
  divisions = round(1.0 / step) if 0.0 < step <= 1.0 else 0
  if divisions == 0 or abs(divisions * step - 1.0) > WEIGHT_SUM_TOLERANCE:
    raise ValueError(f'weight_grid: step {step} must be 1 / n for a positive integer n')
  points = [
    (*head, divisions - sum(head))
    for head in itertools.product(range(divisions + 1), repeat=num_streams - 1)
    if sum(head) <= divisions
  ]
  return np.array(points, np.float64) / divisions


@dataclasses.dataclass
class SearchResult:
  """Scores of every grid point of a weight search: grid [G, S], scores [G]; `best` is the grid
  point of the highest score (the first in grid order on ties)."""

  best: tuple[float, ...]
  best_score: float
  metric: str
  grid: np.ndarray
  scores: np.ndarray


def search_weights(
  stream_probs: Sequence[Sequence[np.ndarray]],
  labels: Sequence[np.ndarray],
  decode: Callable[[np.ndarray, int], np.ndarray],
  new_metrics: Callable[[], object],
  metric: str = 'F1@50',
  step: float = 0.05,
) -> SearchResult:
  """Grid search of the fusion weights on labelled videos.

  stream_probs[v][s]: video v's stream s probabilities [T'_v, C] (at the sampled rate);
  labels[v]: its ground truth [T_v]; decode(fused [T'_v, C], v) -> full-rate class ids [T_v];
  new_metrics() -> an object with .add(pred, gt) and .result() -> {name: score}. Each point of
  weight_grid(S, step) is scored by result()[metric] over all videos.
  """
  if len(stream_probs) == 0:
    raise ValueError('search_weights: no videos')
  if len(labels) != len(stream_probs):
    raise ValueError(
      f'search_weights: {len(stream_probs)} videos of probabilities but {len(labels)} of labels'
    )
  num_streams = {len(streams) for streams in stream_probs}
  if len(num_streams) != 1:
    raise ValueError(f'search_weights: videos differ in their number of streams {num_streams}')
  grid = weight_grid(num_streams.pop(), step)
  scores = np.zeros(len(grid))
  for g, weights in enumerate(grid):
    metrics = new_metrics()
    for v, (streams, gt) in enumerate(zip(stream_probs, labels)):
      metrics.add(decode(fuse(streams, weights), v), gt)
    results = metrics.result()
    if metric not in results:
      raise ValueError(f'search_weights: unknown metric {metric!r}; available: {list(results)}')
    scores[g] = results[metric]
  best = int(np.argmax(scores))  # the first maximum
  return SearchResult(
    best=tuple(float(w) for w in grid[best]),
    best_score=float(scores[best]),
    metric=metric,
    grid=grid,
    scores=scores,
  )


def plot_search(
  result: SearchResult, path: str, stream_names: Sequence[str] = ('rgb', 'flow')
) -> None:
  """PNG of a weight search's scores, the best point marked and labelled: against the first
  stream's weight for two streams, against the grid index otherwise."""
  names = tuple(stream_names)
  if len(names) != result.grid.shape[1]:
    raise ValueError(f'plot_search: {result.grid.shape[1]} streams but stream names {names}')
  two_streams = len(names) == 2
  positions = result.grid[:, 0] if two_streams else np.arange(len(result.grid))
  best = int(np.argmax(result.scores))
  figure = plots.new_figure(6.4, 4.0)
  ax = figure.subplots()
  ax.plot(positions, result.scores, marker='.')
  ax.plot(positions[best], result.best_score, marker='*', markersize=14, color='tab:red')
  weights = ', '.join(f'{name} {w:.2f}' for name, w in zip(names, result.best))
  left_half = positions[best] <= (positions[0] + positions[-1]) / 2
  ax.annotate(
    f'{weights}\n{result.metric} {result.best_score:.2f}',
    (positions[best], result.best_score),
    xytext=(8 if left_half else -8, -30),
    textcoords='offset points',
    ha='left' if left_half else 'right',
    fontsize=8,
    bbox={'boxstyle': 'round', 'facecolor': 'white', 'alpha': 0.8},
  )
  ax.set_xlabel(f'{names[0]} weight ({names[1]} = 1 - it)' if two_streams else 'grid index')
  ax.set_ylabel(result.metric)
  ax.set_title(f'fusion weight search: {result.metric}', fontsize=10)
  ax.grid(alpha=0.3)
  plots.save_png(figure, path)

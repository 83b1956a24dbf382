"""Tests for polyseg.methods.twostream.late_fusion: fusion arithmetic, the weight grid, the weight search by hand."""

import numpy as np
import pytest

from polyseg.core import metrics
from polyseg.core import postprocess
from polyseg.methods.twostream import late_fusion


def test_fuse_hand_worked():
  rgb = np.array([[0.8, 0.2], [0.4, 0.6], [0.5, 0.5]])
  flow = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.8], [0.9, 0.1]])  # one frame longer: cut
  # 0.25 rgb + 0.75 flow: [.2 + 0, .05 + .75], [.1 + .75, .15 + 0], [.125 + .15, .125 + .6]
  np.testing.assert_allclose(
    late_fusion.fuse([rgb, flow], [0.25, 0.75]), [[0.2, 0.8], [0.85, 0.15], [0.275, 0.725]]
  )
  np.testing.assert_allclose(late_fusion.fuse([rgb, flow], (1, 0)), rgb)
  third = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  # 0.5 rgb + 0.3 flow + 0.2 third: [.4 + 0 + .2, .1 + .3 + 0], [.2 + .3 + .2, .3 + 0 + 0], ...
  np.testing.assert_allclose(
    late_fusion.fuse([rgb, flow, third], [0.5, 0.3, 0.2]),
    [[0.6, 0.4], [0.7, 0.3], [0.31, 0.69]],
  )
  assert late_fusion.fuse([rgb.astype(np.float32)] * 2, [0.5, 0.5]).dtype == np.float32


@pytest.mark.parametrize(
  'weights, match',
  [
    ([1.0], r'fusion weights \(1.0,\): expected one per stream \(2\)'),
    ([0.5, 0.3, 0.2], r'fusion weights \(0.5, 0.3, 0.2\): expected one per stream'),
    ([1.2, -0.2], r'fusion weights \(1.2, -0.2\): expected weights >= 0 summing to 1'),
    ([0.6, 0.6], r'fusion weights \(0.6, 0.6\): expected weights >= 0 summing to 1'),
    ([float('nan'), 1.0], r'fusion weights \(nan, 1.0\)'),
  ],
)
def test_fuse_rejects_bad_weights(weights, match):
  probs = np.full((3, 2), 0.5)
  with pytest.raises(ValueError, match=match):
    late_fusion.fuse([probs, probs], weights)


def test_fuse_rejects_bad_streams():
  with pytest.raises(ValueError, match='no streams'):
    late_fusion.fuse([], [])
  with pytest.raises(ValueError, match=r'same C, got shapes \[\(3, 2\), \(3, 4\)\]'):
    late_fusion.fuse([np.ones((3, 2)), np.ones((3, 4))], [0.5, 0.5])
  with pytest.raises(ValueError, match=r'shapes \[\(3,\), \(3,\)\]'):
    late_fusion.fuse([np.ones(3), np.ones(3)], [0.5, 0.5])


def test_check_weights_returns_floats():
  assert late_fusion.check_weights([np.float32(0.5), 0.5], 2) == (0.5, 0.5)
  assert late_fusion.check_weights([0.6, 0.4], 2) == (0.6, 0.4)


def test_weight_grid_contents():
  grid = late_fusion.weight_grid(2, 0.05)
  assert grid.shape == (21, 2)
  np.testing.assert_allclose(grid[:, 0], np.arange(21) / 20)
  np.testing.assert_allclose(grid[:3], [[0, 1], [0.05, 0.95], [0.1, 0.9]])
  np.testing.assert_allclose(grid[-1], [1, 0])
  np.testing.assert_allclose(grid.sum(1), 1.0)
  np.testing.assert_allclose(
    late_fusion.weight_grid(3, 0.5),
    [[0, 0, 1], [0, 0.5, 0.5], [0, 1, 0], [0.5, 0, 0.5], [0.5, 0.5, 0], [1, 0, 0]],
  )
  np.testing.assert_allclose(late_fusion.weight_grid(1, 0.25), [[1.0]])
  np.testing.assert_allclose(late_fusion.weight_grid(2, 1.0), [[0, 1], [1, 0]])
  fine = late_fusion.weight_grid(3, 0.05)
  assert fine.shape == (231, 3)  # C(20 + 2, 2) compositions of 20 into 3 parts
  assert len({tuple(row) for row in np.round(fine * 20).astype(int).tolist()}) == 231
  np.testing.assert_allclose(fine.sum(1), 1.0)
  np.testing.assert_allclose(late_fusion.weight_grid(2, 1 / 3)[:, 0], [0, 1 / 3, 2 / 3, 1])


@pytest.mark.parametrize('step', [0.3, 0.0, -0.5, 2.0, float('nan')])
def test_weight_grid_rejects_steps_not_one_over_n(step):
  with pytest.raises(ValueError, match=f'step {step} must be 1 / n'):
    late_fusion.weight_grid(2, step)


def test_weight_grid_rejects_stream_counts():
  for num_streams in (0, 2.0):
    with pytest.raises(ValueError, match='num_streams must be a positive int'):
      late_fusion.weight_grid(num_streams, 0.5)


def halves_video(rgb_first, rgb_second, flow_first, flow_second, half):
  """Two classes, ground truth [0] * half + [1] * half; each stream's class-0 probability is
  constant on each half. Returns ([rgb [2 half, 2], flow [2 half, 2]], labels [2 half])."""
  streams = [
    np.repeat([[first, 1 - first], [second, 1 - second]], half, axis=0)
    for first, second in ((rgb_first, rgb_second), (flow_first, flow_second))
  ]
  return streams, np.repeat([0, 1], half).astype(np.int32)


# With rgb weight w, frames are right where the fused class-0 probability is on the correct side:
# video 1 (halves of 4 frames): first half .9 w + .3 (1 - w) = .3 + .6 w > .5 iff w > 1/3,
#   second half .7 w + .1 (1 - w) = .1 + .6 w < .5 iff w < 2/3;
# video 2 (halves of 6 frames): first half .8 w + .1 (1 - w) = .1 + .7 w > .5 iff w > 4/7,
#   second half .6 w + .05 (1 - w) = .05 + .55 w < .5 iff w < 9/11.
# RGB is right on the first halves, flow on the second; only 4/7 < w < 2/3 (grid: .60, .65) gets
# every frame right. On the grid w = k / 20 the nearest fused probabilities are >= .01 from .5.
VIDEOS = [halves_video(0.9, 0.7, 0.3, 0.1, 4), halves_video(0.8, 0.6, 0.1, 0.05, 6)]


def search(videos, **kwargs):
  return late_fusion.search_weights(
    [streams for streams, _ in videos],
    [labels for _, labels in videos],
    decode=lambda fused, v: postprocess.postprocess(fused, len(videos[v][1]), 1),
    new_metrics=metrics.SegmentationMetrics,
    **kwargs,
  )


def test_search_weights_known_optimum_by_accuracy():
  result = search(VIDEOS, metric='Acc')
  np.testing.assert_allclose(result.grid, late_fusion.weight_grid(2, 0.05))
  # Right frames of 20: 4 [w > 1/3] + 4 [w < 2/3] + 6 [w > 4/7] + 6 [w < 9/11], w = k / 20:
  # k 0-6: 10, k 7-11: 14, k 12-13: 20, k 14-16: 16, k 17-20: 10.
  expected = np.repeat([50.0, 70.0, 100.0, 80.0, 50.0], [7, 5, 2, 3, 4])
  np.testing.assert_allclose(result.scores, expected)
  np.testing.assert_allclose(result.best, (0.6, 0.4))  # .60 and .65 tie: the first
  assert isinstance(result.best, tuple) and all(type(w) is float for w in result.best)
  assert (result.best_score, result.metric) == (100.0, 'Acc')


def test_search_weights_f1_ties_take_the_first_grid_point():
  # Video 1 alone, default F1@50. w <= .30: all frames class 1, one segment [0, 8) that overlaps
  # GT class 1 [4, 8) with IoU .5 -> TP 1, FN 1, F1 = 66.7; w >= .70 likewise with class 0;
  # .35 <= w <= .65: both segments right, F1 = 100 (7 tied points).
  result = search(VIDEOS[:1])
  assert result.metric == 'F1@50'
  expected = np.repeat([200 / 3, 100.0, 200 / 3], [7, 7, 7])
  np.testing.assert_allclose(result.scores, expected)
  np.testing.assert_allclose(result.best, (0.35, 0.65))
  # Equal streams (RGB twice): every grid point predicts all class 0, Edit 1 - 1/2 = 50; the first
  # point, (0, 1), wins.
  streams, labels = VIDEOS[0]
  result = search([([streams[0], streams[0]], labels)], metric='Edit', step=0.25)
  np.testing.assert_allclose(result.scores, np.full(5, 50.0))
  assert result.best == (0.0, 1.0)


def test_search_weights_three_streams():
  streams, labels = VIDEOS[0]
  flat = np.full_like(streams[0], 0.5)  # a stream that knows nothing (argmax ties -> class 0)
  result = search([([flat, *streams], labels)], metric='Acc', step=0.5)
  # Grid (flat, rgb, flow): (0,0,1) flow only: second half right -> 50; (0,.5,.5): w_rgb = .5 in
  # video 1's range -> 100; (0,1,0) rgb only -> 50; (.5,0,.5): first half .4 < .5 wrong, second
  # .3 -> 50; (.5,.5,0): first .7, second .6 -> 50; (1,0,0): all .5 -> class 0 -> 50.
  np.testing.assert_allclose(result.scores, [50, 100, 50, 50, 50, 50])
  assert result.best == (0.0, 0.5, 0.5)


def test_search_weights_errors():
  with pytest.raises(ValueError, match='no videos'):
    search([])
  with pytest.raises(
    ValueError, match=r"unknown metric 'F1@75'; available: \['Acc', 'Edit', 'F1@10'"
  ):
    search(VIDEOS, metric='F1@75')
  with pytest.raises(ValueError, match='2 videos of probabilities but 1 of labels'):
    late_fusion.search_weights(
      [streams for streams, _ in VIDEOS], [VIDEOS[0][1]], None, metrics.SegmentationMetrics
    )
  streams, labels = VIDEOS[0]
  with pytest.raises(ValueError, match='number of streams'):
    search([VIDEOS[0], (streams[:1], labels)])
  with pytest.raises(ValueError, match='step 0.3'):
    search(VIDEOS, step=0.3)


@pytest.mark.parametrize('num_streams, names', [(2, ('rgb', 'flow')), (3, ('a', 'b', 'c'))])
def test_plot_search_writes_png(tmp_path, num_streams, names):
  streams, labels = VIDEOS[0]
  result = search([([*streams, streams[0]][:num_streams], labels)], step=0.25)
  path = tmp_path / 'search.png'
  late_fusion.plot_search(result, str(path), names)
  assert path.read_bytes().startswith(b'\x89PNG\r\n\x1a\n')
  assert [p.name for p in tmp_path.iterdir()] == ['search.png']  # no temporary file left
  with pytest.raises(ValueError, match=f'{num_streams} streams but stream names'):
    late_fusion.plot_search(result, str(path), ('x',))

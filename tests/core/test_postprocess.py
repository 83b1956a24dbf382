"""Tests for polyseg.core.postprocess against hand-worked cases and scipy references (DiffAct's code)."""

import numpy as np
import pytest
import scipy.interpolate
import scipy.ndimage
import scipy.stats

from polyseg.core import postprocess


def random_probs(rng, length, num_classes):
  logits = rng.normal(size=(length, num_classes)) * 2
  return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)


@pytest.mark.parametrize('size', [1, 2, 5, 8, 31])
def test_median_filter_probs_matches_scipy_per_class(size):
  probs = random_probs(np.random.default_rng(size), 23, 4)
  smoothed = np.stack([scipy.ndimage.median_filter(probs[:, c], size=size) for c in range(4)], -1)
  expected = smoothed / smoothed.sum(-1, keepdims=True)
  result = postprocess.median_filter_probs(probs, size)
  np.testing.assert_allclose(result, expected, rtol=1e-12)
  np.testing.assert_allclose(result.sum(-1), 1.0)


@pytest.mark.parametrize(
  'pred, max_len, expected',
  [
    ([1, 2, 2, 2, 2], 1, [2, 2, 2, 2, 2]),  # first short -> next label
    ([1, 1, 1, 1, 2], 1, [1, 1, 1, 1, 1]),  # last short -> previous label
    (
      [1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3],
      3,  # middle, 3 frames: mid = 4 + 1
      [1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3],
    ),
    ([1, 1, 1, 2, 2, 3, 3, 3], 2, [1, 1, 1, 1, 3, 3, 3, 3]),  # middle, 2 frames: mid = 3 + 1
    ([1, 1, 1, 2, 2, 3, 3, 3], 1, [1, 1, 1, 2, 2, 3, 3, 3]),  # longer than max_len: kept
    (
      [1, 1, 1, 1, 2, 3, 4, 4, 4, 4],
      1,  # one pass over the input's segments:
      [1, 1, 1, 1, 3, 4, 4, 4, 4, 4],
    ),  # 1-frame middles go to the next label
    ([2, 2], 5, [2, 2]),  # a single segment is never purged
  ],
)
def test_purge_hand_worked(pred, max_len, expected):
  np.testing.assert_array_equal(postprocess.purge(np.array(pred), max_len), expected)


@pytest.mark.parametrize('size', [1, 2, 3, 4, 7, 30, 61])
def test_mode_filter_matches_diffact_generic_filter(size):
  rng = np.random.default_rng(size)
  pred = np.repeat(rng.integers(0, 5, 12), rng.integers(1, 4, 12))
  pred[rng.random(pred.size) < 0.3] = 2
  expected = scipy.ndimage.generic_filter(pred, lambda window: scipy.stats.mode(window).mode, size)
  np.testing.assert_array_equal(postprocess.mode_filter(pred, size), expected)


def test_mode_filter_hand_worked():
  # window 3 at the border: reflect -> [1, 1, 2] for frame 0; ties (1 vs 2 in size 2) take smaller id.
  np.testing.assert_array_equal(
    postprocess.mode_filter(np.array([1, 2, 1, 1, 3, 1]), 3), [1, 1, 1, 1, 1, 1]
  )
  np.testing.assert_array_equal(postprocess.mode_filter(np.array([2, 1, 2, 1]), 2), [2, 1, 1, 1])


def diffact_restore(pred, full_len, sample_rate):
  """DiffAct's restore_full_sequence: interp1d 'nearest' between ticks, constant outside."""
  ticks = np.arange(sample_rate // 2, full_len - (sample_rate - 1) // 2, sample_rate)
  out = np.zeros(full_len, pred.dtype)
  out[: ticks[0]] = pred[0]
  out[ticks[-1] :] = pred[-1]
  if ticks.size > 1:
    interpolate = scipy.interpolate.interp1d(ticks, pred, kind='nearest')
    for i in range(ticks.size - 1):
      out[ticks[i] : ticks[i + 1]] = interpolate(np.arange(ticks[i], ticks[i + 1]))
  return out


@pytest.mark.parametrize('sample_rate', [1, 2, 3, 4, 8])
@pytest.mark.parametrize('full_len', [8, 9, 31, 64])
def test_restore_full_rate_matches_scipy_nearest(sample_rate, full_len):
  num_ticks = full_len // sample_rate
  pred = np.random.default_rng(full_len).integers(0, 100, num_ticks)
  np.testing.assert_array_equal(
    postprocess.restore_full_rate(pred, full_len, sample_rate),
    diffact_restore(pred, full_len, sample_rate),
  )


def test_restore_full_rate_hand_worked():
  # r = 4, full_len 10: ticks 2, 6; frame 4 is halfway -> the earlier tick.
  np.testing.assert_array_equal(postprocess.frame_ticks(10, 4), [2, 6])
  np.testing.assert_array_equal(
    postprocess.restore_full_rate(np.array([7, 9]), 10, 4), [7, 7, 7, 7, 7, 9, 9, 9, 9, 9]
  )
  identity = np.arange(5)
  np.testing.assert_array_equal(postprocess.restore_full_rate(identity, 5, 1), identity)
  with pytest.raises(ValueError, match='ticks'):
    postprocess.restore_full_rate(np.arange(3), 10, 4)


def test_merge_views_trims_and_averages():
  full_len, rate = 10, 3  # views o::3 have 4, 3, 3 frames; all share 10 // 3 = 3
  rng = np.random.default_rng(0)
  views = [random_probs(rng, len(range(o, full_len, rate)), 2) for o in range(rate)]
  merged = postprocess.merge_views(views)
  np.testing.assert_allclose(merged, (views[0][:3] + views[1] + views[2]) / 3)
  assert merged.shape[0] == postprocess.frame_ticks(full_len, rate).size
  np.testing.assert_allclose(
    postprocess.merge_views(np.stack([views[1], views[2]])), (views[1] + views[2]) / 2
  )
  with pytest.raises(ValueError, match='no views'):
    postprocess.merge_views([])


def test_postprocess_composes_in_diffact_order():
  rng = np.random.default_rng(1)
  full_len, rate = 37, 4
  probs = random_probs(rng, full_len // rate, 5)
  plain = postprocess.restore_full_rate(probs.argmax(-1), full_len, rate)
  np.testing.assert_array_equal(postprocess.postprocess(probs, full_len, rate), plain)
  np.testing.assert_array_equal(
    postprocess.postprocess(probs, full_len, rate, 'median', 3),
    postprocess.restore_full_rate(
      postprocess.median_filter_probs(probs, 3).argmax(-1), full_len, rate
    ),
  )
  np.testing.assert_array_equal(
    postprocess.postprocess(probs, full_len, rate, 'mode', 5), postprocess.mode_filter(plain, 5)
  )
  np.testing.assert_array_equal(
    postprocess.postprocess(probs, full_len, rate, 'purge', 4), postprocess.purge(plain, 4)
  )
  with pytest.raises(ValueError, match='kind'):
    postprocess.postprocess(probs, full_len, rate, 'gaussian', 3)
  with pytest.raises(ValueError, match='positive int'):
    postprocess.postprocess(probs, full_len, rate, 'purge', None)


def test_postprocess_hand_worked_purge_at_full_rate():
  # r = 2, full_len 8: ticks 1, 3, 5, 7; low-rate labels [0, 1, 0, 0] -> full rate
  # [0, 0, 0, 1, 1, 0, 0, 0] (frame 2 is halfway -> earlier tick); purge 2 removes the 1s.
  probs = np.eye(2)[[0, 1, 0, 0]]
  np.testing.assert_array_equal(postprocess.postprocess(probs, 8, 2), [0, 0, 0, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(postprocess.postprocess(probs, 8, 2, 'purge', 2), np.zeros(8))


# ---- post-processing chains ----


@pytest.mark.parametrize(
  'spec, value, expected',
  [
    ('none', None, ()),
    ('none', 7, ()),  # a single kind's value is ignored by 'none', as before chains
    ('median', 15, (('median', 15),)),
    ('purge', np.int64(3), (('purge', 3),)),
    ('mode=9', None, (('mode', 9),)),
    ('median=15,mode=9,purge=3', None, (('median', 15), ('mode', 9), ('purge', 3))),
    (' purge = 2, mode=5 ,purge=1', None, (('purge', 2), ('mode', 5), ('purge', 1))),
  ],
)
def test_parse_chain(spec, value, expected):
  assert postprocess.parse_chain(spec, value) == expected


@pytest.mark.parametrize(
  'spec, value, match',
  [
    ('gaussian', 3, r"part 'gaussian': kind 'gaussian' not in \('none', 'median'"),
    ('mode=3,gauss=2', None, r"part 'gauss=2': kind 'gauss' not in"),
    ('mode=3,,purge=2', None, r"part '': kind '' not in"),
    ('', None, r"part '': kind '' not in"),
    ('none,mode=3', None, r"part 'none': 'none' is only allowed alone"),
    ('mode=3,none=1', None, r"part 'none=1': 'none' is only allowed alone"),
    ('mode=3,purge', None, r"part 'purge': expected purge=<positive int>"),
    ('mode=0', None, r"part 'mode=0': expected mode=<positive int>"),
    ('mode=-2', None, 'expected mode=<positive int>'),
    ('mode=2.5', None, 'expected mode=<positive int>'),
    ('purge=x', None, 'expected purge=<positive int>'),
    ('median=', None, 'expected median=<positive int>'),
    ('mode=3,median=5', None, r"chain 'mode=3,median=5': 'median' filters probabilities"),
    ('median=3,median=5', None, "'median' filters probabilities, so it can only come first"),
    ('mode=3', 5, r"chain 'mode=3' has its own values; got value=5 too"),
    ('purge', None, r"postprocess 'purge' value must be a positive int, got None"),
    ('median', 0, 'positive int, got 0'),
    ('mode', 2.5, 'positive int, got 2.5'),
    ('mode', True, 'positive int, got True'),
  ],
)
def test_parse_chain_errors(spec, value, match):
  with pytest.raises(ValueError, match=match):
    postprocess.parse_chain(spec, value)
  with pytest.raises(ValueError, match=match):
    postprocess.postprocess(np.eye(2)[[0, 1, 1, 0]], 4, 1, spec, value)


def test_postprocess_chain_order_matters_hand_worked():
  # r = 1, labels [0 0 1 0 1].
  # mode 3 (reflect borders: windows [0 0 0] [0 0 1] [0 1 0] [1 0 1] [0 1 1]) -> [0 0 0 1 1];
  # purge 1 then finds no segment of <= 1 frame -> [0 0 0 1 1].
  # purge 1 first, one pass over the input's segments 0 [0, 2), 1 [2, 3), 0 [3, 4), 1 [4, 5):
  # [2, 3) takes the next label 0, [3, 4) the next label 1, the last [4, 5) the previous label 0
  # -> [0 0 0 1 0]; mode 3 (windows [0 1 0] [1 0 0] at the end) -> [0 0 0 0 0].
  probs = np.eye(2)[[0, 0, 1, 0, 1]]
  np.testing.assert_array_equal(
    postprocess.postprocess(probs, 5, 1, 'mode=3,purge=1'), [0, 0, 0, 1, 1]
  )
  np.testing.assert_array_equal(postprocess.postprocess(probs, 5, 1, 'purge=1,mode=3'), np.zeros(5))
  np.testing.assert_array_equal(postprocess.postprocess(probs, 5, 1, 'mode=3'), [0, 0, 0, 1, 1])
  np.testing.assert_array_equal(postprocess.postprocess(probs, 5, 1, 'purge=1'), [0, 0, 0, 1, 0])


def test_postprocess_chain_median_first_then_full_rate_filters():
  # r = 2, full_len 8, ticks 1, 3, 5, 7. Class-1 probabilities [.6 .4 .7 .3]: argmax [1 0 1 0].
  # median 3 on each class (reflect): class 1 -> medians of [.6 .6 .4] [.6 .4 .7] [.4 .7 .3]
  # [.7 .3 .3] = [.6 .6 .4 .3], class 0 = 1 - class 1 -> argmax [1 1 0 0]; full rate
  # [1 1 1 1 1 0 0 0] (frame 2 and 4 are halfway -> the earlier tick); purge 3 (last segment of 3
  # frames -> the previous label) -> all 1; mode 3 keeps [1 1 1 1 1 0 0 0].
  class1 = np.array([0.6, 0.4, 0.7, 0.3])
  probs = np.stack([1 - class1, class1], axis=1)
  np.testing.assert_array_equal(postprocess.postprocess(probs, 8, 2), [1, 1, 1, 0, 0, 1, 1, 0])
  np.testing.assert_array_equal(
    postprocess.postprocess(probs, 8, 2, 'median=3'), [1, 1, 1, 1, 1, 0, 0, 0]
  )
  np.testing.assert_array_equal(
    postprocess.postprocess(probs, 8, 2, 'median=3,mode=3'), [1, 1, 1, 1, 1, 0, 0, 0]
  )
  np.testing.assert_array_equal(
    postprocess.postprocess(probs, 8, 2, 'median=3,purge=3'), np.ones(8)
  )


def test_postprocess_chain_composes_the_single_steps():
  rng = np.random.default_rng(2)
  full_len, rate = 45, 3
  probs = random_probs(rng, full_len // rate, 4)
  chained = postprocess.postprocess(probs, full_len, rate, 'median=3,mode=5,purge=4,mode=3')
  assert chained.dtype == np.int32
  smoothed = postprocess.restore_full_rate(
    postprocess.median_filter_probs(probs, 3).argmax(-1), full_len, rate
  )
  np.testing.assert_array_equal(
    chained,
    postprocess.mode_filter(postprocess.purge(postprocess.mode_filter(smoothed, 5), 4), 3),
  )
  for kind, value in (('median', 3), ('mode', 5), ('purge', 4)):
    np.testing.assert_array_equal(
      postprocess.postprocess(probs, full_len, rate, f'{kind}={value}'),
      postprocess.postprocess(probs, full_len, rate, kind, value),
    )


# ---- multi-label post-processing ----


@pytest.mark.parametrize('size', [1, 3, 6])
def test_median_filter_time_is_per_class_scipy_without_renormalisation(size):
  probs = np.random.default_rng(size).random((17, 3))
  expected = np.stack([scipy.ndimage.median_filter(probs[:, c], size=size) for c in range(3)], -1)
  np.testing.assert_array_equal(postprocess.median_filter_time(probs, size), expected)
  np.testing.assert_allclose(
    postprocess.median_filter_probs(probs, size), expected / expected.sum(-1, keepdims=True)
  )


def test_restore_full_rate_accepts_class_columns():
  probs = np.random.default_rng(0).random((4, 3))  # r = 3, full_len 13: ticks 1, 4, 7, 10
  restored = postprocess.restore_full_rate(probs, 13, 3)
  assert restored.shape == (13, 3)
  for c in range(3):
    np.testing.assert_array_equal(restored[:, c], diffact_restore(probs[:, c], 13, 3))


def test_binarize_threshold_is_inclusive():
  np.testing.assert_array_equal(
    postprocess.binarize(np.array([[0.49, 0.5], [0.7, 0.2]])), [[False, True], [True, False]]
  )
  np.testing.assert_array_equal(postprocess.binarize(np.array([0.5, 0.7]), 0.6), [False, True])


@pytest.mark.parametrize(
  'track, max_len, expected',
  [
    ([1, 0, 1], 1, [1, 1, 1]),  # the gap is filled first, so the pieces are joined, not removed
    ([1, 1, 0, 0, 0, 1], 1, [1, 1, 0, 0, 0, 0]),  # gap of 3 kept, last 1-frame run removed
    ([0, 1, 0, 0, 1, 1, 1, 0], 2, [0, 1, 1, 1, 1, 1, 1, 0]),  # edge gaps kept, inner gap filled
    ([0, 1, 1, 1, 0], 1, [0, 1, 1, 1, 0]),  # 1-frame gaps at the edges are not between two runs
    ([0, 0, 1, 0, 0, 0], 1, [0, 0, 0, 0, 0, 0]),  # short run removed
    ([0, 0, 1, 1, 0, 0, 0], 1, [0, 0, 1, 1, 0, 0, 0]),  # longer than max_len: kept
    ([1, 1], 5, [0, 0]),  # a short run is removed even when it fills the video
    ([0, 0, 0], 5, [0, 0, 0]),
  ],
)
def test_purge_binary_hand_worked(track, max_len, expected):
  np.testing.assert_array_equal(postprocess.purge_binary(np.array(track, bool), max_len), expected)


def test_purge_binary_is_idempotent():
  rng = np.random.default_rng(0)
  for _ in range(30):
    track = rng.random(int(rng.integers(1, 40))) < 0.5
    max_len = int(rng.integers(1, 4))
    once = postprocess.purge_binary(track, max_len)
    np.testing.assert_array_equal(postprocess.purge_binary(once, max_len), once)


# r = 2, full_len 8: ticks 1, 3, 5, 7; low-rate frame i covers full-rate frames
# [0, 1, 2], [3, 4], [5, 6], [7] (frame 2 is halfway -> the earlier tick).
LOW_RATE = np.array([[0.9, 0.2], [0.1, 0.7], [0.8, 0.3], [0.3, 0.4]])


def test_postprocess_multilabel_none_and_purge_hand_worked():
  plain = postprocess.postprocess_multilabel(LOW_RATE, 8, 2)
  assert plain.dtype == np.float32
  np.testing.assert_allclose(plain, LOW_RATE[[0, 0, 0, 1, 1, 2, 2, 3]], rtol=1e-6)
  # Full-rate decisions: class 0 [1 1 1 0 0 1 1 0], class 1 [0 0 0 1 1 0 0 0].
  # Purge 1: the gap and the run are 2 frames long -> nothing changes.
  np.testing.assert_array_equal(
    postprocess.postprocess_multilabel(LOW_RATE, 8, 2, 'purge', 1), plain
  )
  # Purge 2: class 0's gap [3, 5) is filled (-> 1), class 1's run [3, 5) removed (-> 0); all other
  # frames keep their probability.
  np.testing.assert_allclose(
    postprocess.postprocess_multilabel(LOW_RATE, 8, 2, 'purge', 2),
    [
      [0.9, 0.2],
      [0.9, 0.2],
      [0.9, 0.2],
      [1.0, 0.0],
      [1.0, 0.0],
      [0.8, 0.3],
      [0.8, 0.3],
      [0.3, 0.4],
    ],
    rtol=1e-6,
  )
  # With threshold .75, class 0's frames at .8 decide active and class 0 ends [1 1 1 1 1 1 1 0];
  # class 1 (.7 < .75) has no run.
  purged = postprocess.postprocess_multilabel(LOW_RATE, 8, 2, 'purge', 2, threshold=0.75)
  np.testing.assert_allclose(purged[:, 0], [0.9, 0.9, 0.9, 1, 1, 0.8, 0.8, 0.3], rtol=1e-6)
  np.testing.assert_allclose(purged[:, 1], plain[:, 1])


def test_postprocess_multilabel_median_hand_worked():
  # Size 3, reflect borders. Class 0 [.9 .1 .8 .3]: medians of [.9 .9 .1] [.9 .1 .8] [.1 .8 .3]
  # [.8 .3 .3] = .9 .8 .3 .3; class 1 [.2 .7 .3 .4]: [.2 .2 .7] [.2 .7 .3] [.7 .3 .4] [.3 .4 .4]
  # = .2 .3 .4 .4. Rows are not renormalised (the first sums to 1.1).
  expected_low = np.array([[0.9, 0.2], [0.8, 0.3], [0.3, 0.4], [0.3, 0.4]])
  np.testing.assert_allclose(
    postprocess.postprocess_multilabel(LOW_RATE, 4, 1, 'median', 3), expected_low, rtol=1e-6
  )
  np.testing.assert_allclose(
    postprocess.postprocess_multilabel(LOW_RATE, 8, 2, 'median', 3),
    expected_low[[0, 0, 0, 1, 1, 2, 2, 3]],
    rtol=1e-6,
  )


def test_postprocess_multilabel_invalid_inputs_raise():
  with pytest.raises(ValueError, match="kind 'mode'"):
    postprocess.postprocess_multilabel(LOW_RATE, 8, 2, 'mode', 3)
  with pytest.raises(ValueError, match=r'probs: expected a \[T, C\]'):
    postprocess.postprocess_multilabel(LOW_RATE[:, 0], 8, 2)
  with pytest.raises(ValueError, match='positive int'):
    postprocess.postprocess_multilabel(LOW_RATE, 8, 2, 'purge', None)
  with pytest.raises(ValueError, match='ticks'):
    postprocess.postprocess_multilabel(LOW_RATE, 12, 2)

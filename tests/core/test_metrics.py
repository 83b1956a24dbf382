"""Tests for polyseg.core.metrics: hand-worked cases and a brute-force reference."""

import numpy as np
import pytest

from polyseg.core import metrics

# One ground-truth segment of class 1 (frames [2, 14)) predicted as three pieces separated by
# background: A = [2, 5) (IoU 3/12 = .25), B = [7, 11) (IoU 4/12), C = [12, 14) (IoU 2/12).
OVERSEG_GT = np.array([0, 0] + [1] * 12 + [0, 0])
OVERSEG_PRED = np.array([0, 0] + [1] * 3 + [0] * 2 + [1] * 4 + [0] + [1] * 2 + [0, 0])
# Boundary between classes 1 and 2 shifted by 2 frames: IoUs 5/7 and 3/5.
SHIFT_GT = np.array([1] * 5 + [2] * 5)
SHIFT_PRED = np.array([1] * 7 + [2] * 3)
ALL_BACKGROUND = np.zeros(4, int)


def scores(pred, gt, background=(0,), overlaps=metrics.DEFAULT_OVERLAPS):
  accumulator = metrics.SegmentationMetrics(background=background, overlaps=overlaps)
  accumulator.add(pred, gt)
  return accumulator.result()


def test_segments_ends_are_exclusive_and_background_dropped():
  labels = np.array([3, 3, 0, 0, 0, 5, 3])
  seg_labels, starts, ends = metrics.segments(labels)
  np.testing.assert_array_equal(seg_labels, [3, 0, 5, 3])
  np.testing.assert_array_equal(starts, [0, 2, 5, 6])
  np.testing.assert_array_equal(ends, [2, 5, 6, 7])
  seg_labels, starts, ends = metrics.segments(labels, background=(0,))
  np.testing.assert_array_equal(seg_labels, [3, 5, 3])
  np.testing.assert_array_equal(starts, [0, 5, 6])
  np.testing.assert_array_equal(ends, [2, 6, 7])


def test_perfect_prediction():
  gt = np.array([0, 0, 1, 1, 1, 2, 2, 0, 3])
  assert scores(gt, gt) == {
    'Acc': 100.0,
    'Edit': 100.0,
    'F1@10': 100.0,
    'F1@25': 100.0,
    'F1@50': 100.0,
  }


def test_over_segmentation_hand_worked():
  # Edit: [1, 1, 1] vs [1] -> 2 insertions / 3. F1: A is matched first (greedy, temporal order, even
  # though B overlaps more); B and C hit a used segment. @10 and @25 (.25 >= .25): tp 1, fp 2, fn 0
  # -> P 1/3, R 1, F1 50. @50: tp 0, fp 3, fn 1 -> 0. Acc: frames 5, 6, 11 wrong -> 13/16.
  assert metrics.f1_counts(OVERSEG_PRED, OVERSEG_GT, 0.25, background=(0,)) == (1, 2, 0)
  assert metrics.f1_counts(OVERSEG_PRED, OVERSEG_GT, 0.5, background=(0,)) == (0, 3, 1)
  result = scores(OVERSEG_PRED, OVERSEG_GT)
  np.testing.assert_allclose(
    [result[k] for k in ('Acc', 'Edit', 'F1@10', 'F1@25', 'F1@50')],
    [81.25, 100 / 3, 50.0, 50.0, 0.0],
  )
  # Without a background class: [0,1,0,1,0,1,0] vs [0,1,0] -> 4 insertions / 7.
  assert metrics.edit_score(OVERSEG_PRED, OVERSEG_GT) == pytest.approx((1 - 4 / 7) * 100)


def test_shifted_boundary():
  result = scores(SHIFT_PRED, SHIFT_GT, background=(), overlaps=(0.5, 0.7))
  # IoU 5/7 = .714 passes .7, IoU 3/5 does not: tp 1, fp 1, fn 1 -> 50.
  assert result == pytest.approx({'Acc': 80.0, 'Edit': 100.0, 'F1@50': 100.0, 'F1@70': 50.0})


def test_all_background_video():
  # No segments on either side: Edit 100 (nothing to edit), no F1 counts, F1 undefined -> 0.
  assert metrics.edit_score(ALL_BACKGROUND, ALL_BACKGROUND, background=(0,)) == 100.0
  assert metrics.f1_counts(ALL_BACKGROUND, ALL_BACKGROUND, 0.5, background=(0,)) == (0, 0, 0)
  assert scores(ALL_BACKGROUND, ALL_BACKGROUND) == {
    'Acc': 100.0,
    'Edit': 100.0,
    'F1@10': 0.0,
    'F1@25': 0.0,
    'F1@50': 0.0,
  }
  # Segments on one side only: Edit 0, every segment a false positive / negative.
  pred = np.array([0, 4, 4, 0])
  assert metrics.edit_score(pred, ALL_BACKGROUND, background=(0,)) == 0.0
  assert metrics.f1_counts(pred, ALL_BACKGROUND, 0.1, background=(0,)) == (0, 1, 0)
  assert metrics.f1_counts(ALL_BACKGROUND, pred, 0.1, background=(0,)) == (0, 0, 1)


def test_one_segment_videos():
  gt = np.full(6, 3)
  assert scores(gt, gt, background=()) == {
    'Acc': 100.0,
    'Edit': 100.0,
    'F1@10': 100.0,
    'F1@25': 100.0,
    'F1@50': 100.0,
  }
  # Wrong class everywhere: IoU 1 but different label -> fp 1, fn 1.
  assert metrics.f1_counts(np.full(6, 4), gt, 0.1) == (0, 1, 1)
  assert scores(np.full(6, 4), gt, background=()) == {
    'Acc': 0.0,
    'Edit': 0.0,
    'F1@10': 0.0,
    'F1@25': 0.0,
    'F1@50': 0.0,
  }


def test_multiple_videos_aggregate():
  accumulator = metrics.SegmentationMetrics(background=(0,))
  for pred, gt in (
    (SHIFT_PRED, SHIFT_GT),
    (OVERSEG_PRED, OVERSEG_GT),
    (ALL_BACKGROUND, ALL_BACKGROUND),
  ):
    accumulator.add(pred, gt)
  # Acc micro: (8 + 13 + 4) / (10 + 16 + 4). Edit: mean(100, 33.3, 100).
  # @10, @25: (2,0,0) + (1,2,0) -> P .6, R 1 -> 75. @50: (2,0,0) + (0,3,1) -> P .4, R 2/3 -> 50.
  assert accumulator.counts(0.5) == (2, 3, 1)
  assert accumulator.result() == pytest.approx(
    {'Acc': 25 / 30 * 100, 'Edit': (200 + 100 / 3) / 3, 'F1@10': 75.0, 'F1@25': 75.0, 'F1@50': 50.0}
  )
  # Per class @50: class 1 (1,3,1) -> P 1/4, R 1/2 -> 1/3; class 2 (1,0,0) -> 1.
  assert accumulator.per_class_f1(0.5) == pytest.approx({1: 100 / 3, 2: 100.0})
  expected_confusion = [
    [8, 0, 0],  # rows: ground truth, columns: prediction
    [3, 14, 0],
    [0, 2, 3],
  ]
  np.testing.assert_array_equal(accumulator.confusion_matrix(3), expected_confusion)
  summed = sum(
    metrics.confusion_matrix(p, g, 3)
    for p, g in (
      (SHIFT_PRED, SHIFT_GT),
      (OVERSEG_PRED, OVERSEG_GT),
      (ALL_BACKGROUND, ALL_BACKGROUND),
    )
  )
  np.testing.assert_array_equal(summed, expected_confusion)


def test_invalid_inputs_raise():
  with pytest.raises(ValueError, match='frames'):
    metrics.edit_score(np.zeros(3, int), np.zeros(4, int))
  with pytest.raises(ValueError, match='overlap'):
    metrics.f1_counts(np.zeros(3, int), np.zeros(3, int), 0.0)
  with pytest.raises(ValueError, match='no videos'):
    metrics.SegmentationMetrics().result()
  with pytest.raises(ValueError, match='outside'):
    metrics.confusion_matrix(np.array([0, 5]), np.array([0, 1]), 3)


# ---- independent slow reference: explicit loops everywhere ----


def reference_segments(labels, background):
  found = []
  start = 0
  for t in range(1, len(labels) + 1):
    if t == len(labels) or labels[t] != labels[start]:
      if labels[start] not in background:
        found.append((int(labels[start]), start, t))
      start = t
  return found


def reference_levenshtein(a, b):
  table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
  for i in range(len(a) + 1):
    for j in range(len(b) + 1):
      if i == 0 or j == 0:
        table[i][j] = i + j
      else:
        table[i][j] = min(
          table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (a[i - 1] != b[j - 1])
        )
  return table[-1][-1]


def reference_counts(pred, gt, overlap, background):
  pred_segments = reference_segments(pred, background)
  gt_segments = reference_segments(gt, background)
  iou = [[0.0] * len(gt_segments) for _ in pred_segments]  # brute force over all pairs
  for i, (p_label, p_start, p_end) in enumerate(pred_segments):
    for j, (g_label, g_start, g_end) in enumerate(gt_segments):
      frames_in_both = sum(1 for t in range(p_start, p_end) if g_start <= t < g_end)
      frames_in_any = len(set(range(p_start, p_end)) | set(range(g_start, g_end)))
      iou[i][j] = frames_in_both / frames_in_any if p_label == g_label else 0.0
  used = [False] * len(gt_segments)
  tp = fp = 0
  for row in iou:
    best = max(range(len(row)), key=lambda j: (row[j], -j)) if row else None
    if best is not None and row[best] >= overlap and not used[best]:
      used[best] = True
      tp += 1
    else:
      fp += 1
  return tp, fp, used.count(False)


def random_video(rng, length, num_classes):
  boundaries = np.sort(
    rng.choice(np.arange(1, length), rng.integers(0, min(8, length)), replace=False)
  )
  return np.repeat(
    rng.integers(0, num_classes, boundaries.size + 1), np.diff(np.r_[0, boundaries, length])
  )


def test_matches_brute_force_reference():
  rng = np.random.default_rng(0)
  background = (0,)
  accumulator = metrics.SegmentationMetrics(background=background)
  correct = frames = 0
  edits, totals = [], {overlap: [0, 0, 0] for overlap in metrics.DEFAULT_OVERLAPS}
  for _ in range(60):
    length = int(rng.integers(1, 40))
    gt = random_video(rng, length, 4)
    # mostly a shifted ground truth (true positives at some overlaps) with some noisy frames
    base = np.roll(gt, rng.integers(-3, 4)) if rng.random() < 0.7 else random_video(rng, length, 4)
    pred = np.where(rng.random(length) < 0.1, rng.integers(0, 4, length), base)
    accumulator.add(pred, gt)
    correct += sum(int(p == g) for p, g in zip(pred, gt))
    frames += length
    pred_labels = [s[0] for s in reference_segments(pred, background)]
    gt_labels = [s[0] for s in reference_segments(gt, background)]
    longest = max(len(pred_labels), len(gt_labels))
    edits.append(
      100.0 if longest == 0 else (1 - reference_levenshtein(pred_labels, gt_labels) / longest) * 100
    )
    for overlap, total in totals.items():
      counts = reference_counts(pred, gt, overlap, background)
      assert metrics.f1_counts(pred, gt, overlap, background) == counts
      per_class = metrics.class_f1_counts(pred, gt, overlap, background).values()
      assert [sum(c[k] for c in per_class) for k in range(3)] == list(counts)
      total[:] = [a + b for a, b in zip(total, counts)]

  def reference_f1(tp, fp, fn):
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall) * 100

  expected = {'Acc': correct / frames * 100, 'Edit': sum(edits) / len(edits)}
  expected.update({f'F1@{round(o * 100)}': reference_f1(*c) for o, c in totals.items()})
  assert accumulator.result() == pytest.approx(expected)


# ---- multi-label (multi-hot) metrics ----


def multi_hot(length, num_classes, runs):
  """[T, C] bool with class c active on [start, end) for each (c, start, end) in runs."""
  labels = np.zeros((length, num_classes), bool)
  for c, start, end in runs:
    labels[start:end, c] = True
  return labels


def multilabel_scores(probs, gt, **kwargs):
  accumulator = metrics.MultiLabelMetrics(**kwargs)
  accumulator.add(probs, gt)
  return accumulator.result()


def set_runs(num_classes, *runs):
  """[T, C] bool from (label set, frames) runs in order: ({0, 1}, 3) = three frames of {0, 1}."""
  frames = [[c in labels for c in range(num_classes)] for labels, n in runs for _ in range(n)]
  return np.array(frames, bool).reshape(-1, num_classes)


def confident(hot):
  """Probabilities that threshold (at .5) to exactly the multi-hot [T, C] `hot`."""
  return np.where(hot, 0.9, 0.1)


# Five frames, three classes, threshold .5 (>= is active). Sets G (ground truth) and P (predicted):
PARTIAL_GT = set_runs(3, ({0}, 1), ({1, 2}, 1), ((), 2), ({0, 1}, 1))
PARTIAL_PROBS = np.array(
  [
    [0.7, 0.2, 0.1],  # P {0} = G {0}: exact; Jaccard 1
    [0.2, 0.6, 0.4],  # P {1}, G {1, 2}: wrong; Jaccard 1/2
    [0.1, 0.4, 0.2],  # P {} = G {}: exact; Jaccard 1
    [0.1, 0.6, 0.0],  # P {1}, G {}: wrong; Jaccard 0
    [0.3, 0.9, 0.8],  # P {1, 2}, G {0, 1}: wrong; Jaccard |{1}| / |{0, 1, 2}| = 1/3
  ]
)


def test_multilabel_acc_is_exact_match_and_jaccard_gives_partial_credit():
  # Acc 2/5 (the old top-class Acc gave 4/5: the top class of frames 1 and 4 is in G).
  # Jaccard (1 + 1/2 + 1 + 0 + 1/3) / 5 = 17/30.
  result = multilabel_scores(PARTIAL_PROBS, PARTIAL_GT)
  assert list(result)[:3] == ['Acc', 'Jaccard', 'Edit']
  assert (result['Acc'], result['Jaccard']) == pytest.approx((40.0, 1700 / 30))
  # Threshold .65: P {0}, {}, {}, {}, {1, 2} -> frames 0, 2, 3 exact (3/5); Jaccard (1 + 0 + 1 + 1
  # + 1/3) / 5 = 2/3. Threshold .6: .6 >= .6 is active, as at .5.
  result = multilabel_scores(PARTIAL_PROBS, PARTIAL_GT, threshold=0.65)
  assert (result['Acc'], result['Jaccard']) == pytest.approx((60.0, 200 / 3))
  result = multilabel_scores(PARTIAL_PROBS, PARTIAL_GT, threshold=0.6)
  assert (result['Acc'], result['Jaccard']) == pytest.approx((40.0, 1700 / 30))


def test_multilabel_nothing_above_threshold_scores_only_the_empty_frames():
  # Eight frames, G: {}, {}, {0} x3, {1} x2, {0, 1}. Every G class at .4, the others at .1: the top
  # class is always in G (the old Acc: 100) but nothing reaches .5, so P is empty everywhere.
  gt = set_runs(2, ((), 2), ({0}, 3), ({1}, 2), ({0, 1}, 1))
  result = multilabel_scores(np.where(gt, 0.4, 0.1), gt)
  # Acc = Jaccard = the 2 empty-G frames of 8 = 25. Edit: no predicted segment against 3 GT
  # segments ({0}, {1}, {0, 1}) -> 1 - 3/3 = 0. No predicted segment -> F1 0. mAP does not
  # threshold: each class's G frames rank first -> AP 100 for both.
  assert result == pytest.approx(
    {'Acc': 25, 'Jaccard': 25, 'Edit': 0, 'F1@10': 0, 'F1@25': 0, 'F1@50': 0, 'mAP': 100}
  )


# Twelve frames, two classes: GT A (class 0) on [0, 6) then B (class 1) on [6, 12); the prediction
# B on [0, 6) then A on [6, 12) -- each predicted segment disjoint from the true one of its class.
SWAP_GT = set_runs(2, ({0}, 6), ({1}, 6))
SWAP_PROBS = confident(set_runs(2, ({1}, 6), ({0}, 6)))


def test_multilabel_swapped_order_scores_edit_0():
  # The old per-class Edit saw one segment against one on each track -> 100. Now the set sequences
  # [{1}, {0}] and [{0}, {1}] differ at both positions: levenshtein 2 / 2 -> Edit 0. Each class's
  # predicted segment has IoU 0 with its GT segment -> F1 0 at every k. No frame right -> Acc 0,
  # Jaccard 0 (P and G disjoint everywhere).
  result = multilabel_scores(SWAP_PROBS, SWAP_GT)
  assert [result[k] for k in ('Acc', 'Jaccard', 'Edit', 'F1@10', 'F1@25', 'F1@50')] == [0.0] * 6


def test_multilabel_constant_predictor_scores_low():
  # Twelve frames, three classes; G: {0} x3, {0, 1} x2, {1} x3, {} x1, {0, 2} x3. A constant
  # predictor with training class frequencies (.6, .4, .1) at every frame: P = {0} everywhere.
  gt = set_runs(3, ({0}, 3), ({0, 1}, 2), ({1}, 3), ((), 1), ({0, 2}, 3))
  result = multilabel_scores(np.tile([0.6, 0.4, 0.1], (12, 1)), gt)
  # Acc: only the 3 frames of G = {0} -> 25 (the old top-class Acc: the 8 frames with 0 in G ->
  # 66.7). Jaccard: 3 * 1 + 2 * 1/2 + 3 * 0 + 0 + 3 * 1/2 = 5.5 of 12.
  # Edit: [{0}] against [{0}, {0, 1}, {1}, {0, 2}] -> levenshtein 3 (three insertions) / 4 -> 25.
  # F1: class 0's one predicted segment [0, 12) against GT [0, 5) (IoU 5/12) and [9, 12) (3/12)
  # takes [0, 5): TP at .1 and .25, FP at .5. FNs: class 0's [9, 12) (both at .5), class 1's
  # [3, 8), class 2's [9, 12). @10 and @25: (1, 0, 3) -> P 1, R 1/4 -> F1 40. @50: (0, 1, 4) -> 0.
  assert result == pytest.approx(
    {
      'Acc': 25.0,
      'Jaccard': 550 / 12,
      'Edit': 25.0,
      'F1@10': 40.0,
      'F1@25': 40.0,
      'F1@50': 0.0,
      'mAP': result['mAP'],
    }
  )


def edit_of(pred_hot, gt_hot):
  return multilabel_scores(confident(pred_hot), gt_hot)['Edit']


def test_multilabel_edit_over_label_set_segments():
  # Same set sequence [{0}, {0, 1}, {1}], boundaries shifted by one frame -> Edit 100 (Edit ignores
  # where segments are); frames 3 and 8 get {0, 1} instead of {0} / {1}: Acc 8/10, Jaccard
  # (8 + 1/2 + 1/2) / 10.
  gt = set_runs(2, ({0}, 4), ({0, 1}, 4), ({1}, 2))
  shifted = set_runs(2, ({0}, 3), ({0, 1}, 6), ({1}, 1))
  result = multilabel_scores(confident(shifted), gt)
  assert (result['Acc'], result['Jaccard'], result['Edit']) == pytest.approx((80.0, 90.0, 100.0))
  # {0}, background, {0}: two segments of the same set. Bridged over the gap -> one segment:
  # levenshtein 1 / 2 -> 50; a gap elsewhere keeps two segments -> 100; {0} then {0, 1} (no
  # background between) -> [{0}, {0, 1}]: one substitution -> 50.
  repeated = set_runs(2, ({0}, 2), ((), 2), ({0}, 2))
  assert edit_of(set_runs(2, ({0}, 6)), repeated) == 50.0
  assert edit_of(set_runs(2, ({0}, 2), ((), 1), ({0}, 3)), repeated) == 100.0
  assert edit_of(set_runs(2, ({0}, 3), ({0, 1}, 3)), repeated) == 50.0
  # A superset is a different set: [{0, 1}] against [{0}] -> 0.
  assert edit_of(set_runs(2, ({0, 1}, 3)), set_runs(2, ({0}, 3))) == 0.0


def test_multilabel_empty_sets_on_both_sides():
  empty = np.zeros((6, 3), bool)
  quiet = np.full((6, 3), 0.2)
  # P = G = {} on every frame: exact, Jaccard 1 each; no segment on either side -> Edit 100; F1
  # undefined -> 0; no positive frame for any class -> mAP 0.
  assert multilabel_scores(quiet, empty) == {
    'Acc': 100.0,
    'Jaccard': 100.0,
    'Edit': 100.0,
    'F1@10': 0.0,
    'F1@25': 0.0,
    'F1@50': 0.0,
    'mAP': 0.0,
  }
  # A false alarm of class 1 on frames [2, 4): those 2 frames are wrong (Jaccard 0), [{1}] against
  # no segment -> Edit 0.
  alarm = quiet.copy()
  alarm[2:4, 1] = 0.7
  accumulator = metrics.MultiLabelMetrics()
  accumulator.add(alarm, empty)
  assert accumulator.counts(0.1) == (0, 1, 0)
  result = accumulator.result()
  assert (result['Acc'], result['Jaccard'], result['Edit']) == pytest.approx((400 / 6, 400 / 6, 0))


def test_multilabel_videos_acc_jaccard_micro_edit_per_video():
  accumulator = metrics.MultiLabelMetrics()
  accumulator.add(SWAP_PROBS, SWAP_GT)  # 12 frames: Acc 0, Jaccard 0, Edit 0
  gt = set_runs(2, ({0}, 4), ({0, 1}, 4), ({1}, 2))
  accumulator.add(confident(set_runs(2, ({0}, 3), ({0, 1}, 6), ({1}, 1))), gt)  # 10: 80, 90, 100
  # Acc 8 / 22 frames (a mean over videos would give 40), Jaccard 9 / 22 (45), Edit (0 + 100) / 2
  # (one sequence over both videos would give 1 - 2/5 -> 60).
  result = accumulator.result()
  assert (result['Acc'], result['Jaccard'], result['Edit']) == pytest.approx(
    (800 / 22, 900 / 22, 50.0)
  )


# Twelve frames, four classes (class 3 never active):
#   class 0: gt [0, 6); pred [0, 2) (IoU 2/6) and [3, 6) (IoU 3/6)
#   class 1: gt [8, 12); pred [5, 9) (IoU 1/7)
#   class 2: gt [9, 11); no prediction
TRACK_GT = multi_hot(12, 4, [(0, 0, 6), (1, 8, 12), (2, 9, 11)])
TRACK_PRED = multi_hot(12, 4, [(0, 0, 2), (0, 3, 6), (1, 5, 9)])
TRACK_PROBS = np.where(TRACK_PRED, 0.9, 0.1)


def test_multilabel_f1_tracks_and_edit_hand_worked():
  accumulator = metrics.MultiLabelMetrics()
  accumulator.add(TRACK_PROBS, TRACK_GT)
  # Class 0: [0, 2) takes the GT segment first (greedy, temporal order): TP at .1 and .25, FP at .5;
  # [3, 6) then hits a used segment at .1 / .25 (FP) but is the TP at .5 -> (1, 1, 0) at every k.
  # Class 1: TP at .1 only; at .25 / .5 one FP and one FN. Class 2: one FN.
  # @10: (1,1,0) + (1,0,0) + (0,0,1) = (2, 1, 1) -> P = R = 2/3 -> F1 66.7.
  # @25 and @50: (1,1,0) + (0,1,1) + (0,0,1) = (1, 2, 2) -> P = R = 1/3 -> F1 33.3.
  assert accumulator.counts(0.1) == (2, 1, 1)
  assert accumulator.counts(0.25) == (1, 2, 2)
  assert accumulator.counts(0.5) == (1, 2, 2)
  result = accumulator.result()
  assert [result[k] for k in ('F1@10', 'F1@25', 'F1@50')] == pytest.approx(
    [200 / 3, 100 / 3, 100 / 3]
  )
  # Set segments. GT: {0} [0, 6), {} [6, 8), {1} 8, {1, 2} [9, 11), {1} 11 -> [{0}, {1}, {1, 2},
  # {1}]. Pred: {0} [0, 2), {} 2, {0} [3, 5), {0, 1} 5, {1} [6, 9), {} [9, 12) -> [{0}, {0},
  # {0, 1}, {1}]. Position by position: 2 substitutions; the only common subsequence is {0}, {1}
  # (length 2 of 4), so no alignment does better -> 1 - 2/4 = 50.
  assert result['Edit'] == pytest.approx(50.0)
  # A second video with class 0 exactly right has Edit 100 -> (50 + 100) / 2 per video.
  exact = multi_hot(5, 4, [(0, 0, 3)])
  accumulator.add(np.where(exact, 0.8, 0.0), exact)
  assert accumulator.result()['Edit'] == pytest.approx(75.0)
  assert accumulator.counts(0.5) == (2, 2, 2)


def test_multilabel_map_tiny_ranking():
  accumulator = metrics.MultiLabelMetrics()
  # Class 0 over both videos: scores [.9, .8, .3 | .6, .3], positives [T, F, T | F, T]. Ranked:
  # .9 (P), .8, .6, then the step .3 (P, P) -> precisions 1/1, then 3/5 for both positives of the
  # step -> AP (1 + .6 + .6) / 3 = 73.33. Class 1: no positive frame -> not averaged. Class 2: all
  # scores .2, one step of 5 frames with 1 positive -> AP 1/5 = 20. mAP = (73.33 + 20) / 2.
  accumulator.add(
    np.array([[0.9, 0.1, 0.2], [0.8, 0.1, 0.2], [0.3, 0.1, 0.2]]),
    np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0]], bool),
  )
  accumulator.add(
    np.array([[0.6, 0.1, 0.2], [0.3, 0.1, 0.2]]), np.array([[0, 0, 1], [1, 0, 0]], bool)
  )
  assert accumulator.average_precisions() == pytest.approx({0: 220 / 3, 2: 20.0})
  assert accumulator.result()['mAP'] == pytest.approx((220 / 3 + 20) / 2)
  # Tied frames are one step: their order does not matter, a constant score gets the positive rate.
  assert metrics.average_precision(np.array([0.5, 0.5]), np.array([False, True])) == 50.0
  assert metrics.average_precision(np.array([0.5, 0.5]), np.array([True, False])) == 50.0
  positives = np.array([True, False, False, True, False, False, False, False])
  assert metrics.average_precision(np.full(8, 0.3), positives) == pytest.approx(25.0)


def brute_force_average_precision(scores, positives):
  """Mean over positives i of the precision among the frames scored at least as high as i."""
  precisions = []
  for i in range(len(scores)):
    if positives[i]:
      above = [j for j in range(len(scores)) if scores[j] >= scores[i]]
      precisions.append(sum(positives[j] for j in above) / len(above))
  return sum(precisions) / len(precisions) * 100


def test_average_precision_matches_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(50):
    size = int(rng.integers(1, 30))
    scores = np.round(rng.random(size), 1)  # coarse values: many ties
    positives = rng.random(size) < 0.4
    positives[rng.integers(size)] = True
    assert metrics.average_precision(scores, positives) == pytest.approx(
      brute_force_average_precision(scores, positives)
    )


def reference_set_segments(sets):
  """The set of each maximal run of equal sets, in order, the empty set's runs dropped."""
  runs = [s for t, s in enumerate(sets) if t == 0 or s != sets[t - 1]]
  return [s for s in runs if s]


def test_multilabel_matches_reference():
  rng = np.random.default_rng(1)
  threshold = 0.4
  accumulator = metrics.MultiLabelMetrics(threshold=threshold)
  exact = jaccard = frames = 0
  edits, totals = [], {overlap: [0, 0, 0] for overlap in metrics.DEFAULT_OVERLAPS}
  videos = []
  for _ in range(30):
    length, num_classes = int(rng.integers(1, 30)), 3
    gt = np.stack([random_video(rng, length, 2) == 1 for _ in range(num_classes)], axis=1)
    noise = rng.random((length, num_classes)) * 0.5
    probs = np.clip(np.where(np.roll(gt, rng.integers(-2, 3), axis=0), 0.5, 0.0) + noise, 0, 1)
    accumulator.add(probs, gt)
    videos.append((probs, gt))
    pred_sets, gt_sets = [], []
    for t in range(length):
      pred_sets.append(frozenset(c for c in range(num_classes) if probs[t, c] >= threshold))
      gt_sets.append(frozenset(c for c in range(num_classes) if gt[t, c]))
      union = pred_sets[t] | gt_sets[t]
      exact += int(pred_sets[t] == gt_sets[t])
      jaccard += len(pred_sets[t] & gt_sets[t]) / len(union) if union else 1.0
      frames += 1
    pred_segments, gt_segments = reference_set_segments(pred_sets), reference_set_segments(gt_sets)
    longest = max(len(pred_segments), len(gt_segments))
    lev = reference_levenshtein(pred_segments, gt_segments)
    edits.append(100.0 if longest == 0 else (1 - lev / longest) * 100)
    for c in range(num_classes):
      pred_track = [int(p >= threshold) for p in probs[:, c]]
      gt_track = [int(g) for g in gt[:, c]]
      for overlap, total in totals.items():
        counts = reference_counts(pred_track, gt_track, overlap, (0,))
        total[:] = [a + b for a, b in zip(total, counts)]
  all_probs = np.concatenate([p for p, _ in videos])
  all_gt = np.concatenate([g for _, g in videos])
  aps = [
    brute_force_average_precision(all_probs[:, c].tolist(), all_gt[:, c].tolist())
    for c in range(3)
    if all_gt[:, c].any()
  ]
  assert 0 < exact < frames and 100.0 in edits and any(0 < e < 100 for e in edits)  # mixed cases
  expected = {
    'Acc': exact / frames * 100,
    'Jaccard': jaccard / frames * 100,
    'Edit': sum(edits) / len(edits),
  }
  for overlap, counts in totals.items():
    assert accumulator.counts(overlap) == tuple(counts)
    expected[f'F1@{round(overlap * 100)}'] = metrics.f1_from_counts(*counts)
  expected['mAP'] = sum(aps) / len(aps)
  assert accumulator.result() == pytest.approx(expected)


def test_multilabel_invalid_inputs_raise():
  accumulator = metrics.MultiLabelMetrics()
  with pytest.raises(ValueError, match=r'probs: expected a non-empty \[T, C\] float'):
    accumulator.add(np.zeros((3, 2), int), np.zeros((3, 2), bool))
  with pytest.raises(ValueError, match='probs: expected'):
    accumulator.add(np.zeros(3), np.zeros((3, 2), bool))
  with pytest.raises(ValueError, match=r'gt: expected a \[T, C\] bool'):
    accumulator.add(np.zeros((3, 2)), np.zeros((3, 2)))
  with pytest.raises(ValueError, match=r'probs has shape \(3, 2\) but gt has \(4, 2\)'):
    accumulator.add(np.zeros((3, 2)), np.zeros((4, 2), bool))
  with pytest.raises(ValueError, match=r'probs: values must be in \[0, 1\]'):
    accumulator.add(np.full((3, 2), 1.5), np.zeros((3, 2), bool))
  with pytest.raises(ValueError, match='no videos'):
    accumulator.result()
  accumulator.add(np.zeros((3, 2)), np.zeros((3, 2), bool))
  with pytest.raises(ValueError, match='3 classes, earlier videos had 2'):
    accumulator.add(np.zeros((3, 3)), np.zeros((3, 3), bool))
  with pytest.raises(ValueError, match='overlap 0.3 not in'):
    accumulator.counts(0.3)
  with pytest.raises(ValueError, match='threshold'):
    metrics.MultiLabelMetrics(threshold=0.0)
  with pytest.raises(ValueError, match='no positive frames'):
    metrics.average_precision(np.ones(2), np.zeros(2, bool))

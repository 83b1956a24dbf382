"""Tests for polyseg.metrics: hand-worked cases and a brute-force reference."""

import numpy as np
import pytest

from polyseg import metrics

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


# Five frames, three classes. Ground-truth sets: {0}, {1, 2}, {}, {}, {2}.
ACC_GT = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [0, 0, 0], [0, 0, 1]], bool)
ACC_PROBS = np.array(
  [
    [0.7, 0.2, 0.1],  # top class 0 in {0}: correct
    [0.5, 0.3, 0.4],  # top class 0 not in {1, 2}: wrong
    [0.1, 0.4, 0.2],  # empty set, nothing >= .5: correct
    [0.1, 0.6, 0.0],  # empty set, class 1 >= .5: wrong
    [0.1, 0.2, 0.3],  # top class 2 in {2}: correct although below the threshold
  ]
)


def test_multilabel_acc_hand_worked():
  assert multilabel_scores(ACC_PROBS, ACC_GT)['Acc'] == pytest.approx(60.0)
  # Threshold .65: frame 3 has no active class any more -> 4 / 5. Threshold .6: .6 >= .6 is active.
  assert multilabel_scores(ACC_PROBS, ACC_GT, threshold=0.65)['Acc'] == pytest.approx(80.0)
  assert multilabel_scores(ACC_PROBS, ACC_GT, threshold=0.6)['Acc'] == pytest.approx(60.0)


# Twelve frames, four classes (class 3 never active):
#   class 0: gt [0, 6); pred [0, 2) (IoU 2/6) and [3, 6) (IoU 3/6)
#   class 1: gt [8, 12); pred [5, 9) (IoU 1/7)
#   class 2: gt [9, 11); no prediction
TRACK_GT = multi_hot(12, 4, [(0, 0, 6), (1, 8, 12), (2, 9, 11)])
TRACK_PRED = multi_hot(12, 4, [(0, 0, 2), (0, 3, 6), (1, 5, 9)])
TRACK_PROBS = np.where(TRACK_PRED, 0.9, 0.1)


def test_multilabel_f1_and_edit_tracks_hand_worked():
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
  # Edit per track: class 0 two predicted segments vs one -> 50; class 1 -> 100; class 2 -> 0;
  # class 3 is empty on both sides and not averaged (it would give 62.5) -> 50.
  assert result['Edit'] == pytest.approx(50.0)
  # A second video with class 0 exactly right adds one track of 100 -> (50 + 100 + 0 + 100) / 4.
  exact = multi_hot(5, 4, [(0, 0, 3)])
  accumulator.add(np.where(exact, 0.8, 0.0), exact)
  assert accumulator.result()['Edit'] == pytest.approx(62.5)
  assert accumulator.counts(0.5) == (2, 2, 2)


def test_multilabel_all_empty_video():
  empty = np.zeros((6, 3), bool)
  quiet = np.full((6, 3), 0.2)
  # Every frame correct (no GT label, nothing active); no track anywhere -> Edit 100; no segment
  # -> F1 undefined -> 0; no positive frame for any class -> mAP 0.
  assert multilabel_scores(quiet, empty) == {
    'Acc': 100.0,
    'Edit': 100.0,
    'F1@10': 0.0,
    'F1@25': 0.0,
    'F1@50': 0.0,
    'mAP': 0.0,
  }
  # A false alarm of class 1 on frames [2, 4): those 2 frames are wrong, its track has Edit 0.
  alarm = quiet.copy()
  alarm[2:4, 1] = 0.7
  accumulator = metrics.MultiLabelMetrics()
  accumulator.add(alarm, empty)
  assert accumulator.counts(0.1) == (0, 1, 0)
  assert accumulator.result()['Acc'] == pytest.approx(400 / 6)
  assert accumulator.result()['Edit'] == 0.0


def test_multilabel_map_tiny_ranking():
  accumulator = metrics.MultiLabelMetrics()
  # Class 0 over both videos: scores [.9, .8, .3 | .6, .3], positives [T, F, T | F, T]. Ranked:
  # .9 (P), .8, .6, .3 (P), .3 (P) -> precisions 1/1, 2/4, 3/5 -> AP (1 + .5 + .6) / 3 = 70.
  # Class 1: no positive frame -> not averaged. Class 2: all scores .2 (ties keep the frame order),
  # the only positive is the 4th frame -> AP 1/4 = 25. mAP = (70 + 25) / 2 = 47.5.
  accumulator.add(
    np.array([[0.9, 0.1, 0.2], [0.8, 0.1, 0.2], [0.3, 0.1, 0.2]]),
    np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0]], bool),
  )
  accumulator.add(
    np.array([[0.6, 0.1, 0.2], [0.3, 0.1, 0.2]]), np.array([[0, 0, 1], [1, 0, 0]], bool)
  )
  assert accumulator.average_precisions() == pytest.approx({0: 70.0, 2: 25.0})
  assert accumulator.result()['mAP'] == pytest.approx(47.5)
  # Ties are broken by input order: the earlier frame ranks first.
  assert metrics.average_precision(np.array([0.5, 0.5]), np.array([False, True])) == 50.0
  assert metrics.average_precision(np.array([0.5, 0.5]), np.array([True, False])) == 100.0


def brute_force_average_precision(scores, positives):
  """Mean over positives i of the precision among frames ranked at or above i (higher score, or
  equal score and not later)."""
  precisions = []
  for i in range(len(scores)):
    if positives[i]:
      above = [
        j
        for j in range(len(scores))
        if scores[j] > scores[i] or (scores[j] == scores[i] and j <= i)
      ]
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


def test_multilabel_matches_per_track_reference():
  rng = np.random.default_rng(1)
  threshold = 0.4
  accumulator = metrics.MultiLabelMetrics(threshold=threshold)
  correct = frames = 0
  edits, totals = [], {overlap: [0, 0, 0] for overlap in metrics.DEFAULT_OVERLAPS}
  videos = []
  for _ in range(20):
    length, num_classes = int(rng.integers(1, 30)), 4
    gt = np.stack([random_video(rng, length, 2) == 1 for _ in range(num_classes)], axis=1)
    noise = rng.random((length, num_classes)) * 0.5
    probs = np.clip(np.where(np.roll(gt, rng.integers(-2, 3), axis=0), 0.5, 0.0) + noise, 0, 1)
    accumulator.add(probs, gt)
    videos.append((probs, gt))
    for t in range(length):
      labels = [c for c in range(num_classes) if gt[t, c]]
      if labels:
        correct += int(max(range(num_classes), key=lambda c: (probs[t, c], -c)) in labels)
      else:
        correct += int(all(p < threshold for p in probs[t]))
      frames += 1
    for c in range(num_classes):
      pred_track = [int(p >= threshold) for p in probs[:, c]]
      gt_track = [int(g) for g in gt[:, c]]
      if 1 not in pred_track and 1 not in gt_track:
        continue
      pred_segments = reference_segments(pred_track, (0,))
      gt_segments = reference_segments(gt_track, (0,))
      lev = reference_levenshtein([s[0] for s in pred_segments], [s[0] for s in gt_segments])
      edits.append((1 - lev / max(len(pred_segments), len(gt_segments))) * 100)
      for overlap, total in totals.items():
        counts = reference_counts(pred_track, gt_track, overlap, (0,))
        total[:] = [a + b for a, b in zip(total, counts)]
  all_probs = np.concatenate([p for p, _ in videos])
  all_gt = np.concatenate([g for _, g in videos])
  aps = [
    brute_force_average_precision(all_probs[:, c].tolist(), all_gt[:, c].tolist())
    for c in range(4)
    if all_gt[:, c].any()
  ]
  expected = {'Acc': correct / frames * 100, 'Edit': sum(edits) / len(edits)}
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

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

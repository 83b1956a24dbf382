"""Segmentation metrics: frame accuracy, Edit and F1@tau (MS-TCN definitions, docs/methods/diffact.md).

Labels are int class ids per frame, ``[T]``. Background ids are excluded from Edit and F1 only.
Segment ends are exclusive (last frame + 1), unlike MS-TCN's code, which ends the last segment of a
video one frame early.

Conventions for videos without any (non-background) segment: Edit is 100 when both prediction and
ground truth have no segments (0 when only one has none); F1 counts are (0, 0, 0) for such a video,
and an F1 whose precision or recall is undefined (no segments anywhere) is 0.

Multi-label frames (referring segmentation, docs/methods/hopadiff.md) are scored by `MultiLabelMetrics`: Acc
(the frame's predicted label set equals the true one) and Jaccard per frame, Edit over the sequence
of label-set segments, F1 on each class's binary track; its docstring has the definitions.
Alignments to a given transcript (weak supervision, docs/methods/hal.md) by `AlignmentMetrics`.
"""

import collections
from collections.abc import Iterable
from collections.abc import Sequence

import numpy as np

DEFAULT_OVERLAPS = (0.1, 0.25, 0.5)


def _as_labels(labels, name: str) -> np.ndarray:
  """Checks a label sequence: [T] ints, T > 0."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
      f'{name}: expected a non-empty [T] int array, got shape {labels.shape} dtype {labels.dtype}'
    )
  return labels


def _check_pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
  """Checks a prediction / ground-truth pair of equal length."""
  pred, gt = _as_labels(pred, 'pred'), _as_labels(gt, 'gt')
  if pred.shape != gt.shape:
    raise ValueError(f'pred has {pred.size} frames but gt has {gt.size}')
  return pred, gt


def _check_overlap(overlap: float) -> None:
  if not 0.0 < overlap <= 1.0:
    raise ValueError(f'overlap must be in (0, 1], got {overlap}')


def segments(labels, background: Iterable[int] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Runs of equal labels: labels [T] -> (seg_labels [S], starts [S], ends [S]), ends exclusive.

  Segments whose label is in `background` are dropped.
  """
  labels = _as_labels(labels, 'labels')
  starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
  ends = np.append(starts[1:], labels.size)
  seg_labels = labels[starts]
  keep = ~np.isin(seg_labels, list(background))
  return seg_labels[keep], starts[keep], ends[keep]


def levenshtein(a: Sequence[int], b: Sequence[int]) -> int:
  """Edit distance (insert, delete, substitute, each cost 1) between two sequences."""
  previous = list(range(len(b) + 1))
  for i, item_a in enumerate(a, start=1):
    current = [i]
    for j, item_b in enumerate(b, start=1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (item_a != item_b)))
    previous = current
  return previous[-1]


def edit_score(pred, gt, background: Iterable[int] = ()) -> float:
  """Segmental edit score in percent: (1 - levenshtein / max(S_pred, S_gt)) * 100; 100 if both empty."""
  pred, gt = _check_pair(pred, gt)
  pred_labels = segments(pred, background)[0]
  gt_labels = segments(gt, background)[0]
  longest = max(pred_labels.size, gt_labels.size)
  if longest == 0:
    return 100.0
  return (1.0 - levenshtein(pred_labels.tolist(), gt_labels.tolist()) / longest) * 100.0


def match_segments(pred, gt, overlap: float, background: Iterable[int] = ()):
  """MS-TCN greedy matching of predicted to ground-truth segments.

  Each predicted segment (in temporal order) takes the ground-truth segment of the same label with
  the highest IoU (first on ties); it is a true positive if that IoU >= overlap and the ground-truth
  segment is still unused. Returns (pred_labels [Sp], pred_is_tp [Sp] bool, gt_labels [Sg],
  gt_used [Sg] bool).
  """
  _check_overlap(overlap)
  pred, gt = _check_pair(pred, gt)
  pred_labels, pred_starts, pred_ends = segments(pred, background)
  gt_labels, gt_starts, gt_ends = segments(gt, background)
  pred_is_tp = np.zeros(pred_labels.size, bool)
  gt_used = np.zeros(gt_labels.size, bool)
  for i in range(pred_labels.size):
    intersection = np.minimum(pred_ends[i], gt_ends) - np.maximum(pred_starts[i], gt_starts)
    union = np.maximum(pred_ends[i], gt_ends) - np.minimum(pred_starts[i], gt_starts)
    iou = np.where(gt_labels == pred_labels[i], np.maximum(intersection, 0) / union, 0.0)
    if iou.size == 0:
      continue
    best = int(np.argmax(iou))
    if iou[best] >= overlap and not gt_used[best]:
      pred_is_tp[i] = gt_used[best] = True
  return pred_labels, pred_is_tp, gt_labels, gt_used


def f1_counts(pred, gt, overlap: float, background: Iterable[int] = ()) -> tuple[int, int, int]:
  """(tp, fp, fn) segment counts of one video at IoU threshold `overlap` (MS-TCN matching)."""
  _, pred_is_tp, _, gt_used = match_segments(pred, gt, overlap, background)
  return int(pred_is_tp.sum()), int((~pred_is_tp).sum()), int((~gt_used).sum())


def class_f1_counts(
  pred, gt, overlap: float, background: Iterable[int] = ()
) -> dict[int, tuple[int, int, int]]:
  """class id -> (tp, fp, fn) of one video; matching never crosses classes, so these sum to f1_counts."""
  pred_labels, pred_is_tp, gt_labels, gt_used = match_segments(pred, gt, overlap, background)
  return {
    label: (
      int((pred_is_tp & (pred_labels == label)).sum()),
      int((~pred_is_tp & (pred_labels == label)).sum()),
      int((~gt_used & (gt_labels == label)).sum()),
    )
    for label in np.union1d(pred_labels, gt_labels).tolist()
  }


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
  """F1 in percent from summed counts; 0 when precision or recall is undefined or both are 0."""
  if tp == 0:
    return 0.0
  precision, recall = tp / (tp + fp), tp / (tp + fn)
  return float(2.0 * precision * recall / (precision + recall) * 100.0)


def confusion_matrix(pred, gt, num_classes: int) -> np.ndarray:
  """Frame counts [C, C] int64: row = ground-truth class, column = predicted class."""
  pred, gt = _check_pair(pred, gt)
  for name, labels in (('pred', pred), ('gt', gt)):
    if labels.min() < 0 or labels.max() >= num_classes:
      raise ValueError(
        f'{name} has class ids outside [0, {num_classes}): min {labels.min()}, max {labels.max()}'
      )
  flat = np.bincount(gt.astype(np.int64) * num_classes + pred, minlength=num_classes * num_classes)
  return flat.reshape(num_classes, num_classes)


def _overlap_key(overlap: float) -> str:
  """0.1 -> 'F1@10'."""
  return f'F1@{round(overlap * 100):d}'


class SegmentationMetrics:
  """Accumulates Acc (micro over frames), Edit (mean over videos) and F1@tau (summed counts).

  Also keeps per-class segment counts (per-class F1) and frame confusion counts.
  """

  def __init__(self, background: Iterable[int] = (), overlaps: Sequence[float] = DEFAULT_OVERLAPS):
    for overlap in overlaps:
      _check_overlap(overlap)
    self.background = tuple(int(c) for c in background)
    self.overlaps = tuple(overlaps)
    self.correct_frames = 0
    self.total_frames = 0
    self.edit_scores: list[float] = []
    # per overlap: class id -> [tp, fp, fn]
    self.class_counts: dict[float, dict[int, np.ndarray]] = {
      overlap: {} for overlap in self.overlaps
    }
    # (gt class, predicted class) -> frames
    self.frame_pairs: collections.Counter[tuple[int, int]] = collections.Counter()

  def add(self, pred, gt) -> None:
    """Adds one video: pred [T] and gt [T] int class ids."""
    pred, gt = _check_pair(pred, gt)
    self.correct_frames += int((pred == gt).sum())
    self.total_frames += pred.size
    self.edit_scores.append(edit_score(pred, gt, self.background))
    for overlap in self.overlaps:
      counts = self.class_counts[overlap]
      for label, video_counts in class_f1_counts(pred, gt, overlap, self.background).items():
        counts[label] = counts.get(label, np.zeros(3, np.int64)) + video_counts
    pairs, frames = np.unique(np.stack([gt, pred]), axis=1, return_counts=True)
    self.frame_pairs.update(dict(zip(map(tuple, pairs.T.tolist()), frames.tolist())))

  def _check_nonempty(self) -> None:
    if not self.edit_scores:
      raise ValueError('SegmentationMetrics: no videos added')

  def _counts_at(self, overlap: float) -> dict[int, np.ndarray]:
    if overlap not in self.class_counts:
      raise ValueError(f'overlap {overlap} not in {self.overlaps}')
    return self.class_counts[overlap]

  def counts(self, overlap: float) -> tuple[int, int, int]:
    """(tp, fp, fn) summed over videos and classes at one of `overlaps`."""
    total = sum(self._counts_at(overlap).values(), np.zeros(3, np.int64))
    return int(total[0]), int(total[1]), int(total[2])

  def result(self) -> dict[str, float]:
    """{'Acc', 'Edit', 'F1@10', 'F1@25', 'F1@50'} in percent (F1 keys follow `overlaps`)."""
    self._check_nonempty()
    scores = {
      'Acc': self.correct_frames / self.total_frames * 100.0,
      'Edit': float(np.mean(self.edit_scores)),
    }
    for overlap in self.overlaps:
      scores[_overlap_key(overlap)] = f1_from_counts(*self.counts(overlap))
    return scores

  def per_class_f1(self, overlap: float = 0.5) -> dict[int, float]:
    """class id -> F1@overlap in percent, for every non-background class seen in pred or gt."""
    self._check_nonempty()
    return {
      label: f1_from_counts(*counts) for label, counts in sorted(self._counts_at(overlap).items())
    }

  def confusion_matrix(self, num_classes: int) -> np.ndarray:
    """Frame counts [C, C] int64 over all added videos: row = ground truth, column = prediction."""
    self._check_nonempty()
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for (gt_class, pred_class), count in self.frame_pairs.items():
      if not (0 <= gt_class < num_classes and 0 <= pred_class < num_classes):
        raise ValueError(
          f'class pair (gt {gt_class}, pred {pred_class}) outside [0, {num_classes})'
        )
      matrix[gt_class, pred_class] += count
    return matrix


def segment_overlaps(pred, gt, background: Iterable[int] = ()) -> tuple[np.ndarray, np.ndarray]:
  """(IoU [S], IoD [S]) of each non-background ground-truth segment of gt [T]: the best over the
  predicted segments of the same class of |P n G| / |P u G| and of |P n G| / |P| (0 if none
  overlaps). The alignment measures of weakly supervised segmentation (ISBA / NN-Viterbi)."""
  pred, gt = _check_pair(pred, gt)
  gt_labels, gt_starts, gt_ends = segments(gt, background)
  pred_labels, pred_starts, pred_ends = segments(pred)
  iou, iod = np.zeros(len(gt_labels)), np.zeros(len(gt_labels))
  for i, (label, start, end) in enumerate(zip(gt_labels, gt_starts, gt_ends)):
    same = pred_labels == label
    p_starts, p_ends = pred_starts[same], pred_ends[same]
    intersection = np.clip(np.minimum(p_ends, end) - np.maximum(p_starts, start), 0, None)
    if intersection.size:
      union = np.maximum(p_ends, end) - np.minimum(p_starts, start)
      iou[i] = (intersection / union).max()
      iod[i] = (intersection / (p_ends - p_starts)).max()
  return iou, iod


class AlignmentMetrics:
  """Alignment of a video to its given transcript: MoF (Acc over all frames, background included),
  IoU and IoD (`segment_overlaps`, mean over a video's non-background ground-truth segments, then
  mean over the videos that have any), in percent."""

  def __init__(self, background: Iterable[int] = ()):
    self.background = tuple(int(c) for c in background)
    self.correct_frames = 0
    self.total_frames = 0
    self.iou: list[float] = []
    self.iod: list[float] = []

  def add(self, pred, gt) -> None:
    """Adds one video: pred [T] and gt [T] int class ids."""
    pred, gt = _check_pair(pred, gt)
    self.correct_frames += int((pred == gt).sum())
    self.total_frames += pred.size
    iou, iod = segment_overlaps(pred, gt, self.background)
    if iou.size:
      self.iou.append(float(iou.mean()))
      self.iod.append(float(iod.mean()))

  def result(self) -> dict[str, float]:
    """{'MoF', 'IoU', 'IoD'} in percent."""
    if not self.total_frames:
      raise ValueError('AlignmentMetrics: no videos added')
    mean = lambda values: float(np.mean(values)) * 100.0 if values else 0.0
    return {
      'MoF': self.correct_frames / self.total_frames * 100.0,
      'IoU': mean(self.iou),
      'IoD': mean(self.iod),
    }


def average_precision(scores, positives) -> float:
  """Average precision in percent of a ranking: scores [N] float, positives [N] bool.

  Frames are ranked by decreasing score; frames of equal score are one step of the ranking, cut
  after the last of them. AP = mean over the positive frames of the precision (positives / frames)
  of the ranking cut after the frame's step, i.e. the sum over steps of recall gained x precision
  (as scikit-learn's `average_precision_score`). So the order of tied frames does not matter, and
  a constant score gets the share of positive frames.
  """
  scores, positives = np.asarray(scores), np.asarray(positives)
  if scores.ndim != 1 or scores.shape != positives.shape or positives.dtype != bool:
    raise ValueError(
      f'average_precision: expected scores [N] and positives [N] bool, got shapes {scores.shape} '
      f'and {positives.shape} dtype {positives.dtype}'
    )
  if not positives.any():
    raise ValueError('average_precision: no positive frames, AP is undefined')
  order = np.argsort(-scores, kind='stable')
  ranked, hits = scores[order], positives[order]
  step_ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # last frame of each step
  true_positives = np.cumsum(hits)[step_ends]
  gained = np.diff(true_positives, prepend=0)  # positives in each step
  precision = true_positives / (step_ends + 1)
  return float((gained * precision).sum() / true_positives[-1] * 100.0)


def _check_multilabel(probs, gt) -> tuple[np.ndarray, np.ndarray]:
  """Checks a multi-label pair: probs [T, C] float in [0, 1], gt [T, C] bool, T, C > 0."""
  probs, gt = np.asarray(probs), np.asarray(gt)
  if probs.ndim != 2 or probs.size == 0 or not np.issubdtype(probs.dtype, np.floating):
    raise ValueError(
      f'probs: expected a non-empty [T, C] float array, got shape {probs.shape} dtype {probs.dtype}'
    )
  if gt.ndim != 2 or gt.dtype != bool:
    raise ValueError(f'gt: expected a [T, C] bool array, got shape {gt.shape} dtype {gt.dtype}')
  if probs.shape != gt.shape:
    raise ValueError(f'probs has shape {probs.shape} but gt has {gt.shape}')
  if not np.all((probs >= 0.0) & (probs <= 1.0)):
    raise ValueError(
      f'probs: values must be in [0, 1], got min {np.min(probs)} max {np.max(probs)}'
    )
  return probs, gt


def label_set_ids(pred, gt) -> tuple[np.ndarray, np.ndarray, int]:
  """Label sets as ids: pred [T, C] and gt [T, C] bool -> (pred_ids [T], gt_ids [T], empty_id), one
  int id per distinct set over both arrays; empty_id is the id of the empty set."""
  empty = np.zeros((1, pred.shape[1]), bool)
  _, ids = np.unique(np.concatenate([empty, pred, gt]), axis=0, return_inverse=True)
  ids = ids.reshape(-1)
  return ids[1 : pred.shape[0] + 1], ids[pred.shape[0] + 1 :], int(ids[0])


def frame_jaccard(pred, gt) -> np.ndarray:
  """|P n G| / |P u G| per frame of pred [T, C] and gt [T, C] bool -> [T]; 1 if both are empty."""
  union = (pred | gt).sum(axis=1)
  return np.where(union == 0, 1.0, (pred & gt).sum(axis=1) / np.maximum(union, 1))


class MultiLabelMetrics:
  """Multi-label (multi-hot, AVA-style) segmentation metrics in percent, accumulated over videos.

  A video is probs [T, C] (per-frame class probabilities in [0, 1]) and gt [T, C] bool (a frame
  carries zero, one or several labels; zero = no action / person absent). A class is predicted
  active at a frame when probs >= threshold; a frame's predicted set P is its active classes, its
  GT set G its labels.

  - Acc: micro over all frames of all videos, the percentage of frames with P == G (exact match;
    an empty G is matched only by an empty P).
  - Jaccard: micro over all frames of all videos, the mean of |P n G| / |P u G| (1 where both are
    empty).
  - Edit: per video, the single-label Edit score (`edit_score`) of its label-set segments: the
    maximal runs of frames with the same set, the empty set's runs dropped as background, two
    segments equal when their sets are; (1 - levenshtein / max(n_pred, n_gt)) * 100 over the two
    sequences, 100 when both are empty; the mean over videos. Like the single-label Edit it ignores
    where segments are (F1 measures that).
  - F1@k: class c's binary track is gt[:, c] (GT) or probs[:, c] >= threshold (prediction), its
    segments the maximal runs of active frames. On each track, predicted segments are matched to
    GT segments as in the single-label F1 (`match_segments`: in temporal order, each takes the GT
    segment of highest IoU, TP if IoU >= k and that GT segment is unused); TP / FP / FN are summed
    over classes and videos and F1 is computed from the totals (0 when undefined, `f1_from_counts`).
  - mAP: per class, the frame-level non-interpolated average precision (`average_precision`) over
    all frames of all videos ranked by probs (ties: earlier video, then earlier frame, first); the
    mean over the classes with at least one GT frame; 0 if no class has one.
  """

  def __init__(self, threshold: float = 0.5, overlaps: Sequence[float] = DEFAULT_OVERLAPS):
    if not 0.0 < threshold <= 1.0:
      raise ValueError(f'threshold must be in (0, 1], got {threshold}')
    for overlap in overlaps:
      _check_overlap(overlap)
    self.threshold = float(threshold)
    self.overlaps = tuple(overlaps)
    self.num_classes: int | None = None
    self.exact_frames = 0
    self.jaccard_sum = 0.0
    self.total_frames = 0
    self.edit_scores: list[float] = []  # one per video
    self.track_counts = {overlap: np.zeros(3, np.int64) for overlap in self.overlaps}
    self.all_probs: list[np.ndarray] = []  # [T, C] per video, for mAP
    self.all_gt: list[np.ndarray] = []

  def add(self, probs, gt) -> None:
    """Adds one video: probs [T, C] float in [0, 1] and gt [T, C] bool."""
    probs, gt = _check_multilabel(probs, gt)
    if self.num_classes is None:
      self.num_classes = probs.shape[1]
    elif probs.shape[1] != self.num_classes:
      raise ValueError(f'probs has {probs.shape[1]} classes, earlier videos had {self.num_classes}')
    active = probs >= self.threshold
    self.exact_frames += int((active == gt).all(axis=1).sum())
    self.jaccard_sum += float(frame_jaccard(active, gt).sum())
    self.total_frames += gt.shape[0]
    pred_ids, gt_ids, empty_id = label_set_ids(active, gt)
    self.edit_scores.append(edit_score(pred_ids, gt_ids, background=(empty_id,)))
    for c in np.flatnonzero(active.any(axis=0) | gt.any(axis=0)):
      pred_track, gt_track = active[:, c].astype(np.int8), gt[:, c].astype(np.int8)
      for overlap in self.overlaps:
        self.track_counts[overlap] += f1_counts(pred_track, gt_track, overlap, background=(0,))
    self.all_probs.append(probs)
    self.all_gt.append(gt)

  def counts(self, overlap: float) -> tuple[int, int, int]:
    """(tp, fp, fn) summed over class tracks and videos at one of `overlaps`."""
    if overlap not in self.track_counts:
      raise ValueError(f'overlap {overlap} not in {self.overlaps}')
    tp, fp, fn = self.track_counts[overlap].tolist()
    return tp, fp, fn

  def average_precisions(self) -> dict[int, float]:
    """class id -> frame-level AP in percent, for every class with at least one GT frame."""
    if not self.all_probs:
      raise ValueError('MultiLabelMetrics: no videos added')
    probs, gt = np.concatenate(self.all_probs), np.concatenate(self.all_gt)
    return {
      int(c): average_precision(probs[:, c], gt[:, c]) for c in np.flatnonzero(gt.any(axis=0))
    }

  def result(self) -> dict[str, float]:
    """{'Acc', 'Jaccard', 'Edit', 'F1@10', 'F1@25', 'F1@50', 'mAP'} in percent (F1 keys follow
    `overlaps`)."""
    average_precisions = list(self.average_precisions().values())
    scores = {
      'Acc': self.exact_frames / self.total_frames * 100.0,
      'Jaccard': self.jaccard_sum / self.total_frames * 100.0,
      'Edit': float(np.mean(self.edit_scores)),
    }
    for overlap in self.overlaps:
      scores[_overlap_key(overlap)] = f1_from_counts(*self.counts(overlap))
    scores['mAP'] = float(np.mean(average_precisions)) if average_precisions else 0.0
    return scores

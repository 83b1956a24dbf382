"""Inference post-processing (docs/methods/diffact.md), numpy, DiffAct's order of operations.

With sample rate r, the model sees the r temporal views `features[o::r]`; their probabilities are
averaged over the frames all views share (`merge_views`), optionally median-filtered, turned into
labels, brought back to the full frame rate by nearest neighbour (`restore_full_rate`), and
optionally mode-filtered and / or purged. `postprocess` takes one kind with its value (DiffAct) or
a chain such as 'median=15,mode=9,purge=3' (`parse_chain`), whose label filters run in the chain's
order. Multi-label probabilities (`postprocess_multilabel`) follow the same order, per class track,
and stay probabilities.
"""

import re
from collections.abc import Sequence

import numpy as np
import scipy.ndimage

from polyseg.core.metrics import segments

POSTPROCESS_KINDS = ('none', 'median', 'mode', 'purge')
MULTILABEL_POSTPROCESS_KINDS = ('none', 'median', 'purge')


def _check_positive(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f'{name} must be a positive int, got {value!r}')
  return int(value)


def median_filter_time(probs: np.ndarray, size: int) -> np.ndarray:
  """Per-class median filter along time (scipy, mode 'reflect'): [T, C] -> [T, C]."""
  size = _check_positive(size, 'median filter size')
  return scipy.ndimage.median_filter(np.asarray(probs), size=(size, 1))


def median_filter_probs(probs: np.ndarray, size: int) -> np.ndarray:
  """`median_filter_time`, renormalised to sum 1 over classes (softmax outputs): [T, C] -> [T, C]."""
  smoothed = median_filter_time(probs, size)
  return smoothed / smoothed.sum(axis=-1, keepdims=True)


def mode_filter(pred: np.ndarray, size: int) -> np.ndarray:
  """Most frequent label in a centred window of `size` frames (smallest id on ties): [T] -> [T].

  Same as DiffAct's `generic_filter(pred, scipy.stats.mode, size)` (borders mode 'reflect').
  """
  size = _check_positive(size, 'mode filter size')
  pred = np.asarray(pred)
  left = size // 2
  padded = np.pad(
    pred, (left, size - 1 - left), mode='symmetric'
  )  # numpy 'symmetric' = scipy 'reflect'
  windows = np.lib.stride_tricks.sliding_window_view(padded, size)  # [T, size]
  classes, class_index = np.unique(windows, return_inverse=True)
  votes = np.zeros((pred.size, classes.size), np.int64)
  np.add.at(votes, (np.arange(pred.size)[:, None], class_index.reshape(windows.shape)), 1)
  return classes[votes.argmax(axis=1)]


def purge(pred: np.ndarray, max_len: int) -> np.ndarray:
  """Absorbs segments of <= max_len frames into their neighbours: [T] -> [T].

  DiffAct's single pass over the segments of the input: a short first segment takes the next
  segment's label, a short last one the previous label, a short middle one [start, end) is split at
  mid = start + duration // 2 into [start, mid) = previous label and [mid, end) = next label.
  A video of one segment is returned unchanged.
  """
  max_len = _check_positive(max_len, 'purge max_len')
  pred = np.asarray(pred)
  labels, starts, ends = segments(pred)
  purged = pred.copy()
  last = labels.size - 1
  if last == 0:
    return purged
  for i in np.flatnonzero(ends - starts <= max_len):
    start, end = starts[i], ends[i]
    mid = {0: start, last: end}.get(
      i, start + (end - start) // 2
    )  # first: all next, last: all previous
    purged[start:mid] = labels[max(i - 1, 0)]
    purged[mid:end] = labels[min(i + 1, last)]
  return purged


LABEL_FILTERS = {'mode': mode_filter, 'purge': purge}  # label filters at the full frame rate


def frame_ticks(full_len: int, sample_rate: int) -> np.ndarray:
  """Full-rate frame index each merged low-rate frame stands for: arange(r//2, full_len - (r-1)//2, r)."""
  sample_rate = _check_positive(sample_rate, 'sample_rate')
  ticks = np.arange(sample_rate // 2, full_len - (sample_rate - 1) // 2, sample_rate)
  if ticks.size == 0:
    raise ValueError(f'full_len {full_len} is shorter than sample_rate {sample_rate}')
  return ticks


def merge_views(view_probs: Sequence[np.ndarray]) -> np.ndarray:
  """Averages the r temporal views over their shared frames: r x [T_o, C] -> [min_o T_o, C].

  View o is `features[o::r]` without padding, T_o = ceil((full_len - o) / r); the shortest has
  full_len // r frames, one per `frame_ticks(full_len, r)`.
  """
  if len(view_probs) == 0:
    raise ValueError('merge_views: no views')
  length = min(len(view) for view in view_probs)
  return np.mean([np.asarray(view)[:length] for view in view_probs], axis=0)


def restore_full_rate(pred: np.ndarray, full_len: int, sample_rate: int) -> np.ndarray:
  """Nearest-neighbour upsampling from the frame ticks to every frame: [T', ...] -> [full_len, ...].

  Same as DiffAct's restore_full_sequence (scipy interp1d kind='nearest' between ticks, so a frame
  halfway between two ticks takes the earlier one; frames outside the ticks take the edge values).
  """
  ticks = frame_ticks(full_len, sample_rate)
  pred = np.asarray(pred)
  if pred.shape[0] != ticks.size:
    raise ValueError(
      f'pred has {pred.shape[0]} frames, but full_len {full_len} at sample_rate '
      f'{sample_rate} has {ticks.size} ticks'
    )
  nearest = np.searchsorted((ticks[1:] + ticks[:-1]) / 2, np.arange(full_len), side='left')
  return pred[nearest]


def _chain_step(spec: str, part: str) -> tuple[str, int]:
  """One 'kind=value' part of a chain spec -> (kind, value)."""
  kind, equals, text = part.partition('=')
  kind, text = kind.strip(), text.strip()
  where = f'postprocess {spec!r}, part {part!r}'
  if kind not in POSTPROCESS_KINDS:
    raise ValueError(f'{where}: kind {kind!r} not in {POSTPROCESS_KINDS}')
  if kind == 'none':
    raise ValueError(f"{where}: 'none' is only allowed alone")
  if not equals or not re.fullmatch('[0-9]+', text) or int(text) < 1:
    raise ValueError(f'{where}: expected {kind}=<positive int>')
  return kind, int(text)


def parse_chain(spec: str, value: int | None = None) -> tuple[tuple[str, int], ...]:
  """Post-processing spec -> the (kind, value) steps in order; () for 'none'.

  spec: one kind of POSTPROCESS_KINDS with its `value` ('none' ignores it), or a chain
  'median=15,mode=9,purge=3' with `value` None. 'median' acts on probabilities, so only first.
  """
  if spec == 'none':
    return ()
  if spec in POSTPROCESS_KINDS:
    return ((spec, _check_positive(value, f'postprocess {spec!r} value')),)
  chain = tuple(_chain_step(spec, part) for part in spec.split(','))
  if value is not None:
    raise ValueError(f'postprocess chain {spec!r} has its own values; got value={value!r} too')
  if any(kind == 'median' for kind, _ in chain[1:]):
    raise ValueError(
      f"postprocess chain {spec!r}: 'median' filters probabilities, so it can only come first"
    )
  return chain


def postprocess(
  probs: np.ndarray, full_len: int, sample_rate: int, spec: str = 'none', value: int | None = None
) -> np.ndarray:
  """Merged low-rate probabilities [full_len // r, C] -> full-rate labels [full_len] int32.

  spec, value: see `parse_chain`. A leading 'median' (median_filter_probs of that size) smooths the
  probabilities; then argmax, restore the full frame rate, and apply the remaining 'mode'
  (mode_filter of that size) and 'purge' (purge of segments <= that many frames) in chain order.
  """
  chain = parse_chain(spec, value)
  probs = np.asarray(probs)
  if chain and chain[0][0] == 'median':
    probs = median_filter_probs(probs, chain[0][1])
    chain = chain[1:]
  pred = restore_full_rate(probs.argmax(axis=-1).astype(np.int32), full_len, sample_rate)
  for kind, size in chain:
    pred = LABEL_FILTERS[kind](pred, size)
  return pred


def binarize(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
  """Multi-label decisions: probs [T, C] -> [T, C] bool, probs >= threshold."""
  return np.asarray(probs) >= threshold


def purge_binary(active: np.ndarray, max_len: int) -> np.ndarray:
  """Cleans a binary track, [T] bool -> [T] bool, in two passes.

  First fills every inactive gap of <= max_len frames between two active runs (gaps at the start
  or end of the video are kept: the person may be absent there), then deactivates every active run
  of <= max_len frames. Filling first joins an action cut by short flickers before its pieces are
  judged short. The result has neither, so purging twice changes nothing.
  """
  max_len = _check_positive(max_len, 'purge max_len')
  active = np.array(active, bool)
  runs, starts, ends = segments(active.astype(np.int8))
  short_gaps = (runs == 0) & (ends - starts <= max_len)
  short_gaps[[0, -1]] = False  # only gaps between two active runs
  for start, end in zip(starts[short_gaps], ends[short_gaps]):
    active[start:end] = True
  runs, starts, ends = segments(active.astype(np.int8))
  short_runs = (runs == 1) & (ends - starts <= max_len)
  for start, end in zip(starts[short_runs], ends[short_runs]):
    active[start:end] = False
  return active


def postprocess_multilabel(
  probs: np.ndarray,
  full_len: int,
  sample_rate: int,
  kind: str = 'none',
  value: int | None = None,
  threshold: float = 0.5,
) -> np.ndarray:
  """Merged low-rate multi-label probabilities [full_len // r, C] -> full-rate [full_len, C] float32.

  kind: 'none'; 'median' (`median_filter_time` of size `value` on each class's probabilities, not
  renormalised, before restoring the frame rate); 'purge' (`purge_binary` with max_len `value` on each
  class's track binarize(probs, threshold), after restoring the frame rate). Purge returns
  probabilities moved to the decided side: 1 where a frame became active, 0 where it became
  inactive, the input probability where the decision is unchanged (so `binarize` of the result is
  the purged track, and the ranking for mAP only changes at flipped frames).
  """
  if kind not in MULTILABEL_POSTPROCESS_KINDS:
    raise ValueError(f'multi-label postprocess kind {kind!r} not in {MULTILABEL_POSTPROCESS_KINDS}')
  probs = np.asarray(probs, np.float32)
  if probs.ndim != 2:
    raise ValueError(f'probs: expected a [T, C] array, got shape {probs.shape}')
  if kind == 'median':
    probs = median_filter_time(probs, value)
  probs = restore_full_rate(probs, full_len, sample_rate)
  if kind == 'purge':
    decided = binarize(probs, threshold)
    purged = np.stack([purge_binary(track, value) for track in decided.T], axis=1)
    probs = np.where(purged == decided, probs, purged.astype(np.float32))
  return probs

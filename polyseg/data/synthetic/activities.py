"""The single-stream generator (the embedded default dataset; DiffAct, HAL with transcripts).

A seeded *world* fixes the classes, the activity grammars and the feature
geometry; each video is then sampled from it:

* Activities (default 3) are ordered scripts of steps. Some steps are
  optional (skipped half the time), and with probability `SWAP_PROB` two
  adjacent steps of an episode swap places. A few classes are shared by two
  activities.
* A video of target length T ~ U[min_len, max_len] is background, then
  episodes of random activities separated by background, then background;
  the episode count is T divided by the expected episode length (>= 1).
  Segment durations are per-class log-normal (medians 40-160 frames), then
  rescaled so the video has exactly T frames.
* Features [T, D]: the class prototype (a point of norm sqrt(rank) in a
  random rank-`rank` subspace of R^D), linearly cross-faded over `blend` frames at boundaries,
  plus a per-video offset, plus AR(1) noise (coefficient `ar_coef`,
  stationary std `noise_std`). The per-frame SNR is low: a per-frame linear
  classifier is fragmented and clearly worse than one that smooths in time.
* Confusable pairs: classes (1, 2), (3, 4), ... (max(1, K // 5) pairs of
  the K action classes) have nearly equal prototypes; the two members belong
  to different activities, so only the context (the other steps) separates
  them.

Class 0 is 'background'. Everything is a pure function of the arguments;
`single_stream` writes the MS-TCN layout (split 1) via `formats`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Callable
from collections.abc import Mapping

import numpy as np
import scipy.ndimage

from polyseg.data import formats
from polyseg.data.synthetic import base

BACKGROUND = 'background'


ACTION_NAMES = (
  'take_cup',
  'take_bowl',
  'pour_water',
  'pour_milk',
  'add_teabag',
  'add_sugar',
  'stir',
  'pour_coffee',
  'pour_cereal',
  'spread_jam',
  'cut_bread',
  'open_lid',
  'close_lid',
  'crack_egg',
  'whisk',
  'fry_egg',
  'put_plate',
  'take_knife',
  'butter_toast',
  'squeeze_orange',
  'pour_juice',
  'wash_cup',
  'dry_cup',
  'put_away',
)


OPTIONAL_PROB = 0.25  # chance that a grammar step is optional


SKIP_PROB = 0.5  # chance that an optional step is skipped in an episode


SWAP_PROB = 0.25  # chance that an episode swaps two adjacent steps


MEDIAN_RANGE = (40.0, 160.0)  # per-class median durations (frames), log-uniform


BACKGROUND_MEDIAN = 60.0


DURATION_SIGMA = 0.35  # log-normal sigma of segment durations


PAIR_DISTANCE = 0.15  # per-coordinate std of the prototype difference in a confusable pair


GENERATOR_VERSION = 1  # bump when the output for given arguments changes (invalidates caches)


@dataclasses.dataclass(frozen=True)
class World:
  """What all videos of one seed share.

  classes [C]; activities: per activity, (class ids [S], optional flags [S]);
  prototypes [C, D]; medians [C] duration medians in frames.
  """

  classes: list[str]
  activities: list[tuple[np.ndarray, np.ndarray]]
  prototypes: np.ndarray
  medians: np.ndarray


def class_names(num_classes: int) -> list[str]:
  """'background' then `num_classes - 1` action names."""
  extra = [f'action_{k:03d}' for k in range(len(ACTION_NAMES), num_classes - 1)]
  return [BACKGROUND, *ACTION_NAMES, *extra][:num_classes]


def confusable_pairs(num_classes: int, num_activities: int) -> list[tuple[int, int]]:
  """Class-id pairs with nearly equal prototypes: (1, 2), (3, 4), ..."""
  num_actions = num_classes - 1
  num_pairs = min(max(1, num_actions // 5), num_actions // 2) if num_activities > 1 else 0
  return [(2 * i + 1, 2 * i + 2) for i in range(num_pairs)]


def _assign_activities(
  rng: np.random.Generator, num_classes: int, num_activities: int
) -> list[list[int]]:
  """Class ids of each activity: pair members apart, the rest balanced, a few shared."""
  members = [[] for _ in range(num_activities)]
  pairs = confusable_pairs(num_classes, num_activities)
  for i, (first, second) in enumerate(pairs):
    members[i % num_activities].append(first)
    members[(i + 1) % num_activities].append(second)
  paired = {c for pair in pairs for c in pair}
  rest = rng.permutation([c for c in range(1, num_classes) if c not in paired])
  for c in rest:
    min(members, key=len).append(int(c))
  if num_activities > 1:
    for c in rest[: (num_classes - 1) // 5]:
      owner = next(a for a, m in enumerate(members) if c in m)
      members[(owner + 1 + rng.integers(num_activities - 1)) % num_activities].append(int(c))
  return members


def make_world(
  *, seed: int, num_classes: int, input_dim: int, num_activities: int, rank: int
) -> World:
  """Samples classes, activity grammars, prototypes [C, D] and duration medians [C]."""
  rng = np.random.default_rng([seed, 0])
  activities = []
  for member_ids in _assign_activities(rng, num_classes, num_activities):
    steps = rng.permutation(member_ids).astype(np.int32)
    optional = rng.random(len(steps)) < OPTIONAL_PROB
    if (~optional).sum() < 2:
      optional[:] = False
    activities.append((steps, optional))
  basis, _ = np.linalg.qr(rng.standard_normal((input_dim, rank)))
  coords = rng.standard_normal((num_classes, rank))
  coords *= np.sqrt(rank) / np.linalg.norm(coords, axis=1, keepdims=True)
  for first, second in confusable_pairs(num_classes, num_activities):
    coords[second] = coords[first] + PAIR_DISTANCE * rng.standard_normal(rank)
  medians = np.exp(rng.uniform(*np.log(MEDIAN_RANGE), size=num_classes))
  medians[0] = BACKGROUND_MEDIAN
  return World(class_names(num_classes), activities, coords @ basis.T, medians)


def _expected_episode_len(world: World) -> float:
  """Mean frames of one episode plus the background after it."""
  keep = 1.0 - SKIP_PROB * OPTIONAL_PROB
  lengths = [world.medians[steps].sum() * keep for steps, _ in world.activities]
  return float(np.mean(lengths) + world.medians[0])


def sample_episode(rng: np.random.Generator, steps: np.ndarray, optional: np.ndarray) -> np.ndarray:
  """One pass through an activity: optional steps skipped, maybe one adjacent swap."""
  kept = steps[~optional | (rng.random(len(steps)) >= SKIP_PROB)]
  if len(kept) > 1 and rng.random() < SWAP_PROB:
    i = rng.integers(len(kept) - 1)
    kept[[i, i + 1]] = kept[[i + 1, i]]
  return kept


def fit_durations(durations: np.ndarray, length: int) -> np.ndarray:
  """Integer durations >= 1 summing to `length`, proportional to `durations` [S]."""
  spare = length - len(durations)
  ends = np.round(np.cumsum(durations) / durations.sum() * spare).astype(np.int64)
  return np.diff(ends, prepend=0) + 1


def sample_labels(rng: np.random.Generator, world: World, length: int) -> np.ndarray:
  """Frame labels [length] int32: background, episodes separated by background, background."""
  num_episodes = max(1, round(length / _expected_episode_len(world)))
  sequence = [np.zeros(1, np.int32)]
  for _ in range(num_episodes):
    steps, optional = world.activities[rng.integers(len(world.activities))]
    sequence += [sample_episode(rng, steps, optional), np.zeros(1, np.int32)]
  sequence = np.concatenate(sequence)
  durations = world.medians[sequence] * np.exp(DURATION_SIGMA * rng.standard_normal(len(sequence)))
  return np.repeat(sequence, fit_durations(durations, length)).astype(np.int32)


def sample_features(
  rng: np.random.Generator,
  world: World,
  labels: np.ndarray,
  *,
  noise_std: float,
  ar_coef: float,
  blend: int,
) -> np.ndarray:
  """Features [T, D] float32: cross-faded prototypes + per-video offset + AR(1) noise."""
  length, dim = len(labels), world.prototypes.shape[1]
  means = scipy.ndimage.uniform_filter1d(
    world.prototypes[labels], size=blend, axis=0, mode='nearest'
  )
  offset = base.OFFSET_STD * rng.standard_normal(dim)
  return (means + offset + noise_std * base.ar1_noise(rng, length, dim, ar_coef)).astype(np.float32)


def check_args(num_classes, num_activities, input_dim, rank, min_len, max_len, blend) -> None:
  """ValueError for arguments the generator cannot honour."""
  if num_classes < 3:
    raise ValueError(f'num_classes must be >= 3 (background + 2 actions), got {num_classes}')
  if not 1 <= num_activities <= num_classes - 1:
    raise ValueError(f'num_activities must be in [1, {num_classes - 1}], got {num_activities}')
  if not 1 <= rank <= input_dim:
    raise ValueError(f'rank must be in [1, input_dim={input_dim}], got {rank}')
  if not 1 <= min_len <= max_len:
    raise ValueError(f'need 1 <= min_len <= max_len, got {min_len}, {max_len}')
  if blend < 1:
    raise ValueError(f'blend must be >= 1 frame, got {blend}')


def sample_videos(
  world: World,
  *,
  seed: int,
  tag: int,
  counts: Mapping[str, int],
  min_len: int,
  max_len: int,
  video: Callable[[str, np.random.Generator, np.ndarray], object],
) -> dict[str, list]:
  """{subset: [video(name, rng, labels [T])]} for `counts` {subset: number of videos}: video i of
  the k-th subset (k from 1) draws T ~ U[min_len, max_len], its labels and then whatever `video`
  samples from a generator seeded by (seed, tag + k, i)."""
  min_segments = 2 * (2 + max(len(steps) for steps, _ in world.activities))
  if min_len < min_segments:
    raise ValueError(
      f'min_len {min_len} < {min_segments}: too short for the activities of '
      f'{len(world.classes)} classes'
    )
  subsets = {}
  for subset_id, (subset, count) in enumerate(counts.items(), start=1):
    subsets[subset] = []
    for i in range(count):
      rng = np.random.default_rng([seed, tag + subset_id, i])
      labels = sample_labels(rng, world, int(rng.integers(min_len, max_len + 1)))
      subsets[subset].append(video(f'{subset}{i:03d}', rng, labels))
  return subsets


def make_single_stream(
  *,
  seed: int = 0,
  num_classes: int = 11,
  input_dim: int = 64,
  num_train: int = 48,
  num_test: int = 16,
  num_val: int = 8,
  min_len: int = 600,
  max_len: int = 1500,
  num_activities: int = 3,
  rank: int = 8,
  noise_std: float = 1.2,
  ar_coef: float = 0.7,
  blend: int = 8,
) -> dict[str, formats.Dataset]:
  """{'train', 'test', 'val' (when num_val > 0)}: Datasets sampled in memory, deterministic from
  the arguments (the val videos are drawn after the others, so num_val changes no other video)."""
  check_args(num_classes, num_activities, input_dim, rank, min_len, max_len, blend)
  world = make_world(
    seed=seed,
    num_classes=num_classes,
    input_dim=input_dim,
    num_activities=num_activities,
    rank=rank,
  )
  subsets = sample_videos(
    world,
    seed=seed,
    tag=0,
    counts=base.subset_counts(num_train, num_test, num_val),
    min_len=min_len,
    max_len=max_len,
    video=lambda name, rng, labels: formats.Video(
      name,
      sample_features(rng, world, labels, noise_std=noise_std, ar_coef=ar_coef, blend=blend),
      labels,
    ),
  )
  return {subset: formats.Dataset(world.classes, videos) for subset, videos in subsets.items()}


def single_stream(root: str | os.PathLike, transcripts: bool = False, **kwargs) -> pathlib.Path:
  """Writes `make_single_stream(**kwargs)` to `root` (MS-TCN layout, split 1; with `transcripts`,
  also `transcripts/<vid>.txt` derived from the labels); returns root.

  Takes the keyword arguments of `make_single_stream` (seed, num_classes, ...).
  """
  datasets = make_single_stream(**kwargs)
  return formats.write_single_stream(root, datasets, split=1, transcripts=transcripts)


def cache_name(**kwargs) -> str:
  """'single_stream-<hash>' of all arguments (defaults filled in) and GENERATOR_VERSION."""
  return base.cache_key('single_stream', make_single_stream, GENERATOR_VERSION, kwargs)


def ensure_single_stream(cache_dir: str | os.PathLike, **kwargs) -> pathlib.Path:
  """Generates the dataset into `cache_dir/<cache_name>/` on first use; returns that root.

  Safe against concurrent callers: generation is atomic, and a loser of the
  race reuses the winner's (identical) dataset.
  """
  return base.ensure_generated(cache_dir, cache_name(**kwargs), single_stream, kwargs)


def ensure_transcripts(cache_dir: str | os.PathLike, **kwargs) -> pathlib.Path:
  """`ensure_single_stream` with `transcripts/` (HAL's weak supervision), in its own cache folder
  'transcripts-<hash>'."""
  name = base.cache_key('transcripts', make_single_stream, GENERATOR_VERSION, kwargs)
  write = functools.partial(single_stream, transcripts=True)
  return base.ensure_generated(cache_dir, name, write, kwargs)

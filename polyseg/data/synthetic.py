"""Synthetic single-stream action-segmentation data (the embedded default dataset).

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

Referring data (`make_referring`, `referring`, `ensure_referring`; HopaDIFF):

* Videos of T ~ U[min_len, max_len] frames with 2-4 persons each; every
  person is referred, so each is one sample '<vid>__<person>'. A person has
  four attributes (noun, colour, garment, position); persons of a video
  differ in at least one and often share some. The reference text names all
  four through one of a few templates ("the man in the grey coat on the left").
* A person is present in one or two intervals covering 50-90% of the video.
  Multi-label classes: a pose track (stand, sit, walk, run; exactly one while
  present, log-normal segments, median 110 frames) and a sparse activity track
  (talk, wave, clap, drink, read, phone; zero or one at a time, median 40
  frames); no label while absent.
* Latent state [T, S] of a person: the sum of the active class prototypes
  (cross-faded over a few frames) + the appearance code (sum of one random
  vector per attribute value) while present + oscillations: periodic classes
  (walk, run, talk, wave, clap) add a sinusoid at a class-specific frequency
  along a class-specific direction. The pairs walk/run and wave/clap have
  nearly the same prototype and the same direction and differ only in
  frequency (1/16 vs 1/6, 1/10 vs 1/4 cycles per frame), so only temporal,
  frequency-domain cues separate them.
* Holistic features [T, Dh] (like BLIP-2 features computed with the text):
  with `cross_modal`, a mixture of the states of the persons present at each
  frame weighted by softmax(match_beta * attributes shared with the
  referred person), so the target dominates but look-alikes leak in, and
  while the target is absent the mixture holds only the others. Without
  `cross_modal`, one unweighted mixture per video, shared by all its samples
  (written once as `features_holistic/<vid>.npy`). Then a fixed isometric
  projection to Dh, a per-video offset and AR(1) scene noise.
* Partial features [T, Dp]: the target's own state through another fixed
  projection plus AR(1) noise; noise only while the person is absent and in
  short detection-failure stretches (`detection_failure` of the present
  frames), where the holistic branch has to fill in.

Two-hands data (`make_two_hands`, `ensure_two_hands`; Polyphony stage-2 input, or stage-1 input
with `frames`):

* An assembly world: per part (bolt, shaft, peg, ...) a task 'take <part>', 'insert <part> into
  box', 'take wrench', 'screw nut onto <part> using wrench', 'put wrench' (optional); a lid task
  (place and screw the lid with a screwdriver); and 'wipe box using cloth' then 'lift box'.
  Class names are verb [object] [into/onto target] [using tool] (Polyphony's stage 2 parses them:
  `stage2.parse_label`).
* Each task step is bimanual. Supporting: the LH holds the box (or the part) from a few frames
  before to a few frames after the RH's action. Joint: both hands act together (LH wipes while
  the RH holds the box; both lift it), boundaries a few frames apart. Independent: the RH takes or
  puts something while the LH is idle or, with `LH_ACTIVE_PROB`, takes a nut at its own time.
  So the LH is sparser (about half its frames idle, fewer segments and classes) and each hand's
  label says much about the other's. Videos: background, tasks separated by background,
  background; durations log-normal per step, rescaled to T ~ U[min_len, max_len].
* Features: each hand's state is its own prototype of the class (the two hands' prototypes of
  one class differ; the LH's idle and holding prototypes are close). Shared [T, Ds]: both states
  projected (the LH weaker) + per-video offset + AR(1) noise. Per hand [T, C]: the logits of a
  per-frame Gaussian classifier with the hand's class prior on its noisy state (the LH noisier).
  The 'screw nut onto <part> using wrench' classes differ only in the target and have nearly
  equal prototypes (and frame styles): only context (the part inserted before, the part the LH
  holds) separates them.
* Frames [T, S, S, 3] uint8: the left half shows the LH class, the right half the RH class, as a
  class- and hand-specific coloured grating drifting at a class-specific speed, plus noise.

Two-streams data (`make_two_streams`, `two_streams`, `ensure_two_streams`; 2s-DAS): each stream
carries what the other lacks, so fusing them beats either.

* Labels: the single-stream world and sampler (activities, grammars, durations) unchanged.
* RGB [T, rgb_dim]: the single-stream features of that world: class prototypes (identity), so
  the confusable pairs stay nearly equal, cross-faded, + per-video offset + AR(1) noise.
* Flow [T, flow_dim], noisier per frame (`flow_noise_std`, motion prototypes closer together):
  each class's *motion* prototype, that of its motion group (`motion_groups`: background alone,
  the actions dealt to `num_motions` groups, so flow alone cannot name most classes, but the two
  members of every confusable pair get different groups: flow separates what RGB confuses), in
  a rank-`flow_rank` subspace, cross-faded, + per-video offset + AR(1) noise; plus a boundary
  burst: `burst_amplitude` along one fixed direction (orthogonal to the motion subspace) on the
  first `burst_len` frames after every segment change, so boundaries show in flow.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import os
import pathlib
from collections.abc import Callable
from collections.abc import Mapping

import numpy as np
import scipy.ndimage
import scipy.signal

from polyseg.data import formats

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
OFFSET_STD = 0.3  # per-video offset std per feature dimension
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


def _episode(rng: np.random.Generator, steps: np.ndarray, optional: np.ndarray) -> np.ndarray:
  """One pass through an activity: optional steps skipped, maybe one adjacent swap."""
  kept = steps[~optional | (rng.random(len(steps)) >= SKIP_PROB)]
  if len(kept) > 1 and rng.random() < SWAP_PROB:
    i = rng.integers(len(kept) - 1)
    kept[[i, i + 1]] = kept[[i + 1, i]]
  return kept


def _fit_durations(durations: np.ndarray, length: int) -> np.ndarray:
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
    sequence += [_episode(rng, steps, optional), np.zeros(1, np.int32)]
  sequence = np.concatenate(sequence)
  durations = world.medians[sequence] * np.exp(DURATION_SIGMA * rng.standard_normal(len(sequence)))
  return np.repeat(sequence, _fit_durations(durations, length)).astype(np.int32)


def ar1_noise(rng: np.random.Generator, length: int, dim: int, ar_coef: float) -> np.ndarray:
  """Stationary AR(1) noise [length, dim] with coefficient `ar_coef` and std 1."""
  innovations = rng.standard_normal((length, dim))
  innovations[1:] *= np.sqrt(1.0 - ar_coef**2)  # keeps the AR(1) process stationary, std 1
  return scipy.signal.lfilter([1.0], [1.0, -ar_coef], innovations, axis=0)


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
  offset = OFFSET_STD * rng.standard_normal(dim)
  return (means + offset + noise_std * ar1_noise(rng, length, dim, ar_coef)).astype(np.float32)


def _check_args(num_classes, num_activities, input_dim, rank, min_len, max_len, blend) -> None:
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


def subset_counts(num_train: int, num_test: int, num_val: int) -> dict[str, int]:
  """{subset: number of videos} in drawing order: val last, so adding it changes no other video."""
  return {'train': num_train, 'test': num_test, **({'val': num_val} if num_val else {})}


def _sample_videos(
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
  _check_args(num_classes, num_activities, input_dim, rank, min_len, max_len, blend)
  world = make_world(
    seed=seed,
    num_classes=num_classes,
    input_dim=input_dim,
    num_activities=num_activities,
    rank=rank,
  )
  subsets = _sample_videos(
    world,
    seed=seed,
    tag=0,
    counts=subset_counts(num_train, num_test, num_val),
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


def _cache_name(prefix: str, generator, version: int, kwargs: dict) -> str:
  """'<prefix>-<hash>' of the generator's arguments (defaults filled in) and its version."""
  arguments = inspect.signature(generator).bind(**kwargs)
  arguments.apply_defaults()
  key = json.dumps({'version': version, **arguments.arguments}, sort_keys=True)
  return f'{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:16]}'


def _ensure(root: pathlib.Path, write) -> pathlib.Path:
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


def cache_name(**kwargs) -> str:
  """'single_stream-<hash>' of all arguments (defaults filled in) and GENERATOR_VERSION."""
  return _cache_name('single_stream', make_single_stream, GENERATOR_VERSION, kwargs)


def ensure_single_stream(cache_dir: str | os.PathLike, **kwargs) -> pathlib.Path:
  """Generates the dataset into `cache_dir/<cache_name>/` on first use; returns that root.

  Safe against concurrent callers: generation is atomic, and a loser of the
  race reuses the winner's (identical) dataset.
  """
  root = pathlib.Path(cache_dir).expanduser() / cache_name(**kwargs)
  return _ensure(root, lambda: single_stream(root, **kwargs))


def ensure_transcripts(cache_dir: str | os.PathLike, **kwargs) -> pathlib.Path:
  """`ensure_single_stream` with `transcripts/` (HAL's weak supervision), in its own cache folder
  'transcripts-<hash>'."""
  name = _cache_name('transcripts', make_single_stream, GENERATOR_VERSION, kwargs)
  root = pathlib.Path(cache_dir).expanduser() / name
  return _ensure(root, lambda: single_stream(root, transcripts=True, **kwargs))


# --------------------------------------------------------------- referring --

POSES = ('stand', 'sit', 'walk', 'run')  # exactly one while the person is present
ACTIVITIES = ('talk', 'wave', 'clap', 'drink', 'read', 'phone')  # zero or one at a time
REFERRING_CLASSES = POSES + ACTIVITIES
FREQUENCIES = {'walk': 1 / 16, 'run': 1 / 6, 'talk': 1 / 12, 'wave': 1 / 10, 'clap': 1 / 4}
REFERRING_PAIRS = (('walk', 'run'), ('wave', 'clap'))  # same prototype and direction, own frequency
ATTRIBUTES = {
  'noun': ('man', 'woman', 'boy', 'girl', 'old man', 'old woman'),
  'colour': ('red', 'blue', 'green', 'grey', 'black', 'white', 'yellow'),
  'garment': ('shirt', 'jacket', 'coat', 'dress', 'hat', 'scarf'),
  'position': ('left', 'right', 'centre', 'back'),
}
POSITION_PHRASES = {
  'left': 'on the left',
  'right': 'on the right',
  'centre': 'in the centre',
  'back': 'at the back',
}
TEMPLATES = (
  'the {noun} in the {colour} {garment} {where}',
  '{a} {noun} wearing a {colour} {garment}, {where}',
  'the {noun} {where}, in a {colour} {garment}',
  '{a} {noun} with a {colour} {garment} {where}',
)
PERSONS_RANGE = (2, 4)  # persons per video
SHARE_PROB = 0.4  # chance that a person copies an attribute value of an earlier person
PRESENCE_RANGE = (0.5, 0.9)  # fraction of the video a person is present
TWO_INTERVALS_PROB = 0.5  # chance that a person leaves and comes back once
POSE_MEDIAN, POSE_SIGMA = 110.0, 0.35  # log-normal pose segment durations (frames)
ACTIVITY_MEDIAN, ACTIVITY_SIGMA = 40.0, 0.35  # log-normal activity segment durations
GAP_MEDIAN, GAP_SIGMA = 60.0, 0.5  # log-normal gaps between activities
FAILURE_MEDIAN, FAILURE_SIGMA = 12.0, 0.4  # log-normal detection-failure stretches
PROTOTYPE_NORM = 2.0  # norm of a class prototype in the latent space
REFERRING_PAIR_DISTANCE = 0.1  # norm of the prototype difference in a confusable pair
OSCILLATION_AMPLITUDE = 2.0  # peak amplitude of a periodic class' oscillation
FREQUENCY_JITTER = 0.03  # relative per-segment jitter of the oscillation frequency
APPEARANCE_NORM = 0.8  # norm of one attribute value's appearance vector
REFERRING_BLEND = 5  # frames over which prototypes cross-fade
REFERRING_VERSION = 1  # bump when the output for given arguments changes (invalidates caches)


@dataclasses.dataclass(frozen=True)
class ReferringWorld:
  """What all referring videos of one seed share (latent state space of dimension S).

  prototypes [C, S]; directions [C, S] unit oscillation directions (zero rows
  for non-periodic classes); frequencies [C] cycles per frame (0 = not
  periodic); appearance {attribute: {value: [S]}}; holistic_projection
  [S, Dh] and partial_projection [S, Dp], random with orthonormal rows (or
  columns when S > D).
  """

  classes: list[str]
  prototypes: np.ndarray
  directions: np.ndarray
  frequencies: np.ndarray
  appearance: dict[str, dict[str, np.ndarray]]
  holistic_projection: np.ndarray
  partial_projection: np.ndarray


@dataclasses.dataclass
class Person:
  """One person of a synthetic video: attributes, reference text and per-frame truth.

  labels [T, C] bool; present [T] bool; detected [T] bool (present and not a
  detection failure); state [T, S] float (zero when absent).
  """

  id: str
  attributes: dict[str, str]
  reference: str
  labels: np.ndarray
  present: np.ndarray
  detected: np.ndarray
  state: np.ndarray


def _random_directions(rng: np.random.Generator, count: int, dim: int, norm: float) -> np.ndarray:
  """[count, dim] random vectors of the given norm."""
  vectors = rng.standard_normal((count, dim))
  return norm * vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _projection(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
  """[rows, cols] random, orthonormal rows (an isometry) when rows <= cols, else columns."""
  basis, _ = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
  return basis.T if rows <= cols else basis


def make_referring_world(
  *, seed: int, latent_dim: int, holistic_dim: int, partial_dim: int
) -> ReferringWorld:
  """Samples prototypes, oscillations, appearance vectors and the two projections."""
  rng = np.random.default_rng([seed, 100])
  index = {name: c for c, name in enumerate(REFERRING_CLASSES)}
  prototypes = _random_directions(rng, len(REFERRING_CLASSES), latent_dim, PROTOTYPE_NORM)
  directions = _random_directions(rng, len(REFERRING_CLASSES), latent_dim, 1.0)
  for first, second in REFERRING_PAIRS:
    offset = _random_directions(rng, 1, latent_dim, REFERRING_PAIR_DISTANCE)[0]
    prototypes[index[second]] = prototypes[index[first]] + offset
    directions[index[second]] = directions[index[first]]
  frequencies = np.array([FREQUENCIES.get(name, 0.0) for name in REFERRING_CLASSES])
  directions[frequencies == 0] = 0.0
  appearance = {
    attribute: dict(zip(values, _random_directions(rng, len(values), latent_dim, APPEARANCE_NORM)))
    for attribute, values in ATTRIBUTES.items()
  }
  return ReferringWorld(
    list(REFERRING_CLASSES),
    prototypes,
    directions,
    frequencies,
    appearance,
    _projection(rng, latent_dim, holistic_dim),
    _projection(rng, latent_dim, partial_dim),
  )


def _duration(rng: np.random.Generator, median: float, sigma: float) -> int:
  """One log-normal duration in frames (>= 1)."""
  return max(1, round(median * np.exp(sigma * rng.standard_normal())))


def sample_person_labels(rng: np.random.Generator, length: int, present: np.ndarray) -> np.ndarray:
  """Multi-hot [length, C] bool: one pose and sparse activities while `present` [T]."""
  labels = np.zeros((length, len(REFERRING_CLASSES)), bool)
  t, pose = 0, int(rng.integers(len(POSES)))
  while t < length:
    duration = _duration(rng, POSE_MEDIAN, POSE_SIGMA)
    labels[t : t + duration, pose] = True
    t += duration
    pose = (pose + 1 + int(rng.integers(len(POSES) - 1))) % len(POSES)
  t = int(rng.integers(round(GAP_MEDIAN)))
  while t < length:
    duration = _duration(rng, ACTIVITY_MEDIAN, ACTIVITY_SIGMA)
    labels[t : t + duration, len(POSES) + int(rng.integers(len(ACTIVITIES)))] = True
    t += duration + _duration(rng, GAP_MEDIAN, GAP_SIGMA)
  return labels & present[:, None]


def sample_presence(rng: np.random.Generator, length: int) -> np.ndarray:
  """[length] bool: one or two intervals covering PRESENCE_RANGE of the video."""
  present = np.zeros(length, bool)
  covered = max(1, round(length * rng.uniform(*PRESENCE_RANGE)))
  spare = length - covered
  if covered >= 2 and spare >= 1 and rng.random() < TWO_INTERVALS_PROB:
    first = min(covered - 1, max(1, round(covered * rng.uniform(0.3, 0.7))))
    gap = 1 + int(rng.integers(spare))
    before = int(rng.integers(spare - gap + 1))
    present[before : before + first] = True
    present[before + first + gap : before + covered + gap] = True
  else:
    before = int(rng.integers(spare + 1))
    present[before : before + covered] = True
  return present


def sample_detection_failures(
  rng: np.random.Generator, present: np.ndarray, fraction: float
) -> np.ndarray:
  """[T] bool: short stretches covering about `fraction` of the present frames."""
  missed = np.zeros_like(present)
  target = round(fraction * present.sum())
  while missed.sum() < target:
    start = int(rng.choice(np.flatnonzero(present & ~missed)))
    duration = min(_duration(rng, FAILURE_MEDIAN, FAILURE_SIGMA), target - missed.sum())
    missed[start : start + duration] = True
    missed &= present
  return missed


def oscillations(rng: np.random.Generator, world: ReferringWorld, labels: np.ndarray) -> np.ndarray:
  """[T, S]: per segment of a periodic class, a sinusoid along its direction, random phase."""
  length = len(labels)
  signal = np.zeros((length, world.prototypes.shape[1]))
  for c in np.flatnonzero(world.frequencies):
    active = np.r_[False, labels[:, c], False].astype(np.int8)
    starts, ends = np.flatnonzero(np.diff(active) == 1), np.flatnonzero(np.diff(active) == -1)
    for start, end in zip(starts, ends, strict=True):
      frequency = world.frequencies[c] * (1.0 + FREQUENCY_JITTER * rng.standard_normal())
      phase = 2.0 * np.pi * (frequency * np.arange(end - start) + rng.random())
      signal[start:end] += OSCILLATION_AMPLITUDE * np.sin(phase)[:, None] * world.directions[c]
  return signal


def _article(word: str) -> str:
  return 'an' if word[0] in 'aeiou' else 'a'


def reference_text(rng: np.random.Generator, attributes: dict[str, str]) -> str:
  """A referring expression naming all four attributes, from a random template."""
  template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
  return template.format(
    a=_article(attributes['noun']),
    where=POSITION_PHRASES[attributes['position']],
    **{k: v for k, v in attributes.items() if k != 'position'},
  )


def sample_attributes(rng: np.random.Generator, count: int) -> list[dict[str, str]]:
  """Attributes of `count` persons: pairwise different, often sharing some values."""
  persons = []
  while len(persons) < count:
    person = {}
    for attribute, values in ATTRIBUTES.items():
      if persons and rng.random() < SHARE_PROB:
        person[attribute] = persons[int(rng.integers(len(persons)))][attribute]
      else:
        person[attribute] = values[int(rng.integers(len(values)))]
    if person not in persons:
      persons.append(person)
  return persons


def sample_persons(
  rng: np.random.Generator, world: ReferringWorld, length: int, detection_failure: float
) -> list[Person]:
  """2-4 persons with labels, presence, detection failures and latent state [T, S]."""
  persons = []
  count = int(rng.integers(PERSONS_RANGE[0], PERSONS_RANGE[1] + 1))
  for i, attributes in enumerate(sample_attributes(rng, count)):
    present = sample_presence(rng, length)
    labels = sample_person_labels(rng, length, present)
    missed = sample_detection_failures(rng, present, detection_failure)
    appearance = sum(world.appearance[k][v] for k, v in attributes.items())
    means = labels @ world.prototypes + present[:, None] * appearance
    means = scipy.ndimage.uniform_filter1d(means, size=REFERRING_BLEND, axis=0, mode='nearest')
    state = means + oscillations(rng, world, labels)
    text = reference_text(rng, attributes)
    persons.append(Person(f'p{i}', attributes, text, labels, present, present & ~missed, state))
  return persons


def holistic_weights(persons: list[Person], target: int | None, beta: float) -> np.ndarray:
  """[T, N] mixture weights over the persons present at each frame (rows sum to 1 or 0).

  With a `target`, softmax(beta * number of attribute values shared with the
  target) over the present persons; without, uniform over them.
  """
  present = np.stack([p.present for p in persons], axis=1)
  if target is None:
    scores = np.zeros(len(persons))
  else:
    reference = persons[target].attributes
    scores = beta * np.array(
      [sum(p.attributes[k] == v for k, v in reference.items()) for p in persons]
    )
  weights = present * np.exp(scores - scores.max())
  total = weights.sum(axis=1, keepdims=True)
  return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


def sample_referring_video(
  rng: np.random.Generator,
  world: ReferringWorld,
  video: str,
  length: int,
  *,
  cross_modal: bool,
  noise_std: float,
  partial_noise_std: float,
  ar_coef: float,
  match_beta: float,
  detection_failure: float,
) -> tuple[list[Person], list[formats.ReferringSample]]:
  """The persons of one video and one sample per person (sorted by person id)."""
  persons = sample_persons(rng, world, length, detection_failure)
  states = np.stack([p.state for p in persons], axis=1)  # [T, N, S]
  holistic_dim, partial_dim = world.holistic_projection.shape[1], world.partial_projection.shape[1]
  scene = OFFSET_STD * rng.standard_normal(holistic_dim) + noise_std * ar1_noise(
    rng, length, holistic_dim, ar_coef
  )

  def holistic(target: int | None) -> np.ndarray:
    mixture = np.einsum('tn,tns->ts', holistic_weights(persons, target, match_beta), states)
    return (mixture @ world.holistic_projection + scene).astype(np.float32)

  shared = None if cross_modal else holistic(None)
  samples = []
  for i, person in enumerate(persons):
    partial = person.detected[:, None] * person.state @ world.partial_projection
    partial += partial_noise_std * ar1_noise(rng, length, partial_dim, ar_coef)
    samples.append(
      formats.ReferringSample(
        formats.sample_name(video, person.id),
        video,
        person.id,
        person.reference,
        holistic(i) if cross_modal else shared,
        partial.astype(np.float32),
        person.labels,
      )
    )
  return persons, samples


def make_referring(
  *,
  seed: int = 0,
  num_videos: int = 32,
  min_len: int = 300,
  max_len: int = 700,
  holistic_dim: int = 48,
  partial_dim: int = 32,
  cross_modal: bool = True,
  latent_dim: int = 16,
  noise_std: float = 1.0,
  partial_noise_std: float = 1.2,
  ar_coef: float = 0.7,
  match_beta: float = 1.0,
  detection_failure: float = 0.1,
) -> formats.ReferringDataset:
  """All persons of `num_videos` videos as referring samples, deterministic from the arguments."""
  if num_videos < 1:
    raise ValueError(f'num_videos must be >= 1, got {num_videos}')
  if not 20 <= min_len <= max_len:
    raise ValueError(f'need 20 <= min_len <= max_len, got {min_len}, {max_len}')
  dims = {'latent_dim': latent_dim, 'holistic_dim': holistic_dim, 'partial_dim': partial_dim}
  for name, value in dims.items():
    if value < 1:
      raise ValueError(f'{name} must be >= 1, got {value}')
  if not 0.0 <= detection_failure < 1.0:
    raise ValueError(f'detection_failure must be in [0, 1), got {detection_failure}')
  if not 0.0 <= ar_coef < 1.0:
    raise ValueError(f'ar_coef must be in [0, 1), got {ar_coef}')
  world = make_referring_world(
    seed=seed, latent_dim=latent_dim, holistic_dim=holistic_dim, partial_dim=partial_dim
  )
  samples = []
  for i in range(num_videos):
    rng = np.random.default_rng([seed, 101, i])
    _, video_samples = sample_referring_video(
      rng,
      world,
      f'video{i:03d}',
      int(rng.integers(min_len, max_len + 1)),
      cross_modal=cross_modal,
      noise_std=noise_std,
      partial_noise_std=partial_noise_std,
      ar_coef=ar_coef,
      match_beta=match_beta,
      detection_failure=detection_failure,
    )
    samples += video_samples
  return formats.ReferringDataset(world.classes, samples)


def referring(root: str | os.PathLike, **kwargs) -> pathlib.Path:
  """Writes `make_referring(**kwargs)` to `root` (referring layout); returns root."""
  return formats.write_referring(root, make_referring(**kwargs))


def referring_cache_name(**kwargs) -> str:
  """'referring-<hash>' of all arguments (defaults filled in) and REFERRING_VERSION."""
  return _cache_name('referring', make_referring, REFERRING_VERSION, kwargs)


def ensure_referring(cache_dir: str | os.PathLike, **kwargs) -> pathlib.Path:
  """Generates the referring dataset into `cache_dir/<referring_cache_name>/` on first use.

  Returns that root; safe against concurrent callers like `ensure_single_stream`.
  """
  root = pathlib.Path(cache_dir).expanduser() / referring_cache_name(**kwargs)
  return _ensure(root, lambda: referring(root, **kwargs))


# --------------------------------------------------------------- two hands --

PARTS = ('bolt', 'shaft', 'peg', 'rod', 'pin', 'stud')  # one 'mount <part>' task each
INDEPENDENT, SUPPORT, JOINT = 'independent', 'support', 'joint'  # how a step couples the hands
STEP_MEDIAN_RANGE = (30.0, 90.0)  # per-step median durations (frames), log-uniform
TWO_HANDS_BACKGROUND_MEDIAN = 40.0
LH_ACTIVE_PROB = 0.6  # chance that the LH does its own action in an independent step
LH_SHARE_RANGE = (0.4, 0.9)  # an independent LH action's share of its step, uniform
SUPPORT_MARGIN = (2, 10)  # a supporting hold starts this many frames before (ends after) the action
JOINT_JITTER = 3  # max frames between the two hands' boundaries of a joint step
HAND_CORRELATION = 0.5  # cosine between the two hands' prototypes of one class (before pairing)
STATIC_SPREAD = 0.4  # LH idle and holding prototypes: distances scaled by this (they look alike)
LH_SHARED_WEIGHT = 0.7  # the LH appears smaller than the RH in the shared features
PRIOR_VIDEOS, PRIOR_LENGTH = 32, 1000  # label samples behind the per-frame classifiers' priors
TWO_HANDS_FRACTIONS = (4, 1, 1)  # train / val / test share of the videos
FRAME_NOISE = (0.2, 0.15)  # pixel noise std (intensity in [0, 1]) of the LH and RH halves
TWO_HANDS_VERSION = 1  # bump when the output for given arguments changes (invalidates caches)


@dataclasses.dataclass(frozen=True)
class TwoHandsWorld:
  """What all two-hands videos of one seed share (latent dimension R per hand, HANDS order).

  classes [C] and parts [C] (verb, manipulated object, target object, tool; 'none' if missing);
  steps [N, 2] class ids (lh, rh) of each bimanual step (step 0: both idle), kinds [N] (INDEPENDENT,
  SUPPORT: the LH holds around the RH's action, JOINT: both act together), medians [N] step
  duration medians; tasks: per task (step ids [S], optional flags [S]); confusable: class-id pairs
  differing only in the target object; prototypes [2, C, R]; projections [2, R, Ds] into the
  shared features; log_priors [2, C] each hand's log class frequencies; frame style per hand
  and class: colours [2, C, 3], angles, frequencies (cycles per pixel) and speeds (radians per
  frame) [2, C] of a moving grating.
  """

  classes: list[str]
  parts: list[tuple[str, str, str, str]]
  steps: np.ndarray
  kinds: list[str]
  medians: np.ndarray
  tasks: list[tuple[np.ndarray, np.ndarray]]
  confusable: list[tuple[int, int]]
  prototypes: np.ndarray
  projections: np.ndarray
  log_priors: np.ndarray
  colours: np.ndarray
  angles: np.ndarray
  frequencies: np.ndarray
  speeds: np.ndarray


def action_name(verb: str, obj: str, target: str, tool: str, preposition: str = 'onto') -> str:
  """'<verb> [<obj>] [<preposition> <target>] [using <tool>]' ('none' parts left out)."""
  words = [verb] + [obj] * (obj != 'none') + [preposition, target] * (target != 'none')
  return ' '.join(words + ['using', tool] * (tool != 'none'))


def two_hands_grammar(num_parts: int) -> tuple[list, list, np.ndarray, list, list]:
  """(class names, parts, steps [N, 2], kinds [N], tasks) of the assembly world.

  Tasks: 'mount <part>' for the first `num_parts` PARTS (take, insert into the box while the LH
  holds the box, screw a nut onto it while the LH holds the part), 'close box' (place and screw
  the lid while the LH holds the box) and 'clean and lift box' (the LH wipes while the RH holds,
  then both lift).
  """
  parts, steps, kinds = [(BACKGROUND, 'none', 'none', 'none')], [(0, 0)], [INDEPENDENT]
  classes = [BACKGROUND]

  def action(verb, obj='none', target='none', tool='none', preposition='onto') -> int:
    if (verb, obj, target, tool) not in parts:
      parts.append((verb, obj, target, tool))
      classes.append(action_name(verb, obj, target, tool, preposition))
    return parts.index((verb, obj, target, tool))

  def step(lh: int, rh: int, kind: str) -> int:
    if (lh, rh) not in steps:
      steps.append((lh, rh))
      kinds.append(kind)
    return steps.index((lh, rh))

  def task(*step_ids: int, optional: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    return np.array(step_ids), np.isin(np.arange(len(step_ids)), optional)

  hold_box = action('hold', 'box')
  tasks = [
    task(
      step(action('take', 'nut'), action('take', part), INDEPENDENT),
      step(hold_box, action('insert', part, 'box', preposition='into'), SUPPORT),
      step(0, action('take', 'wrench'), INDEPENDENT),
      step(action('hold', part), action('screw', 'nut', part, 'wrench'), SUPPORT),
      step(0, action('put', 'wrench'), INDEPENDENT),
      optional=(4,),
    )
    for part in PARTS[:num_parts]
  ]
  tasks.append(
    task(
      step(0, action('take', 'lid'), INDEPENDENT),
      step(hold_box, action('place', 'lid', 'box'), SUPPORT),
      step(0, action('take', 'screwdriver'), INDEPENDENT),
      step(hold_box, action('screw', 'lid', 'box', 'screwdriver'), SUPPORT),
      step(0, action('put', 'screwdriver'), INDEPENDENT),
      optional=(4,),
    )
  )
  tasks.append(
    task(
      step(action('wipe', 'box', tool='cloth'), hold_box, JOINT),
      step(action('lift', 'box'), action('lift', 'box'), JOINT),
    )
  )
  return classes, parts, np.array(steps, np.int32), kinds, tasks


def make_two_hands_world(*, seed: int, num_parts: int, rank: int, shared_dim: int) -> TwoHandsWorld:
  """Samples step durations, hand-specific prototypes, projections and frame styles."""
  classes, parts, steps, kinds, tasks = two_hands_grammar(num_parts)
  rng = np.random.default_rng([seed, 200])
  num_classes = len(classes)
  medians = np.exp(rng.uniform(*np.log(STEP_MEDIAN_RANGE), size=len(steps)))
  medians[0] = TWO_HANDS_BACKGROUND_MEDIAN
  norm = np.sqrt(rank)
  shared = _random_directions(rng, num_classes, rank, norm)
  own = _random_directions(rng, num_classes, rank, norm)
  prototypes = np.stack(
    [HAND_CORRELATION * shared + np.sqrt(1.0 - HAND_CORRELATION**2) * own, shared]
  )
  static = [0, *(c for c, part in enumerate(parts) if part[0] == 'hold')]
  idle = prototypes[0, 0]
  prototypes[0, static] = idle + STATIC_SPREAD * (prototypes[0, static] - idle)
  screws = [c for c, part in enumerate(parts) if part[:2] == ('screw', 'nut')]
  for second in screws[1:]:
    prototypes[:, second] = prototypes[:, screws[0]] + PAIR_DISTANCE * rng.standard_normal(
      (2, rank)
    )
  projections = np.stack([_projection(rng, rank, shared_dim) for _ in formats.HANDS])
  colours = rng.uniform(0.15, 0.85, (2, num_classes, 3))
  angles = rng.uniform(0.0, np.pi, (2, num_classes))
  frequencies = rng.uniform(1 / 12, 1 / 3, (2, num_classes))
  speeds = rng.uniform(0.1, 0.6, (2, num_classes)) * rng.choice([-1, 1], (2, num_classes))
  colours[:, 0], speeds[:, 0] = 0.5, 0.0  # idle: grey and still
  colours[0, static] = 0.5 + STATIC_SPREAD * (colours[0, static] - 0.5)  # LH holding: still too
  speeds[0, static] = 0.0
  for second in screws[1:]:
    for style in (colours, angles, frequencies, speeds):
      style[:, second] = style[:, screws[0]]
    colours[:, second] += rng.uniform(-0.03, 0.03, (2, 3))
  world = TwoHandsWorld(
    classes,
    parts,
    steps,
    kinds,
    medians,
    tasks,
    [(a, b) for i, a in enumerate(screws) for b in screws[i + 1 :]],
    prototypes,
    projections,
    np.zeros((2, num_classes)),
    colours,
    angles,
    frequencies,
    speeds,
  )
  counts = np.ones((2, num_classes))  # add-one smoothing: every class keeps some prior mass
  for i in range(PRIOR_VIDEOS):
    labels = sample_two_hands_labels(np.random.default_rng([seed, 203, i]), world, PRIOR_LENGTH)
    counts += np.stack([np.bincount(labels[:, h], minlength=num_classes) for h in range(2)])
  log_priors = np.log(counts / counts.sum(axis=1, keepdims=True))
  return dataclasses.replace(world, log_priors=log_priors)


def _expected_task_len(world: TwoHandsWorld) -> float:
  """Mean frames of one task plus the background after it."""
  lengths = [(world.medians[s] * (1.0 - SKIP_PROB * o)).sum() for s, o in world.tasks]
  return float(np.mean(lengths) + world.medians[0])


def sample_two_hands_labels(
  rng: np.random.Generator, world: TwoHandsWorld, length: int
) -> np.ndarray:
  """Frame labels [length, 2] int32 (columns lh, rh): background, tasks separated by background,
  background. The RH follows the steps; the LH holds a little longer than a supported action,
  jitters around a joint one and, in independent steps, is idle or does a shorter own action."""
  num_tasks = max(1, round(length / _expected_task_len(world)))
  sequence = [0]
  for _ in range(num_tasks):
    sequence += [*_episode(rng, *world.tasks[rng.integers(len(world.tasks))]), 0]
  sequence = np.asarray(sequence)
  durations = world.medians[sequence] * np.exp(DURATION_SIGMA * rng.standard_normal(len(sequence)))
  durations = _fit_durations(durations, length)
  ends = np.cumsum(durations)
  lh = np.zeros(length, np.int32)
  for step, start, end in zip(sequence, ends - durations, ends, strict=True):
    action, kind = world.steps[step, 0], world.kinds[step]
    if action == 0:
      continue
    if kind == SUPPORT:
      start, end = start - rng.integers(*SUPPORT_MARGIN), end + rng.integers(*SUPPORT_MARGIN)
    elif kind == JOINT:
      start += rng.integers(-JOINT_JITTER, JOINT_JITTER + 1)
      end = max(start + 1, end + rng.integers(-JOINT_JITTER, JOINT_JITTER + 1))
    elif rng.random() < LH_ACTIVE_PROB:
      duration = max(1, round((end - start) * rng.uniform(*LH_SHARE_RANGE)))
      start += rng.integers(end - start - duration + 1)
      end = start + duration
    else:
      continue
    start, end = max(start, 0), min(end, length)
    lh[start:end] = np.where(lh[start:end] == 0, action, lh[start:end])  # idle frames only
  return np.stack([lh, np.repeat(world.steps[sequence, 1], durations)], axis=1).astype(np.int32)


def sample_hand_streams(
  rng: np.random.Generator,
  world: TwoHandsWorld,
  labels: np.ndarray,
  *,
  noise_std: float,
  logit_noise: tuple[float, float],
  ar_coef: float,
  blend: int,
) -> dict[str, np.ndarray]:
  """{'shared': [T, Ds], 'lh': [T, C], 'rh': [T, C]} float32 for labels [T, 2].

  Each hand's state [T, R] is its cross-faded class prototypes. Shared: both states projected
  (the LH weaker) + per-video offset + AR(1) noise. A hand's logits: a per-frame Gaussian
  classifier with that hand's class prior, log prior_c - |x - p_c|^2 / (2 (1 + s^2)) (up to a
  per-frame constant), of x = the state plus AR(1) noise of std s = `logit_noise[hand]`.
  """
  length, shared_dim = len(labels), world.projections.shape[2]
  states = [
    scipy.ndimage.uniform_filter1d(
      world.prototypes[h][labels[:, h]], size=blend, axis=0, mode='nearest'
    )
    for h in range(len(formats.HANDS))
  ]
  shared = LH_SHARED_WEIGHT * states[0] @ world.projections[0] + states[1] @ world.projections[1]
  shared += OFFSET_STD * rng.standard_normal(shared_dim)
  streams = {'shared': shared + noise_std * ar1_noise(rng, length, shared_dim, ar_coef)}
  for h, hand in enumerate(formats.HANDS):
    prototypes = world.prototypes[h]
    observed = states[h] + logit_noise[h] * ar1_noise(rng, length, prototypes.shape[1], ar_coef)
    distances = (prototypes**2).sum(axis=1) - 2 * observed @ prototypes.T
    streams[hand] = world.log_priors[h] - distances / (2 * (1 + logit_noise[h] ** 2))
  return {stream: x.astype(np.float32) for stream, x in streams.items()}


def render_frames(
  rng: np.random.Generator, world: TwoHandsWorld, labels: np.ndarray, size: int
) -> np.ndarray:
  """Frames [T, size, size, 3] uint8: the left half shows the LH class, the right half the RH
  class, each as its hand's coloured grating (angle, spatial frequency, drift speed) + noise."""
  time = np.arange(len(labels), dtype=np.float32)[:, None, None]
  halves = []
  for h, width in enumerate((size // 2, size - size // 2)):
    y, x = np.mgrid[0:size, 0:width].astype(np.float32)
    style = {
      name: getattr(world, name)[h, labels[:, h]].astype(np.float32)
      for name in ('colours', 'angles', 'frequencies', 'speeds')
    }
    angle = style['angles'][:, None, None]
    phase = (
      2 * np.pi * style['frequencies'][:, None, None] * (x * np.cos(angle) + y * np.sin(angle))
      - style['speeds'][:, None, None] * time
    )
    image = style['colours'][:, None, None] * (0.6 + 0.4 * np.sin(phase))[..., None]
    halves.append(image + FRAME_NOISE[h] * rng.standard_normal(image.shape, dtype=np.float32))
  frames = np.concatenate(halves, axis=2)
  return np.clip(np.rint(255 * frames), 0, 255).astype(np.uint8)


def make_two_hands(
  root: str | os.PathLike,
  *,
  seed: int = 0,
  num_videos: int = 60,
  num_parts: int = 3,
  shared_dim: int = 64,
  rank: int = 16,
  min_len: int = 300,
  max_len: int = 800,
  noise_std: float = 2.0,
  lh_noise: float = 2.5,
  rh_noise: float = 1.6,
  ar_coef: float = 0.7,
  blend: int = 6,
  frames: bool = False,
  frame_size: int = 32,
) -> pathlib.Path:
  """Writes a synthetic two-hands dataset to `root` (the Polyphony stage-2 input layout: shared
  features and both hands' logits, splits train/val/test of split 1, `videos/<vid>.npy` frames
  [T, S, S, 3] uint8 if `frames`); deterministic from the arguments. Returns root."""
  if num_videos < 3:
    raise ValueError(f'num_videos must be >= 3 (train, val, test), got {num_videos}')
  if not 1 <= num_parts <= len(PARTS):
    raise ValueError(f'num_parts must be in [1, {len(PARTS)}], got {num_parts}')
  if not 1 <= rank <= shared_dim:
    raise ValueError(f'rank must be in [1, shared_dim={shared_dim}], got {rank}')
  if min(noise_std, lh_noise, rh_noise) < 0 or not 0.0 <= ar_coef < 1.0 or blend < 1:
    raise ValueError('need noise stds >= 0, 0 <= ar_coef < 1 and blend >= 1')
  if frames and frame_size < 2:
    raise ValueError(f'frame_size must be >= 2 pixels, got {frame_size}')
  world = make_two_hands_world(seed=seed, num_parts=num_parts, rank=rank, shared_dim=shared_dim)
  min_frames = 2 * (2 + max(len(steps) for steps, _ in world.tasks))
  if not min_frames <= min_len <= max_len:
    raise ValueError(f'need {min_frames} <= min_len <= max_len, got {min_len}, {max_len}')
  names = [f'video{i:03d}' for i in range(num_videos)]

  def videos():
    for i, name in enumerate(names):
      rng = np.random.default_rng([seed, 201, i])
      labels = sample_two_hands_labels(rng, world, int(rng.integers(min_len, max_len + 1)))
      streams = sample_hand_streams(
        rng,
        world,
        labels,
        noise_std=noise_std,
        logit_noise=(lh_noise, rh_noise),
        ar_coef=ar_coef,
        blend=blend,
      )
      yield formats.MultiStreamVideo(name, streams, labels)

  def video_frames(video: formats.MultiStreamVideo) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, 202, names.index(video.name)])
    return {'videos': render_frames(rng, world, video.labels, frame_size)}

  return formats.write_two_hands(
    root,
    world.classes,
    formats._partition(names, seed, TWO_HANDS_FRACTIONS),
    videos(),
    video_arrays=video_frames if frames else None,
  )


def two_hands_cache_name(**kwargs) -> str:
  """'two_hands-<hash>' of all arguments (defaults filled in) and TWO_HANDS_VERSION."""
  generator = functools.partial(make_two_hands, None)
  return _cache_name('two_hands', generator, TWO_HANDS_VERSION, kwargs)


def ensure_two_hands(cache_dir: str | os.PathLike, **kwargs) -> pathlib.Path:
  """Generates the two-hands dataset into `cache_dir/<two_hands_cache_name>/` on first use.

  Takes the keyword arguments of `make_two_hands`; returns that root; safe against concurrent
  callers like `ensure_single_stream`.
  """
  root = pathlib.Path(cache_dir).expanduser() / two_hands_cache_name(**kwargs)
  return _ensure(root, lambda: make_two_hands(root, **kwargs))


# ------------------------------------------------------------------------------ two streams --

TWO_STREAMS_VERSION = 1  # bump when the output for given arguments changes (invalidates caches)


@dataclasses.dataclass(frozen=True)
class TwoStreamsWorld:
  """What all two-streams videos of one seed share.

  rgb: the single-stream world (classes, grammars, durations; prototypes [C, Drgb]); flow: the
  same world with each class's motion prototype [C, Dflow] (its group's); groups [C] the motion
  group of each class (0: background alone); burst [Dflow] the unit direction of the boundary
  transient, orthogonal to the motion prototypes.
  """

  rgb: World
  flow: World
  groups: np.ndarray
  burst: np.ndarray


def motion_groups(num_classes: int, num_activities: int, num_motions: int) -> np.ndarray:
  """Motion group [C] of each class: 0 for background alone, the actions dealt in turn to groups
  1..num_motions, the confusable pairs first, so the two members of a pair never share one."""
  paired = [c for pair in confusable_pairs(num_classes, num_activities) for c in pair]
  order = paired + [c for c in range(1, num_classes) if c not in paired]
  groups = np.zeros(num_classes, np.int64)
  groups[order] = 1 + np.arange(len(order)) % num_motions
  return groups


def make_two_streams_world(
  *,
  seed: int,
  num_classes: int,
  rgb_dim: int,
  flow_dim: int,
  num_activities: int,
  rank: int,
  num_motions: int,
  flow_rank: int,
) -> TwoStreamsWorld:
  """The single-stream world for RGB, plus motion prototypes (points of norm sqrt(flow_rank) in
  a random rank-`flow_rank` subspace of R^Dflow, one per group) and the burst direction."""
  rgb = make_world(
    seed=seed, num_classes=num_classes, input_dim=rgb_dim, num_activities=num_activities, rank=rank
  )
  rng = np.random.default_rng([seed, 300])
  basis = _projection(rng, flow_rank + 1, flow_dim)  # orthonormal rows: motion subspace, burst
  motions = _random_directions(rng, num_motions + 1, flow_rank, np.sqrt(flow_rank)) @ basis[:-1]
  groups = motion_groups(num_classes, num_activities, num_motions)
  return TwoStreamsWorld(
    rgb, dataclasses.replace(rgb, prototypes=motions[groups]), groups, basis[-1]
  )


def boundary_bursts(labels: np.ndarray, burst_len: int) -> np.ndarray:
  """[T] float: 1 on the first `burst_len` frames of every segment but the first, else 0."""
  bursts = np.zeros(len(labels))
  for start in np.flatnonzero(labels[1:] != labels[:-1]) + 1:
    bursts[start : start + burst_len] = 1.0
  return bursts


def sample_two_streams(
  rng: np.random.Generator,
  world: TwoStreamsWorld,
  labels: np.ndarray,
  *,
  noise_std: float,
  flow_noise_std: float,
  ar_coef: float,
  blend: int,
  burst_len: int,
  burst_amplitude: float,
) -> dict[str, np.ndarray]:
  """{'rgb': [T, Drgb], 'flow': [T, Dflow]} float32 for labels [T]: each stream's cross-faded
  prototypes + per-video offset + AR(1) noise (`sample_features`); flow also the bursts."""
  rgb = sample_features(rng, world.rgb, labels, noise_std=noise_std, ar_coef=ar_coef, blend=blend)
  flow = sample_features(
    rng, world.flow, labels, noise_std=flow_noise_std, ar_coef=ar_coef, blend=blend
  )
  flow += burst_amplitude * boundary_bursts(labels, burst_len)[:, None] * world.burst
  return {'rgb': rgb, 'flow': flow.astype(np.float32)}


def make_two_streams(
  *,
  seed: int = 0,
  num_classes: int = 11,
  rgb_dim: int = 64,
  flow_dim: int = 32,
  num_train: int = 48,
  num_test: int = 16,
  num_val: int = 8,
  min_len: int = 600,
  max_len: int = 1500,
  num_activities: int = 3,
  rank: int = 8,
  num_motions: int = 3,
  flow_rank: int = 6,
  noise_std: float = 1.2,
  flow_noise_std: float = 1.4,
  ar_coef: float = 0.7,
  blend: int = 8,
  burst_len: int = 4,
  burst_amplitude: float = 12.0,
) -> dict[str, formats.MultiStreamDataset]:
  """{'train', 'test', 'val' (when num_val > 0)}: MultiStreamDatasets of RGB and flow features,
  deterministic from the arguments (as `make_single_stream`)."""
  _check_args(num_classes, num_activities, rgb_dim, rank, min_len, max_len, blend)
  if not 2 <= num_motions <= num_classes - 1:
    raise ValueError(f'num_motions must be in [2, {num_classes - 1}], got {num_motions}')
  if not 1 <= flow_rank < flow_dim:
    raise ValueError(f'flow_rank must be in [1, flow_dim={flow_dim}), got {flow_rank}')
  if burst_len < 1 or burst_amplitude < 0:
    raise ValueError(
      f'need burst_len >= 1 and burst_amplitude >= 0, got {burst_len}, {burst_amplitude}'
    )
  world = make_two_streams_world(
    seed=seed,
    num_classes=num_classes,
    rgb_dim=rgb_dim,
    flow_dim=flow_dim,
    num_activities=num_activities,
    rank=rank,
    num_motions=num_motions,
    flow_rank=flow_rank,
  )
  options = {
    'noise_std': noise_std,
    'flow_noise_std': flow_noise_std,
    'ar_coef': ar_coef,
    'blend': blend,
    'burst_len': burst_len,
    'burst_amplitude': burst_amplitude,
  }
  subsets = _sample_videos(
    world.rgb,
    seed=seed,
    tag=300,
    counts=subset_counts(num_train, num_test, num_val),
    min_len=min_len,
    max_len=max_len,
    video=lambda name, rng, labels: formats.MultiStreamVideo(
      name, sample_two_streams(rng, world, labels, **options), labels
    ),
  )
  return {
    subset: formats.MultiStreamDataset(world.rgb.classes, videos)
    for subset, videos in subsets.items()
  }


def two_streams(root: str | os.PathLike, **kwargs) -> pathlib.Path:
  """Writes `make_two_streams(**kwargs)` to `root` (two-streams layout, split 1); returns root."""
  return formats.write_two_streams(root, make_two_streams(**kwargs), split=1)


def two_streams_cache_name(**kwargs) -> str:
  """'two_streams-<hash>' of all arguments (defaults filled in) and TWO_STREAMS_VERSION."""
  return _cache_name('two_streams', make_two_streams, TWO_STREAMS_VERSION, kwargs)


def ensure_two_streams(cache_dir: str | os.PathLike, **kwargs) -> pathlib.Path:
  """Generates the two-streams dataset into `cache_dir/<two_streams_cache_name>/` on first use.

  Takes the keyword arguments of `make_two_streams`; returns that root; safe against concurrent
  callers like `ensure_single_stream`.
  """
  root = pathlib.Path(cache_dir).expanduser() / two_streams_cache_name(**kwargs)
  return _ensure(root, lambda: two_streams(root, **kwargs))

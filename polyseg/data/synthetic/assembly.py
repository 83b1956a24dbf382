"""Two-hands data (`make_two_hands`, `ensure_two_hands`; Polyphony stage-2 input, or stage-1 input
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
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

import numpy as np
import scipy.ndimage

from polyseg.data import formats
from polyseg.data.formats import referring as formats_referring
from polyseg.data.synthetic import activities
from polyseg.data.synthetic import base

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
  parts, steps, kinds = (
    [(activities.BACKGROUND, 'none', 'none', 'none')],
    [(0, 0)],
    [INDEPENDENT],
  )
  classes = [activities.BACKGROUND]

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
  shared = base.random_directions(rng, num_classes, rank, norm)
  own = base.random_directions(rng, num_classes, rank, norm)
  prototypes = np.stack(
    [HAND_CORRELATION * shared + np.sqrt(1.0 - HAND_CORRELATION**2) * own, shared]
  )
  static = [0, *(c for c, part in enumerate(parts) if part[0] == 'hold')]
  idle = prototypes[0, 0]
  prototypes[0, static] = idle + STATIC_SPREAD * (prototypes[0, static] - idle)
  screws = [c for c, part in enumerate(parts) if part[:2] == ('screw', 'nut')]
  for second in screws[1:]:
    prototypes[:, second] = prototypes[
      :, screws[0]
    ] + activities.PAIR_DISTANCE * rng.standard_normal((2, rank))
  projections = np.stack([base.random_projection(rng, rank, shared_dim) for _ in formats.HANDS])
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
  lengths = [(world.medians[s] * (1.0 - activities.SKIP_PROB * o)).sum() for s, o in world.tasks]
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
    sequence += [
      *activities.sample_episode(rng, *world.tasks[rng.integers(len(world.tasks))]),
      0,
    ]
  sequence = np.asarray(sequence)
  durations = world.medians[sequence] * np.exp(
    activities.DURATION_SIGMA * rng.standard_normal(len(sequence))
  )
  durations = activities.fit_durations(durations, length)
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
  shared += base.OFFSET_STD * rng.standard_normal(shared_dim)
  streams = {'shared': shared + noise_std * base.ar1_noise(rng, length, shared_dim, ar_coef)}
  for h, hand in enumerate(formats.HANDS):
    prototypes = world.prototypes[h]
    observed = states[h] + logit_noise[h] * base.ar1_noise(
      rng, length, prototypes.shape[1], ar_coef
    )
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
    formats_referring.partition(names, seed, TWO_HANDS_FRACTIONS),
    videos(),
    video_arrays=video_frames if frames else None,
  )


def two_hands_cache_name(**kwargs) -> str:
  """'two_hands-<hash>' of all arguments (defaults filled in) and TWO_HANDS_VERSION."""
  generator = functools.partial(make_two_hands, None)
  return base.cache_key('two_hands', generator, TWO_HANDS_VERSION, kwargs)


def ensure_two_hands(cache_dir: str | os.PathLike, **kwargs) -> pathlib.Path:
  """Generates the two-hands dataset into `cache_dir/<two_hands_cache_name>/` on first use.

  Takes the keyword arguments of `make_two_hands`; returns that root; safe against concurrent
  callers like `ensure_single_stream`.
  """
  return base.ensure_generated(cache_dir, two_hands_cache_name(**kwargs), make_two_hands, kwargs)

"""Referring data (`make_referring`, `referring`, `ensure_referring`; HopaDIFF):

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
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
import scipy.ndimage

from polyseg.data import formats
from polyseg.data.synthetic import base

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


def make_referring_world(
  *, seed: int, latent_dim: int, holistic_dim: int, partial_dim: int
) -> ReferringWorld:
  """Samples prototypes, oscillations, appearance vectors and the two projections."""
  rng = np.random.default_rng([seed, 100])
  index = {name: c for c, name in enumerate(REFERRING_CLASSES)}
  prototypes = base.random_directions(rng, len(REFERRING_CLASSES), latent_dim, PROTOTYPE_NORM)
  directions = base.random_directions(rng, len(REFERRING_CLASSES), latent_dim, 1.0)
  for first, second in REFERRING_PAIRS:
    offset = base.random_directions(rng, 1, latent_dim, REFERRING_PAIR_DISTANCE)[0]
    prototypes[index[second]] = prototypes[index[first]] + offset
    directions[index[second]] = directions[index[first]]
  frequencies = np.array([FREQUENCIES.get(name, 0.0) for name in REFERRING_CLASSES])
  directions[frequencies == 0] = 0.0
  appearance = {
    attribute: dict(
      zip(values, base.random_directions(rng, len(values), latent_dim, APPEARANCE_NORM))
    )
    for attribute, values in ATTRIBUTES.items()
  }
  return ReferringWorld(
    list(REFERRING_CLASSES),
    prototypes,
    directions,
    frequencies,
    appearance,
    base.random_projection(rng, latent_dim, holistic_dim),
    base.random_projection(rng, latent_dim, partial_dim),
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
  scene = base.OFFSET_STD * rng.standard_normal(holistic_dim) + noise_std * base.ar1_noise(
    rng, length, holistic_dim, ar_coef
  )

  def holistic(target: int | None) -> np.ndarray:
    mixture = np.einsum('tn,tns->ts', holistic_weights(persons, target, match_beta), states)
    return (mixture @ world.holistic_projection + scene).astype(np.float32)

  shared = None if cross_modal else holistic(None)
  samples = []
  for i, person in enumerate(persons):
    partial = person.detected[:, None] * person.state @ world.partial_projection
    partial += partial_noise_std * base.ar1_noise(rng, length, partial_dim, ar_coef)
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
  return base.cache_key('referring', make_referring, REFERRING_VERSION, kwargs)


def ensure_referring(cache_dir: str | os.PathLike, **kwargs) -> pathlib.Path:
  """Generates the referring dataset into `cache_dir/<referring_cache_name>/` on first use.

  Returns that root; safe against concurrent callers like `ensure_single_stream`.
  """
  return base.ensure_generated(cache_dir, referring_cache_name(**kwargs), referring, kwargs)

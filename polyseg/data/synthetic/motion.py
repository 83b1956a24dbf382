"""Two-streams data (`make_two_streams`, `two_streams`, `ensure_two_streams`; 2s-DAS): each stream
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
import os
import pathlib

import numpy as np

from polyseg.data import formats
from polyseg.data.synthetic import activities
from polyseg.data.synthetic import base

TWO_STREAMS_VERSION = 1  # bump when the output for given arguments changes (invalidates caches)


@dataclasses.dataclass(frozen=True)
class TwoStreamsWorld:
  """What all two-streams videos of one seed share.

  rgb: the single-stream world (classes, grammars, durations; prototypes [C, Drgb]); flow: the
  same world with each class's motion prototype [C, Dflow] (its group's); groups [C] the motion
  group of each class (0: background alone); burst [Dflow] the unit direction of the boundary
  transient, orthogonal to the motion prototypes.
  """

  rgb: activities.World
  flow: activities.World
  groups: np.ndarray
  burst: np.ndarray


def motion_groups(num_classes: int, num_activities: int, num_motions: int) -> np.ndarray:
  """Motion group [C] of each class: 0 for background alone, the actions dealt in turn to groups
  1..num_motions, the confusable pairs first, so the two members of a pair never share one."""
  paired = [c for pair in activities.confusable_pairs(num_classes, num_activities) for c in pair]
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
  rgb = activities.make_world(
    seed=seed, num_classes=num_classes, input_dim=rgb_dim, num_activities=num_activities, rank=rank
  )
  rng = np.random.default_rng([seed, 300])
  basis = base.random_projection(
    rng, flow_rank + 1, flow_dim
  )  # orthonormal rows: motion subspace, burst
  motions = base.random_directions(rng, num_motions + 1, flow_rank, np.sqrt(flow_rank)) @ basis[:-1]
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
  rgb = activities.sample_features(
    rng, world.rgb, labels, noise_std=noise_std, ar_coef=ar_coef, blend=blend
  )
  flow = activities.sample_features(
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
  activities.check_args(num_classes, num_activities, rgb_dim, rank, min_len, max_len, blend)
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
  subsets = activities.sample_videos(
    world.rgb,
    seed=seed,
    tag=300,
    counts=base.subset_counts(num_train, num_test, num_val),
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
  return base.cache_key('two_streams', make_two_streams, TWO_STREAMS_VERSION, kwargs)


def ensure_two_streams(cache_dir: str | os.PathLike, **kwargs) -> pathlib.Path:
  """Generates the two-streams dataset into `cache_dir/<two_streams_cache_name>/` on first use.

  Takes the keyword arguments of `make_two_streams`; returns that root; safe against concurrent
  callers like `ensure_single_stream`.
  """
  return base.ensure_generated(cache_dir, two_streams_cache_name(**kwargs), two_streams, kwargs)

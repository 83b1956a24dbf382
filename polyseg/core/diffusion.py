"""Gaussian diffusion over label sequences (DiffAct, docs/methods/diffact.md).

Labels live in [-s, s] (s = snr scale): x0 = (y * 2 - 1) * s for one-hot / multi-hot y. The denoiser
sees noisy labels mapped back to [0, 1] and predicts x0 as logits. Sampling is DDIM as one `lax.scan`.
Condition masks zero parts of the decoder condition during training (full / zero / boundary / segment=n).
"""

import math
import re
from collections.abc import Callable
from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]

_PLAIN_KINDS = ('full', 'zero', 'boundary')
CONDITION_TYPES = (*_PLAIN_KINDS, 'segment=n')
"""Condition-mask kinds; 'segment=n' stands for any n >= 1 ('segment=1', 'segment=2', ...)."""

_SEGMENT_KIND = re.compile(r'segment=(\d+)')

_ACTIVATIONS = {
  'softmax': lambda logits: jax.nn.softmax(logits, axis=-1),
  'sigmoid': jax.nn.sigmoid,
}


class Schedule(NamedTuple):
  """Noise schedule: betas [N] and alphas_cumprod [N] (float32)."""

  betas: jax.Array
  alphas_cumprod: jax.Array


def cosine_schedule(num_steps: int = 1000, s: float = 0.008) -> Schedule:
  """Cosine schedule (Nichol & Dhariwal), computed in float64, betas clipped to [0, 0.999]."""
  x = np.linspace(0, num_steps, num_steps + 1, dtype=np.float64)
  alpha_bar = np.cos(((x / num_steps) + s) / (1 + s) * np.pi / 2) ** 2
  alpha_bar = alpha_bar / alpha_bar[0]
  betas = np.clip(1 - alpha_bar[1:] / alpha_bar[:-1], 0, 0.999)
  alphas_cumprod = np.cumprod(1 - betas)
  return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(alphas_cumprod, jnp.float32))


def q_sample(x0: jax.Array, t: jax.Array, noise: jax.Array, schedule: Schedule) -> jax.Array:
  """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise. x0, noise [B, T, C]; t [B] int -> [B, T, C]."""
  alpha_bar = schedule.alphas_cumprod[t][:, None, None]
  return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1 - alpha_bar) * noise


def labels_to_signal(y01: jax.Array, snr_scale: float) -> jax.Array:
  """Map values in [0, 1] to [-s, s]."""
  return (y01 * 2 - 1) * snr_scale


def signal_to_unit(x: jax.Array, snr_scale: float) -> jax.Array:
  """Clip to [-s, s] and map to [0, 1]."""
  return (jnp.clip(x, -snr_scale, snr_scale) / snr_scale + 1) / 2


def standard_normal(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """`jax.random.normal(key, shape, float32)`, drawn flat and reshaped: the same values (threefry
  gives entry i the bits of counter i, whatever the shape), but for a multi-dimensional shape
  XLA:CPU compiles the counters' index arithmetic into the threefry loop's kernels: a [4, 1536, 11]
  draw took 2.5 s to compile, the flat one 0.2 s."""
  return jax.random.normal(key, (math.prod(shape),), jnp.float32).reshape(shape)


def noisy_labels(
  rng: jax.Array, labels: jax.Array, schedule: Schedule, snr_scale: float
) -> tuple[jax.Array, jax.Array]:
  """Training input of the denoiser.

  labels: [B, T, C] one-hot or multi-hot in {0, 1}. Returns (x01 [B, T, C] in [0, 1], t [B] int32),
  t ~ U{0..N-1} per video.
  """
  chex.assert_rank(labels, 3)
  t_key, noise_key = jax.random.split(rng)
  num_steps = schedule.alphas_cumprod.shape[0]
  t = jax.random.randint(t_key, labels.shape[:1], 0, num_steps, dtype=jnp.int32)
  noise = standard_normal(noise_key, labels.shape)
  x_t = q_sample(labels_to_signal(labels.astype(jnp.float32), snr_scale), t, noise, schedule)
  return signal_to_unit(x_t, snr_scale), t


def sampling_times(num_steps: int, sampling_steps: int) -> np.ndarray:
  """DDIM times [S+1] int32, e.g. [999, 959, ..., 39, -1] for 1000 / 25 (-1 = finished)."""
  return np.linspace(-1, num_steps - 1, sampling_steps + 1).astype(np.int32)[::-1].copy()


def ddim_sample(
  denoise_fn: DenoiseFn,
  rng: jax.Array,
  shape: tuple[int, int, int],
  schedule: Schedule,
  *,
  snr_scale: float,
  sampling_steps: int = 25,
  eta: float = 1.0,
  activation: str = 'softmax',
) -> jax.Array:
  """DDIM sampling as one `lax.scan` over the (time, next_time) pairs.

  denoise_fn: (x01 [B, T, C] in [0, 1], t [B] int32) -> logits [B, T, C] of x0.
  rng: x_T is drawn with split(rng, S+1)[0], the noise of step i with split(rng, S+1)[i + 1].
  activation: 'softmax' (over C) or 'sigmoid' (multi-label). Returns probabilities [B, T, C].
  """
  if activation not in _ACTIVATIONS:
    raise ValueError(f'activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}')
  act = _ACTIVATIONS[activation]
  times = sampling_times(schedule.alphas_cumprod.shape[0], sampling_steps)
  keys = jax.random.split(rng, sampling_steps + 1)
  x_init = standard_normal(keys[0], shape)

  def step(x, pair):
    time, next_time, key = pair
    logits = denoise_fn(signal_to_unit(x, snr_scale), jnp.full(shape[:1], time, jnp.int32))
    x0 = jnp.clip(labels_to_signal(act(logits), snr_scale), -snr_scale, snr_scale)
    alpha_bar = schedule.alphas_cumprod[time]
    is_last = next_time < 0
    alpha_bar_next = jnp.where(is_last, 1.0, schedule.alphas_cumprod[jnp.maximum(next_time, 0)])
    eps = (x - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(
      1 - alpha_bar
    )  # = (x/sqrt(ab) - x0)/sqrt(1/ab - 1)
    sigma = eta * jnp.sqrt(
      (1 - alpha_bar / alpha_bar_next) * (1 - alpha_bar_next) / (1 - alpha_bar)
    )
    c = jnp.sqrt(jnp.maximum(1 - alpha_bar_next - sigma**2, 0.0))
    z = standard_normal(key, shape)
    x_next = jnp.sqrt(alpha_bar_next) * x0 + c * eps + sigma * z
    return jnp.where(is_last, x0, x_next), None

  pairs = (jnp.asarray(times[:-1]), jnp.asarray(times[1:]), keys[1:])
  x0, _ = jax.lax.scan(step, x_init, pairs)
  return signal_to_unit(x0, snr_scale)


def view_keys(rng: jax.Array, num_views: int, shared: bool) -> jax.Array:
  """DDIM keys [R] of a video's R temporal views: the same key for every view (`shared`: frame i of
  every view gets the same noise, as the DiffAct reference's seeding by the video's index gives its
  views of equal length) or independent ones."""
  if shared:
    return jnp.broadcast_to(rng, (num_views, *rng.shape))
  return jax.random.split(rng, num_views)


def sample_chains(
  model,
  params,
  inputs: dict[str, jax.Array],
  mask: jax.Array,
  rng: jax.Array,
  *,
  chains: Sequence[str],
  num_classes: int,
  schedule: Schedule,
  snr_scale: float,
  sampling_steps: int,
  eta: float,
  shared_view_noise: bool,
  activation: str = 'softmax',
) -> jax.Array:
  """DDIM sampling of a model with several denoising chains (HopaDIFF's branches, Polyphony's
  hands) for every temporal view: encoder and condition projections once per view, the chains side
  by side in one `ddim_sample`, `vmap` over the views. Jit the caller: one program.

  `model` (flax) has `encode(inputs, mask, train) -> (_, {chain: condition})`,
  `project_condition({chain: condition}, train)` and
  `denoise({chain: x01 [1, T, C]}, {chain: t [1]}, projections, mask, train) -> {chain: logits}`.
  inputs {key: [R, ...]}, mask [R, T] -> probabilities [R, len(chains), T, C], 0 on padding.
  shared_view_noise: see `view_keys`.
  """

  def sample_one(view_inputs, view_mask, key):
    view_inputs = jax.tree.map(lambda x: x[None], view_inputs)
    view_mask = view_mask[None]
    _, conditions = model.apply(params, view_inputs, view_mask, train=False, method=model.encode)
    projections = model.apply(params, conditions, train=False, method=model.project_condition)

    def denoise(x01, t):  # x01 [n, T, C], t [n]: row i is chain i
      logits = model.apply(
        params,
        {c: x01[i : i + 1] for i, c in enumerate(chains)},
        {c: t[i : i + 1] for i, c in enumerate(chains)},
        projections,
        view_mask,
        train=False,
        method=model.denoise,
      )
      return jnp.concatenate([logits[c] for c in chains], axis=0)

    probs = ddim_sample(
      denoise,
      key,
      (len(chains), view_mask.shape[1], num_classes),
      schedule,
      snr_scale=snr_scale,
      sampling_steps=sampling_steps,
      eta=eta,
      activation=activation,
    )
    return probs * view_mask[0, None, :, None]

  keys = view_keys(rng, mask.shape[0], shared_view_noise)
  return jax.vmap(sample_one)(inputs, mask, keys)


def parse_condition_types(names: Sequence[str]) -> tuple[str, ...]:
  """Validate condition-mask kind names (the draw list; repeats weight a kind) -> canonical tuple."""
  if isinstance(names, str) or not names:
    raise ValueError(
      f'condition types must be a non-empty list of kinds from {CONDITION_TYPES}, got {names!r}'
    )
  kinds = []
  for name in names:
    segment = _SEGMENT_KIND.fullmatch(name) if isinstance(name, str) else None
    if name in _PLAIN_KINDS:
      kinds.append(name)
    elif segment and int(segment.group(1)) >= 1:
      kinds.append(f'segment={int(segment.group(1))}')
    else:
      raise ValueError(
        f'unknown condition type {name!r}; valid kinds: {", ".join(CONDITION_TYPES)} '
        '(n >= 1, e.g. segment=1)'
      )
  return tuple(kinds)


def _present_class_ranks(key: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
  """Rank (1, 2, ...) of each frame's class in a uniformly random order of the classes present in
  the valid frames. labels [T] int, valid [T] bool -> [T] int32 (meaningless on invalid frames)."""
  scores = jax.vmap(lambda c: jax.random.bits(jax.random.fold_in(key, c), dtype=jnp.uint32))(labels)
  scores = jnp.where(valid, scores, jnp.uint32(np.iinfo(np.uint32).max))
  order = jnp.argsort(scores)
  sorted_scores = scores[order]
  starts_class = jnp.concatenate([jnp.ones(1, bool), sorted_scores[1:] != sorted_scores[:-1]])
  return jnp.zeros_like(labels, jnp.int32).at[order].set(jnp.cumsum(starts_class, dtype=jnp.int32))


def _chosen_present_classes(
  key: jax.Array, active: jax.Array, valid: jax.Array, num_chosen: int
) -> jax.Array:
  """`num_chosen` distinct classes drawn uniformly among those active in a valid frame (all of them if
  fewer). active [T, C] bool, valid [T] bool -> chosen [C] bool."""
  present = jnp.any(active & valid[:, None], axis=0)
  scores = jnp.where(present, jax.random.uniform(key, present.shape), 2.0)
  ranks = jnp.argsort(jnp.argsort(scores))
  return present & (ranks < num_chosen)


def _dropped_frames(
  kind: str,
  class_key: jax.Array,
  labels: jax.Array,
  boundary: jax.Array,
  valid: jax.Array,
  boundary_threshold: float,
) -> jax.Array:
  """Frames [B, T] bool whose condition `kind` zeroes."""
  if kind == 'full':
    return jnp.zeros_like(valid)
  if kind == 'zero':
    return jnp.ones_like(valid)
  if kind == 'boundary':
    return valid & (boundary >= boundary_threshold)
  num_dropped = int(kind.split('=')[1])
  if labels.ndim == 3:  # multi-hot [B, T, C]: zero the frames where a chosen class is active
    chosen = jax.vmap(_chosen_present_classes, in_axes=(0, 0, 0, None))(
      jax.random.split(class_key, labels.shape[0]), labels > 0, valid, num_dropped
    )
    return valid & jnp.any((labels > 0) & chosen[:, None, :], axis=-1)
  class_ranks = jax.vmap(_present_class_ranks)(
    jax.random.split(class_key, labels.shape[0]), labels, valid
  )
  return valid & (class_ranks <= num_dropped)


def condition_mask(
  rng: jax.Array,
  labels: jax.Array,
  boundary: jax.Array,
  mask: jax.Array,
  kinds: Sequence[str],
  boundary_threshold: float,
) -> jax.Array:
  """Multiplicative condition mask [B, T, 1], one kind per video drawn uniformly from `kinds`.

  labels [B, T] int or multi-hot [B, T, C], boundary [B, T] smoothed boundary target, mask [B, T].
  'full' keeps all, 'zero' zeroes all, 'boundary' zeroes valid frames with boundary >= threshold,
  'segment=n' zeroes the valid frames of n distinct random classes present in the valid frames (all if
  fewer; multi-hot: the frames where any of the n classes is active).
  """
  kinds = parse_condition_types(kinds)
  distinct = tuple(dict.fromkeys(kinds))
  kind_key, class_key = jax.random.split(rng)
  valid = mask > 0
  dropped = jnp.stack(
    [
      _dropped_frames(kind, class_key, labels, boundary, valid, boundary_threshold)
      for kind in distinct
    ]
  )
  draw = jax.random.randint(kind_key, labels.shape[:1], 0, len(kinds))
  chosen = jnp.asarray([distinct.index(kind) for kind in kinds], jnp.int32)[draw]
  video_dropped = jnp.take_along_axis(dropped, chosen[None, :, None], axis=0)[0]
  return (~video_dropped).astype(jnp.float32)[..., None]

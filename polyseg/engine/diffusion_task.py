"""The diffusion task, written once for every label-denoising method (DiffAct, HopaDIFF, Polyphony).

A method's labels are K label chains: DiffAct has one; HopaDIFF one per branch (both denoise the
same labels); Polyphony one per hand. In training each chain's clean labels are noised at a random
diffusion time and its condition is masked (`polyseg.core.diffusion`); the model encodes the
inputs once, projects the masked conditions and denoises every chain; the method scores the
outputs. In prediction the encoder and the condition projections run once per temporal view and
the chains are sampled side by side by one DDIM program (`diffusion.sample_chains`), `vmap`ped
over the views.

A method subclasses `DiffusionTask`, passes its model and chains to `__init__`, and supplies

  model_inputs(batch) -> {key: [B, T, ...]}       what the model's `encode` reads of a batch
  targets(batch) -> {chain: Target}                what each chain denoises
  loss_terms(batch, encoder_logits, decoder_logits, task_state) -> (total, {term: value})
                                                   decoder_logits None: the encoder alone
  view_inputs(video) -> (inputs {key: [R, T, ...]}, mask [R, T])   the temporal views to sample
  predict / label_lines / timeline / new_metrics   its decoding and scoring (`polyseg.engine.task`)

The model has `encode(inputs, mask, train) -> ({chain: logits [B, T, C]}, {chain: condition
[B, T, F]})`, `project_condition({chain: condition}, train)` and `denoise({chain: x01 [B, T, C]},
{chain: t [B]}, projections, mask, train) -> {chain: logits}`, and `__call__(inputs, x01, t, mask,
train)` for `init`. A method may override `activation` ('sigmoid' for multi-label frames),
`train_decoder` (False: the encoder alone, the decoder never runs) and `loss_keys` (how a step's
key is split; each method keeps the split its published runs were made with).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from polyseg.core import diffusion
from polyseg.core import postprocess
from polyseg.data import dataset as dataset_lib
from polyseg.engine import task as task_lib

ACTIVATIONS = {'softmax': lambda x: jax.nn.softmax(x, -1), 'sigmoid': jax.nn.sigmoid}


class Target(NamedTuple):
  """What one label chain denoises in a training batch."""

  y01: jax.Array  # [B, T, C] the clean labels in [0, 1]: one-hot or multi-hot
  labels: jax.Array  # what its condition mask reads: class ids [B, T] or multi-hot [B, T, C]
  boundary: jax.Array  # [B, T] the smoothed boundary target


class Diffused(NamedTuple):
  """One chain's decoder input in training."""

  x01: jax.Array  # [B, T, C] the noisy labels in [0, 1]
  t: jax.Array  # [B] int, the diffusion time
  keep: jax.Array  # [B, T, 1] the condition mask


class LossKeys(NamedTuple):
  """The random keys of a training step: dropout of the encoder, the condition projection and the
  decoder, and per chain the diffusion draw (time and noise) and the condition mask."""

  encoder: jax.Array
  projection: jax.Array
  decoder: jax.Array
  noise: dict[str, jax.Array]
  condition: dict[str, jax.Array]


def dropout_rngs(key: jax.Array | None) -> dict[str, jax.Array]:
  return {} if key is None else {'dropout': key}


class DiffusionTask(task_lib.Task):
  """Training forward pass and sampling of K label chains; see the module docstring."""

  activation = 'softmax'
  train_decoder = True

  def __init__(self, config: ml_collections.ConfigDict, info: dataset_lib.DataInfo, model, chains):
    super().__init__(config, info)
    self.model = model
    self.chains = tuple(chains)
    self.schedule = diffusion.cosine_schedule(config.diffusion.num_steps)
    self.condition_types = diffusion.parse_condition_types(config.diffusion.condition_types)
    self._sample = jax.jit(self._sample_views)
    self._encode = jax.jit(self._encode_views)

  # -- what a method supplies -----------------------------------------------------------------

  def model_inputs(self, batch: dict) -> dict:
    raise NotImplementedError

  def targets(self, batch: dict) -> dict[str, Target]:
    raise NotImplementedError

  def loss_terms(self, batch: dict, encoder_logits: dict, decoder_logits: dict | None, task_state):
    raise NotImplementedError

  def view_inputs(self, video) -> tuple[dict, np.ndarray]:
    raise NotImplementedError

  # -- training -------------------------------------------------------------------------------

  def init(self, rng: jax.Array, batch: dict[str, np.ndarray]):
    b, t = batch['mask'].shape
    return self.model.init(
      {'params': rng, 'dropout': rng},
      self.model_inputs(batch),
      jnp.zeros((b, t, self.num_classes)),
      jnp.zeros((b,), jnp.int32),
      batch['mask'],
      train=False,
    )

  def loss_keys(self, rng: jax.Array) -> LossKeys:
    """(noise, condition, dropout) = split(rng, 3), (encoder, projection, decoder) = split(dropout,
    3); every chain draws with the same noise and condition keys (DiffAct's split)."""
    k_noise, k_condition, k_dropout = jax.random.split(rng, 3)
    k_encoder, k_projection, k_decoder = jax.random.split(k_dropout, 3)
    same = lambda key: dict.fromkeys(self.chains, key)
    return LossKeys(k_encoder, k_projection, k_decoder, same(k_noise), same(k_condition))

  def loss(self, params, batch: dict, rng: jax.Array, task_state=None):
    """The weighted loss of a batch: (total, {term: value}); jit-able."""
    keys = self.loss_keys(rng)
    diffused = self.diffuse(batch, keys) if self.train_decoder else None
    dropout = (keys.encoder, keys.projection, keys.decoder)
    return self.forward(params, batch, diffused, dropout, task_state)

  def diffuse(self, batch: dict, keys: LossKeys) -> dict[str, Diffused]:
    """Each chain's noisy labels, diffusion time and condition mask."""
    d, mask = self.config.diffusion, batch['mask']
    diffused = {}
    for chain, target in self.targets(batch).items():
      x01, t = diffusion.noisy_labels(keys.noise[chain], target.y01, self.schedule, d.snr_scale)
      keep = diffusion.condition_mask(
        keys.condition[chain],
        target.labels,
        target.boundary,
        mask,
        self.condition_types,
        d.boundary_threshold,
      )
      diffused[chain] = Diffused(x01, t, keep)
    return diffused

  def forward(self, params, batch: dict, diffused, dropout=None, task_state=None):
    """The weighted loss of given decoder inputs: (total, {term: value}).

    diffused: {chain: Diffused}, or None (the encoder terms only). dropout: the (encoder,
    projection, decoder) dropout keys, or None: no dropout (the deterministic loss)."""
    train = dropout is not None
    k_encoder, k_projection, k_decoder = dropout if train else (None,) * 3
    mask = batch['mask']
    encoder_logits, conditions = self.model.apply(
      params,
      self.model_inputs(batch),
      mask,
      train=train,
      method=self.model.encode,
      rngs=dropout_rngs(k_encoder),
    )
    decoder_logits = None
    if diffused is not None:
      projections = self.model.apply(
        params,
        {c: conditions[c] * diffused[c].keep for c in self.chains},
        train=train,
        method=self.model.project_condition,
        rngs=dropout_rngs(k_projection),
      )
      decoder_logits = self.model.apply(
        params,
        {c: diffused[c].x01 for c in self.chains},
        {c: diffused[c].t for c in self.chains},
        projections,
        mask,
        train=train,
        method=self.model.denoise,
        rngs=dropout_rngs(k_decoder),
      )
    return self.loss_terms(batch, encoder_logits, decoder_logits, task_state)

  # -- prediction -----------------------------------------------------------------------------

  def _encode_views(self, params, inputs: dict, mask: jax.Array) -> jax.Array:
    """The encoder's probabilities of every view: inputs {key: [R, T, ...]}, mask [R, T] ->
    [R, K, T, C] (K chains)."""
    logits, _ = self.model.apply(params, inputs, mask, train=False, method=self.model.encode)
    probs = jnp.stack([ACTIVATIONS[self.activation](logits[c]) for c in self.chains], axis=1)
    return probs * mask[:, None, :, None]

  def _sample_views(self, params, inputs: dict, mask: jax.Array, rng: jax.Array) -> jax.Array:
    """DDIM sampling of every chain of every view, one program: inputs {key: [R, T, ...]}, mask
    [R, T] -> probabilities [R, K, T, C]."""
    d = self.config.diffusion
    return diffusion.sample_chains(
      self.model,
      params,
      inputs,
      mask,
      rng,
      chains=self.chains,
      num_classes=self.num_classes,
      schedule=self.schedule,
      snr_scale=d.snr_scale,
      sampling_steps=d.sampling_steps,
      eta=d.eta,
      shared_view_noise=d.get('shared_view_noise', False),  # False in runs saved before it
      activation=self.activation,
    )

  def predict_probs(self, params, video, rng: jax.Array) -> dict[str, np.ndarray]:
    """{chain: probabilities [T', C]} at the sampled rate, averaged over the temporal views: the
    DDIM output, or the encoders' with `config.eval.use_decoder=False`."""
    inputs, mask = self.view_inputs(video)
    if self.config.eval.use_decoder:
      probs = self._sample(params, inputs, mask, rng)
    else:
      probs = self._encode(params, inputs, mask)
    probs, lengths = np.asarray(probs), mask.sum(1).astype(int)
    return {
      chain: postprocess.merge_views([view[k, :n] for view, n in zip(probs, lengths)])
      for k, chain in enumerate(self.chains)
    }

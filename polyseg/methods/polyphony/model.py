"""Polyphony stage-3 network (docs/methods/polyphony.md): one shared encoder, cross-hand fusion, two decoders.

Both hands' features go through the same ASFormer encoder (stacked along the batch: one pass); the
encoder's decoder conditions are exchanged between the hands by `fusion.CrossHandFusion` (separate
weights per hand, residual); each hand has its own denoising decoder.

Shapes: per-hand dicts keyed by HANDS, features [B, T, D], mask [B, T] float (1 = valid), logits
[B, T, C]; outputs are 0 on padded frames.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from polyseg.methods.polyphony import fusion as fusion_lib
from polyseg.nn import asformer

HANDS = ('lh', 'rh')


class PolyphonyModel(nn.Module):
  """Apply with `method=PolyphonyModel.encode / project_condition / denoise`; `__call__` runs all
  (for `init`). `fusion` None = no cross-hand fusion (the "w/o fusion" ablation)."""

  encoder: asformer.Encoder
  lh_decoder: asformer.Decoder
  rh_decoder: asformer.Decoder
  fusion: fusion_lib.CrossHandFusion | None = None

  def _decoders(self) -> dict[str, asformer.Decoder]:
    return {'lh': self.lh_decoder, 'rh': self.rh_decoder}

  def encode(self, inputs: dict[str, jax.Array], mask: jax.Array, train: bool):
    """{hand: features [B, T, D]} -> ({hand: encoder logits [B, T, C]}, {hand: condition [B, T, Fc]})."""
    batch = mask.shape[0]
    logits, conditions = self.encoder(
      jnp.concatenate([inputs[h] for h in HANDS], axis=0), jnp.tile(mask, (len(HANDS), 1)), train
    )
    split = lambda x: {h: x[i * batch : (i + 1) * batch] for i, h in enumerate(HANDS)}
    conditions = split(conditions)
    if self.fusion is not None:
      conditions = self.fusion(conditions, mask)
    return split(logits), conditions

  def project_condition(self, conditions: dict[str, jax.Array], train: bool):
    """{hand: condition [B, T, Fc]} -> {hand: per-decoder-layer condition terms} (once per video)."""
    return {h: self._decoders()[h].project_condition(conditions[h], train) for h in HANDS}

  def denoise(
    self, x01: dict[str, jax.Array], t: dict[str, jax.Array], projections, mask, train: bool
  ) -> dict[str, jax.Array]:
    """{hand: noisy labels in [0, 1] [B, T, C]}, {hand: t [B] int} -> {hand: x0 logits [B, T, C]}."""
    return {
      h: self._decoders()[h].denoise(x01[h], t[h], projections[h], mask, train) for h in HANDS
    }

  def __call__(self, inputs, x01: jax.Array, t: jax.Array, mask: jax.Array, train: bool):
    """-> ({hand: encoder logits}, {hand: decoder logits}); x01 and t are shared by the hands."""
    logits, conditions = self.encode(inputs, mask, train)
    projections = self.project_condition(conditions, train)
    same = lambda x: dict.fromkeys(HANDS, x)
    return logits, self.denoise(same(x01), same(t), projections, mask, train)

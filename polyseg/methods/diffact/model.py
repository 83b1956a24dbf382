"""DiffAct's model: the ASFormer-style encoder and denoising decoder (`polyseg.nn.asformer`) with
the label-chain interface of `polyseg.engine.diffusion_task`, for DiffAct's one chain, `CHAIN`."""

import flax.linen as nn
import jax

from polyseg.nn import asformer

CHAIN = 'labels'  # DiffAct's one label chain


class DiffActModel(nn.Module):
  """Encoder + decoder of DiffAct. Apply with `method=DiffActModel.encode / project_condition /
  denoise`; `__call__` runs everything and exists for `init`. inputs: {'features': [B, T, D]}."""

  encoder: asformer.Encoder
  decoder: asformer.Decoder

  def __post_init__(self):
    if self.encoder.num_classes != self.decoder.num_classes:
      raise ValueError(
        f'polyseg/methods/diffact/model.py: DiffActModel encoder.num_classes='
        f'{self.encoder.num_classes} != decoder.num_classes={self.decoder.num_classes}'
      )
    super().__post_init__()

  @property
  def num_classes(self) -> int:
    return self.encoder.num_classes

  def encode(self, inputs: dict[str, jax.Array], mask: jax.Array, train: bool):
    """{'features': [B, T, D]}, mask [B, T] -> ({CHAIN: encoder logits [B, T, C]},
    {CHAIN: condition [B, T, Fc]})."""
    logits, condition = self.encoder(inputs['features'], mask, train)
    return {CHAIN: logits}, {CHAIN: condition}

  def project_condition(self, conditions: dict[str, jax.Array], train: bool):
    """{CHAIN: condition [B, T, Fc]} -> {CHAIN: per-decoder-layer Q/K terms}, reused across
    denoising steps."""
    return {CHAIN: self.decoder.project_condition(conditions[CHAIN], train)}

  def denoise(self, x01: dict, t: dict, projections: dict, mask: jax.Array, train: bool):
    """{CHAIN: x01 [B, T, C] in [0, 1]}, {CHAIN: t [B] int} -> {CHAIN: x0 logits [B, T, C]}."""
    return {CHAIN: self.decoder.denoise(x01[CHAIN], t[CHAIN], projections[CHAIN], mask, train)}

  def __call__(self, inputs, x01: jax.Array, t: jax.Array, mask: jax.Array, train: bool):
    """-> ({CHAIN: encoder logits [B, T, C]}, {CHAIN: decoder logits [B, T, C]})."""
    logits, conditions = self.encode(inputs, mask, train)
    projections = self.project_condition(conditions, train)
    return logits, self.denoise({CHAIN: x01}, {CHAIN: t}, projections, mask, train)

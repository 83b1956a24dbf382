"""DiffAct networks (docs/methods/diffact.md): ASFormer-style encoder and the denoising decoder
(assembled into DiffAct's model by `polyseg/methods/diffact/model.py`, and into HopaDIFF's and
Polyphony's by theirs).

Shapes: features `x [B, T, D]`, `mask [B, T]` float (1 = valid frame), logits `[B, T, C]`.
All outputs are 0 on padded frames; valid frames get exactly what the unpadded video would get.
Dropout draws from the 'dropout' rng collection and is active only when `train` is True.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from polyseg.nn import layers

RAW_INPUT = -1  # feature_layer_indices entry: the encoder's raw input features (before dropout)
ENCODER_PROBS = -2  # feature_layer_indices entry: softmax of the encoder logits

CondProjection = tuple[layers.ConditionProjection, ...]  # one entry per decoder layer


# What a scan over layers keeps of a layer for the backward pass, besides its input: its convolution
# output (`scan_layers`).
SCAN_KEEPS = jax.checkpoint_policies.save_only_these_names(layers.CONV_OUTPUT)


def stack_layer(
  module: nn.Module, dilation: int = 1, max_dilation: int | None = None, **kwargs
) -> layers.ConvAttentionLayer:
  """A layer of the stack of `module` (an Encoder or a Decoder): layer i has dilation 2^i; the
  layer of `scan_layers` has max_dilation 2^(L-1) and takes its dilation as data."""
  return layers.ConvAttentionLayer(
    module.num_f_maps,
    module.kernel_size,
    dilation,
    module.dropout,
    condition_in_value=getattr(module, 'condition_in_value', False),
    outside_logit=module.outside_logit,
    dtype=module.dtype,
    max_dilation=max_dilation,
    **kwargs,
  )


def scan_layers(
  module: nn.Module,
  layer: layers.ConvAttentionLayer,
  h: jax.Array,
  mask: jax.Array,
  train: bool,
  projections: CondProjection | None = None,
  keep_outputs: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
  """h [B, T, F] through `module`'s layers `layers_0 .. layers_{L-1}` (their parameters, as the
  unrolled loop made them) as one `lax.scan` over the layers, the dilation 2^i as data: `layer`
  (unbound, with max_dilation 2^(L-1)) is compiled once however deep the stack. Dropout draws one
  key per layer from the module's 'dropout' stream. The backward pass keeps each layer's input and
  convolution output (`layers.CONV_OUTPUT`) and recomputes the rest of the layer: every activation
  kept is a stacked [L, B, T, F] array the scan writes, zero-fills first and reads back, which
  made the scanned train step 40-60% slower than the unrolled one with all of them kept
  (`docs/benchmarks.md`). Returns (the last layer's output, every layer's output [L, B, T, F] when
  `keep_outputs`, else None)."""
  params = module.variables['params']
  names = sorted((k for k in params if k.startswith('layers_')), key=lambda k: int(k[7:]))
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *[params[k] for k in names])
  rngs = jax.random.split(module.make_rng('dropout'), len(names)) if train else None
  if projections is not None:
    projections = jax.tree.map(lambda *a: jnp.stack(a), *projections)

  def body(h, inputs):
    p, dilation, rng, projection = inputs
    out = layer.apply(
      {'params': p},
      h,
      mask,
      train,
      projection,
      dilation,
      rngs=None if rng is None else {'dropout': rng},
    )
    return out, out if keep_outputs else None

  body = jax.checkpoint(body, prevent_cse=False, policy=SCAN_KEEPS)
  dilations = 2 ** jnp.arange(len(names), dtype=jnp.int32)
  return jax.lax.scan(body, h, (stacked, dilations, rngs, projections))


class Encoder(nn.Module):
  """Features [B, T, D] -> (logits [B, T, C], condition [B, T, Fc]).

  Channel and temporal input dropout, Dense D -> F, `num_layers` ConvAttentionLayers with dilation
  2^i, Dense F -> C. The condition concatenates, in this order: the raw input (if -1 is in
  feature_layer_indices), the outputs of the listed layers in layer order, softmax(logits) (if -2).
  """

  num_layers: int
  num_f_maps: int
  kernel_size: int
  num_classes: int
  dropout: float
  channel_dropout: float
  temporal_dropout: float
  feature_layer_indices: tuple[int, ...]
  outside_logit: float | None = None  # see layers.window_attention; DiffAct's reference: log(1e-6)
  dtype: layers.Dtype = jnp.float32
  scan: bool = False  # the layers as one lax.scan (`scan_layers`): compiled once, not L times

  def _check_feature_layers(self) -> None:
    bad = [i for i in self.feature_layer_indices if not ENCODER_PROBS <= i < self.num_layers]
    if bad or not self.feature_layer_indices:
      raise ValueError(
        f"polyseg/nn/asformer.py: Encoder.feature_layer_indices={self.feature_layer_indices!r} "
        f"must be a non-empty list of layer indices in [0, {self.num_layers}), -1 or -2"
      )

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    chex.assert_rank(x, 3)
    chex.assert_shape(mask, x.shape[:2])
    self._check_feature_layers()
    valid = mask[..., None]
    raw = x * valid
    h = layers.channel_dropout(self.channel_dropout)(raw, deterministic=not train)
    h = layers.temporal_dropout(self.temporal_dropout)(h, deterministic=not train)
    h = layers.Dense(self.num_f_maps, dtype=self.dtype, name="input_proj")(h) * valid
    features = [raw] if RAW_INPUT in self.feature_layer_indices else []
    if self.scan and not self.is_initializing():
      layer = stack_layer(self, max_dilation=2 ** (self.num_layers - 1), parent=None)
      h, outputs = scan_layers(self, layer, h, mask, train, keep_outputs=True)
      features += [outputs[i] for i in range(self.num_layers) if i in self.feature_layer_indices]
    else:
      for i in range(self.num_layers):
        h = stack_layer(self, 2**i, name=f"layers_{i}")(h, mask, train)
        if i in self.feature_layer_indices:
          features.append(h)
    logits = layers.Dense(self.num_classes, dtype=self.dtype, name="output")(h) * valid
    logits = logits.astype(jnp.float32)
    if ENCODER_PROBS in self.feature_layer_indices:
      features.append((jax.nn.softmax(logits, axis=-1) * valid).astype(h.dtype))
    return logits, jnp.concatenate(features, axis=-1)


class Decoder(nn.Module):
  """Denoiser: (x01 [B, T, C] noisy labels in [0, 1], t [B] int, condition [B, T, Fc]) -> x0 logits [B, T, C].

  temb = Dense(swish(Dense(sinusoidal(t)))); h = Dense(x01) + Dense(swish(temb)); then `num_layers`
  ConvAttentionLayers (dilation 2^i) whose queries and keys also see the condition; Dense F -> C.
  Use `project_condition` once and `denoise` per step; `__call__` does both.
  """

  num_layers: int
  num_f_maps: int
  kernel_size: int
  num_classes: int
  dropout: float
  time_emb_dim: int
  condition_in_value: bool = False  # see layers.ConvAttentionLayer; DiffAct: False
  outside_logit: float | None = None  # see layers.window_attention; DiffAct's reference: log(1e-6)
  dtype: layers.Dtype = jnp.float32
  scan: bool = False  # the layers as one lax.scan (`scan_layers`): compiled once, not L times

  def setup(self):
    self.time_hidden = layers.Dense(self.time_emb_dim, dtype=self.dtype)
    self.time_out = layers.Dense(self.time_emb_dim, dtype=self.dtype)
    self.input_proj = layers.Dense(self.num_f_maps, dtype=self.dtype)
    self.time_proj = layers.Dense(self.num_f_maps, dtype=self.dtype)
    self.layers = [stack_layer(self, 2**i) for i in range(self.num_layers)]
    self.output = layers.Dense(self.num_classes, dtype=self.dtype)

  def project_condition(self, cond: jax.Array, train: bool) -> CondProjection:
    """cond [B, T, Fc] -> per-layer Q/K condition terms (independent of x01 and t: compute once).

    In training the condition goes through `layers.fusion_fence` first: its gradient, a sum over
    the layers, is then computed once instead of inside its consumer's fusions (see the test of
    this in tests/nn/test_asformer.py)."""
    chex.assert_rank(cond, 3)
    cond = layers.fusion_fence(cond, train)
    return tuple(layer.project_condition(cond, train) for layer in self.layers)

  def denoise(
    self, x01: jax.Array, t: jax.Array, cond_proj: CondProjection, mask: jax.Array, train: bool
  ) -> jax.Array:
    """x01 [B, T, C], t [B] int, cond_proj from `project_condition`, mask [B, T] -> logits [B, T, C]."""
    chex.assert_shape(x01, (None, None, self.num_classes))
    chex.assert_shape(t, x01.shape[:1])
    chex.assert_shape(mask, x01.shape[:2])
    chex.assert_equal(len(cond_proj), self.num_layers)
    temb = self.time_out(
      nn.swish(self.time_hidden(layers.timestep_embedding(t, self.time_emb_dim)))
    )
    valid = mask[..., None]
    h = (self.input_proj(x01) + self.time_proj(nn.swish(temb))[:, None, :]) * valid
    if self.scan and not self.is_initializing():
      layer = stack_layer(self, max_dilation=2 ** (self.num_layers - 1), parent=None)
      h, _ = scan_layers(self, layer, h, mask, train, cond_proj)
    else:
      for layer, proj in zip(self.layers, cond_proj):
        h = layer(h, mask, train, proj)
    return (self.output(h) * valid).astype(jnp.float32)

  def __call__(
    self, x01: jax.Array, t: jax.Array, cond: jax.Array, mask: jax.Array, train: bool
  ) -> jax.Array:
    """x01 [B, T, C], t [B], cond [B, T, Fc], mask [B, T] -> logits [B, T, C]."""
    return self.denoise(x01, t, self.project_condition(cond, train), mask, train)


def _common(model) -> dict:
  """What a config's `model` section sets for every stack: its `dtype` and `scan_layers` (absent in
  runs saved before it: off)."""
  return {'dtype': layers.compute_dtype(model.dtype), 'scan': model.get('scan_layers', False)}


def make_encoder(model, num_classes: int) -> Encoder:
  """The encoder a config's `model` section describes (its `encoder` fields, `dtype`, `scan_layers`)."""
  return Encoder(num_classes=num_classes, **_common(model), **model.encoder.to_dict())


def make_decoder(model, num_classes: int) -> Decoder:
  """The decoder a config's `model` section describes (its `decoder` fields, `dtype`, `scan_layers`)."""
  return Decoder(num_classes=num_classes, **_common(model), **model.decoder.to_dict())

"""Tests for polyseg.nn.asformer (and DiffAct's model built of it): parameter counts, masks,
hoisting, dropout, memory."""

import functools
import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from polyseg.methods.diffact import model as diffact_model
from polyseg.nn import asformer
from polyseg.nn import layers

D, C = 6, 4
LENGTHS = (11, 17)
PADDED_T = 24


pytestmark = pytest.mark.usefixtures("fast_compile")


TINY = {"num_layers": 2, "num_f_maps": 8, "kernel_size": 3, "num_classes": C, "dropout": 0.5}


def tiny_encoder(**overrides) -> asformer.Encoder:
  fields = {
    "channel_dropout": 0.5,
    "temporal_dropout": 0.5,
    "feature_layer_indices": (-2, 1, -1, 0),
  }
  return asformer.Encoder(**(TINY | fields | overrides))


def tiny_decoder(**overrides) -> asformer.Decoder:
  return asformer.Decoder(**(TINY | {"time_emb_dim": 16} | overrides))


def tiny_model(**encoder_overrides) -> diffact_model.DiffActModel:
  return diffact_model.DiffActModel(
    encoder=tiny_encoder(**encoder_overrides), decoder=tiny_decoder()
  )


def padded_inputs(seed: int = 0):
  """features [2, T, D] (zero on padding), x01 [2, T, C], t [2], mask [2, T] for videos of LENGTHS."""
  rng = np.random.default_rng(seed)
  mask = (np.arange(PADDED_T)[None, :] < np.array(LENGTHS)[:, None]).astype(np.float32)
  x = rng.normal(size=(2, PADDED_T, D)).astype(np.float32) * mask[..., None]
  x01 = rng.uniform(size=(2, PADDED_T, C)).astype(np.float32) * mask[..., None]
  return jnp.asarray(x), jnp.asarray(x01), jnp.array([3, 871]), jnp.asarray(mask)


@functools.lru_cache
def tiny_params():
  """Random normal params (biases included) of tiny_model's shapes; eval_shape avoids compiling init."""
  x, x01, t, mask = padded_inputs()
  shapes = jax.eval_shape(
    functools.partial(tiny_model().init, train=False),
    jax.random.key(0),
    {"features": x},
    x01,
    t,
    mask,
  )
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), jnp.float32), shapes)


@pytest.mark.parametrize(
  "encoder_fields,decoder_fields,want",
  [
    (
      {"num_layers": 10, "num_f_maps": 64, "num_classes": 11, "feature_layer_indices": (5, 7, 9)},
      {"num_layers": 8, "num_f_maps": 24, "num_classes": 11},
      1_204_438,
    ),
    (
      {"num_layers": 12, "num_f_maps": 256, "num_classes": 48, "feature_layer_indices": (7, 8, 9)},
      {"num_layers": 8, "num_f_maps": 128, "num_classes": 48},
      11_912_800,
    ),
  ],
  ids=["gtea", "breakfast"],
)
def test_parameter_count_matches_diffact(encoder_fields, decoder_fields, want):
  model = diffact_model.DiffActModel(
    encoder=asformer.Encoder(
      kernel_size=5, dropout=0.5, channel_dropout=0.5, temporal_dropout=0.5, **encoder_fields
    ),
    decoder=asformer.Decoder(kernel_size=5, dropout=0.1, time_emb_dim=512, **decoder_fields),
  )
  num_classes, num_frames = encoder_fields["num_classes"], 16
  shapes = jax.eval_shape(
    functools.partial(model.init, train=False),
    jax.random.key(0),
    {"features": jnp.zeros((1, num_frames, 2048))},
    jnp.zeros((1, num_frames, num_classes)),
    jnp.zeros((1,), jnp.int32),
    jnp.ones((1, num_frames)),
  )
  assert layers.count_params(shapes) == want


def part_of(method) -> str:
  """'encoder' for a method of asformer.Encoder, 'decoder' for one of asformer.Decoder."""
  return "encoder" if method.__qualname__.startswith("Encoder.") else "decoder"


def part_params(method):
  """tiny_params() of the part of tiny_model that `method` belongs to."""
  return {"params": tiny_params()["params"][part_of(method)]}


@functools.lru_cache
def jitted_apply(method, train):
  part = tiny_encoder() if part_of(method) == "encoder" else tiny_decoder()
  return jax.jit(functools.partial(part.apply, method=method, train=train))


def apply(method, *args, train=False, rng=None):
  """`method` of tiny_model's encoder or decoder with tiny_params, jitted once per (method,
  train)."""
  return jitted_apply(method, train)(
    part_params(method), *args, rngs=None if rng is None else {"dropout": rng}
  )


def all_eqns(jaxpr):
  """Every equation of a jaxpr, including those of nested jaxprs (jit, custom_jvp, ...)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from all_eqns(sub)


def check_matches_each_video_alone(batch_output, single_output_fn):
  """batch_output [2, T, ...] must equal single_output_fn(b, length) on valid frames, and be 0 after."""
  for b, length in enumerate(LENGTHS):
    alone = single_output_fn(b, length)
    np.testing.assert_allclose(batch_output[b, :length], alone[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(batch_output[b, length:], 0.0)


def test_encoder_padded_batch_equals_each_video_alone():
  x, _, _, mask = padded_inputs()
  logits, cond = apply(asformer.Encoder.__call__, x, mask)
  assert logits.shape == (2, PADDED_T, C) and cond.shape == (2, PADDED_T, D + 8 + 8 + C)
  alone = [
    apply(asformer.Encoder.__call__, x[b : b + 1, :n], mask[b : b + 1, :n])
    for b, n in enumerate(LENGTHS)
  ]
  for output_index, batch_output in enumerate((logits, cond)):
    check_matches_each_video_alone(batch_output, lambda b, n, i=output_index: alone[b][i])


def test_decoder_padded_batch_equals_each_video_alone():
  x, x01, t, mask = padded_inputs()
  _, cond = apply(asformer.Encoder.__call__, x, mask)
  cond = cond + 3.0 * (1 - mask[..., None])  # the condition on padded frames must not matter
  decoder_params = {"params": tiny_params()["params"]["decoder"]}
  logits = jax.jit(functools.partial(tiny_decoder().apply, train=False))(
    decoder_params, x01, t, cond, mask
  )

  def alone(b, n):
    cond_proj = apply(asformer.Decoder.project_condition, cond[b : b + 1, :n])
    return apply(
      asformer.Decoder.denoise,
      x01[b : b + 1, :n],
      t[b : b + 1],
      cond_proj,
      mask[b : b + 1, :n],
    )

  check_matches_each_video_alone(logits, alone)


def test_decoder_denoise_with_hoisted_condition_is_exactly_call():
  x, x01, t, mask = padded_inputs(seed=1)
  _, cond = apply(asformer.Encoder.__call__, x, mask)
  decoder, decoder_params = tiny_decoder(), part_params(asformer.Decoder.denoise)
  direct = decoder.apply(decoder_params, x01, t, cond, mask, False)
  cond_proj = decoder.apply(decoder_params, cond, False, method=asformer.Decoder.project_condition)
  assert len(cond_proj) == 2 and cond_proj[0].query.shape == (2, PADDED_T, 8)
  hoisted = decoder.apply(
    decoder_params, x01, t, cond_proj, mask, False, method=asformer.Decoder.denoise
  )
  np.testing.assert_array_equal(hoisted, direct)


def test_decoder_fences_the_condition_once_before_its_layers():
  """Every decoder layer projects (a dropout of) the condition, so in the backward pass the
  condition's gradient is a sum over the layers. XLA:CPU fused that sum into whatever consumed it:
  for Polyphony's cross-hand fusion a transposing copy that read every layer's term with strided
  loads (22% of the default stage-3 train step). `project_condition` sends the condition through
  `layers.fusion_fence` first, once, so the sum is computed once, in the fence's own layout."""
  x, _, _, mask = padded_inputs()
  _, cond = apply(asformer.Encoder.__call__, x, mask)
  decoder, decoder_params = tiny_decoder(), part_params(asformer.Decoder.denoise)
  jaxpr = jax.make_jaxpr(
    lambda c: decoder.apply(
      decoder_params,
      c,
      True,
      method=asformer.Decoder.project_condition,
      rngs={"dropout": jax.random.key(0)},
    )
  )(cond)
  contractions = [e for e in all_eqns(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
  fences = [e for e in contractions if is_fusion_fence(e)]
  assert len(fences) == 1 and fences[0].invars[0].aval.size == cond.size
  assert len(contractions) > len(fences)  # the layers' projections


def test_fences_are_in_training_programs_only():
  """Training fences each layer's output (and the decoder its condition, once); evaluation, with no
  backward pass to protect, has no fence matmul at all."""
  x, x01, t, mask = padded_inputs()
  # a time embedding wider than the fence's block, so that its Dense layers are not counted
  model = diffact_model.DiffActModel(tiny_encoder(), tiny_decoder(time_emb_dim=32))
  init = functools.partial(model.init, train=False)
  params = jax.eval_shape(init, jax.random.key(0), {"features": x}, x01, t, mask)

  def fences(train: bool) -> int:
    rngs = {"dropout": jax.random.key(0)}
    run = lambda p: model.apply(p, {"features": x}, x01, t, mask, train, rngs=rngs)
    jaxpr = jax.make_jaxpr(run)(params).jaxpr
    return sum(e.primitive.name == "dot_general" and is_fusion_fence(e) for e in all_eqns(jaxpr))

  num_layers = TINY["num_layers"]
  assert fences(True) == 2 * num_layers + 1  # encoder and decoder layers, the condition once
  assert fences(False) == 0


def test_hoisted_condition_inside_a_jitted_scan():
  """The DDIM pattern: project once, then scan denoise over steps with the projection closed over."""
  x, x01, _, mask = padded_inputs()
  model, params = tiny_model(), tiny_params()
  chain = diffact_model.CHAIN

  @jax.jit
  def sample(params, x, x01, mask):
    _, cond = model.apply(params, {"features": x}, mask, False, method=model.encode)
    cond_proj = model.apply(params, cond, False, method=model.project_condition)

    def step(x01, t):
      logits = model.apply(
        params,
        {chain: x01},
        {chain: jnp.full((2,), t)},
        cond_proj,
        mask,
        False,
        method=model.denoise,
      )[chain]
      return jax.nn.softmax(logits) * mask[..., None], None

    return jax.lax.scan(step, x01, jnp.array([999, 500, 0]))[0]

  out = sample(params, x, x01, mask)
  want = x01
  for t in (999, 500, 0):
    logits = model.apply(params, {"features": x}, want, jnp.full((2,), t), mask, False)[1][chain]
    want = jax.nn.softmax(logits) * mask[..., None]
  np.testing.assert_allclose(out, want, atol=1e-5)


def test_encode_vmaps_over_temporal_views():
  x, _, _, mask = padded_inputs()
  encode = functools.partial(tiny_encoder().apply, train=False)
  per_view = jax.jit(jax.vmap(encode, in_axes=(None, 0, 0)))(
    part_params(asformer.Encoder.__call__), x[:, None], mask[:, None]
  )
  batched = apply(asformer.Encoder.__call__, x, mask)
  for got, want in zip(per_view, batched):
    np.testing.assert_allclose(got[:, 0], want, atol=1e-5)


def test_condition_is_raw_input_then_layer_outputs_then_softmax():
  x, _, _, mask = padded_inputs()
  (logits, cond), state = tiny_encoder().apply(
    part_params(asformer.Encoder.__call__),
    x,
    mask,
    True,
    rngs={"dropout": jax.random.key(3)},
    capture_intermediates=True,
  )
  layer_outputs = state["intermediates"]
  want = jnp.concatenate(
    [
      x,
      layer_outputs["layers_0"]["__call__"][0],
      layer_outputs["layers_1"]["__call__"][0],
      jax.nn.softmax(logits) * mask[..., None],
    ],
    axis=-1,
  )
  np.testing.assert_array_equal(cond, want)  # raw input taken before the input dropout


def test_encoder_dropout_is_random_in_training_and_off_at_eval():
  x, _, _, mask = padded_inputs()
  train_a = apply(asformer.Encoder.__call__, x, mask, train=True, rng=jax.random.key(1))[0]
  train_b = apply(asformer.Encoder.__call__, x, mask, train=True, rng=jax.random.key(2))[0]
  eval_a = apply(asformer.Encoder.__call__, x, mask)[0]
  eval_b = apply(asformer.Encoder.__call__, x, mask)[0]
  assert not np.allclose(train_a, train_b)
  np.testing.assert_array_equal(eval_a, eval_b)
  np.testing.assert_array_equal(train_a * (1 - mask[..., None]), 0.0)


def test_every_parameter_gets_a_gradient():
  x, x01, t, mask = padded_inputs()
  model = tiny_model()

  def loss(params):
    encoder_logits, decoder_logits = model.apply(
      params, {"features": x}, x01, t, mask, True, rngs={"dropout": jax.random.key(4)}
    )
    chain = diffact_model.CHAIN
    return jnp.sum(encoder_logits[chain] ** 2) + jnp.sum(decoder_logits[chain] ** 2)

  grads = jax.jit(jax.grad(loss))(tiny_params())
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(grad)) and np.any(grad != 0), jax.tree_util.keystr(path)


def is_fusion_fence(eqn) -> bool:
  """`layers.fusion_fence`'s exact identity matmul ([N, w] @ eye(w)), which keeps its input's dtype."""
  lhs, rhs = (v.aval.shape for v in eqn.invars)
  return len(lhs) == 2 and rhs[0] == rhs[-1] <= layers.FENCE_BLOCK


def test_bfloat16_compute_is_close_to_float32():
  x, _, _, mask = padded_inputs()
  params = {"params": tiny_params()["params"]["encoder"]}
  logits32, _ = tiny_encoder().apply(params, x, mask, False)
  encoder16 = tiny_encoder(dtype=jnp.bfloat16)
  logits16, _ = encoder16.apply(params, x, mask, False)
  jaxpr = jax.make_jaxpr(functools.partial(encoder16.apply, train=False))(params, x, mask)
  contractions = [
    e
    for e in all_eqns(jaxpr.jaxpr)
    if e.primitive.name in ("dot_general", "conv_general_dilated") and not is_fusion_fence(e)
  ]
  assert contractions and all(v.aval.dtype == jnp.bfloat16 for e in contractions for v in e.invars)
  np.testing.assert_allclose(logits16, logits32, atol=0.1 * float(jnp.abs(logits32).max()))


def test_memory_is_linear_in_t():
  num_frames = 97  # no other dimension equals it
  x = jnp.ones((2, num_frames, D))
  x01, t, mask = jnp.ones((2, num_frames, C)), jnp.zeros((2,), jnp.int32), jnp.ones((2, num_frames))
  jaxpr = jax.make_jaxpr(functools.partial(tiny_model().apply, train=False))(
    tiny_params(), {"features": x}, x01, t, mask
  )
  all_shapes = [v.aval.shape for eqn in all_eqns(jaxpr.jaxpr) for v in eqn.outvars]
  assert all(s.count(num_frames) <= 1 for s in all_shapes)
  assert max(math.prod(s) for s in all_shapes) <= 2 * num_frames * 32


def test_invalid_configurations_raise():
  x, _, _, mask = padded_inputs()
  with pytest.raises(ValueError, match="feature_layer_indices"):
    tiny_encoder(feature_layer_indices=(2,)).init(jax.random.key(0), x, mask, False)
  with pytest.raises(ValueError, match="num_classes"):
    diffact_model.DiffActModel(encoder=tiny_encoder(), decoder=tiny_decoder(num_classes=C + 1))


# -- the layers as one scan -------------------------------------------------------------------


@pytest.mark.parametrize("outside_logit", [None, math.log(1e-6)])
def test_scanned_layers_compute_what_the_unrolled_stack_computes(outside_logit):
  """scan=True runs the same parameters (one tree for both) through one lax.scan with the dilation
  as data: encoder logits and condition, decoder x0 and every gradient as the unrolled stack's,
  on a padded batch whose dilations (up to 64) reach past both ends of the videos, the largest
  more than twice the padded length (24 frames)."""
  x, x01, t, mask = padded_inputs()
  common = {"num_layers": 7, "outside_logit": outside_logit}
  encoder = tiny_encoder(**common)
  params = encoder.init(jax.random.PRNGKey(1), x, mask, False)
  scanned = encoder.clone(scan=True)
  assert jax.tree.structure(scanned.init(jax.random.PRNGKey(1), x, mask, False)) == (
    jax.tree.structure(params)
  )
  for got, want in zip(
    scanned.apply(params, x, mask, False), encoder.apply(params, x, mask, False)
  ):
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert not np.any(np.asarray(got)[0, LENGTHS[0] :])  # padding stays zero
  loss = lambda e: lambda p: sum(jnp.sum(jnp.sin(o)) for o in e.apply(p, x, mask, False))
  for got, want in zip(
    jax.tree.leaves(jax.grad(loss(scanned))(params)),
    jax.tree.leaves(jax.grad(loss(encoder))(params)),
  ):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

  cond = encoder.apply(params, x, mask, False)[1]
  for values in (False, True):
    decoder = tiny_decoder(condition_in_value=values, **common)
    dec_params = decoder.init(jax.random.PRNGKey(2), x01, t, cond, mask, False)
    np.testing.assert_allclose(
      decoder.clone(scan=True).apply(dec_params, x01, t, cond, mask, False),
      decoder.apply(dec_params, x01, t, cond, mask, False),
      atol=2e-5,
    )


def test_scanned_layers_draw_dropout_per_layer_and_step():
  x, _, _, mask = padded_inputs()
  encoder = tiny_encoder(num_layers=3, scan=True)
  params = encoder.init(jax.random.PRNGKey(1), x, mask, False)
  run = lambda seed: encoder.apply(
    params, x, mask, True, rngs={"dropout": jax.random.PRNGKey(seed)}
  )
  first, again, other = run(0), run(0), run(1)
  np.testing.assert_array_equal(first[0], again[0])
  assert not np.allclose(first[0], other[0])
  assert not np.allclose(first[0], encoder.apply(params, x, mask, False)[0])


def test_scanned_backward_keeps_each_layers_input_and_convolution_only(monkeypatch):
  """In training, the scan keeps three [L, B, T, F] arrays for the backward pass (each layer's input
  and convolution output, and the outputs the encoder keeps for its condition) and recomputes the
  rest of each layer with the same dropout masks: the gradients are those of the scan that keeps
  every activation (autodiff's default: eighteen such arrays here)."""
  x, _, _, mask = padded_inputs()
  encoder = tiny_encoder(num_layers=5, scan=True)
  params = encoder.init(jax.random.PRNGKey(1), x, mask, False)
  stacked = (5, *mask.shape, TINY["num_f_maps"])

  def loss(p):
    outputs = encoder.apply(p, x, mask, True, rngs={"dropout": jax.random.PRNGKey(3)})
    return sum(jnp.sum(jnp.sin(o)) for o in outputs)

  def kept_and_gradients():
    jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
    kept = [
      sum(v.aval.shape == stacked for v in eqn.outvars)
      for eqn in all_eqns(jaxpr)
      if eqn.primitive.name == "scan"
    ]
    return max(kept), jax.grad(loss)(params)

  kept, grads = kept_and_gradients()
  monkeypatch.setattr(asformer, "SCAN_KEEPS", jax.checkpoint_policies.everything_saveable)
  kept_all, want = kept_and_gradients()
  assert (kept, kept_all) == (3, 18)
  for got, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_scanned_stack_is_one_program_whatever_its_depth():
  """The lowered program of a scanned encoder has as many matmuls at 3 as at 12 layers (one layer
  body in a loop); the unrolled one has them once per layer."""
  x, _, _, mask = padded_inputs()

  def matmuls(**fields):
    encoder = tiny_encoder(feature_layer_indices=(0,), **fields)
    params = jax.eval_shape(lambda rng: encoder.init(rng, x, mask, False), jax.random.PRNGKey(0))
    text = jax.jit(lambda p: encoder.apply(p, x, mask, False)).lower(params).as_text()
    return text.count("stablehlo.dot_general")

  assert matmuls(num_layers=3, scan=True) == matmuls(num_layers=12, scan=True)
  assert matmuls(num_layers=12) - matmuls(num_layers=3) >= 9 * 5  # Q, K, V and the FFN's two

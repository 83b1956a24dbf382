"""Random draws fused into few threefry calls: the same values from a far smaller program.

On CPU, XLA compiles every threefry2x32 call as a loop of its own, and a model's initialisation
makes one or more per parameter (the keys folded down the module path, then the draw): HopaDIFF's
default model has 464, and its `jit(init)` took almost as long to compile as its train step.
`fuse_random_draws(fn)` traces `fn`, writes every threefry-keyed `random_bits` / `random_split` /
`random_fold_in` as the threefry2x32 calls it is made of, and then evaluates the program level by
level: all the threefry calls whose inputs are ready run as one call on their concatenated inputs.
threefry2x32 is elementwise, so every value is the same, bit for bit, as `fn`'s; the number of calls
falls to the depth of the key derivations (a few).

Draws inside loops (`lax.scan`, `while`, ...) and other key implementations are left as they are.
Only the initialisation is fused (`train.init_state`): in a train step the fused draws compiled a
little faster but ran slower (docs/benchmarks.md).
"""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex
import jax.extend.random as jrandom
import jax.numpy as jnp
import numpy as np

_THREEFRY = jrandom.threefry_prng_impl
# threefry2x32 is integer arithmetic: the same bits however its calls are batched. (Batching the
# erf_inv of normal draws too would shorten the program further, but floating point compiled for
# another shape may round differently: it is left per draw.)
_THREEFRY_CALL = jrandom.threefry2x32_p


def fuse_random_draws(fn: Callable) -> Callable:
  """`fn` with its threefry draws fused (module docstring); call it inside `jax.jit`."""

  def fused(*args):
    # `fn` itself is traced, so that jax's trace cache serves this trace and any other of the same
    # `fn` on the same shapes (train.init_state's and train.abstract_state's: traced once).
    traced, out_shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
    if traced.effects:  # keep the order of side effects: no reordering
      return fn(*args)
    flat_args = jax.tree.leaves(args)
    expanded = jax.make_jaxpr(lambda *flat: _expand(traced.jaxpr, traced.consts, flat))(*flat_args)
    return jax.tree.unflatten(jax.tree.structure(out_shapes), _run_in_levels(expanded, flat_args))

  return fused


def _read(env: dict, var) -> Any:
  return var.val if isinstance(var, jex.Literal) else env[var]


def _bind(eqn, invals: list) -> list:
  with eqn.ctx.manager:
    out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
  return out if eqn.primitive.multiple_results else [out]


def _is_threefry_key(x) -> bool:
  return (
    jnp.issubdtype(x.dtype, jax.dtypes.prng_key) and str(jax.random.key_impl(x)) == 'threefry2x32'
  )


def _over_keys(impl_fn, keys, *per_key, out_key: bool):
  """impl_fn(key data [2], *args) vmapped over the key array's shape (`per_key` broadcast to it)."""
  shape = jnp.broadcast_shapes(keys.shape, *(np.shape(a) for a in per_key))
  data = jax.random.key_data(jnp.broadcast_to(keys, shape)).reshape(-1, 2)
  flat = [jnp.broadcast_to(a, shape).reshape(-1) for a in per_key]
  with jax.disable_jit():  # the implementation's own jitted helpers inlined: threefry2x32 calls
    if shape:
      out = jax.vmap(impl_fn)(data, *flat)
    else:  # one key (most draws): no vmap to trace
      out = impl_fn(data[0], *(a[0] for a in flat))[None]
  out = out.reshape(*shape, *out.shape[1:])
  return jax.random.wrap_key_data(out, impl='threefry2x32') if out_key else out


# Threefry's key operations as the implementation computes them: key array (and per-key data) ->
# the drawn bits or the new keys. Newer jax adds parameters to these primitives (`out_sharding`;
# `num_streams` on random_bits, whose result is then a list: jax 0.12.1); a draw is expanded only
# when they hold their defaults (`_DEFAULT_PARAMS`), else it is left as it is.
_KEY_OPERATIONS = {
  'random_bits': lambda keys, bit_width, shape: _over_keys(
    lambda key: _THREEFRY.random_bits(key, bit_width, shape), keys, out_key=False
  ),
  'random_split': lambda keys, shape: _over_keys(
    lambda key: _THREEFRY.split(key, shape), keys, out_key=True
  ),
  'random_fold_in': lambda keys, msgs: _over_keys(_THREEFRY.fold_in, keys, msgs, out_key=True),
}
_DEFAULT_PARAMS = {'out_sharding': None, 'num_streams': 1}


def _key_operation(eqn, invals: list) -> list | None:
  """The outputs of `eqn` computed as threefry2x32 calls, or None when it is not a threefry key
  operation with its newer parameters at their defaults."""
  name = eqn.primitive.name
  if name not in _KEY_OPERATIONS or not _is_threefry_key(invals[0]):
    return None
  if any(eqn.params.get(k, default) != default for k, default in _DEFAULT_PARAMS.items()):
    return None
  params = {k: v for k, v in eqn.params.items() if k not in _DEFAULT_PARAMS}
  return [_KEY_OPERATIONS[name](*invals, **params)]


def _expand(jaxpr, consts, args) -> list:
  """Evaluates `jaxpr`'s live equations (no effects) with call primitives inlined and threefry key
  operations written as the threefry2x32 calls of their implementation."""
  env = dict(zip(jaxpr.constvars, consts)) | dict(zip(jaxpr.invars, args))
  for eqn in _live_eqns(jaxpr):
    invals = [_read(env, v) for v in eqn.invars]
    if eqn.primitive.name == 'jit':  # a jitted function (jax.random's are): its body inlined
      body = eqn.params['jaxpr']
      outs = _expand(body.jaxpr, body.consts, invals)
    else:
      outs = _key_operation(eqn, invals)
      if outs is None:
        outs = _bind(eqn, invals)
    env.update(zip(eqn.outvars, outs))
  return [_read(env, v) for v in jaxpr.outvars]


def _live_eqns(jaxpr) -> list:
  """The equations the outputs depend on, in order (the forward pass of a model's init, whose output
  is dropped, is not evaluated again)."""
  live = {v for v in jaxpr.outvars if isinstance(v, jex.Var)}
  kept = []
  for eqn in reversed(jaxpr.eqns):
    if any(v in live for v in eqn.outvars):
      kept.append(eqn)
      live.update(v for v in eqn.invars if isinstance(v, jex.Var))
  return kept[::-1]


def _run_in_levels(closed, args) -> list:
  """Evaluates `closed` (no effects) running every threefry2x32 call whose inputs are ready together
  with the others that are: one call on their concatenated (broadcast, flattened) inputs."""
  jaxpr = closed.jaxpr
  env = dict(zip(jaxpr.constvars, closed.consts)) | dict(zip(jaxpr.invars, args))

  def ready(eqn) -> bool:
    return all(isinstance(v, jex.Literal) or v in env for v in eqn.invars)

  pending = _live_eqns(jaxpr)
  while pending:
    waiting = []
    for eqn in pending:
      if eqn.primitive is not _THREEFRY_CALL and ready(eqn):
        env.update(zip(eqn.outvars, _bind(eqn, [_read(env, v) for v in eqn.invars])))
      else:
        waiting.append(eqn)
    level = [eqn for eqn in waiting if ready(eqn)]  # threefry calls only
    if waiting and not level:
      raise AssertionError('fuse_random_draws: no equation can run (not a DAG?)')
    _threefry_together(level, env)
    done = {id(eqn) for eqn in level}
    pending = [eqn for eqn in waiting if id(eqn) not in done]
  return [_read(env, v) for v in jaxpr.outvars]


def _threefry_together(eqns: list, env: dict) -> None:
  """One threefry2x32 call for `eqns` (each: key1, key2, x1, x2 -> y1, y2, elementwise with
  broadcasting) on their inputs concatenated; the outputs split back into each equation's."""
  if len(eqns) <= 1:
    for eqn in eqns:
      env.update(zip(eqn.outvars, _bind(eqn, [_read(env, v) for v in eqn.invars])))
    return
  shapes = [eqn.outvars[0].aval.shape for eqn in eqns]
  columns = [
    jnp.concatenate(
      [jnp.broadcast_to(_read(env, eqn.invars[i]), s).reshape(-1) for eqn, s in zip(eqns, shapes)]
    )
    for i in range(4)
  ]
  outs = _THREEFRY_CALL.bind(*columns)
  offsets = np.cumsum([0] + [math.prod(s) for s in shapes])
  for eqn, s, start, stop in zip(eqns, shapes, offsets[:-1], offsets[1:]):
    env.update(zip(eqn.outvars, (out[start:stop].reshape(s) for out in outs)))

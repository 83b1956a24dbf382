"""fused_random.fuse_random_draws: the same values, bit for bit, from a few threefry calls."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyseg.engine import fused_random


class _Net(nn.Module):
  """Flax's own initialisers: lecun_normal kernels, zero biases, LayerNorm, a truncated-normal
  embedding, a normal parameter; `depth` Dense layers of one shape."""

  depth: int

  @nn.compact
  def __call__(self, x):  # [B, T, 4] -> [B, T, 8]
    x = nn.Dense(8)(x)
    for _ in range(self.depth):
      x = nn.LayerNorm()(nn.Dense(8)(x))
    x = nn.Conv(8, (3,))(x)
    embed = nn.Embed(5, 8, embedding_init=nn.initializers.truncated_normal(0.02))
    x = x + embed(jnp.zeros(x.shape[:-1], jnp.int32))
    return x * self.param('scale', nn.initializers.normal(1.0), (8,))


def _draws(depth: int):
  def draws(key):
    params = _Net(depth).init(key, jnp.ones((2, 6, 4)))
    keys = jax.random.split(key, (2, 3))  # a split with a shape, then fold-ins batched over keys
    folded = jax.vmap(jax.vmap(jax.random.fold_in))(keys, jnp.arange(6).reshape(2, 3))
    # a key derived from drawn bits: one threefry level waits for another
    chained = jax.random.fold_in(key, jax.random.bits(folded[1, 2], (), jnp.uint32))
    return {
      'params': params,
      'uniform': jax.random.uniform(folded[0, 1], (7,)),
      'normal': jax.random.normal(chained, (3, 2)),
      'keys': jax.random.key_data(folded),
      'raw_key': jax.random.normal(jax.random.PRNGKey(3), (4,)),  # a uint32 key wrapped inside
    }

  return draws


def _assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _loops(fn, *args) -> int:
  """The while loops of the compiled program (on CPU each threefry call compiles to one)."""
  return jax.jit(fn).lower(*args).compile().as_text().count(' while(')


@pytest.mark.parametrize('key', [jax.random.key(0), jax.random.PRNGKey(1)], ids=['typed', 'raw'])
def test_same_values_bit_for_bit_from_a_few_calls(key):
  plain = _draws(depth=6)
  fused = fused_random.fuse_random_draws(plain)
  _assert_bitwise_equal(jax.jit(fused)(key), jax.jit(plain)(key))
  # 15 parameter draws, 2 of them normal, plus the other draws: one loop each without fusion; with it
  # one per level of key derivation (flax folds each module's name in, then draws), and as many for
  # 6 Dense layers as for 1.
  assert _loops(plain, key) > 20
  assert _loops(fused, key) == _loops(fused_random.fuse_random_draws(_draws(depth=1)), key) <= 8


def test_draws_inside_a_scan_and_other_key_kinds_are_left_as_they_are():
  def draws(key):
    def body(carry, i):
      return carry, jax.random.normal(jax.random.fold_in(carry, i), (3,))

    _, scanned = jax.lax.scan(body, key, jnp.arange(4))
    rbg = jax.random.key(5, impl='rbg')
    return scanned, jax.random.uniform(rbg, (5,)), jax.random.normal(key, (2,))

  key = jax.random.key(2)
  _assert_bitwise_equal(jax.jit(fused_random.fuse_random_draws(draws))(key), jax.jit(draws)(key))


def test_a_function_with_side_effects_runs_as_written(capfd):
  def draws(key):
    value = jax.random.normal(key, (3,))
    jax.debug.print('drawn {} values', value.size)
    return value, jax.random.uniform(jax.random.fold_in(key, 1), (2,))

  key = jax.random.key(4)
  _assert_bitwise_equal(jax.jit(fused_random.fuse_random_draws(draws))(key), jax.jit(draws)(key))
  jax.effects_barrier()
  assert capfd.readouterr().out.count('drawn 3 values') == 2


def _random_bits_eqn(jaxpr):
  """The first random_bits equation of `jaxpr`, looking inside jitted calls."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'random_bits':
      return eqn
    if eqn.primitive.name == 'jit':
      found = _random_bits_eqn(eqn.params['jaxpr'].jaxpr)
      if found is not None:
        return found
  return None


def test_key_operations_with_newer_parameters_set_are_left_as_they_are():
  """jax 0.12.1 added `num_streams` to random_bits (and `out_sharding` to the key operations): a draw
  is written as threefry calls only with them at their defaults (absent on older jax), else bound as
  it is. At the defaults the expansion gives the primitive's own bits."""
  key = jax.random.key(3)
  eqn = _random_bits_eqn(jax.make_jaxpr(lambda k: jax.random.bits(k, (5,)))(key).jaxpr)
  expanded = fused_random._key_operation(eqn, [key])
  np.testing.assert_array_equal(expanded[0], fused_random._bind(eqn, [key])[0])
  for param, value in (('num_streams', 2), ('out_sharding', 'a sharding')):
    assert (
      fused_random._key_operation(eqn.replace(params={**eqn.params, param: value}), [key]) is None
    )

"""The train step's rng: fold_in(base_rng, step), a new one every step, the same after a resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polyseg.configlib import load_config
from polyseg.engine import task as task_lib
from polyseg.engine import train


class RngTask(task_lib.Trainable):
  """The least a task needs for `init_state` and `make_train_step`: one parameter, a loss that
  trains it, and, as metrics, what the step's rng is (its key data) and a number drawn from it."""

  def example_batch(self):
    return {'x': np.ones((1, 3), np.float32)}

  def init(self, rng, batch):
    del rng
    return {'w': jnp.ones_like(batch['x'])}

  def loss(self, params, batch, rng):
    loss = jnp.sum((params['w'] * batch['x']) ** 2)
    return loss, {'key': jax.random.key_data(rng), 'uniform': jax.random.uniform(rng)}


def _run(base_rng, num_steps, first_step=0):
  task = RngTask()
  config = load_config('diffact', 'runlocal=True')
  tx = train.make_optimizer(config)
  state = train.init_state(task, tx, jax.random.PRNGKey(0))
  state['step'] = jnp.asarray(first_step, jnp.int32)
  step = train.make_train_step(task, tx, base_rng)
  batch = task.example_batch()
  keys, draws = [], []
  for _ in range(num_steps):
    state, metrics = step(state, batch)
    keys.append(np.asarray(metrics['key']))
    draws.append(float(metrics['uniform']))
  assert int(state['step']) == first_step + num_steps
  return keys, draws


@pytest.mark.parametrize('make_key', [jax.random.PRNGKey, jax.random.key], ids=['raw', 'typed'])
def test_each_step_draws_from_fold_in_of_the_base_rng_and_its_step(make_key):
  base = make_key(42)
  keys, draws = _run(base, 3)
  for step, (key, draw) in enumerate(zip(keys, draws)):
    expected = jax.random.fold_in(base, step)
    np.testing.assert_array_equal(key, jax.random.key_data(expected))
    assert draw == float(jax.random.uniform(expected))
  assert len({tuple(k) for k in keys}) == 3 and len(set(draws)) == 3
  assert not any(np.array_equal(k, jax.random.key_data(base)) for k in keys)  # never the base


def test_a_resumed_run_draws_what_the_straight_run_drew():
  base = jax.random.PRNGKey(3)
  straight_keys, straight_draws = _run(base, 5)
  resumed_keys, resumed_draws = _run(base, 2, first_step=3)  # a state restored at step 3
  np.testing.assert_array_equal(resumed_keys, straight_keys[3:])
  assert resumed_draws == straight_draws[3:]
  other_keys, _ = _run(jax.random.PRNGKey(4), 1)  # another seed, other numbers
  assert not np.array_equal(other_keys[0], straight_keys[0])

r"""Runs the engine's train step under a mesh in a process of its own (tests/engine/test_parallel.py).

python tests/engine/parallel_driver.py sharded TASK CACHE OUT FSDP [FSDP ...]
    one process with XLA_FLAGS=--xla_force_host_platform_device_count=4: the same global batch
    through the single-device step and the step sharded over a (4 / FSDP, FSDP) mesh for each
    FSDP size, then a checkpoint of the sharded state restored; writes the loss and params of
    each, and whether the restored state equals it, to OUT.npz.
python tests/engine/parallel_driver.py multiprocess TASK CACHE OUT
    one of several processes (JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set):
    trains STEPS steps together through the engine's loader and step; writes this process's copy
    of the params and the global batches it saw to OUT.<process id>.npz.
"""

import os
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax
import numpy as np
import optax

from polyseg import methods
from polyseg.configlib import load_config
from polyseg.engine import checkpoint as checkpoint_lib
from polyseg.engine import parallel
from polyseg.engine import train

STEPS = 3


def optimizer():
  """Plain SGD: the update is linear in the gradient, so params compare to 1e-5 after a step.
  (Adam's first step is lr * g / (|g| + eps): a parameter whose gradient is 0 up to float rounding,
  e.g. a bias before an instance norm, moves by +-lr depending on the rounding.)"""
  return optax.sgd(0.5)


def tiny_config(task: str, cache: str):
  config = load_config(task, 'runlocal=True')
  config.data.cache_dir = cache
  config.train.batch_size = 4
  return config


def flat(tree) -> np.ndarray:
  """Concatenated float64 copy of every leaf (this process's copy of replicated arrays)."""
  return np.concatenate(
    [np.asarray(jax.device_get(x), np.float64).ravel() for x in jax.tree.leaves(tree)]
  )


def sharded(task_name: str, cache: str, out: str, fsdp_sizes: list[int]) -> None:
  config = tiny_config(task_name, cache)
  config.parallel.fsdp_min_size = 0  # shard every divisible parameter, however small
  _, data, task = train.setup(
    methods.get(config.task), config, os.path.join(os.path.dirname(out), 'work')
  )
  tx = optimizer()
  batch = task.train_loader(data.train).batch(0)
  rng, step_rng = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
  initial = train.init_state(task, tx, rng)
  host_initial = jax.tree.map(np.array, initial)  # a copy: the step donates its state
  single_state, single_metrics = train.make_train_step(task, tx, step_rng)(initial, batch)
  results = {'single_loss': single_metrics['loss'], 'single_params': flat(single_state['params'])}
  for fsdp in fsdp_sizes:
    config.parallel.fsdp = fsdp
    mesh = parallel.make_mesh(config)
    assert mesh.size == 4, mesh
    shardings = train.state_shardings(task, tx, mesh, config)
    step = train.make_train_step(task, tx, step_rng, mesh, shardings)
    global_batch = parallel.global_batch(batch, mesh)
    assert len(global_batch['mask'].addressable_shards) == 4
    # FSDP: the state made split, as a run makes it; data parallel: the single-device state copied
    # to every device (its own initialisation would be one more program to compile, the same one
    # with replicated outputs).
    start = (
      train.init_state(task, tx, rng, shardings)
      if fsdp > 1
      else jax.device_put(host_initial, shardings)
    )
    state, metrics = step(start, global_batch)
    results[f'fsdp{fsdp}_loss'] = metrics['loss']
    results[f'fsdp{fsdp}_params'] = flat(state['params'])
    results[f'fsdp{fsdp}_num_split'] = sum(
      s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(shardings['params'])
    )
    # A checkpoint of the split state comes back split the same way, with the same values.
    ckpt = checkpoint_lib.Checkpointer(os.path.join(os.path.dirname(out), f'fsdp{fsdp}'))
    ckpt.save(1, state)
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    restored = ckpt.restore(abstract, 1)
    ckpt.close()
    results[f'fsdp{fsdp}_restored'] = all(
      a.sharding == b.sharding and np.array_equal(a, b)
      for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True)
    )
  np.savez(out, **results)


def multiprocess(task_name: str, cache: str, out: str) -> None:
  config = tiny_config(task_name, cache)
  assert parallel.initialize(config), 'expected the JAX_* environment of a multi-process run'
  _, data, task = train.setup(
    methods.get(config.task), config, os.path.join(os.path.dirname(out), 'work')
  )
  mesh = parallel.make_mesh(config)
  loader = train.make_train_loader(task, data.train, config, mesh)
  tx = optimizer()
  rng, step_rng = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
  state = train.init_state(task, tx, rng, parallel.replicated(mesh))
  if jax.process_index() == 1:  # a straggler: CPU collectives alone would give up after 30 s
    time.sleep(float(os.environ.get('STRAGGLER_DELAY_S', '0')))
  step = train.compile_on_every_process(
    train.make_train_step(task, tx, step_rng, mesh),
    state,
    parallel.global_batch(loader.batch(0), mesh),
  )
  local = []
  for i in range(STEPS):
    batch = loader.batch(i)
    local.append(batch)
    state, _ = step(state, parallel.global_batch(batch, mesh))
  np.savez(
    f'{out}.{jax.process_index()}',
    params=flat(state['params']),
    process_count=jax.process_count(),
    device_count=jax.device_count(),
    compilation_cache=jax.config.jax_enable_compilation_cache,
    **{f'{key}_{i}': value for i, batch in enumerate(local) for key, value in batch.items()},
  )


if __name__ == '__main__':
  mode, task_name, cache, out, *rest = sys.argv[1:]
  if mode == 'sharded':
    sharded(task_name, cache, out, [int(f) for f in rest])
  else:
    multiprocess(task_name, cache, out)

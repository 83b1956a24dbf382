"""Devices and shardings: multi-host start-up, the mesh, replicated or FSDP params, global batches.

One mesh `('data', 'fsdp')` over every device of every process. Batches are split along their first
axis over both mesh axes (each device gets batch_size / num_devices videos); params are replicated,
or, with `parallel.fsdp = n > 1`, every large parameter is split along one of its axes over the `fsdp`
axis (ZeRO-3 style: XLA all-gathers a parameter where it is used and reduce-scatters its gradient).
The jitted train step is the same program either way; only the shardings given to `jax.jit` change.

Multi-host: every process runs the same program. `initialize(config)` starts `jax.distributed`
(coordinator address, process count and id from the config or the environment, or detected on TPU
pods and SLURM); each process then builds the rows of the global batch it owns and
`global_batch` assembles them with `jax.make_array_from_process_local_data`.
"""

import importlib.metadata
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

DATA_AXIS = 'data'
FSDP_AXIS = 'fsdp'
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # a batch's first axis is split over both

# Environment variables read when the config leaves the distributed settings unset.
ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'
# Set by the cluster managers that jax.distributed.initialize() configures itself from.
CLUSTER_ENV = ('SLURM_JOB_ID', 'SLURM_NTASKS', 'TPU_WORKER_HOSTNAMES')


def keep_ynnpack_to_matmuls() -> None:
  """On jaxlib 0.10.x, XLA:CPU hands reductions (instance norm's mean / variance over time) to
  YNNPACK, whose cost per frame grows with the video: DDIM sampling of 32k frames took 35x the time
  of 2k frames instead of 16x. This keeps YNNPACK to matmuls there (docs/benchmarks.md: 86 s -> 51 s
  at 32k frames) by adding a flag to XLA_FLAGS, which XLA reads when its CPU backend starts: the
  entry points (`python -m polyseg.main`, the benchmarks) call it before any device is used. The
  user's own setting of that flag wins; other jaxlib versions need nothing."""
  set_xla_flag_on_jaxlib_0_10('xla_cpu_experimental_ynn_fusion_type', 'dot')


def set_xla_flag_on_jaxlib_0_10(name: str, value: str) -> None:
  """Adds `--name=value` to XLA_FLAGS when jaxlib is 0.10.x and XLA_FLAGS does not set `name`
  already (the user's own setting wins). XLA reads XLA_FLAGS when its CPU backend starts."""
  try:
    version = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return
  flags = os.environ.get('XLA_FLAGS', '')
  if version.startswith('0.10.') and name not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} --{name}={value}'.strip()


def default_config() -> ml_collections.ConfigDict:
  """The `parallel` section every config has (see docs/usage.md, Scale)."""
  return ml_collections.ConfigDict(
    {
      'fsdp': 1,  # size of the mesh's fsdp axis: 1 = pure data parallel (params replicated)
      'fsdp_min_size': 2**16,  # parameters with fewer elements stay replicated under FSDP
      # 'auto': start jax.distributed when a coordinator is configured (here or in the
      # environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) or a TPU pod /
      # SLURM job is detected; 'on': always (cluster auto-detection); 'off': never.
      'distributed': 'auto',
      'coordinator_address': ml_collections.config_dict.placeholder(str),  # host:port of process 0
      'num_processes': ml_collections.config_dict.placeholder(int),
      'process_id': ml_collections.config_dict.placeholder(int),
      'cpu_collectives': 'gloo',  # collectives between CPU processes (tests, laptops): gloo | mpi
    }
  )


def _cluster_detected() -> bool:
  """A SLURM step of several tasks, or a TPU VM pod slice of several workers."""
  env = os.environ
  tasks = env.get('SLURM_NTASKS', '1')
  slurm = 'SLURM_JOB_ID' in env and tasks.isdigit() and int(tasks) > 1
  return slurm or ',' in env.get('TPU_WORKER_HOSTNAMES', '')


def _distributed_args(p: ml_collections.ConfigDict) -> dict[str, Any]:
  """jax.distributed.initialize kwargs from the config, falling back to the environment."""
  env = os.environ
  args = {
    'coordinator_address': p.coordinator_address or env.get(ENV_COORDINATOR),
    'num_processes': p.num_processes,
    'process_id': p.process_id,
  }
  for key, name in (('num_processes', ENV_NUM_PROCESSES), ('process_id', ENV_PROCESS_ID)):
    if args[key] is None and env.get(name):
      try:
        args[key] = int(env[name])
      except ValueError as e:
        raise ValueError(f'environment variable {name}={env[name]!r} is not an integer') from e
  return {k: v for k, v in args.items() if v is not None}


def initialize(config: ml_collections.ConfigDict) -> bool:
  """Starts jax.distributed if `config.parallel` (or the environment) asks for it; returns whether
  it did. Must run before anything touches a device; a second call is a no-op. Processes on CPU
  devices do not use the persistent compilation cache."""
  p = config.parallel
  if p.distributed not in ('auto', 'on', 'off'):
    raise ValueError(f"parallel.distributed={p.distributed!r}; choose 'auto', 'on' or 'off'")
  if p.distributed == 'off' or jax.distributed.is_initialized():
    return False
  args = _distributed_args(p)
  if p.distributed == 'auto' and not args and not _cluster_detected():
    return False
  if 'coordinator_address' in args and not {'num_processes', 'process_id'} <= set(args):
    raise ValueError(
      f'parallel.coordinator_address={args["coordinator_address"]!r} needs num_processes and '
      f'process_id too (config or {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID})'
    )
  jax.config.update('jax_cpu_collectives_implementation', p.cpu_collectives)  # CPU client only
  jax.distributed.initialize(**args)
  if jax.default_backend() == 'cpu':
    # Each process compiles for itself: on jaxlib 0.12.1 a multi-process CPU program read back from
    # the persistent compilation cache waits forever in its first collective (both tests of two
    # processes hung; jaxlib 0.10.2 runs it). Multi-process CPU runs are tests and laptops.
    jax.config.update('jax_enable_compilation_cache', False)
  return True


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """Mesh ('data', 'fsdp') over all devices of all processes; fsdp = config.parallel.fsdp."""
  devices = jax.devices()
  fsdp = config.parallel.fsdp
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f'parallel.fsdp={fsdp} must be >= 1 and divide the {len(devices)} devices')
  shape = (len(devices) // fsdp, fsdp)
  return Mesh(mesh_utils.create_device_mesh(shape, devices), BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """First axis split over every device of the mesh, the rest whole."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> PartitionSpec:
  """Split the largest axis divisible by `fsdp` over the fsdp axis; small arrays stay whole."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return PartitionSpec()
  divisible = [(size, axis) for axis, size in enumerate(shape) if size % fsdp == 0]
  if not divisible:
    return PartitionSpec()
  _, axis = max(divisible)
  return PartitionSpec(*([None] * axis + [FSDP_AXIS]))


def state_shardings(abstract_state: Any, mesh: Mesh, config: ml_collections.ConfigDict) -> Any:
  """Shardings for a pytree of arrays (the train state): replicated, or FSDP-split when
  `config.parallel.fsdp` > 1 (the optimizer moments follow their params by shape)."""
  p = config.parallel
  return jax.tree.map(
    lambda x: NamedSharding(mesh, fsdp_spec(x.shape, p.fsdp, p.fsdp_min_size)), abstract_state
  )


def check_batch_size(batch_size: int, mesh: Mesh) -> int:
  """The per-process batch size; the global `batch_size` must split evenly over devices."""
  if batch_size % mesh.size:
    raise ValueError(
      f'train.batch_size={batch_size} must be a multiple of the {mesh.size} devices '
      f'({jax.process_count()} process(es)); set --config.train.batch_size accordingly'
    )
  return batch_size // jax.process_count()


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows [B / P, ...] of each field -> global arrays [B, ...] split over devices."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def barrier(name: str, timeout_s: int = 3600) -> None:
  """Waits until every process reaches the barrier `name` (unique per use). It goes through the
  jax.distributed coordination service, not a device collective, so a process may wait here for
  as long as the others take to compile (CPU collectives give up after 30 s). No-op with one process.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # the client jax's own array serialization waits on

  distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


def max_over_processes(value: int) -> int:
  """The largest `value` any process holds (a one-off host collective; identity with 1 process)."""
  if jax.process_count() == 1:
    return value
  return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def sum_over_processes(array: np.ndarray) -> np.ndarray:
  """Elementwise sum of `array` over processes (identity with 1 process)."""
  if jax.process_count() == 1:
    return array
  return np.sum(multihost_utils.process_allgather(np.asarray(array)), axis=0)

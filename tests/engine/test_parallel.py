"""Mesh, shardings and multi-host start-up (polyseg/engine/parallel.py) and the engine under them.

The multi-device cases run in subprocesses (tests/engine/parallel_driver.py) with
XLA_FLAGS=--xla_force_host_platform_device_count=N, or as two local processes joined by
jax.distributed over 127.0.0.1 with CPU (gloo) collectives.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO
from jax.sharding import PartitionSpec as P

from polyseg import methods
from polyseg.configlib import load_config
from polyseg.engine import parallel
from polyseg.engine import train

DRIVER = str(REPO / 'tests' / 'engine' / 'parallel_driver.py')


def _env(devices: int, **extra) -> dict[str, str]:
  env = dict(os.environ, **extra)
  env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={devices}'
  env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# ------------------------------------------------------------------------------- pure logic --


@pytest.mark.parametrize(
  'jaxlib, flags, expected',
  [
    ('0.10.2', '', '--xla_cpu_experimental_ynn_fusion_type=dot'),
    ('0.10.2', '--xla_a=1', '--xla_a=1 --xla_cpu_experimental_ynn_fusion_type=dot'),
    (
      '0.10.2',
      '--xla_cpu_experimental_ynn_fusion_type=all',
      '--xla_cpu_experimental_ynn_fusion_type=all',
    ),
    ('0.11.2', '--xla_a=1', '--xla_a=1'),
  ],
)
def test_ynnpack_kept_to_matmuls_on_jaxlib_0_10_only(monkeypatch, jaxlib, flags, expected):
  monkeypatch.setattr(parallel.importlib.metadata, 'version', lambda name: jaxlib)
  monkeypatch.setenv('XLA_FLAGS', flags)
  parallel.keep_ynnpack_to_matmuls()
  assert os.environ['XLA_FLAGS'] == expected


def test_fsdp_spec_splits_the_largest_divisible_axis():
  assert parallel.fsdp_spec((64, 24), fsdp=2, min_size=0) == P('fsdp')
  assert parallel.fsdp_spec((5, 24), fsdp=2, min_size=0) == P(None, 'fsdp')
  assert parallel.fsdp_spec((5, 7), fsdp=2, min_size=0) == P()  # nothing divisible
  assert parallel.fsdp_spec((64, 24), fsdp=2, min_size=64 * 24 + 1) == P()  # too small
  assert parallel.fsdp_spec((64, 24), fsdp=1, min_size=0) == P()
  assert parallel.fsdp_spec((), fsdp=2, min_size=0) == P()


def test_distributed_settings_come_from_config_then_environment(monkeypatch):
  config = load_config('diffact', 'runlocal=True')
  for name in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID):
    monkeypatch.delenv(name, raising=False)
  for name in parallel.CLUSTER_ENV:
    monkeypatch.delenv(name, raising=False)
  assert parallel._distributed_args(config.parallel) == {}
  assert parallel.initialize(config) is False  # 'auto' with nothing configured: single process
  monkeypatch.setenv(parallel.ENV_COORDINATOR, '10.0.0.1:1234')
  monkeypatch.setenv(parallel.ENV_NUM_PROCESSES, '8')
  monkeypatch.setenv(parallel.ENV_PROCESS_ID, '3')
  config.parallel.process_id = 5  # the config wins over the environment
  assert parallel._distributed_args(config.parallel) == {
    'coordinator_address': '10.0.0.1:1234',
    'num_processes': 8,
    'process_id': 5,
  }
  monkeypatch.setenv(parallel.ENV_NUM_PROCESSES, 'eight')
  with pytest.raises(ValueError, match='JAX_NUM_PROCESSES'):
    parallel._distributed_args(config.parallel)


def test_clusters_of_several_processes_are_detected(monkeypatch):
  for name in parallel.CLUSTER_ENV:
    monkeypatch.delenv(name, raising=False)
  assert not parallel._cluster_detected()
  monkeypatch.setenv('SLURM_JOB_ID', '42')
  monkeypatch.setenv('SLURM_NTASKS', '1')  # an interactive allocation: one process
  assert not parallel._cluster_detected()
  monkeypatch.setenv('SLURM_NTASKS', '4')
  assert parallel._cluster_detected()
  monkeypatch.delenv('SLURM_JOB_ID')
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'w0')  # a single TPU VM
  assert not parallel._cluster_detected()
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'w0,w1,w2,w3')
  assert parallel._cluster_detected()


def test_bad_parallel_settings_are_clear_errors(monkeypatch):
  config = load_config('diffact', 'runlocal=True')
  config.parallel.distributed = 'sometimes'
  with pytest.raises(ValueError, match="parallel.distributed='sometimes'"):
    parallel.initialize(config)
  config.parallel.distributed = 'auto'
  monkeypatch.delenv(parallel.ENV_NUM_PROCESSES, raising=False)
  monkeypatch.delenv(parallel.ENV_PROCESS_ID, raising=False)
  config.parallel.coordinator_address = '127.0.0.1:1'
  with pytest.raises(ValueError, match='needs num_processes and process_id'):
    parallel.initialize(config)
  config.parallel.fsdp = 3
  with pytest.raises(ValueError, match='parallel.fsdp=3'):
    parallel.make_mesh(config)
  config.parallel.fsdp = 1
  mesh = parallel.make_mesh(config)
  assert parallel.check_batch_size(4, mesh) == 4


def test_single_device_mesh_step_equals_the_plain_step(tiny_config, tmp_path):
  """The engine's path on a laptop: a 1-device mesh gives exactly the un-sharded step."""
  _, data, task = train.setup(methods.get(tiny_config.task), tiny_config, str(tmp_path / 'run'))
  tx = train.make_optimizer(tiny_config)
  batch = task.train_loader(data.train).batch(0)
  mesh = parallel.make_mesh(tiny_config)
  plain, plain_metrics = train.make_train_step(task, tx, jax.random.PRNGKey(1))(
    train.init_state(task, tx, jax.random.PRNGKey(0)), batch
  )
  meshed, meshed_metrics = train.make_train_step(task, tx, jax.random.PRNGKey(1), mesh)(
    train.init_state(task, tx, jax.random.PRNGKey(0), parallel.replicated(mesh)),
    parallel.global_batch(batch, mesh),
  )
  assert float(plain_metrics['loss']) == pytest.approx(float(meshed_metrics['loss']), abs=1e-6)
  for a, b in zip(jax.tree.leaves(plain['params']), jax.tree.leaves(meshed['params'])):
    np.testing.assert_allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------- 4 devices, one process --


@pytest.mark.parametrize(
  'task,fsdp_sizes', [('diffact', (1, 2)), ('hopadiff', (1,)), ('hal', (1,))]
)
def test_sharded_step_equals_single_device_step(task, fsdp_sizes, cache_dir, tmp_path):
  """4 devices: data parallel (mesh 4 x 1) and FSDP (2 x 2) steps equal the 1-device step, and
  their states come back from a checkpoint as they were."""
  out = str(tmp_path / 'out.npz')
  subprocess.run(
    [sys.executable, DRIVER, 'sharded', task, cache_dir, out, *map(str, fsdp_sizes)],
    env=_env(4),
    check=True,
    timeout=600,
  )
  r = np.load(out)
  assert np.isfinite(r['single_loss'])
  for fsdp in fsdp_sizes:
    np.testing.assert_allclose(r[f'fsdp{fsdp}_loss'], r['single_loss'], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(r[f'fsdp{fsdp}_params'], r['single_params'], atol=1e-5, rtol=1e-5)
    # FSDP really splits parameters over its axis; data parallel keeps them whole.
    assert (r[f'fsdp{fsdp}_num_split'] > 0) == (fsdp > 1)
    assert r[f'fsdp{fsdp}_restored']  # values and shardings, through a checkpoint


# ------------------------------------------------------------------- two local processes --


def test_two_processes_train_together_and_agree(cache_dir, tmp_path):
  """Two processes (2 CPU devices each) on 127.0.0.1 train STEPS steps: both end with the same
  params, equal to one process training on the concatenated global batches. Process 1 is 35 s
  late, longer than CPU collectives wait: the engine's barrier after compiling absorbs it. The
  late process would find the step that the first wrote to the suite's persistent compilation
  cache, and with jaxlib 0.12.1 both would hang, had the engine not turned that cache off on CPU."""
  sys.path.insert(0, str(REPO / 'tests' / 'engine'))
  import parallel_driver

  # The reference: one process, the single-device step. Its data first (the cache the two
  # processes read), its state and step while they run (compiled on a batch of the same shapes
  # while process 1 waits).
  config = parallel_driver.tiny_config('diffact', cache_dir)
  _, data, task = train.setup(methods.get(config.task), config, str(tmp_path / 'reference'))
  port = _free_port()
  out = str(tmp_path / 'mp')
  procs = [
    subprocess.Popen(
      [sys.executable, DRIVER, 'multiprocess', 'diffact', cache_dir, out],
      env=_env(
        2,
        JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
        JAX_NUM_PROCESSES='2',
        JAX_PROCESS_ID=str(i),
        STRAGGLER_DELAY_S='35',
      ),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  try:
    tx = parallel_driver.optimizer()
    state = train.init_state(task, tx, jax.random.PRNGKey(0))
    step = train.make_train_step(task, tx, jax.random.PRNGKey(1))
    warm_up = train.init_state(task, tx, jax.random.PRNGKey(0))
    jax.block_until_ready(step(warm_up, task.train_loader(data.train).batch(0)))
    logs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()  # (a no-op for a process that has exited)
  assert all(p.returncode == 0 for p in procs), '\n'.join(logs)
  r0, r1 = np.load(f'{out}.0.npz'), np.load(f'{out}.1.npz')
  assert int(r0['process_count']) == 2 and int(r0['device_count']) == 4
  # The suite's persistent cache is set (tests/conftest.py); CPU processes compile for themselves.
  assert jax.config.jax_enable_compilation_cache and not r0['compilation_cache']
  np.testing.assert_array_equal(r0['params'], r1['params'])

  for i in range(parallel_driver.STEPS):  # the same global batches through the reference
    keys = [k[: -len(f'_{i}')] for k in r0.files if k.endswith(f'_{i}')]
    assert r0[f'mask_{i}'].shape == r1[f'mask_{i}'].shape  # one padded length for both
    batch = {k: np.concatenate([r0[f'{k}_{i}'], r1[f'{k}_{i}']]) for k in keys}
    assert len(batch['mask']) == config.train.batch_size
    state, _ = step(state, batch)
  np.testing.assert_allclose(parallel_driver.flat(state['params']), r0['params'], atol=1e-5)


def test_launch_script_runs_the_cli_as_two_processes(cache_dir, tmp_path):
  """launch/local_multiprocess.sh: the real entry point, 2 processes x 1 device, trains, evaluates
  (every process, SPMD) and checkpoints; only process 0 writes results."""
  workdir = tmp_path / 'run'
  env = dict(_env(1), PYTHON=sys.executable, PORT=str(_free_port()), DEVICES_PER_PROCESS='1')
  subprocess.run(
    [
      'bash',
      str(REPO / 'launch' / 'local_multiprocess.sh'),
      '2',
      '--config=configs/diffact.py:runlocal=True',
      f'--workdir={workdir}',
      f'--config.data.cache_dir={cache_dir}',
      '--config.train.batch_size=2',
    ],
    cwd=REPO,
    env=env,
    check=True,
    timeout=600,
  )
  logs = [(workdir / 'logs' / f'process_{i}.log').read_text() for i in range(2)]
  assert '2 device(s) in 2 process(es)' in logs[0]
  assert 'results at step 6' in logs[0] and 'results at step' not in logs[1]
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['3', '6']
  assert (workdir / 'eval' / 'results.json').exists()

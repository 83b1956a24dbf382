"""Shared fixtures: tiny configs and a tiny synthetic dataset cache for end-to-end tests."""

import math
import os
import pathlib
import re
import tempfile

# Before jax is imported: CPU only, and a persistent compilation cache shared by the test processes
# (and the CLI subprocesses they start), so identical programs compile once per suite run.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'polyseg-test-jax-cache')
)
# Every program, however quick to compile: most of the suite's compiles are small eager ops (about
# 20 ms each on jaxlib 0.12's CPU compiler, 3 ms from the cache), which both xdist workers and the
# CLI subprocesses would otherwise compile again (tests/core, nn, diffact and hal: 135-139 s with a
# 0.5 s threshold, 125-128 s without).
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
# The suite compiles far more than it runs: without LLVM's expensive passes a cold run takes about a
# quarter less time (XLA's HLO passes, fusion included, still run, so the HLO the tests inspect is
# unchanged).
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

import jax
import pytest

from polyseg.configlib import load_config
from polyseg.data import formats
from polyseg.engine import parallel

# As `python -m polyseg.main` runs: in this process and, through the environment, in every
# subprocess a test starts.
parallel.keep_ynnpack_to_matmuls()
# jaxlib 0.10.x still has XLA:CPU's older fusion emitters; with LLVM's expensive passes off they
# compile the tests' tiny models a sixth to a third faster (train steps: DiffAct's 4.3 -> 2.9 s,
# HAL's 3.6 -> 2.1 s, HopaDIFF's 11.7 -> 9.9 s; the cold suite 17-20 -> about 14 min). They fuse
# less, so the HLO differs from the default's: the tests that inspect it pass under both. Not for
# real runs: with full optimisation they compile the GTEA-size train step in 131 s, not 23 s.
# Later jaxlib releases dropped the flag (and reject it). Subprocesses inherit it too.
parallel.set_xla_flag_on_jaxlib_0_10('xla_cpu_use_fusion_emitters', 'false')

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory) -> str:
  """One synthetic-data cache per test session (generated on first use)."""
  return str(tmp_path_factory.mktemp('polyseg-cache'))


@pytest.fixture
def tiny_config(cache_dir):
  """configs/diffact.py:runlocal=True pointed at the session's cache."""
  config = load_config('diffact', 'runlocal=True')
  config.data.cache_dir = cache_dir
  return config


@pytest.fixture(scope='module')
def fast_compile():
  """For modules of tiny models: XLA's optimisation passes cost more compile time than they save."""
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


def raises_data_error(match: str):
  """pytest.raises(DataError) whose message must contain `match` literally."""
  return pytest.raises(formats.DataError, match=re.escape(match))


def rejects_text(path, text: str, message: str, read) -> None:
  """Writes `text` to `path`; `read()` must then raise a DataError that names the file:
  f'{path}{message}'."""
  path.write_text(text)
  with raises_data_error(f'{path}{message}'):
    read()


def widest_fusion(hlo_text: str, min_elements: int) -> int:
  """The most operands any activation-like fusion (two or more dimensions, `min_elements` elements
  or more) reads in a compiled program's HLO text: a residual stack whose layers fuse the sums of
  the layers before them (see `layers.fusion_fence`) shows it as a width that grows with depth.
  One-dimensional fusions are left out: the train step's norms concatenate every parameter leaf
  into one vector (`train.global_norm`), a fusion as wide as the model has leaves."""
  widest = 0
  for line in hlo_text.splitlines():
    found = re.match(r'\s*(?:ROOT )?%\S+ = \w+\[([\d,]*)\]\S* fusion\((.*?)\), kind', line)
    dims = [int(d) for d in found[1].split(',') if d] if found else []
    if len(dims) >= 2 and math.prod(dims) >= min_elements:
      widest = max(widest, found[2].count('%'))
  return widest

"""The command line and the configs: the front door, overrides, real-data layout, published sizes."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO

from polyseg.configlib import load_config
from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.data import synthetic
from polyseg.methods.diffact import task as diffact
from polyseg.nn import layers


def run_main(*args, cwd=REPO, env=None):
  env = dict(env or os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(
    [sys.executable, '-m', 'polyseg.main', *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,  # the tests read the return code and stderr
  )


def test_cli_trains_then_resumes_evaluates_and_predicts(tmp_path, cache_dir):
  workdir, xla_cache = tmp_path / 'run', tmp_path / 'xla'
  common = [
    '--config=configs/diffact.py:runlocal=True',
    f'--workdir={workdir}',
    f'--config.data.cache_dir={cache_dir}',
  ]
  first = run_main(*common)
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'F1@50' in first.stdout and 'DiffAct' in first.stdout
  second = run_main(*common, '--config.train.num_steps=9')
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'Resumed from' in second.stdout and 'at step 6' in second.stdout
  # --compilation_cache where JAX_COMPILATION_CACHE_DIR is not set (the suite sets it): the eval
  # run's programs land there (an eval: it compiles less than a training run), however fast.
  user_env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  user_env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  evaluated = run_main(
    *common, '--mode=eval', '--checkpoint=best', f'--compilation_cache={xla_cache}', env=user_env
  )
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert os.path.exists(workdir / 'eval_best' / 'results.json')
  assert any(name.startswith('jit__sample_views') for name in os.listdir(xla_cache))  # DDIM
  features = tmp_path / 'features'
  features.mkdir()
  np.save(features / 'clip.npy', np.random.default_rng(0).normal(size=(16, 50)).astype(np.float32))
  predicted = run_main(*common, '--mode=predict', f'--config.predict.features={features}')
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  assert len((workdir / 'predict' / 'predictions' / 'clip.txt').read_text().split()) == 50


def test_misspelt_override_is_an_error(tmp_path):
  result = run_main(
    '--config=configs/diffact.py:runlocal=True',
    f'--workdir={tmp_path}',
    '--config.train.num_stepz=3',
  )
  assert result.returncode != 0
  assert 'num_stepz' in result.stderr


def test_bad_data_is_reported_before_training(tmp_path):
  root = tmp_path / 'data'
  synthetic.single_stream(
    str(root), seed=1, num_train=3, num_test=2, min_len=100, max_len=150, input_dim=8
  )
  victim = root / 'groundTruth' / 'train000.txt'  # train and val are checked before training
  lines = victim.read_text().splitlines()
  victim.write_text('\n'.join(lines[:-5]) + '\n')  # label file shorter than its features
  workdir = tmp_path / 'run'
  result = run_main(
    '--config=configs/diffact.py:runlocal=True',
    f'--workdir={workdir}',
    f'--config.data.root={root}',
  )
  assert result.returncode != 0
  assert victim.name in result.stderr and 'DataError' in result.stderr
  assert not (workdir / 'checkpoints').exists()


def test_real_layout_reads_dims_and_classes_and_checks_config(tmp_path):
  root = tmp_path / 'data'
  synthetic.single_stream(
    str(root), seed=2, num_train=3, num_test=2, min_len=100, max_len=150, input_dim=12
  )
  config = load_config('diffact', 'runlocal=True')
  config.data.root = str(root)
  data = diffact.load_data(config)
  assert data.info.input_dim == 12
  assert data.info.classes == tuple(formats.read_mapping(str(root / 'mapping.txt')))
  config.data.input_dim = 13
  with pytest.raises(formats.DataError, match=r'\.npy'):
    diffact.load_data(config)
  config.data.input_dim = 12
  config.data.classes = ('a', 'b')
  with pytest.raises(formats.DataError, match='mapping.txt'):
    diffact.load_data(config)


@pytest.mark.parametrize(
  'dataset,num_classes,expected', [('gtea', 11, 1_204_438), ('breakfast', 48, 11_912_800)]
)
def test_published_configs_have_published_sizes(dataset, num_classes, expected):
  config = load_config('diffact', f'dataset={dataset}')
  info = dataset_lib.DataInfo(tuple(f'c{i}' for i in range(num_classes)), 2048, ())
  task = diffact.Task(config, info)
  params = jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), task.example_batch()))
  assert layers.count_params(params) == expected


def test_config_variants_carry_the_published_settings():
  gtea, salads, breakfast = (
    load_config('diffact', f'dataset={d}') for d in ('gtea', '50salads', 'breakfast')
  )
  assert (gtea.diffusion.snr_scale, salads.diffusion.snr_scale) == (0.5, 1.0)
  assert (gtea.data.sample_rate, salads.data.sample_rate, breakfast.data.sample_rate) == (1, 8, 1)
  assert (salads.diffusion.boundary_threshold, gtea.diffusion.boundary_threshold) == (0.5, 0.3)
  assert salads.diffusion.condition_types[-1] == 'segment=2'
  assert (gtea.loss.soft_label, salads.loss.soft_label, breakfast.loss.soft_label) == (
    1.4,
    None,
    4.0,
  )
  assert (breakfast.loss.encoder_smooth, gtea.loss.decoder_smooth) == (0.025, 0.1)
  assert (gtea.eval.postprocess, salads.eval.postprocess_value) == ('purge', 30)
  assert breakfast.model.decoder.num_f_maps == 128 and salads.model.decoder.kernel_size == 7
  assert (gtea.optim.learning_rate, breakfast.optim.learning_rate) == (5e-4, 1e-4)


def test_config_arg_errors():
  with pytest.raises(ValueError, match='dataset'):
    load_config('diffact', 'dataset=kinetics')
  with pytest.raises(ValueError, match='unknown config arg'):
    load_config('diffact', 'datset=gtea')


def test_eval_without_checkpoint_says_so(tmp_path, cache_dir):
  result = run_main(
    '--config=configs/diffact.py:runlocal=True',
    f'--workdir={tmp_path / "empty"}',
    f'--config.data.cache_dir={cache_dir}',
    '--mode=eval',
  )
  assert result.returncode != 0
  assert 'no checkpoint' in result.stderr and 'Traceback' not in result.stderr
  assert not (tmp_path / 'empty').exists()  # nothing written

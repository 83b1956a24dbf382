r"""Dataset check (`--config.data.check_only=True`): validate a dataset with its method's own
loader and report its statistics, without training.

  python -m polyseg.main --config=configs/diffact.py --workdir=runs/check \
      --config.data.root=/data/gtea --config.data.check_only=True

A problem with the data raises the `formats.DataError` that training would raise. What is read is
`load_data(config)` of the method, or its `check_data(config, workdir)` when it has one (Polyphony:
the input of the first stage of `config.stage`). The statistics are `polyseg.data.check`'s; the
report prints them with their warnings and writes <workdir>/data_check.json and the class
histogram <workdir>/data_check.png.
"""

import os

import ml_collections

from polyseg.data import check
from polyseg.engine import train
from polyseg.engine import workdir as workdir_lib
from polyseg.report import data_check

JSON_FILE, PNG_FILE = 'data_check.json', 'data_check.png'


def run(method, config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Reads the data of `config` as training would (DataError on a problem), prints its statistics
  and warnings and writes <workdir>/data_check.json and data_check.png. Returns the statistics."""
  workdir = workdir_lib.prepare_workdir(workdir)
  if hasattr(method, 'check_data'):
    data = method.check_data(config, workdir)
  else:
    data = method.load_data(config)
  info = data.info
  videos = {'train': data.train, 'val': data.val, 'test': data.read_test()}  # a check reads all
  splits = {name: check.split_stats(videos[name], info) for name in check.SPLITS}
  root = method.dataset_root(config) if hasattr(method, 'dataset_root') else config.data.root
  synthetic = f'synthetic (config.data.synthetic, cached in {config.data.cache_dir})'
  stats = {
    'task': config.task,
    'dataset': str(root or synthetic),
    'classes': list(info.classes),
    'background': [info.classes[c] for c in info.background],
    'feature_dims': info.input_dim,
    'splits': {name: check.split_json(s, info.classes) for name, s in splits.items()},
    'warnings': check.find_warnings(splits, info.classes),
  }
  print(data_check.format_report(stats, splits), flush=True)
  png_path, json_path = os.path.join(workdir, PNG_FILE), os.path.join(workdir, JSON_FILE)
  data_check.plot_histogram(png_path, splits, info)
  train.write_json(json_path, stats)
  print(f'Wrote {json_path} and {png_path}', flush=True)
  return stats

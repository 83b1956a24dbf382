r"""2s-DAS (docs/methods/twostream.md): RGB and flow DiffAct models trained together, late fusion on val.

Default: the embedded synthetic two-stream dataset (generated on first use; RGB carries class
identity, flow motion and boundaries, different dimensions and noise):

  python -m polyseg.main --config=configs/twostream.py --workdir=runs/twostream

It trains 800 steps of both streams (about 4 minutes on 2 quiet cores: 3 min 48 s on an AMD EPYC at
commit 640f0f5), searches the fusion weights on val and prints test rows Fused, RGB and Flow (at
640f0f5: Fused Acc 80.2, Edit 76.9, F1@50 78.4; at commit fe9fce7: Fused 82.2 / 78.8 / 78.8 and flow
alone 87.0 / 81.8 / 81.4: the weights chosen on val, where fusion leads, did not carry over to test
in that run; docs/methods/twostream.md).

Your own features (`features_rgb/<vid>.npy` [D_rgb, T], `features_flow/<vid>.npy` [D_flow, T],
`groundTruth/`, `mapping.txt`, `splits/` as in the MS-TCN layout; a `val.split<k>.bundle` if you have
one, else a seeded part of train is held out), with a dataset's DiffAct settings:

  python -m polyseg.main --config=configs/twostream.py:dataset=breakfast --workdir=runs/bf_2s \
      --config.data.root=/data/breakfast_2s --config.data.split=1

`arg` is a comma-separated list of `key=value`:
  dataset=synthetic|gtea|50salads|breakfast   DiffAct's per-dataset model and training settings
  masks=random|diffact|full|zero|boundary|segment   condition masks: `random` (default), the
                                  paper's importance sampling: full, boundary or segment (the
                                  dataset's segment=n), drawn uniformly per video and step; `diffact`:
                                  DiffAct's list, which adds the zero mask the paper excludes (and
                                  weights segment twice); or one fixed type (the ablations)
  runlocal=True                   tiny models and data for a smoke run
"""

import ml_collections
from ml_collections import config_dict

from polyseg import configlib

MASKS = {
  'random': None,  # the paper's: DiffAct's kinds without zero, each once (set in get_config)
  'diffact': None,  # the dataset's DiffAct list: full, zero, boundary, segment=n, segment=n
  'full': ('full',),
  'zero': ('zero',),
  'boundary': ('boundary',),
  'segment': ('segment=1',),
}


def get_config(arg=None):
  """Returns the 2s-DAS config for `arg` (see the module docstring)."""
  args = configlib.parse_arg(arg, known={'dataset', 'masks', 'runlocal'})
  dataset = configlib.choice(
    args, 'dataset', ('synthetic', 'gtea', '50salads', 'breakfast'), 'synthetic'
  )
  masks = configlib.choice(args, 'masks', MASKS, 'random')
  runlocal = configlib.flag(args, 'runlocal')

  # Each stream is a DiffAct model with the dataset's DiffAct settings.
  c = configlib.load_config('diffact', f'dataset={dataset},runlocal={runlocal}')
  c.task = 'twostream'
  if masks == 'random':
    kinds = c.diffusion.condition_types
    c.diffusion.condition_types = tuple(k for k in dict.fromkeys(kinds) if k != 'zero')
  elif MASKS[masks] is not None:
    c.diffusion.condition_types = MASKS[masks]

  del c.data['input_dim']
  c.data.input_dims = ml_collections.ConfigDict(
    {'rgb': config_dict.placeholder(int), 'flow': config_dict.placeholder(int)}
  )  # unset -> read from the features
  c.data.length_tolerance = 5  # frames an RGB stream / label file may differ from the flow length
  # synthetic.make_two_streams arguments (defaults otherwise): noisier RGB, cleaner flow with 4 motion
  # groups than the generator's defaults, so neither stream alone is enough (per-frame nearest-mean
  # accuracy: RGB 52.5%, flow 50.3%, both 72.4%).
  # The videos of configs/diffact.py's synthetic data (counts, lengths, seed).
  videos = {k: v for k, v in c.data.synthetic.items() if k != 'input_dim'}
  c.data.synthetic = ml_collections.ConfigDict(
    {**videos, 'noise_std': 1.6, 'flow_noise_std': 1.1, 'num_motions': 4}
  )

  # Post-processing as a chain (polyseg/core/postprocess.py), e.g. --config.eval.postprocess=median=15,purge=3;
  # it starts as the dataset's DiffAct step.
  c.eval.postprocess = f'{c.eval.postprocess}={c.eval.postprocess_value}'
  c.eval.postprocess_value = None

  c.fusion = ml_collections.ConfigDict(
    {
      'weights': (0.6, 0.4),  # (rgb, flow): the paper's default, used until searched
      'search': True,  # grid-search the weights on val at every evaluation
      'step': 0.05,  # grid step on the simplex
      'metric': 'F1@50',  # what the search maximises
    }
  )
  if runlocal:
    c.data.synthetic.update(num_train=7, rgb_dim=16, flow_dim=12)
    c.fusion.step = 0.25
  return c

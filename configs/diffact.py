r"""DiffAct (Liu et al., ICCV 2023): encoder + label-denoising decoder.

Default: the embedded synthetic dataset (generated on first use), sized to train and evaluate in a few
minutes on 2 CPU cores:

  python -m polyseg.main --config=configs/diffact.py --workdir=runs/diffact

It trains 800 steps (2-3.5 minutes on 2 quiet cores: 2 min 9 s on an AMD EPYC at commit 640f0f5)
and prints the test scores of the checkpoint val chose, near Acc 85, Edit 85, F1@50 84 (85.4 /
82.5 / 84.1 at 640f0f5; 85.0 / 84.8 / 84.3 in a fresh environment of 2026-12-05;
docs/methods/diffact.md: 84.4 / 83.5 / 84.0 in an earlier one; the encoder alone reaches about 89
Acc at this budget).

Published settings on your own features in the MS-TCN layout (docs/methods/diffact.md):

  python -m polyseg.main --config=configs/diffact.py:dataset=gtea --workdir=runs/gtea1 \
      --config.data.root=/data/gtea --config.data.split=1

`arg` is a comma-separated list of `key=value`: `dataset=synthetic|gtea|50salads|breakfast`,
`runlocal=True` (tiny model and data for a smoke run).
"""

import ml_collections
from ml_collections import config_dict

from polyseg import configlib
from polyseg.engine import config as engine_config

# Per-dataset settings from the DiffAct release (docs/methods/diffact.md), one row per setting
# with a column per dataset as in the paper's table; 'synthetic' is the embedded data: a
# GTEA-shaped model with a budget of a few CPU minutes.
_NAMES = ('gtea', '50salads', 'breakfast', 'synthetic')
_SETTINGS = {
  #                   gtea, 50salads, breakfast, synthetic
  'enc_layers': (10, 10, 12, 8),
  'enc_maps': (64, 64, 256, 64),
  'enc_dropouts': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (0.5, 0.1, 0.1), (0.3, 0.3, 0.1)),
  'feature_layers': ((5, 7, 9), (5, 7, 9), (7, 8, 9), (3, 5, 7)),
  'dec_layers': (8, 8, 8, 6),
  'dec_maps': (24, 24, 128, 24),
  'dec_kernel': (5, 7, 5, 5),
  'snr_scale': (0.5, 1.0, 0.5, 0.5),
  'lr': (5e-4, 5e-4, 1e-4, 1e-3),
  'weight_decay': (1e-6, 0.0, 0.0, 0.0),
  'sample_rate': (1, 8, 1, 2),
  'boundary_sigma': (1.0, 20.0, 3.0, 1.0),
  'soft_label': (1.4, None, 4.0, None),
  'smooth': (0.1, 0.1, 0.025, 0.1),
  'boundary_threshold': (0.3, 0.5, 0.3, 0.3),
  'condition_types': (
    ('full', 'zero', 'boundary', 'segment=1', 'segment=1'),
    ('full', 'zero', 'boundary', 'segment=2', 'segment=2'),
    ('full', 'zero', 'boundary', 'segment=1', 'segment=1'),
    ('full', 'zero', 'boundary', 'segment=1', 'segment=1'),
  ),
  'postprocess': (('purge', 3), ('median', 30), ('median', 15), ('purge', 3)),
  'num_steps': (10000 * 7, 5000 * 10, 1000 * 318, 800),  # the release's epochs x steps per epoch
  'eval_every': (700, 1000, 6000, 400),
}
DATASETS = {name: {key: row[i] for key, row in _SETTINGS.items()} for i, name in enumerate(_NAMES)}


def get_config(arg=None):
  """Returns the DiffAct config for `arg` (see the module docstring)."""
  args = configlib.parse_arg(arg, known={'dataset', 'runlocal'})
  dataset = configlib.choice(args, 'dataset', DATASETS, 'synthetic')
  runlocal = configlib.flag(args, 'runlocal')
  s = DATASETS[dataset]

  c = engine_config.base_config('diffact')
  c.data.split = 1
  c.data.input_dim = config_dict.placeholder(int)  # unset -> read from the features
  c.data.background = ('background',)  # names excluded from Edit / F1 (if present)
  c.data.sample_rate = s['sample_rate']
  c.data.boundary_sigma = s['boundary_sigma']
  # Validation (checkpoint selection): splits/val.split<k>.bundle, else this seeded share of train.
  c.data.val_fraction = 0.15
  c.data.val_seed = 0
  c.data.synthetic = ml_collections.ConfigDict(
    {
      'seed': 0,
      'num_train': 48,
      'num_val': 8,
      'num_test': 16,
      'min_len': 400,
      'max_len': 900,
      'input_dim': 64,
    }
  )

  c.model = ml_collections.ConfigDict()
  c.model.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16' (params stay float32)
  # True: the encoder's and decoders' layers run as one lax.scan with the dilation as data, so a
  # train step or sampler compiles each layer once (polyseg/nn/asformer.py scan_layers; the same
  # parameters and outputs to float32 rounding; dropout draws other masks; about 15% slower train
  # steps at the published sizes, docs/benchmarks.md).
  c.model.scan_layers = False
  # Parameter initialisation: 'torch' (PyTorch's default, as DiffAct's reference code initialises
  # its layers; with 'flax' the decoder trained behind the reference's, docs/methods/diffact.md: trained side by side)
  # or 'flax' (Flax's lecun_normal kernels, zero biases); nn/layers.py torch_default_init.
  c.model.init = 'torch'
  c.model.encoder = ml_collections.ConfigDict(
    {
      'num_layers': s['enc_layers'],
      'num_f_maps': s['enc_maps'],
      'kernel_size': 5,
      'dropout': s['enc_dropouts'][0],
      'channel_dropout': s['enc_dropouts'][1],
      'temporal_dropout': s['enc_dropouts'][2],
      'feature_layer_indices': s['feature_layers'],
      # None: attention keys outside the video are masked exactly; log(1e-6) = -13.8 is the
      # reference code's masking (they keep a logit there; nn/layers.py window_attention)
      'outside_logit': config_dict.placeholder(float),
    }
  )
  c.model.decoder = ml_collections.ConfigDict(
    {
      'num_layers': s['dec_layers'],
      'num_f_maps': s['dec_maps'],
      'kernel_size': s['dec_kernel'],
      'dropout': 0.1,
      'time_emb_dim': 512,
      'condition_in_value': False,  # True: V also sees the condition (not in DiffAct; nn/layers.py)
      'outside_logit': config_dict.placeholder(float),  # as the encoder's
    }
  )

  c.diffusion = ml_collections.ConfigDict(
    {
      'num_steps': 1000,
      'sampling_steps': 25,
      'eta': 1.0,
      # The temporal views of a video share their DDIM noise, as the reference's seeding gives
      # them (False: independent draws per view; docs/methods/diffact.md: trained side by side)
      'shared_view_noise': True,
      'snr_scale': s['snr_scale'],
      'condition_types': s['condition_types'],
      'boundary_threshold': s['boundary_threshold'],
    }
  )

  c.loss = ml_collections.ConfigDict(
    {
      'encoder_ce': 0.5,
      'encoder_smooth': s['smooth'],
      'decoder_ce': 0.5,
      'decoder_smooth': s['smooth'],
      'decoder_boundary': 0.1,
      'class_weighting': True,
    }
  )
  # Sigma of the soft-label CE; None -> CE on hard labels (class-weighted when class_weighting).
  c.loss.soft_label = config_dict.FieldReference(s['soft_label'], field_type=float)
  c.loss.weight_soft_labels = False  # soft labels class-weighted too (not in DiffAct's reference)

  c.optim.update(learning_rate=s['lr'], weight_decay=s['weight_decay'])
  c.train.update(
    num_steps=s['num_steps'], eval_every=s['eval_every'], checkpoint_every=s['eval_every']
  )
  c.eval.update(
    postprocess=s['postprocess'][0],
    postprocess_value=s['postprocess'][1],
    use_decoder=True,
  )
  # --mode=predict reads --config.predict.features: a folder of <vid>.npy [D, T].

  if runlocal:
    c.data.synthetic.update(
      num_train=6, num_val=2, num_test=3, min_len=200, max_len=250, input_dim=16
    )
    c.model.encoder.update(num_layers=3, num_f_maps=16, feature_layer_indices=(0, 1, 2))
    c.model.decoder.update(num_layers=2, num_f_maps=8, time_emb_dim=32)
    c.diffusion.sampling_steps = 5
    c.train.update(num_steps=6, log_every=2, eval_every=3, checkpoint_every=3)
    c.eval.num_timelines = 1
  return c

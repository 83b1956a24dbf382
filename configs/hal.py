r"""HAL (docs/methods/hal.md): weakly supervised action segmentation from ordered transcripts.

Default: the embedded synthetic dataset with transcripts (generated on first use); training sees
the transcripts of the training videos only, never their frame labels:

  python -m polyseg.main --config=configs/hal.py --workdir=runs/hal

It trains 1,000 steps (validating every 250; about 3 minutes on 2 quiet cores: 2 min 49 s on an AMD
EPYC at commit 640f0f5) and prints the test scores of the checkpoint val chose: segmentation from
the video alone and alignment given the transcript: Acc 69.0, F1@50 50.6 and MoF 83.3 (step 500) in
a fresh environment of 2026-12-05 (segmentation 70.1 / 54.1 at 640f0f5); docs/methods/hal.md:
75.2 / 57.3 / 88.2 (step 250) in an earlier one, with the same code.

Your own features in the MS-TCN layout with `transcripts/<vid>.txt` (one action per line, in order;
test videos also need `groundTruth/` for the metrics):

  python -m polyseg.main --config=configs/hal.py --workdir=runs/bf_hal \
      --config.data.root=/data/breakfast --config.data.split=1

or, without transcripts/, derived from groundTruth/ (the frame labels of training videos are then
read only to derive their transcripts): `--config.data.transcripts=labels`.

`arg` is a comma-separated list of `key=value`:
  variant=hal|nn_viterbi     HAL, or the NN-Viterbi-style baseline on the same backbone
  objective=pseudo|ctc       Viterbi pseudo-labels (default) or CTC for the aligned head
  runlocal=True              tiny model and data for a smoke run
"""

import ml_collections
from ml_collections import config_dict

from polyseg import configlib
from polyseg.engine import config as engine_config


def get_config(arg=None):
  """Returns the HAL config for `arg` (see the module docstring)."""
  args = configlib.parse_arg(arg, known={'variant', 'objective', 'runlocal'})
  variant = configlib.choice(args, 'variant', ('hal', 'nn_viterbi'), 'hal')
  objective = configlib.choice(args, 'objective', ('pseudo', 'ctc'), 'pseudo')
  runlocal = configlib.flag(args, 'runlocal')

  c = engine_config.base_config('hal')
  c.data.split = 1
  c.data.transcripts = 'file'  # 'file': transcripts/<vid>.txt; 'labels': derived from groundTruth/
  c.data.input_dim = config_dict.placeholder(int)  # unset -> read from the features
  c.data.background = ('background',)  # names excluded from Edit / F1 / IoU / IoD (if present)
  # HAL aligns whole videos at their frame rate: data.sample_rate must stay 1 and
  # data.max_train_len unset (crops break transcripts).
  # The synthetic data of configs/diffact.py, with transcripts/ (so the DiffAct upper bound trains
  # on the very same videos).
  c.data.synthetic = configlib.load_config('diffact', f'runlocal={runlocal}').data.synthetic
  # Validation (every choice: checkpoint, and the defaults below): splits/val.split<k>.bundle, else
  # this seeded share of train (its videos' frame labels are read, for the metrics only).
  c.data.val_fraction = 0.15
  c.data.val_seed = 0

  c.model = ml_collections.ConfigDict(
    {
      'dtype': 'float32',  # compute dtype: 'float32' | 'bfloat16' (params stay float32)
      'num_f_maps': 64,
      'num_levels': 5,  # bins of 1, 2, 4, 8, 16 frames
      'layers_per_level': 2,  # dilations 1, 2, ... within a level
      'kernel_size': 5,
      # The slow action latent: bins of 2^action_level frames (None: no latent, NN-Viterbi style).
      'action_level': config_dict.placeholder(int),
      'dropout': 0.2,
      'channel_dropout': 0.3,
    }
  )
  c.model.action_level = 3 if variant == 'hal' else None

  c.align = ml_collections.ConfigDict(
    {
      'length_model': 'poisson',  # 'poisson' (means from the transcripts) | 'uniform'
      # Mean segment lengths from the training transcripts and video lengths: 'uniform' (the same
      # for every class) | 'least_squares' (per class; ill-posed when actions occur together).
      'mean_lengths': 'uniform',
      'max_length_factor': 3.0,  # longest segment = factor x the longest mean length
      # Frame scores log p(c|x) - a log p(c), p(c) the class prior of the training transcripts
      # (1: NN-Viterbi's scaled likelihoods; 0: posteriors).
      'prior_normalization': 1.0,
    }
  )

  c.loss = ml_collections.ConfigDict(
    {
      'objective': objective,  # 'pseudo': CE on the Viterbi alignment | 'ctc' (tasks/hal.py)
      'action_ce': 1.0,
      'frame_ce': 1.0,
      'ctc': 1.0,
      'smooth': 0.15,
      'sparse': 0.5,  # sparse-transition penalty on the latent
      # Video-level classification of the latent (the transcript's actions): not in the paper, and
      # the NN-Viterbi-style baseline has no latent to give it to; > 0 is the ablation row.
      'presence': 0.0,
    }
  )

  # Self-training drifts: on the synthetic data the val F1@50 of the segmentation peaks at 1000
  # steps and falls after (benchmarks/quality.py --task=hal_defaults; docs/methods/hal.md); the
  # best checkpoint on val is the one tested.
  c.train.update(num_steps=1000, eval_every=250, checkpoint_every=250)
  c.eval.update(
    decode='grammar',  # 'grammar': best training transcript, then aligned | 'argmax'
    decode_batch=16,  # training transcripts aligned at once
  )

  if runlocal:
    c.model.update(num_f_maps=16, num_levels=3, layers_per_level=1)
    if variant == 'hal':
      c.model.action_level = 2
    c.train.update(num_steps=6, log_every=2, eval_every=3, checkpoint_every=3)
    c.eval.num_timelines = 1
  return c

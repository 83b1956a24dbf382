r"""Polyphony (docs/methods/polyphony.md): both hands segmented at once, in three stages.

Default: the embedded synthetic two-hand dataset (generated on first use: stage-1 features, i.e. a
shared feature and each hand's logits per frame); runs stage 2 (semantic conditioning with MiniLM-L6,
needs the 'text' install in the README) and stage 3 (the two-hand diffusion segmenter):

  python -m polyseg.main --config=configs/polyphony.py --workdir=runs/polyphony

It runs stage 2 (1,000 steps) and stage 3 (900 steps), 5-6 minutes on 2 CPU cores (4 min 57 s to
5 min 59 s on an AMD EPYC, by the hour's speed; docs/methods/polyphony.md), and prints
per hand and for their mean and gap, near test Acc LH 76 / RH 87 and F1@50 LH 62 / RH 88
(docs/methods/polyphony.md).

Each stage on its own (`--config.stage=1`, `2` or `3`; or `1,2,3`). A stage reads the previous stage's
output in the workdir (`<workdir>/stage<k>/dataset`) when there is one, else `--config.data.root`:

  # stage 1 (ADH-ViT) on videos/<vid>.mp4|.npy + groundTruth/{lh,rh}/ (HA-ViD / ATTACH layout)
  python -m polyseg.main --config=configs/polyphony.py:dataset=havid,vit=vit_b \
      --workdir=runs/havid --config.stage=1,2,3 --config.data.root=/data/havid
  # stage 3 alone on MAS features you already have (features/{lh,rh}/<vid>.npy)
  python -m polyseg.main --config=configs/polyphony.py:dataset=havid --workdir=runs/havid3 \
      --config.stage=3 --config.data.root=/data/havid_mas --config.data.features=all
  # Breakfast mode: single-stream features and labels, the same labels for both hands
  python -m polyseg.main --config=configs/polyphony.py:dataset=breakfast --workdir=runs/bf \
      --config.stage=3 --config.data.root=/data/breakfast

`arg` is a comma-separated list of `key=value`:
  dataset=synthetic|havid|attach|breakfast   data and model sizes (breakfast: single-stream layout)
  ablation=full|mf|mf_af|no_fusion|no_weighting|no_fusion_weighting   the paper's ablation rows:
                                  the MAS parts kept (MF = motion features, AF = action logits,
                                  SF = semantic features; full = all three), w/o cross-hand fusion,
                                  w/o adaptive loss weighting, w/o both
  decoder=diffact|conditioned_values   DiffAct's decoder, the paper's (attention values from the noisy
                                  labels only), or polyseg's switch whose attention values see the
                                  condition too (not in the paper; as for HopaDIFF:
                                  nn/layers.py ConvAttentionLayer)
  vit=tiny|vit_b                  stage-1 ViT size (vit_b: the paper's ViT-B/16, 16 frames, 224 px)
  runlocal=True                   tiny models and data for a smoke run
"""

from polyseg import configlib
from polyseg.methods.polyphony import stage1 as adh_vit
from polyseg.methods.polyphony import stage2 as semantic

# dataset -> (DiffAct config it starts from, data layout, stage-3 training budget). HA-ViD / ATTACH:
# the model sizes of the reference code's HA-ViD config, which are DiffAct's Breakfast settings
# (encoder 12 x 256, decoder 8 x 128, soft labels of sigma 4, boundary sigma 3, median filter 15).
# Synthetic: 900 steps, chosen on val (docs/methods/polyphony.md: the smallest budget whose
# val-chosen checkpoint, over seeds 0-2, is within a point of 1,200 steps' in mean F1@50 and Acc).
DATASETS = {
  'synthetic': ('synthetic', 'two_hands', {'num_steps': 900, 'eval_every': 150}),
  'havid': ('breakfast', 'two_hands', {'num_steps': 20000, 'eval_every': 500}),
  'attach': ('breakfast', 'two_hands', {'num_steps': 20000, 'eval_every': 500}),
  'breakfast': ('breakfast', 'single_stream', {'num_steps': 100000, 'eval_every': 5000}),
}
ABLATIONS = {  # row -> (MAS parts kept, cross-hand fusion, adaptive loss weighting)
  'full': ('mf+af+sf', True, True),
  'mf': ('mf', True, True),
  'mf_af': ('mf+af', True, True),
  'no_fusion': ('mf+af+sf', False, True),
  'no_weighting': ('mf+af+sf', True, False),
  'no_fusion_weighting': ('mf+af+sf', False, False),
}


def get_config(arg=None):
  """Returns the Polyphony config for `arg` (see the module docstring)."""
  args = configlib.parse_arg(arg, known={'dataset', 'ablation', 'decoder', 'vit', 'runlocal'})
  dataset = configlib.choice(args, 'dataset', DATASETS, 'synthetic')
  ablation = configlib.choice(args, 'ablation', ABLATIONS, 'full')
  decoder = configlib.choice(args, 'decoder', ('diffact', 'conditioned_values'), 'diffact')
  vit = configlib.choice(args, 'vit', ('tiny', 'vit_b'), 'tiny')
  runlocal = configlib.flag(args, 'runlocal')
  base, layout, budget = DATASETS[dataset]
  parts, with_fusion, with_weighting = ABLATIONS[ablation]

  # Stage 3 is DiffAct per hand: start from DiffAct's settings for a dataset of that kind.
  c = configlib.load_config('diffact', f'dataset={base},runlocal={runlocal}')
  c.task = 'polyphony'
  c.stage = '2,3'  # which stages `--mode=train` runs: '1', '2', '3' or consecutive ones ('1,2,3')

  c.data.layout = layout  # 'two_hands' (groundTruth/{lh,rh}/) | 'single_stream' (Breakfast mode)
  c.data.features = parts if layout == 'two_hands' else 'all'  # MAS parts (mas.json) or 'all'
  c.data.synthetic = {'seed': 0}  # synthetic.make_two_hands arguments (defaults otherwise)

  c.model.fusion = with_fusion  # cross-hand fusion of the decoder conditions
  c.model.decoder.condition_in_value = decoder == 'conditioned_values'

  # Paper (docs/methods/polyphony.md): Adam 1e-3, lambda_smooth 0.05, lambda_boundary 0.2, 5-step DDIM.
  c.optim.learning_rate = 1e-3
  c.loss.update(encoder_ce=1.0, decoder_ce=1.0, encoder_smooth=0.05, decoder_smooth=0.05)
  c.loss.decoder_boundary = 0.2
  c.loss.weight_soft_labels = True  # each hand's class weights, with soft labels too (the paper)
  c.loss.adaptive = {'enabled': with_weighting, 'window': 5, 'gap': 0.95, 'max_boost': 2.0}
  c.diffusion.update(sampling_steps=5, eta=0.0)  # deterministic DDIM, as the paper samples
  if not runlocal:
    c.train.update(checkpoint_every=budget['eval_every'], **budget)

  c.stage1 = adh_vit.default_config(vit)
  c.stage2 = semantic.default_config()
  if runlocal:
    c.data.synthetic.update(num_videos=9, min_len=120, max_len=160)
    c.stage1.update(num_steps=4, batch_size=4, eval_every=2, checkpoint_every=2)
    c.stage2.train.num_epochs = 2
  return c

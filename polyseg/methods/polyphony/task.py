"""Polyphony task (docs/methods/polyphony.md): both hands segmented at once; stage 3 of the three stages.

Stages 1 (ADH-ViT, `stage1.py`) and 2 (semantic conditioning, `stage2.py`)
write features; `prepare` runs the ones `config.stage` asks for, each reading the previous stage's
output in the workdir (else `config.data.root`, else the synthetic two-hand dataset), and points stage 3
at the result. Stage 3 is this task, a `DiffusionTask` with a label chain per hand: one shared
DiffAct encoder over each hand's (MAS) features,
cross-hand fusion of the decoder conditions, one decoder per hand with its own diffusion time and
condition mask, hand-specific class weights, each hand's loss halved, and adaptive loss weighting: the
hand whose mean validation accuracy over the last `window` evaluations lags the other's by more than
`1 - gap` gets its decoder losses multiplied by clip(ratio, 1, max_boost). The weights live in the
train state (`task_state`), so they are checkpointed and really scale the gradients (the reference
code computes them and never applies them).

Rows: 'LH' and 'RH' (each scored against its own hand's labels), plus the summary rows 'mean' (which
picks the best checkpoint) and 'gap' (RH - LH). Predictions are written as predictions/lh/<vid>.txt and
predictions/rh/<vid>.txt, like the ground truth.
"""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from polyseg.core import postprocess
from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.data import pipeline
from polyseg.data import synthetic
from polyseg.data import tfds
from polyseg.engine import diffusion_task
from polyseg.engine import parallel
from polyseg.engine import task as task_lib
from polyseg.methods.diffact import task as diffact
from polyseg.methods.polyphony import fusion
from polyseg.methods.polyphony import model as polyphony
from polyseg.nn import asformer
from polyseg.nn import layers

HANDS = polyphony.HANDS
ROWS = tuple(hand.upper() for hand in HANDS)  # 'LH', 'RH'
STAGES = (1, 2, 3)
LAYOUTS = ('two_hands', 'single_stream')
# MAS feature parts (mas.json written by stage 2) kept by `config.data.features`.
FEATURE_PARTS = {
  'mf': ('shared',),
  'mf+af': ('shared', 'logits'),
  'mf+af+sf': ('shared', 'logits', 'semantic'),
}
MAS_FILE = 'mas.json'


# ---------------------------------------------------------------------------------------------
# Stages.


def parse_stages(stage: str | int) -> tuple[int, ...]:
  """config.stage ('2,3', '1', '1,2,3', 3, ...) -> sorted consecutive stage numbers."""
  try:
    stages = tuple(sorted({int(s) for s in str(stage).split(',') if s.strip()}))
  except ValueError:
    stages = ()
  if (
    not stages
    or not set(stages) <= set(STAGES)
    or stages != tuple(range(stages[0], stages[-1] + 1))
  ):
    raise ValueError(
      f'config.stage={stage!r}: give consecutive stages out of 1, 2, 3 (e.g. 3, 2,3 or 1,2,3)'
    )
  return stages


def stage_output(workdir: str | os.PathLike, stage: int) -> pathlib.Path:
  """Where stage 1 or 2 writes its dataset (a complete two-hands root) under the workdir."""
  return pathlib.Path(workdir) / f'stage{stage}' / 'dataset'


def input_root(config: ml_collections.ConfigDict, frames: bool = False) -> pathlib.Path:
  """`config.data.root`, or the synthetic two-hand dataset (stage-2 input layout; with `frames`,
  also raw frames for stage 1), generated on first use."""
  if config.data.root:
    return pathlib.Path(os.path.expanduser(config.data.root))
  kwargs = config.data.synthetic.to_dict()
  if frames:
    kwargs['frames'] = True
  return synthetic.ensure_two_hands(os.path.expanduser(config.data.cache_dir), **kwargs)


def stage_input(config, workdir, stage: int, ran: dict[int, pathlib.Path]) -> pathlib.Path:
  """What `stage` reads: the previous stage's output from this run or from an earlier run in the
  same workdir, else `config.data.root` (or the synthetic data)."""
  if stage - 1 in ran:
    return ran[stage - 1]
  if stage > 1 and stage_output(workdir, stage - 1).is_dir():
    return stage_output(workdir, stage - 1)
  return input_root(config, frames=stage == 1)


def prepare(config: ml_collections.ConfigDict, workdir: str, mode: str):
  """Runs stages 1 and 2 as `config.stage` asks (train mode only) and returns the stage-3 config, its
  data root set to what stage 3 reads; None when stage 3 is not asked for."""
  from polyseg.methods.polyphony import stage1  # the stages' own dependencies load when they run
  from polyseg.methods.polyphony import stage2

  stages = parse_stages(config.stage) if mode == 'train' else (3,)
  layout = check_layout(config.data.layout)
  if layout == 'single_stream' and stages != (3,):
    raise ValueError(
      'data.layout=single_stream (the same labels for both hands) runs stage 3 only: '
      'set --config.stage=3 and give the features with --config.data.root'
    )
  runners = {1: stage1.run, 2: stage2.run}
  ran = {}
  for stage in stages:
    if stage == 3:
      break
    root = stage_input(config, workdir, stage, ran)
    print(f'Polyphony stage {stage} reads {root}', flush=True)
    ran[stage] = pathlib.Path(runners[stage](getattr(config, f'stage{stage}'), workdir, root))
    print(f'Polyphony stage {stage} wrote {ran[stage]}', flush=True)
  if 3 not in stages:
    return None
  stage3 = ml_collections.ConfigDict(config.to_dict())  # the caller's config stays as it was
  if layout == 'two_hands':
    stage3.data.root = str(stage_input(config, workdir, 3, ran))
  elif not config.data.root:
    raise ValueError('data.layout=single_stream needs --config.data.root (MS-TCN layout)')
  print(f'Polyphony stage 3 reads {stage3.data.root}', flush=True)
  return stage3


def check_data(config: ml_collections.ConfigDict, workdir: str) -> dataset_lib.Data:
  """What `--config.data.check_only` validates (polyseg.data.check), without running a stage: the
  input of the first stage of `config.stage`, read by that stage's reader. Stage 1: the raw videos
  of `input_root` (labels [T, 2], video files located but not decoded; no features), stage 2: the
  stage-1 features (`formats.read_hand_streams`), stage 3: `load_data` of what `prepare` points it
  at (`prepare` runs nothing then, and refuses earlier stages with data.layout=single_stream)."""
  from polyseg.methods.polyphony import stage1  # the stages' own dependencies load when they run
  from polyseg.methods.polyphony import stage2

  stage = parse_stages(config.stage)[0]
  if stage == 3 or check_layout(config.data.layout) == 'single_stream':
    return load_data(prepare(config, workdir, 'train'))
  root = input_root(config, frames=stage == 1)
  print(f'Polyphony stage {stage} reads {root}', flush=True)
  if stage == 1:
    classes, subsets = stage1.read_subsets(root, config.stage1.split)
    train, val = stage1.train_val(root, subsets, config.stage1)
    dims, read_test = {}, lambda: subsets['test']
  else:
    s = config.stage2
    train_set, val = stage2.training_data(root, s.split, s.val_fraction, s.seed)
    classes, train, dims = train_set.classes, train_set.videos, train_set.input_dims
    read_test = lambda: formats.read_hand_streams(root, 'test', s.split, classes, dims).videos
  background = tuple(classes.index(n) for n in config.data.background if n in classes)
  return dataset_lib.Data(
    dataset_lib.DataInfo(tuple(classes), dims, background), train, val, read_test
  )


# ---------------------------------------------------------------------------------------------
# Data.


def check_layout(layout: str) -> str:
  if layout not in LAYOUTS:
    raise ValueError(f'data.layout={layout!r}; choose one of {LAYOUTS}')
  return layout


def feature_columns(root: pathlib.Path, parts: str) -> slice:
  """The columns of the MAS features kept by `data.features` ('all' or a FEATURE_PARTS key), from
  `<root>/mas.json` ({"shared": Ds, "logits": C, "semantic": S}, written by stage 2)."""
  if parts == 'all':
    return slice(None)
  if parts not in FEATURE_PARTS:
    raise ValueError(f'data.features={parts!r}; choose one of {["all", *FEATURE_PARTS]}')
  path = root / MAS_FILE
  if not path.exists():
    raise formats.DataError(
      f'{path} not found: data.features={parts!r} needs the MAS part sizes written by stage 2 '
      "(use data.features='all' for other features)"
    )
  try:
    sizes = json.loads(path.read_text())
    widths = [int(sizes[part]) for part in ('shared', 'logits', 'semantic')]
  except (ValueError, KeyError, TypeError) as e:
    raise formats.DataError(
      f'{path}: expected {{"shared", "logits", "semantic"}} sizes: {e}'
    ) from e
  return slice(0, sum(widths[: len(FEATURE_PARTS[parts])]))


def _keep_columns(video: formats.MultiStreamVideo, columns: slice) -> formats.MultiStreamVideo:
  features = {hand: np.ascontiguousarray(x[:, columns]) for hand, x in video.features.items()}
  return formats.MultiStreamVideo(video.name, features, video.labels)


def _both_hands(video: formats.Video) -> formats.MultiStreamVideo:
  """A single-stream video as two hands with the same features and labels (Breakfast mode)."""
  return formats.MultiStreamVideo(
    video.name, dict.fromkeys(HANDS, video.features), np.stack([video.labels] * 2, axis=1)
  )


def load_data(config: ml_collections.ConfigDict) -> dataset_lib.Data:
  """Train / val / test of `config.data.root` (set by `prepare`), from the folder or, with
  data.format='tfds', from its TFDS conversion (`dataset_lib.load_splits`). Val is
  `splits/val.split<k>.bundle`, or a seeded `data.val_fraction` of train when the dataset has none
  (never test: adaptive weighting and checkpoint selection read it)."""
  d = config.data
  check_layout(d.layout)
  if not d.root:
    raise ValueError(
      "config.data.root is unset: Polyphony's stage 3 reads the features stage 2 writes; run it "
      'through polyseg.main (its stages), or set --config.data.root to <workdir>/stage2/dataset'
    )
  root = pathlib.Path(os.path.expanduser(d.root))
  single = d.layout == 'single_stream'
  reader = formats.read_single_stream if single else formats.read_two_hands

  def read_folder(subset: str, classes, train) -> formats.Dataset | formats.MultiStreamDataset:
    del train  # every subset is checked against data.input_dim
    return reader(root, subset, d.split, classes, d.input_dim)

  paths = ('features',) if single else tuple(f'features/{hand}' for hand in HANDS)
  spec = tfds.Spec(d.layout, split=d.split)
  classes, splits, read_test, shard = dataset_lib.load_splits(
    config, root, spec, read_folder, dict.fromkeys(paths, d.input_dim)
  )
  if single:
    as_hands = lambda videos: [_both_hands(v) for v in videos]
  else:
    columns = feature_columns(root, d.features)
    as_hands = lambda videos: [_keep_columns(v, columns) for v in videos]
  splits = {k: as_hands(videos) for k, videos in splits.items()}
  background = tuple(classes.index(n) for n in d.background if n in classes)
  input_dim = int(splits['train'][0].features[HANDS[0]].shape[1])
  info = dataset_lib.DataInfo(tuple(classes), input_dim, background)
  return dataset_lib.Data(
    info, splits['train'], splits['val'], lambda: as_hands(read_test()), train_shard=shard
  )


def load_unlabelled(config: ml_collections.ConfigDict, info: dataset_lib.DataInfo) -> list:
  """The videos of `config.predict.features`: `features/<hand>/<vid>.npy` (or `features/<vid>.npy`
  for both hands, or a folder of `<vid>.npy` with data.layout=single_stream), without labels."""
  root = pathlib.Path(os.path.expanduser(config.predict.features))
  if config.data.layout == 'single_stream':
    return [
      formats.MultiStreamVideo(name, dict.fromkeys(HANDS, x))
      for name, x in formats.read_feature_folder(root, input_dim=info.input_dim)
    ]
  folders = {hand: root / 'features' / hand for hand in HANDS}
  if not folders[HANDS[0]].is_dir():
    folders = dict.fromkeys(HANDS, root / 'features')
  columns = feature_columns(root, config.data.features)
  per_hand = {hand: dict(formats.read_feature_folder(folder)) for hand, folder in folders.items()}
  names = {hand: sorted(videos) for hand, videos in per_hand.items()}
  if names['lh'] != names['rh']:
    raise formats.DataError(
      f'{root}: the hands have different videos: only lh {sorted(set(names["lh"]) - set(names["rh"]))}, '
      f'only rh {sorted(set(names["rh"]) - set(names["lh"]))}'
    )
  videos = []
  for name in names['lh']:
    features = {hand: per_hand[hand][name][:, columns] for hand in HANDS}
    if len(features['lh']) != len(features['rh']):
      raise formats.DataError(
        f'{root}: {name} has {len(features["lh"])} lh frames but {len(features["rh"])} rh frames'
      )
    if features['lh'].shape[1] != info.input_dim:
      raise formats.DataError(
        f'{folders["lh"] / name}.npy: feature dimension {features["lh"].shape[1]} (after '
        f'data.features={config.data.features!r}), the model expects {info.input_dim}'
      )
    videos.append(formats.MultiStreamVideo(name, features))
  return videos


# ---------------------------------------------------------------------------------------------
# Adaptive loss weighting.


def hand_boosts(task_state, window: int, gap: float, max_boost: float) -> jax.Array:
  """Decoder-loss multipliers [2] (HANDS order) from the validation accuracies of the last `window`
  evaluations: ratio r = mean_lh / mean_rh; r < gap boosts LH by clip(1 / r, 1, max_boost), 1 / r < gap
  boosts RH by clip(r, 1, max_boost); 1 before the first evaluation."""
  accs, count = task_state['val_acc'], task_state['num_evals']
  recent = jnp.arange(accs.shape[1]) >= accs.shape[1] - jnp.minimum(count, window)
  mean = jnp.sum(accs * recent, axis=1) / jnp.maximum(jnp.sum(recent), 1)
  eps = 1e-6
  ratio = (mean[0] + eps) / (mean[1] + eps)
  lh = jnp.where(ratio < gap, jnp.clip(1 / ratio, 1.0, max_boost), 1.0)
  rh = jnp.where(1 / ratio < gap, jnp.clip(ratio, 1.0, max_boost), 1.0)
  return jnp.where(count > 0, jnp.stack([lh, rh]), jnp.ones(2))


# ---------------------------------------------------------------------------------------------
# The task.


class Task(diffusion_task.DiffusionTask, task_lib.SingleLabelTask):
  """Polyphony stage 3: see the module docstring and `polyseg.engine.task` for the interface."""

  rows = ROWS
  main_row = 'mean'

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    info: dataset_lib.DataInfo,
    train_videos: list[formats.MultiStreamVideo] | None = None,
  ):
    m, num_classes = config.model, len(info.classes)
    model = polyphony.PolyphonyModel(
      encoder=asformer.make_encoder(m, num_classes),
      lh_decoder=asformer.make_decoder(m, num_classes),
      rh_decoder=asformer.make_decoder(m, num_classes),
      fusion=fusion.CrossHandFusion(dtype=layers.compute_dtype(m.dtype)) if m.fusion else None,
    )
    super().__init__(config, info, model, HANDS)
    self.class_weights = None  # [2, C]: each hand's own, from its training frames
    if train_videos is not None and diffact.uses_class_weights(config.loss):
      counts = np.stack(
        [
          np.sum([np.bincount(v.labels[:, h], minlength=self.num_classes) for v in train_videos], 0)
          for h in range(len(HANDS))
        ]
      )
      counts = parallel.sum_over_processes(counts.astype(np.float64))
      self.class_weights = jnp.asarray(np.stack([pipeline.class_weights(c) for c in counts]))

  # -- data ---------------------------------------------------------------------------------

  @staticmethod
  def _fields(video: formats.MultiStreamVideo):
    """Per-frame arrays of a training video: each hand's features and labels [T, 2]."""
    return {**{hand: video.features[hand] for hand in HANDS}, 'labels': video.labels}, {}

  @staticmethod
  def _hand_boundaries(labels: np.ndarray, sigma: float | None) -> np.ndarray:
    """Each hand's boundary target: labels [T, 2] -> [T, 2]."""
    return np.stack([pipeline.boundary_target(labels[:, h], sigma) for h in range(len(HANDS))], 1)

  def train_loader(self, videos, **overrides) -> pipeline.TrainLoader:
    return pipeline.TrainLoader.from_config(
      videos, self.config, fields=self._fields, boundary=self._hand_boundaries, **overrides
    )

  def example_batch(self) -> dict[str, np.ndarray]:
    t = 8
    batch = {hand: np.zeros((1, t, self.info.input_dim), np.float32) for hand in HANDS}
    batch.update(
      labels=np.zeros((1, t, len(HANDS)), np.int32),
      boundary=np.zeros((1, t, len(HANDS)), np.float32),
      mask=np.ones((1, t), np.float32),
    )
    return batch

  # -- adaptive loss weights --------------------------------------------------------------------------------

  def initial_task_state(self):
    """Validation accuracies of the last `window` evaluations per hand [2, window] (%, newest
    last) and the number of evaluations so far."""
    window = self.config.loss.adaptive.window
    return {
      'val_acc': jnp.zeros((len(HANDS), window), jnp.float32),
      'num_evals': jnp.zeros((), jnp.int32),
    }

  def update_task_state(self, task_state, val_results):
    acc = jnp.stack([jnp.asarray(val_results[row]['Acc'], jnp.float32) for row in ROWS])
    val_acc = jnp.roll(task_state['val_acc'], -1, axis=1).at[:, -1].set(acc)
    return {'val_acc': val_acc, 'num_evals': task_state['num_evals'] + 1}

  def boosts(self, task_state) -> jax.Array:
    """The decoder-loss multipliers [2] the current state gives (1, 1 when weighting is off)."""
    a = self.config.loss.adaptive
    if not a.enabled:
      return jnp.ones(len(HANDS))
    return hand_boosts(task_state, a.window, a.gap, a.max_boost)

  # -- the diffusion task's parts -----------------------------------------------------------

  def model_inputs(self, batch: dict) -> dict:
    return {hand: batch[hand] for hand in HANDS}

  def targets(self, batch: dict) -> dict[str, diffusion_task.Target]:
    """Each hand denoises its own labels, with its own boundary target."""
    targets = {}
    for h, hand in enumerate(HANDS):
      labels = batch['labels'][..., h]
      y01 = jax.nn.one_hot(labels, self.num_classes)
      targets[hand] = diffusion_task.Target(y01, labels, batch['boundary'][..., h])
    return targets

  def loss_keys(self, rng: jax.Array) -> diffusion_task.LossKeys:
    """(encoder, projection, decoder, *hands) = split(rng, 5), (noise, condition) = split(hand):
    each hand draws its own diffusion time and condition mask."""
    k_enc, k_proj, k_dec, *k_hands = jax.random.split(rng, 3 + len(HANDS))
    noise, condition = {}, {}
    for hand, key in zip(HANDS, k_hands):
      noise[hand], condition[hand] = jax.random.split(key)
    return diffusion_task.LossKeys(k_enc, k_proj, k_dec, noise, condition)

  def loss_terms(self, batch, encoder_logits, decoder_logits, task_state):
    """0.5 * sum over hands of (encoder terms + boost_hand * decoder terms). Terms
    '<hand>/<term>' and '<hand>/boost'."""
    w, mask = self.config.loss, batch['mask']
    boosts = self.boosts(task_state)
    total, terms = 0.0, {}
    for h, hand in enumerate(HANDS):
      labels, boundary = batch['labels'][..., h], batch['boundary'][..., h]
      weights = None if self.class_weights is None else self.class_weights[h]
      enc = diffact.encoder_terms(encoder_logits[hand], labels, mask, w.soft_label, weights)
      dec = diffact.decoder_terms(
        decoder_logits[hand], labels, boundary, mask, w.soft_label, weights
      )
      weighted = lambda part: sum(w[k] * v for k, v in part.items())
      total += 0.5 * (weighted(enc) + boosts[h] * weighted(dec))
      terms.update({f'{hand}/{k}': v for k, v in {**enc, **dec, 'boost': boosts[h]}.items()})
    return total, terms

  def view_inputs(self, video) -> tuple[dict, np.ndarray]:
    views = pipeline.frame_views(video.features, self.config.data.sample_rate, video.name)
    mask = views.pop('mask')
    return views, mask

  # -- prediction ---------------------------------------------------------------------------

  def predict(self, params, video, rng: jax.Array) -> dict[str, np.ndarray]:
    """{'LH': class ids [T], 'RH': class ids [T]} at the full frame rate, post-processed."""
    e, num_frames = self.config.eval, len(video.features[HANDS[0]])
    return {
      row: postprocess.postprocess(
        probs, num_frames, self.config.data.sample_rate, e.postprocess, e.postprocess_value
      )
      for row, probs in zip(ROWS, self.predict_probs(params, video, rng).values())
    }

  # -- rows ---------------------------------------------------------------------------------

  def row_labels(self, video, row: str) -> np.ndarray:
    return video.labels[:, ROWS.index(row)]

  def summarize(self, results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Adds 'mean' (of the hands) and 'gap' (RH - LH) for every metric."""
    lh, rh = results['LH'], results['RH']
    return {
      **results,
      'mean': {k: (lh[k] + rh[k]) / 2 for k in lh},
      'gap': {k: rh[k] - lh[k] for k in lh},
    }

  def prediction_file(self, name: str, row: str) -> str:
    return os.path.join(row.lower(), f'{name}.txt')

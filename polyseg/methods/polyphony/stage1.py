"""Polyphony stage 1, ADH-ViT (docs/methods/polyphony.md): raw two-hand video -> per-frame ViT features.

A video ViT (`models.vit.VideoViT`) with one linear head per hand is trained on short clips with
alternating hands: at step j the active hand is LH if floor(j / Delta) is even, else RH (Delta =
`alternate_every`, 50 in the paper). Every clip of a step's batch is a clip of the active hand
(`video.ClipSampler`: segmental and/or random clip sampling), only that head gets a loss, and only
the backbone and that head are updated (`alternate_heads`: the other head's params and Adam moments
stay as they were). AdamW with a warmup + cosine schedule; `alternate_every = 0` trains both hands
in every batch (the paper's joint-training baseline).

Then every video of every split is mapped to per-frame features: the window of `num_frames` frames
around each frame (16 in the paper, 8 for 'tiny'; edges repeated, `video.frame_windows`) -> the
ViT's `shared` feature [Ds] and both heads' logits [C], in jitted batches of windows.

    root = adh_vit.run(adh_vit.default_config('tiny'), 'runs/poly', '<raw video root>')

Input: the layout of `polyseg.data.video` (videos/<vid>.npy or .mp4/..., groundTruth/{lh,rh}/,
mapping.txt, splits/). Everything stage 1 writes lives in `<workdir>/stage1/`:

    config.json            this stage's config
    frames_<S>/<vid>.npy   [T, S, S, 3] uint8 frames of videos that needed decoding or resizing
    checkpoints/           orbax checkpoints (the latest ones and the best by validation accuracy)
    metrics.jsonl, tensorboard/
    adh_vit.npz            the selected weights, VideoMAE tensor names (`vit.load_pretrained`)
    dataset/               the output: a complete two-hands root, features/shared/<vid>.npy [Ds, T],
                           features/{lh,rh}/<vid>.npy [C, T] (each head's logits)
"""

import io
import json
import os
import pathlib
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from polyseg.data import formats
from polyseg.data import video
from polyseg.engine import checkpoint as checkpoint_lib
from polyseg.engine import metric_writer
from polyseg.engine import task as task_lib
from polyseg.engine import train as train_lib
from polyseg.engine import workdir as workdir_lib
from polyseg.methods.polyphony import vit
from polyseg.nn import layers

BEST_METRIC = 'val_acc'  # checkpoints are ranked by the mean per-frame accuracy of both hands
SUBSETS = ('train', 'val', 'test')


def default_config(size: str = 'tiny') -> ml_collections.ConfigDict:
  """Stage 1's settings for a ViT `size` in vit.SIZES ('tiny': CPU minutes on the synthetic
  frames; 'vit_b': the paper's ViT-B/16, AdamW lr 1e-3 + cosine, Delta = 50)."""
  if size not in vit.SIZES:
    raise ValueError(f'ViT size {size!r}; choose one of {sorted(vit.SIZES)}')
  big = size == 'vit_b'
  c = ml_collections.ConfigDict()
  c.size = size
  c.model = ml_collections.ConfigDict(vit.SIZES[size])  # width, depth, ..., image_size
  if not big:
    c.model.num_frames = 8  # an 8-frame window per frame: half the tokens of 16, on CPU
  c.model.drop_path = 0.1 if big else 0.0  # stochastic depth (VideoMAE fine-tuning: 0.1)
  c.model.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16' (params stay float32)
  c.pretrained = ''  # local .npz / .safetensors with VideoMAE tensor names; '' = from scratch
  c.seed = 0
  c.split = 1  # splits/<subset>.split<k>.bundle of the input root
  c.val_fraction = 0.15  # held out of train (seeded) when the root has no val bundle
  c.alternate_every = 50  # Delta: steps per hand turn; 0 = joint training (both hands per batch)
  c.sampling = 'both'  # clips: 'segmental' | 'random' | 'both' (video.ClipSampler)
  c.batch_size = 8 if big else 32
  c.num_steps = 20000 if big else 600
  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 0.05  # AdamW, on weight matrices only (not biases, norms, q/v biases)
  c.optim.warmup_fraction = 0.1  # of num_steps, linear warmup before the cosine decay
  c.log_every = 50
  c.eval_every = 1000 if big else 150  # steps between validations (each saves a checkpoint)
  c.checkpoint_every = 1000 if big else 150
  c.keep_checkpoints = 2  # the latest ones, plus the best
  c.eval_stride = 4  # validation accuracy on every k-th frame of the validation videos
  c.extract_batch = 16 if big else 128  # windows per jitted feature-extraction call
  return c


# ---------------------------------------------------------------------------------------------
# Model, objective and optimizer.


def active_hand(step, every: int):
  """Index (in formats.HANDS) of the hand trained at `step` (int or array): floor(step / every)
  mod 2, i.e. LH for steps [0, every), RH for [every, 2 every), ..."""
  return (step // every) % 2


def batch_hands(step: int, batch_size: int, every: int) -> np.ndarray:
  """The hand of each clip of the batch at `step` [B] int32: all the active hand, or with
  every = 0 (joint training) LH and RH in turn."""
  if every:
    return np.full(batch_size, active_hand(step, every), np.int32)
  return np.arange(batch_size, dtype=np.int32) % len(formats.HANDS)


class AlternateState(NamedTuple):
  count: jax.Array  # updates done so far (= the train step)
  inner: optax.OptState


def _head_index(path) -> int | None:
  """Which hand head (index in vit.HEADS) a params / optimizer-state leaf belongs to, if any."""
  names = [getattr(key, 'key', None) for key in path]
  return next((i for i, head in enumerate(vit.HEADS) if head in names), None)


def alternate_heads(
  inner: optax.GradientTransformation, every: int
) -> optax.GradientTransformation:
  """`inner` with the inactive hand's head frozen: at update k the head of hand
  1 - active_hand(k, every) gets a zero update and its optimizer moments are kept as they were
  (as PyTorch treats a parameter without gradient); the backbone and the active head follow
  `inner`. Shared counters (schedule, bias correction) advance every update."""

  def init(params):
    return AlternateState(jnp.zeros([], jnp.int32), inner.init(params))

  def update(updates, state, params=None):
    new_updates, new_inner = inner.update(updates, state.inner, params)
    active = active_hand(state.count, every)

    def keep_active(path, new, old):
      head = _head_index(path)
      return new if head is None else jnp.where(head == active, new, old)

    new_updates = jax.tree_util.tree_map_with_path(
      lambda path, new: keep_active(path, new, jnp.zeros_like(new)), new_updates
    )
    new_inner = jax.tree_util.tree_map_with_path(keep_active, new_inner, state.inner)
    return new_updates, AlternateState(state.count + 1, new_inner)

  return optax.GradientTransformation(init, update)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW (decay on weight matrices only) with linear warmup then cosine decay to 0 over
  `num_steps`; the inactive hand's head frozen when `alternate_every` > 0."""
  o = config.optim
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, o.learning_rate, int(o.warmup_fraction * config.num_steps), config.num_steps
  )
  matrices = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)
  tx = optax.adamw(schedule, weight_decay=o.weight_decay, mask=matrices)
  return alternate_heads(tx, config.alternate_every) if config.alternate_every else tx


class ClipClassification(task_lib.Trainable):
  """Stage 1's objective in the engine's task interface (`example_batch`, `init`, `loss`), so that
  `train.init_state` and `train.make_train_step` (one jitted step, state donated, NaN guard) run it.

  Batches: frames [B, F, S, S, 3] uint8, labels [B] int32, hands [B] int32 (index in HANDS): each
  clip's cross-entropy uses the logits of its hand's head only.
  """

  def __init__(self, model: vit.VideoViT):
    self.model = model

  def example_batch(self) -> dict[str, np.ndarray]:
    return {
      'frames': np.zeros((1, *self.model.clip_shape), np.uint8),
      'labels': np.zeros(1, np.int32),
      'hands': np.zeros(1, np.int32),
    }

  def init(self, rng: jax.Array, batch: dict[str, Any]) -> Any:
    return self.model.init(rng, vit.normalize(batch['frames']))['params']

  def loss(self, params: Any, batch: dict[str, Any], rng: jax.Array):
    """(mean cross-entropy, {'acc'}) of each clip under its hand's head (training mode)."""
    out = self.model.apply(
      {'params': params}, vit.normalize(batch['frames']), train=True, rngs={'dropout': rng}
    )
    logits = jnp.where(batch['hands'][:, None] == 0, out['lh'], out['rh'])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels'])
    return ce.mean(), {'acc': (logits.argmax(-1) == batch['labels']).mean()}


def make_apply(model: vit.VideoViT) -> Callable[[Any, np.ndarray], dict[str, jax.Array]]:
  """jit(params, clips [n, F, S, S, 3] uint8) -> {'shared': [n, Ds], 'lh', 'rh': [n, C]}."""
  return jax.jit(lambda params, clips: model.apply({'params': params}, vit.normalize(clips)))


def extract(
  apply: Callable, params: Any, frames: np.ndarray, num_frames: int, batch: int, stride: int = 1
) -> dict[str, np.ndarray]:
  """Per-frame outputs for frames [T, S, S, 3] uint8: {'shared': [T', Ds], 'lh', 'rh': [T', C]}
  float32 of frames 0, stride, 2 stride, ... (T' of them), each from its `num_frames` window
  (`video.frame_windows`). Windows go through `apply` `batch` at a time (the last batch padded),
  so one compiled program serves every video."""
  windows = video.frame_windows(len(frames), num_frames)[::stride]
  count = len(windows)
  windows = np.concatenate([windows, np.repeat(windows[-1:], -count % batch, axis=0)])
  outputs = [apply(params, frames[windows[i : i + batch]]) for i in range(0, len(windows), batch)]
  outputs = jax.device_get(outputs)
  return {k: np.concatenate([o[k] for o in outputs])[:count] for k in outputs[0]}


# ---------------------------------------------------------------------------------------------
# Data.


def read_subsets(
  root: pathlib.Path, split: int
) -> tuple[list[str], dict[str, list[video.RawVideo]]]:
  """(classes, {subset: videos}) for the train and test bundles and the val bundle if any."""
  classes, subsets = None, {}
  for subset in SUBSETS:
    if subset == 'val' and not formats.split_path(root, subset, split).is_file():
      continue
    classes, subsets[subset] = video.read_raw_videos(root, subset, split, classes)
  return classes, subsets


def train_val(
  root: pathlib.Path, subsets: dict[str, list[video.RawVideo]], config: ml_collections.ConfigDict
) -> tuple[list[video.RawVideo], list[video.RawVideo]]:
  """(train, val) videos: the val bundle, else a seeded `val_fraction` of train (never test)."""
  if 'val' in subsets:
    return subsets['train'], subsets['val']
  try:
    held = set(
      formats.hold_out([v.name for v in subsets['train']], config.val_fraction, config.seed)
    )
  except ValueError as e:
    raise formats.DataError(
      f'{formats.split_path(root, "train", config.split)}: no val bundle, and {e}'
    ) from None
  return [v for v in subsets['train'] if v.name not in held], [
    v for v in subsets['train'] if v.name in held
  ]


def load_frames(
  videos: Sequence[video.RawVideo], size: int, cache_dir: pathlib.Path
) -> dict[str, np.ndarray]:
  """{name: frames [T, S, S, 3] uint8} memory-mapped: a `.npy` of size S as it is, anything else
  decoded / resized once into `cache_dir/<vid>.npy`. DataError when T differs from the labels."""
  frames = {}
  for raw in tqdm.tqdm(videos, desc='stage 1 frames', unit='video', leave=False):
    cached = cache_dir / f'{raw.name}.npy'
    if cached.is_file():
      array = video.read_video(cached)
    else:
      array = video.read_video(raw.path, size)
      if not isinstance(array, np.memmap):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        del array
        formats.write_atomic(cached, buffer.getbuffer())
        array = video.read_video(cached)
    if len(array) != len(raw.labels):
      label_file = f'groundTruth/{{{",".join(formats.HANDS)}}}/{raw.name}.txt'
      raise formats.DataError(
        f'{raw.path}: {len(array)} frames but {label_file} has {len(raw.labels)} labels'
      )
    frames[raw.name] = array
  return frames


def clip_batch(
  sampler: video.ClipSampler,
  frames: Sequence[np.ndarray],
  step: int,
  config: ml_collections.ConfigDict,
) -> dict[str, np.ndarray]:
  """The training batch of `step` (see `ClipClassification`) from frames [T, S, S, 3] per video."""
  hands = batch_hands(step, config.batch_size, config.alternate_every)
  videos, indices, labels = sampler.sample(step, hands)
  clips = np.stack([frames[v][i] for v, i in zip(videos, indices, strict=True)])
  return {'frames': clips, 'labels': labels.astype(np.int32), 'hands': hands}


# ---------------------------------------------------------------------------------------------
# Training.


def validate(
  apply: Callable,
  params: Any,
  videos: Sequence[video.RawVideo],
  frames: dict[str, np.ndarray],
  config: ml_collections.ConfigDict,
) -> dict[str, float]:
  """Per-frame accuracy of each hand's head on every `eval_stride`-th frame of `videos`:
  {'acc_lh', 'acc_rh', 'acc' (their mean)}."""
  correct, count = np.zeros(len(formats.HANDS)), 0
  for raw in videos:
    out = extract(
      apply,
      params,
      frames[raw.name],
      config.model.num_frames,
      config.extract_batch,
      config.eval_stride,
    )
    labels = raw.labels[:: config.eval_stride]
    for h, hand in enumerate(formats.HANDS):
      correct[h] += (out[hand].argmax(-1) == labels[:, h]).sum()
    count += len(labels)
  results = {f'acc_{hand}': correct[h] / count for h, hand in enumerate(formats.HANDS)}
  return {**results, 'acc': float(np.mean(list(results.values())))}


def fit(
  config: ml_collections.ConfigDict,
  stage_dir: pathlib.Path,
  model: vit.VideoViT,
  train_videos: Sequence[video.RawVideo],
  val_videos: Sequence[video.RawVideo],
  frames: dict[str, np.ndarray],
) -> Any:
  """Trains the ViT for `num_steps` (resuming from the latest checkpoint in `stage_dir`; a fresh
  run starts from `config.pretrained` when set), validating every `eval_every` steps. Returns the
  params of the best validation (the last step's without validation videos)."""
  task = ClipClassification(model)
  tx = make_optimizer(config)
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  state = train_lib.init_state(task, tx, init_rng)
  ckpt = checkpoint_lib.Checkpointer(
    str(stage_dir), config.keep_checkpoints, BEST_METRIC, owner=True
  )
  state, resumed = ckpt.resume(state)
  if resumed:
    print(f'Stage 1: resumed from {ckpt.directory} at step {int(state["step"])}', flush=True)
  elif config.pretrained:
    state['params'] = vit.load_pretrained(state['params'], os.path.expanduser(config.pretrained))
    print(f'Stage 1: initialised from {config.pretrained}', flush=True)
  every = config.alternate_every
  hands = f'hands alternating every {every} steps' if every else 'both hands in every batch'
  print(
    f'Stage 1: ADH-ViT ({config.size}) with {layers.count_params(state["params"]):,} parameters, '
    f'{len(train_videos)} training and {len(val_videos)} validation videos, {config.num_steps} '
    f'steps, {hands}',
    flush=True,
  )
  sampler = video.ClipSampler(
    [v.labels for v in train_videos], model.num_frames, config.sampling, config.seed
  )
  train_frames = [frames[v.name] for v in train_videos]
  train_step = train_lib.make_train_step(task, tx, step_rng)
  apply = make_apply(model)
  step = int(state['step'])
  writer = metric_writer.MetricWriter(str(stage_dir), resume_step=step if resumed else None)

  def evaluate(step, state):
    if not val_videos:
      return state, None
    results = validate(apply, state['params'], val_videos, frames, config)
    writer.write(step, {f'val/{name}': value for name, value in results.items()})
    return state, {BEST_METRIC: results['acc']}

  state, _ = train_lib.train_loop(
    state,
    train_step,
    lambda step: clip_batch(sampler, train_frames, step, config),
    config,
    ckpt=ckpt,
    writer=writer,
    evaluate=evaluate,
    desc='stage 1',
  )
  step = int(state['step'])
  best = ckpt.best_step()
  params = state['params'] if best is None or best == step else ckpt.restore(state, best)['params']
  ckpt.close()
  if best is not None:
    print(f'Stage 1: features from the best validation checkpoint, step {best}', flush=True)
  return params


# ---------------------------------------------------------------------------------------------
# Features.


def write_features(
  out: pathlib.Path,
  classes: Sequence[str],
  subsets: dict[str, list[video.RawVideo]],
  frames: dict[str, np.ndarray],
  model: vit.VideoViT,
  params: Any,
  config: ml_collections.ConfigDict,
) -> pathlib.Path:
  """Writes the stage-1 output at `out` atomically: features/shared/<vid>.npy [Ds, T] and
  features/{lh,rh}/<vid>.npy [C, T] for every video of `subsets`, with `subsets` as its splits,
  and the input's mapping and labels. Returns `out`."""
  apply = make_apply(model)
  splits = {subset: [v.name for v in videos] for subset, videos in subsets.items()}

  def videos() -> Iterator[formats.MultiStreamVideo]:
    total = sum(map(len, subsets.values()))
    with tqdm.tqdm(total=total, desc='stage 1 features', unit='video') as bar:
      for raw in (v for vs in subsets.values() for v in vs):
        features = extract(apply, params, frames[raw.name], model.num_frames, config.extract_batch)
        yield formats.MultiStreamVideo(raw.name, features, raw.labels)
        bar.update(1)

  return formats.write_two_hands(out, classes, splits, videos(), config.split)


def run(config: ml_collections.ConfigDict, workdir: str, root: str) -> pathlib.Path:
  """Stage 1 on the raw-video root `root`: ViT training (resumable), then the per-frame features
  at `<workdir>/stage1/dataset`, which it returns (as is when already complete)."""
  stage_dir = pathlib.Path(workdir_lib.prepare_workdir(str(pathlib.Path(workdir) / 'stage1')))
  out = stage_dir / 'dataset'
  if (out / 'mapping.txt').is_file():  # written atomically: present means complete
    return out
  root = pathlib.Path(os.path.expanduser(root))
  classes, subsets = read_subsets(root, config.split)
  train_videos, val_videos = train_val(root, subsets, config)
  # The output's bundles say which videos validated: later stages hold out the same ones.
  subsets = {'train': train_videos, 'val': val_videos, 'test': subsets['test']}
  train_lib.write_json(str(stage_dir / 'config.json'), json.loads(config.to_json_best_effort()))
  model = vit.build(config.model, len(classes))
  all_videos = [v for videos in subsets.values() for v in videos]
  frames = load_frames(all_videos, model.image_size, stage_dir / f'frames_{model.image_size}')
  params = fit(config, stage_dir, model, train_videos, val_videos, frames)
  buffer = io.BytesIO()
  np.savez(buffer, **vit.to_state_dict(params))
  formats.write_atomic(stage_dir / 'adh_vit.npz', buffer.getvalue())
  return write_features(out, classes, subsets, frames, model, params, config)

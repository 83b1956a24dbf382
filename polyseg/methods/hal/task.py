"""HAL (docs/methods/hal.md): weakly supervised segmentation from ordered transcripts.

Training videos carry only their transcript (the ordered actions, e.g. background take_bowl
pour_milk background): their frame labels are never read (`load_data` drops them before anything
else sees the videos). The model is `pyramid.PyramidTransformer`; its slow action latent
(bins of w = 2^action_level frames) is aligned to the transcript inside the jitted train step:

  1. Viterbi (`align.align`) of the latent's scaled likelihoods log p(c|x) - log p(c) (no
     gradient; p(c) the class prior of the training transcripts) to the video's transcript with a
     length model: Poisson (or uniform) over segment lengths in bins, with mean lengths estimated
     from the training transcripts and video lengths alone (`align.estimate_mean_lengths`);
  2. CE of the latent (bins) and of the frame head (each frame takes its bin's label) on that
     alignment, the smoothing loss on the frames, and on the latent the sparse-transition penalty.

Not in the paper, off by default (`loss.presence` > 0 turns it on; an ablation row of
benchmarks/quality.py --task=hal): a video-level classification loss on the latent
(`losses.presence_loss`: which actions the transcript names, evidence that does not depend on the
alignment).

This pseudo-label objective is the default because it trains every frame towards a segmentation
that respects the transcript and the length model, the quantity scored. `loss.objective='ctc'`
trains the latent with CTC against the transcript instead (optax; a blank class is added). CTC
sums over all alignments and tends to put each action on a few peaked bins with blank between,
which is a poor frame labelling; it has no length model either. The frame head still learns from
the Viterbi alignment of the latent.

`model.action_level=None` (configs/hal.py:variant=nn_viterbi) is the NN-Viterbi-style baseline on
the same backbone: no latent, no sparse penalty or video-level loss; the frame head is aligned to
the transcript at frame resolution and trained on that.

Prediction, rows:
  Segmentation  from the video alone: grammar decoding (`align.decode`) of the latent against every
                distinct training transcript, then the frame head aligned to the winning
                transcript at frame resolution (eval.decode='argmax': frame-wise argmax instead).
                Scored with Acc (= MoF), Edit, F1@10/25/50.
  Alignment     given the video's transcript (test videos): the frame head aligned to it at frame
                resolution. Scored with MoF, IoU, IoD (`metrics.AlignmentMetrics`).
"""

import dataclasses
import math
import os
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from polyseg.core import losses
from polyseg.core import metrics
from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.data import pipeline
from polyseg.data import synthetic
from polyseg.data import tfds
from polyseg.engine import task as task_lib
from polyseg.methods.hal import align
from polyseg.methods.hal import pyramid
from polyseg.nn import layers

# data.transcripts: read from transcripts/<vid>.txt, or derived from the labels in groundTruth/
TRANSCRIPT_SOURCES = ('file', 'labels')
OBJECTIVES = ('pseudo', 'ctc')
LENGTH_MODELS = ('poisson', 'uniform')
DECODERS = ('grammar', 'argmax')
MAX_LEVELS = 7  # bins of up to 2^6 frames: batches are padded to multiples of 64 frames
PRIOR_FLOOR = 1e-3  # smallest class prior the alignment scores divide by


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
  if value not in choices:
    raise ValueError(f'config.{name}={value!r}; choose one of {choices}')
  return value


def dataset_root(config: ml_collections.ConfigDict) -> pathlib.Path:
  """`config.data.root`, or the synthetic single-stream dataset with transcripts/ (made on first
  use)."""
  if config.data.root:
    return pathlib.Path(os.path.expanduser(config.data.root))
  cache = os.path.expanduser(config.data.cache_dir)
  return synthetic.ensure_transcripts(cache, **config.data.synthetic.to_dict())


def _read_subset(
  config, root: pathlib.Path, subset: str, classes, input_dim, labels: bool, names=None
) -> formats.Dataset:
  """TranscriptVideos of a subset, with frame labels if `labels` (transcripts/ files are then
  checked against them; derived transcripts need them, and the caller drops them from training
  videos). `names` (transcripts/ files only) reads just those videos of the subset."""
  d = config.data
  if d.transcripts == 'file':
    return formats.read_transcripts(root, subset, d.split, classes, input_dim, labels, names)
  dataset = formats.read_single_stream(root, subset, d.split, classes, input_dim)
  videos = [
    formats.TranscriptVideo(
      v.name, v.features, v.labels, transcript=formats.segment_classes(v.labels)
    )
    for v in dataset.videos
  ]
  return formats.Dataset(dataset.classes, videos)


def _check_labelled(root: pathlib.Path, subset: str, videos: list) -> list:
  if any(v.labels is None for v in videos):
    raise formats.DataError(f'{root}: {subset} videos need groundTruth/ for the metrics')
  return videos


def _read(config, root: pathlib.Path) -> tuple[formats.Dataset, list, Callable[[], list]]:
  """(train, val videos, read_test): TranscriptVideos from the folder or the TFDS conversion. Val
  and test carry frame labels (for the metrics); val is the val bundle, else a seeded
  `data.val_fraction` of train (`formats.hold_out`), whose frame labels are then read for it alone.
  `read_test()` reads the test videos (no test file is opened before)."""
  d = config.data
  classes = tuple(d.classes) if d.classes else None
  _check_choice('data.transcripts', d.transcripts, TRANSCRIPT_SOURCES)
  if tfds.check_format(d.format) == 'tfds':
    if d.transcripts != 'file':
      raise ValueError("config.data.format='tfds' reads transcripts/ (data.transcripts='file')")
    spec = tfds.Spec('transcripts', split=d.split)
    subsets, read_records = tfds.load(
      root,
      d.tfds_dir,
      spec,
      classes=classes,
      dims={'features': d.input_dim},
      hold_out=(d.val_fraction, d.val_seed),
    )
    read_test = lambda: _check_labelled(root, 'test', read_records().videos)
    return subsets['train'], _check_labelled(root, 'val', subsets['val'].videos), read_test
  formats.require_split(root, 'test', d.split)
  train = _read_subset(config, root, 'train', classes, d.input_dim, labels=False)
  read_labelled = lambda subset, names=None: (
    _read_subset(
      config, root, subset, train.classes, train.input_dim, labels=True, names=names
    ).videos
  )
  if formats.split_path(root, 'val', d.split).exists():
    val = read_labelled('val')
  else:
    names = [v.name for v in train.videos]
    where = f'{formats.split_path(root, "train", d.split)}: no val bundle'
    kept, held = formats.hold_out_split(names, d.val_fraction, d.val_seed, where)
    val = [train.videos[i] for i in held]
    if val[0].labels is None:  # transcripts/ files: read the frame labels of these videos alone
      val = read_labelled('train', [v.name for v in val])
    train = formats.Dataset(train.classes, [train.videos[i] for i in kept])
  return train, val, lambda: read_labelled('test')


def _transcript_file(config, root: pathlib.Path, name: str) -> pathlib.Path:
  folder = 'transcripts' if config.data.transcripts == 'file' else 'groundTruth'
  return root / folder / f'{name}.txt'


def window(config: ml_collections.ConfigDict) -> int:
  """Frames per bin of the alignment: 2^model.action_level (1 without the latent)."""
  level = config.model.action_level
  return 1 if level is None else 2**level


def load_data(config: ml_collections.ConfigDict) -> dataset_lib.Data:
  """Train (transcripts only: labels dropped here), val and test (labels and transcripts) of the
  MS-TCN layout with transcripts. `task_info` holds what training learned from the transcripts: the
  grammar (the distinct training transcripts, in order of appearance), the mean segment length per
  class in frames, the class prior (the expected share of frames of each class: occurrences in the
  transcripts times mean length) and the most frames per action any training video needs."""
  d = config.data
  if d.sample_rate != 1 or d.max_train_len:
    raise ValueError(
      'HAL aligns whole videos at their frame rate: data.sample_rate must be 1 and '
      'data.max_train_len unset (a crop would not match its transcript)'
    )
  root = dataset_root(config)
  train, val, read_test = _read(config, root)
  bins = window(config)

  def check_bins(videos: list) -> list:
    for video in videos:
      if len(video.transcript) > math.ceil(len(video.features) / bins):
        raise formats.DataError(
          f'{_transcript_file(config, root, video.name)}: {len(video.transcript)} actions, but '
          f'the video has only {len(video.features)} frames = '
          f'{math.ceil(len(video.features) / bins)} bins of {bins} (model.action_level): at most '
          'one action per bin'
        )
    return videos

  check_bins([*train.videos, *val])
  weak = [dataclasses.replace(v, labels=None) for v in train.videos]
  transcripts = [v.transcript for v in weak]
  grammar = list(dict.fromkeys(tuple(int(c) for c in t) for t in transcripts))
  means = align.estimate_mean_lengths(
    transcripts,
    [len(v.features) for v in weak],
    len(train.classes),
    method=config.align.mean_lengths,
  )
  occurrences = np.bincount(np.concatenate(transcripts), minlength=len(train.classes))
  frames = occurrences * means  # expected frames per class
  task_info = {
    'grammar': [list(t) for t in grammar],
    'mean_lengths': [float(m) for m in means],
    'class_prior': [float(f) for f in frames / frames.sum()],
    'max_frames_per_action': max(math.ceil(len(v.features) / len(v.transcript)) for v in weak),
  }
  background = tuple(train.classes.index(n) for n in d.background if n in train.classes)
  info = dataset_lib.DataInfo(tuple(train.classes), train.input_dim, background, task_info)
  return dataset_lib.Data(info, weak, val, lambda: check_bins(read_test()))


def load_unlabelled(config: ml_collections.ConfigDict, info: dataset_lib.DataInfo) -> list:
  """Every `<vid>.npy` of `config.predict.features` as a video without labels or transcript."""
  return [
    formats.Video(name, features, None)
    for name, features in formats.read_feature_folder(
      config.predict.features, input_dim=info.input_dim
    )
  ]


class Task(task_lib.SingleLabelTask):
  """HAL and its NN-Viterbi-style baseline: see the module docstring."""

  rows = ('Segmentation', 'Alignment')

  def __init__(
    self, config: ml_collections.ConfigDict, info: dataset_lib.DataInfo, train_videos=None
  ):
    del train_videos  # what training needs from the data is in info.task_info
    super().__init__(config, info)
    m = config.model
    self.input_dim = info.input_dim
    self.objective = _check_choice('loss.objective', config.loss.objective, OBJECTIVES)
    _check_choice('align.length_model', config.align.length_model, LENGTH_MODELS)
    _check_choice('eval.decode', config.eval.decode, DECODERS)
    if not 1 <= m.num_levels <= MAX_LEVELS:
      raise ValueError(f'model.num_levels={m.num_levels} must be in [1, {MAX_LEVELS}]')
    self.model = pyramid.PyramidTransformer(
      num_classes=self.num_classes,
      extra_outputs=int(self.objective == 'ctc'),
      dtype=layers.compute_dtype(m.dtype),
      **{k: v for k, v in m.to_dict().items() if k != 'dtype'},
    )
    self.window = window(config)
    self.latent = m.action_level is not None
    grammar = [np.asarray(t, np.int32) for t in info.task_info['grammar']]  # JSON lists
    self.grammar = jnp.asarray(pipeline.pad_stack(grammar, max(map(len, grammar)), np.int32))
    self.grammar_lengths = jnp.asarray([len(t) for t in grammar], jnp.int32)
    self.mean_lengths = np.asarray(info.task_info['mean_lengths'])
    longest = max(
      config.align.max_length_factor * self.mean_lengths.max(),
      info.task_info['max_frames_per_action'],
    )
    self.max_bins = math.ceil(longest / self.window) + 1  # longest segment, in bins
    prior = np.maximum(np.asarray(info.task_info['class_prior']), PRIOR_FLOOR)
    self.log_class_prior = jnp.asarray(np.log(prior), jnp.float32)
    self._log_probs = jax.jit(self._log_probs_fn)
    self._align = jax.jit(align.align)
    self._decode = jax.jit(align.decode, static_argnames='batch_size')

  # -- data ---------------------------------------------------------------------------------

  def length_prior(self, max_len: int, frames_per_bin: int) -> jax.Array:
    """[max_len, C] log-prior of segment lengths 1..max_len in bins of `frames_per_bin` frames."""
    if self.config.align.length_model == 'uniform':
      return align.uniform_log_prior(self.num_classes, max_len)
    return align.poisson_log_prior(jnp.asarray(self.mean_lengths / frames_per_bin), max_len)

  def _fields(self, video) -> tuple[dict, dict]:
    transcript = pipeline.pad_stack([video.transcript], self.grammar.shape[1], np.int32)[0]
    return {'features': video.features}, {
      'transcript': transcript,
      'num_actions': np.int32(len(video.transcript)),
    }

  def train_loader(self, videos: list, **overrides) -> pipeline.TrainLoader:
    longest = max(len(v.transcript) for v in videos)
    if longest > self.grammar.shape[1]:
      raise ValueError(f'a training transcript has {longest} actions, more than the grammar')
    return pipeline.TrainLoader.from_config(
      videos, self.config, fields=self._fields, boundary=None, **overrides
    )

  def example_batch(self) -> dict[str, np.ndarray]:
    t = 2 ** (self.config.model.num_levels - 1)
    return {
      'features': np.zeros((1, t, self.input_dim), np.float32),
      'transcript': np.zeros((1, self.grammar.shape[1]), np.int32),
      'num_actions': np.ones((1,), np.int32),
      'mask': np.ones((1, t), np.float32),
    }

  # -- model --------------------------------------------------------------------------------

  def init(self, rng: jax.Array, batch: dict[str, np.ndarray]):
    return self.model.init(
      {'params': rng, 'dropout': rng}, batch['features'], batch['mask'], train=False
    )

  def class_log_probs(self, logits: jax.Array) -> jax.Array:
    """Log-probabilities of the C classes (CTC's blank left out). [..., C'] -> [..., C]."""
    return jax.nn.log_softmax(logits[..., : self.num_classes], axis=-1)

  def alignment_scores(self, log_probs: jax.Array) -> jax.Array:
    """What the Viterbi maximises per frame: log p(c | x) - a log p(c) (a =
    align.prior_normalization; 1: NN-Viterbi's scaled likelihood p(c | x) / p(c), so frequent
    classes do not swallow the rest). [..., C] -> [..., C]."""
    return log_probs - self.config.align.prior_normalization * self.log_class_prior

  def loss(self, params, batch, rng):
    """Transcript-supervised loss (module docstring); returns (total, {term: value})."""
    w = self.config.loss
    mask = batch['mask']
    frame_logits, action_logits = self.model.apply(
      params, batch['features'], mask, train=True, rngs={'dropout': rng}
    )
    bin_mask = pyramid.pool_mask(mask, self.window)
    aligned_logits = action_logits if self.latent else frame_logits
    scores = jax.lax.stop_gradient(self.alignment_scores(self.class_log_probs(aligned_logits)))
    alignment = jax.vmap(align.align, in_axes=(0, 0, None, 0, 0))(
      scores,
      batch['transcript'],
      self.length_prior(self.max_bins, self.window),
      bin_mask.sum(1).astype(jnp.int32),
      batch['num_actions'],
    )
    pseudo_labels = jnp.maximum(alignment.labels, 0)  # [B, T / w]; padded bins are masked
    terms = {'smooth': losses.smoothing_loss(frame_logits, mask)}
    if self.objective == 'ctc':
      terms['ctc'] = losses.ctc(aligned_logits, bin_mask, batch['transcript'], batch['num_actions'])
    elif self.latent:
      terms['action_ce'] = losses.cross_entropy(action_logits, pseudo_labels, bin_mask)
    if self.latent or self.objective == 'pseudo':
      frame_labels = pyramid.to_frames(pseudo_labels, self.window)
      terms['frame_ce'] = losses.cross_entropy(frame_logits, frame_labels, mask)
    if self.latent:
      log_probs = self.class_log_probs(action_logits)
      terms['sparse'] = losses.transition_penalty(jnp.exp(log_probs), bin_mask)
    if self.latent and w.presence > 0:
      actions = jnp.arange(batch['transcript'].shape[1]) < batch['num_actions'][:, None]
      present = jnp.max(
        jax.nn.one_hot(batch['transcript'], self.num_classes) * actions[..., None], 1
      )
      terms['presence'] = losses.presence_loss(log_probs, bin_mask, present)
    total = sum(w[k] * v for k, v in terms.items())
    return total, terms

  # -- prediction ---------------------------------------------------------------------------

  def _log_probs_fn(self, params, features, mask):
    """features [1, T, D], mask [1, T] -> (frame log-probs [T, C], aligned log-probs [T / w, C])."""
    frame_logits, action_logits = self.model.apply(params, features, mask, train=False)
    aligned = action_logits if self.latent else frame_logits
    return self.class_log_probs(frame_logits[0]), self.class_log_probs(aligned[0])

  def _align_frames(self, frame_log_probs, transcript, num_frames: int) -> np.ndarray:
    """Frame-resolution alignment of the frame head to `transcript` [N]: class ids [num_frames]."""
    longest = max(self.max_bins * self.window, math.ceil(num_frames / len(transcript)))
    prior = self.length_prior(longest, 1)
    scores = self.alignment_scores(frame_log_probs)
    result = self._align(scores, jnp.asarray(transcript), prior, num_frames)
    return np.asarray(result.labels[:num_frames])

  def predict(self, params, video, rng: jax.Array) -> dict[str, np.ndarray]:
    del rng  # deterministic
    num_frames = len(video.features)
    view = pipeline.frame_views({'features': video.features}, 1, video.name)  # padded to a bucket
    frame_log_probs, aligned_log_probs = self._log_probs(params, view['features'], view['mask'])
    if self.config.eval.decode == 'argmax':
      segmentation = np.asarray(jnp.argmax(frame_log_probs[:num_frames], -1))
    else:
      num_bins = math.ceil(num_frames / self.window)
      shortest = int(self.grammar_lengths.min())
      longest = max(self.max_bins, math.ceil(num_bins / shortest))
      best, index = self._decode(
        self.alignment_scores(aligned_log_probs),
        self.grammar,
        self.grammar_lengths,
        self.length_prior(longest, self.window),
        num_bins,
        batch_size=self.config.eval.decode_batch,
      )
      if float(best.score) <= align.NEG_INF / 2:
        raise formats.DataError(
          f'video {video.name!r} ({num_frames} frames) fits no training transcript'
        )
      if self.window == 1:  # already at frame resolution
        segmentation = np.asarray(best.labels[:num_frames])
      else:
        transcript = np.asarray(self.grammar[index, : self.grammar_lengths[index]])
        segmentation = self._align_frames(frame_log_probs, transcript, num_frames)
    rows = {'Segmentation': segmentation}
    if getattr(video, 'transcript', None) is not None:
      rows['Alignment'] = self._align_frames(frame_log_probs, video.transcript, num_frames)
    return rows

  def new_metrics(self, row: str | None = None):
    """The alignment row's metrics (MoF, IoU, IoD), or segmentation's (Acc, Edit, F1@k)."""
    if row == 'Alignment':
      return metrics.AlignmentMetrics(background=self.background)
    return super().new_metrics(row)

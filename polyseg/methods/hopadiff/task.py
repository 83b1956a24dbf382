"""HopaDIFF task (docs/methods/hopadiff.md): referring action segmentation, multi-label frames.

A video here is a `formats.ReferringSample`: one referred person (holistic and partial features, the
reference text, multi-hot labels [T, C]). A `DiffusionTask` (`polyseg.engine.diffusion_task`) with a
label chain per branch. Loss per branch (holistic, partial): encoder BCE, decoder BCE
and the multi-label boundary loss, with one diffusion time, one noisy label sequence and one condition
mask per sample shared by both branches. Prediction: encoders, HP-xLSTM and condition projections once,
then one DDIM program (`lax.scan` over steps) that runs both branches' chains side by side, `vmap`ped
over the temporal views; rows 'HopaDIFF' (the mean of the two branches' final probabilities),
'holistic' and 'partial'. Predictions are probabilities [T, C]; a class is on where >= eval.threshold.
"""

import os

import jax
import ml_collections
import numpy as np

from polyseg.core import losses
from polyseg.core import metrics
from polyseg.core import postprocess
from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.data import pipeline
from polyseg.data import synthetic
from polyseg.data import tfds
from polyseg.engine import diffusion_task
from polyseg.methods.hopadiff import model as hopadiff
from polyseg.methods.hopadiff import xlstm
from polyseg.nn import asformer
from polyseg.nn import layers

FUSED_ROW = 'HopaDIFF'
TEXT_KEYS = ('text', 'text_tokens', 'text_mask')


def dataset_root(config: ml_collections.ConfigDict) -> str:
  """`config.data.root`, or the embedded synthetic referring dataset (generated on first use)."""
  if config.data.root:
    return os.path.expanduser(config.data.root)
  cache = os.path.expanduser(config.data.cache_dir)
  return str(synthetic.ensure_referring(cache, **config.data.synthetic.to_dict()))


def load_data(config: ml_collections.ConfigDict) -> dataset_lib.Data:
  """Reads and validates the referring dataset, cuts samples of `data.sample_frames` frames and
  partitions them by `data.protocol` into train / val / test. The folder layout is read whole
  (under the random protocol windows of one video can fall in different subsets, so the files are
  shared): its test samples are held in memory, unscored, until `read_test()`; a TFDS conversion
  keeps them in their own records, read only then."""
  root = dataset_root(config)
  d = config.data
  classes = tuple(d.classes) if d.classes else None
  train_shard = (0, 1)
  if tfds.check_format(d.format) == 'tfds':  # windowed and split at conversion (data/tfds.py)
    train_shard = (jax.process_index(), jax.process_count())  # each process reads its share
    spec = tfds.Spec(
      'referring',
      protocol=d.protocol,
      sample_frames=d.sample_frames,
      split_seed=d.split_seed,
      split_fractions=tuple(d.split_fractions),
    )
    dims = {'holistic': d.holistic_dim, 'partial': d.partial_dim}
    subsets, read_test = tfds.load(
      root, d.tfds_dir, spec, classes=classes, dims=dims, train_shard=train_shard
    )
    dataset = subsets['train']
    splits = {subset: subsets[subset].samples for subset in subsets}
    splits['test'] = lambda: read_test().samples
  else:
    dataset = formats.read_referring(
      root, classes=classes, holistic_dim=d.holistic_dim, partial_dim=d.partial_dim
    )
    samples = formats.window_samples(dataset.samples, d.sample_frames)
    splits = formats.split_referring(
      root, samples, d.protocol, seed=d.split_seed, fractions=tuple(d.split_fractions)
    )
    test = splits['test']
    splits['test'] = lambda: test
  dims = {'holistic': dataset.holistic_dim, 'partial': dataset.partial_dim}
  info = dataset_lib.DataInfo(tuple(dataset.classes), dims, background=())
  return dataset_lib.Data(
    info, splits['train'], splits['val'], splits['test'], train_shard=train_shard
  )


def load_unlabelled(config: ml_collections.ConfigDict, info: dataset_lib.DataInfo) -> list:
  """The samples of `config.predict.features`: a referring-layout folder without labels."""
  dataset = formats.read_referring(
    config.predict.features,
    classes=info.classes,
    holistic_dim=info.input_dim['holistic'],
    partial_dim=info.input_dim['partial'],
    labels=False,
  )
  return dataset.samples


def _without(group: ml_collections.ConfigDict, *keys: str) -> dict:
  """A config group's fields as keyword arguments, less `keys` (the switches that are not)."""
  return {k: v for k, v in group.items() if k not in keys}


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> hopadiff.HopaDIFFModel:
  """The HopaDIFF networks for `config.model` (ablation switches included)."""
  m, dtype = config.model, layers.compute_dtype(config.model.dtype)
  encoder = lambda: asformer.make_encoder(m, num_classes)
  decoder = lambda: asformer.make_decoder(m, num_classes)

  dft = lambda: hopadiff.DFTCondition(**_without(m.dft, 'enabled'))
  partial = m.partial_branch
  return hopadiff.HopaDIFFModel(
    holistic_encoder=encoder(),
    holistic_decoder=decoder(),
    partial_encoder=encoder() if partial else None,
    partial_decoder=decoder() if partial else None,
    hp_xlstm=xlstm.HPxLSTM(**_without(m.xlstm, 'enabled'), dtype=dtype)
    if m.xlstm.enabled
    else None,
    holistic_dft=dft() if m.dft.enabled else None,
    partial_dft=dft() if m.dft.enabled and partial else None,
    text=hopadiff.TextCondition(m.text.condition, m.text.attention_dim)
    if m.text.condition != 'none'
    else None,
  )


class Task(diffusion_task.DiffusionTask):
  """HopaDIFF: see the module docstring and `polyseg.engine.task` for the interface."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    info: dataset_lib.DataInfo,
    train_videos: list[formats.ReferringSample] | None = None,
  ):
    del train_videos  # no class weights: BCE per class
    if config.model.text.condition not in hopadiff.TEXT_CONDITIONS:
      raise ValueError(
        f'config.model.text.condition={config.model.text.condition!r}; '
        f'choose one of {hopadiff.TEXT_CONDITIONS}'
      )
    model = build_model(config, len(info.classes))
    super().__init__(config, info, model, model.branches)  # a label chain per branch
    self.rows = (FUSED_ROW, *self.branches) if len(self.branches) > 1 else (FUSED_ROW,)
    self.input_keys = self.branches + (TEXT_KEYS if self.uses_text else ())
    self.threshold = config.eval.threshold
    self._text_cache = {}

  @property
  def branches(self) -> tuple[str, ...]:
    """'holistic', and 'partial' unless ablated: the label chains."""
    return self.chains

  @property
  def uses_text(self) -> bool:
    return self.config.model.text.condition != 'none'

  # -- data ---------------------------------------------------------------------------------

  def _text_arrays(self, references: list[str]) -> dict[str, np.ndarray]:
    """MiniLM-L6 of each reference: 'text' [N, E] (normalised mean pooling), 'text_tokens'
    [N, L, E] and 'text_mask' [N, L] with L = model.text.max_tokens. Cached per text."""
    from polyseg.nn import text as text_lib  # optional dependency: only with a text path

    missing = sorted({r for r in references if r not in self._text_cache})
    if missing:
      t = self.config.model.text
      encoder = text_lib.load_sentence_encoder(t.model_dir)
      pooled = encoder.embed(missing)
      states, state_mask = encoder.hidden_states(missing, max_length=t.max_tokens)
      tokens = np.zeros((len(missing), t.max_tokens, states.shape[-1]), np.float32)
      token_mask = np.zeros((len(missing), t.max_tokens), np.float32)
      width = min(states.shape[1], t.max_tokens)
      tokens[:, :width] = states[:, :width]
      token_mask[:, :width] = state_mask[:, :width]
      for i, reference in enumerate(missing):
        self._text_cache[reference] = (pooled[i], tokens[i], token_mask[i])
    cached = [self._text_cache[r] for r in references]
    return {key: np.stack([c[i] for c in cached]) for i, key in enumerate(TEXT_KEYS)}

  def _fields(self, sample: formats.ReferringSample):
    """Per-frame and per-sample arrays of a training sample (see pipeline.TrainLoader)."""
    per_frame = {b: getattr(sample, b) for b in self.branches}
    per_frame['labels'] = sample.labels.astype(np.float32)
    per_sample = {}
    if self.uses_text:
      per_sample = {k: v[0] for k, v in self._text_arrays([sample.reference]).items()}
    return per_frame, per_sample

  def train_loader(
    self, videos: list[formats.ReferringSample], **overrides
  ) -> pipeline.TrainLoader:
    if self.uses_text:
      self._text_arrays([v.reference for v in videos])  # one batched pass over all references
    return pipeline.TrainLoader.from_config(videos, self.config, fields=self._fields, **overrides)

  def example_batch(self) -> dict[str, np.ndarray]:
    t, dims = 8, self.info.input_dim
    batch = {b: np.zeros((1, t, dims[b]), np.float32) for b in self.branches}
    batch.update(
      labels=np.zeros((1, t, self.num_classes), np.float32),
      boundary=np.zeros((1, t), np.float32),
      mask=np.ones((1, t), np.float32),
    )
    if self.uses_text:  # shapes only: example_batch may run under jax.eval_shape
      from polyseg.nn import text as text_lib

      t = self.config.model.text
      width = text_lib.load_config(text_lib.find_model_dir(t.model_dir))['hidden_size']
      batch.update(
        text=np.zeros((1, width), np.float32),
        text_tokens=np.zeros((1, t.max_tokens, width), np.float32),
        text_mask=np.ones((1, t.max_tokens), np.float32),
      )
    return batch

  # -- the diffusion task's parts -----------------------------------------------------------

  activation = 'sigmoid'  # multi-label frames

  def model_inputs(self, batch: dict) -> dict:
    return {k: batch[k] for k in self.input_keys}

  def targets(self, batch: dict) -> dict[str, diffusion_task.Target]:
    """Every branch denoises the sample's multi-hot labels."""
    target = diffusion_task.Target(batch['labels'], batch['labels'], batch['boundary'])
    return dict.fromkeys(self.branches, target)

  def loss_keys(self, rng: jax.Array) -> diffusion_task.LossKeys:
    """(encoder, noise, condition, projection, decoder) = split(rng, 5); the branches share one
    diffusion time, one noisy label sequence and one condition mask per sample."""
    k_enc, k_noise, k_cond, k_proj, k_dec = jax.random.split(rng, 5)
    same = lambda key: dict.fromkeys(self.branches, key)
    return diffusion_task.LossKeys(k_enc, k_proj, k_dec, same(k_noise), same(k_cond))

  def loss_terms(self, batch, encoder_logits, decoder_logits, task_state=None):
    """Per branch: encoder BCE, decoder BCE and the multi-label boundary loss; terms
    '<branch>/<term>'."""
    del task_state
    w, labels, mask, boundary = self.config.loss, batch['labels'], batch['mask'], batch['boundary']
    terms, total = {}, 0.0
    for b in self.branches:
      branch_terms = {'encoder_bce': losses.binary_cross_entropy(encoder_logits[b], labels, mask)}
      if decoder_logits is not None:
        branch_terms.update(
          decoder_bce=losses.binary_cross_entropy(decoder_logits[b], labels, mask),
          decoder_boundary=losses.boundary_loss(decoder_logits[b], boundary, mask, 'sigmoid'),
        )
      total += sum(w[k] * v for k, v in branch_terms.items())
      terms.update({f'{b}/{k}': v for k, v in branch_terms.items()})
    return total, terms

  def view_inputs(self, sample: formats.ReferringSample) -> tuple[dict, np.ndarray]:
    """Temporal views of the sample's features ({branch: [R, T', D]}, text repeated per view)."""
    views = pipeline.frame_views(
      {b: getattr(sample, b) for b in self.branches}, self.config.data.sample_rate, sample.name
    )
    mask = views.pop('mask')
    if self.uses_text:
      text = self._text_arrays([sample.reference])
      views.update({k: np.repeat(v, len(mask), axis=0) for k, v in text.items()})
    return views, mask

  # -- prediction ---------------------------------------------------------------------------

  def predict(self, params, sample, rng: jax.Array) -> dict[str, np.ndarray]:
    """{row: probabilities [T, C] at the full frame rate, post-processed}."""
    e = self.config.eval
    branch_probs = self.predict_probs(params, sample, rng)
    rows = {FUSED_ROW: np.mean(list(branch_probs.values()), axis=0)}
    if len(self.branches) > 1:
      rows.update(branch_probs)
    return {
      row: postprocess.postprocess_multilabel(
        probs,
        len(sample.holistic),
        self.config.data.sample_rate,
        e.postprocess,
        e.postprocess_value,
        threshold=self.threshold,
      )
      for row, probs in rows.items()
    }

  def label_lines(self, probs: np.ndarray) -> list[str]:
    """One line per frame: the names of the classes >= threshold, comma-separated (may be empty)."""
    return [','.join(self.classes[c] for c in np.flatnonzero(p)) for p in self.timeline(probs)]

  def timeline(self, probs: np.ndarray) -> np.ndarray:
    return postprocess.binarize(probs, self.threshold)

  def new_metrics(self, row: str | None = None) -> metrics.MultiLabelMetrics:
    del row
    return metrics.MultiLabelMetrics(threshold=self.threshold)

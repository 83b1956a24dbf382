"""HopaDIFF task (docs/methods/hopadiff.md): referring action segmentation, multi-label frames.

A video here is a `formats.ReferringSample`: one referred person (holistic and partial features, the
reference text, multi-hot labels [T, C]). Loss per branch (holistic, partial): encoder BCE, decoder BCE
and the multi-label boundary loss, with one diffusion time, one noisy label sequence and one condition
mask per sample shared by both branches. Prediction: encoders, HP-xLSTM and condition projections once,
then one DDIM program (`lax.scan` over steps) that runs both branches' chains side by side, `vmap`ped
over the temporal views; rows 'HopaDIFF' (the mean of the two branches' final probabilities),
'holistic' and 'partial'. Predictions are probabilities [T, C]; a class is on where >= eval.threshold.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from polyseg.core import diffusion
from polyseg.core import losses
from polyseg.core import metrics
from polyseg.core import postprocess
from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.data import pipeline
from polyseg.data import synthetic
from polyseg.data import tfds
from polyseg.engine import task as task_lib
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


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> hopadiff.HopaDIFFModel:
  """The HopaDIFF networks for `config.model` (ablation switches included)."""
  m, dtype = config.model, layers.compute_dtype(config.model.dtype)

  def encoder():
    return asformer.Encoder(num_classes=num_classes, dtype=dtype, **m.encoder.to_dict())

  def decoder():
    return asformer.Decoder(num_classes=num_classes, dtype=dtype, **m.decoder.to_dict())

  def dft():
    return hopadiff.DFTCondition(
      kind=m.dft.kind, parts=m.dft.parts, channels=m.dft.channels, window=m.dft.window
    )

  x = m.xlstm
  partial = m.partial_branch
  return hopadiff.HopaDIFFModel(
    holistic_encoder=encoder(),
    holistic_decoder=decoder(),
    partial_encoder=encoder() if partial else None,
    partial_decoder=decoder() if partial else None,
    hp_xlstm=xlstm.HPxLSTM(
      features=x.features,
      num_heads=x.num_heads,
      form=x.form,
      chunk_size=x.chunk_size,
      forget_gate=x.forget_gate,
      cross_attention=x.cross_attention,
      window=x.window,
      bidirectional=x.bidirectional,
      dtype=dtype,
    )
    if x.enabled
    else None,
    holistic_dft=dft() if m.dft.enabled else None,
    partial_dft=dft() if m.dft.enabled and partial else None,
    text=hopadiff.TextCondition(m.text.condition, m.text.attention_dim)
    if m.text.condition != 'none'
    else None,
  )


class Task(task_lib.BaseTask):
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
    self.config = config
    self.info = info
    self.classes = list(info.classes)
    self.background = info.background
    self.num_classes = len(self.classes)
    self.model = build_model(config, self.num_classes)
    self.branches = hopadiff.BRANCHES if config.model.partial_branch else hopadiff.BRANCHES[:1]
    self.rows = (FUSED_ROW, *self.branches) if len(self.branches) > 1 else (FUSED_ROW,)
    self.input_keys = self.branches + (TEXT_KEYS if self.uses_text else ())
    self.schedule = diffusion.cosine_schedule(config.diffusion.num_steps)
    self.condition_types = diffusion.parse_condition_types(config.diffusion.condition_types)
    self.threshold = config.eval.threshold
    self._text_cache = {}
    self._sample = jax.jit(self._sample_views)
    self._encode = jax.jit(self._encode_views)

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

  # -- model --------------------------------------------------------------------------------

  def init(self, rng: jax.Array, batch: dict[str, np.ndarray]):
    b, t, c = batch['labels'].shape
    return self.model.init(
      {'params': rng, 'dropout': rng},
      {k: batch[k] for k in self.input_keys},
      jnp.zeros((b, t, c)),
      jnp.zeros((b,), jnp.int32),
      batch['mask'],
      train=False,
    )

  def loss(self, params, batch, rng):
    """Weighted HopaDIFF loss; returns (total, {'<branch>/<term>': value})."""
    w, d = self.config.loss, self.config.diffusion
    k_enc, k_noise, k_cond, k_proj, k_dec = jax.random.split(rng, 5)
    labels, mask, boundary = batch['labels'], batch['mask'], batch['boundary']
    inputs = {k: batch[k] for k in self.input_keys}
    enc_logits, conditions = self.model.apply(
      params,
      inputs,
      mask,
      train=True,
      method=hopadiff.HopaDIFFModel.encode,
      rngs={'dropout': k_enc},
    )
    x01, t = diffusion.noisy_labels(k_noise, labels, self.schedule, d.snr_scale)
    keep = diffusion.condition_mask(
      k_cond, labels, boundary, mask, self.condition_types, d.boundary_threshold
    )
    projections = self.model.apply(
      params,
      {b: c * keep for b, c in conditions.items()},
      train=True,
      method=hopadiff.HopaDIFFModel.project_condition,
      rngs={'dropout': k_proj},
    )
    dec_logits = self.model.apply(
      params,
      dict.fromkeys(self.branches, x01),
      dict.fromkeys(self.branches, t),
      projections,
      mask,
      train=True,
      method=hopadiff.HopaDIFFModel.denoise,
      rngs={'dropout': k_dec},
    )
    terms, total = {}, 0.0
    for b in self.branches:
      branch_terms = {
        'encoder_bce': losses.binary_cross_entropy(enc_logits[b], labels, mask),
        'decoder_bce': losses.binary_cross_entropy(dec_logits[b], labels, mask),
        'decoder_boundary': losses.boundary_loss(dec_logits[b], boundary, mask, 'sigmoid'),
      }
      total += sum(w[k] * v for k, v in branch_terms.items())
      terms.update({f'{b}/{k}': v for k, v in branch_terms.items()})
    return total, terms

  # -- prediction ---------------------------------------------------------------------------

  def _encode_views(self, params, inputs, mask):
    """Encoder probabilities: inputs {key: [R, T, ...] or per-sample}, mask [R, T] -> [R, nb, T, C]."""
    logits, _ = self.model.apply(
      params, inputs, mask, train=False, method=hopadiff.HopaDIFFModel.encode
    )
    probs = jnp.stack([jax.nn.sigmoid(logits[b]) for b in self.branches], axis=1)
    return probs * mask[:, None, :, None]

  def _sample_views(self, params, inputs, mask, rng):
    """DDIM sampling of both branches for every view, one program: inputs {key: [R, ...]}, mask
    [R, T] -> probabilities [R, nb, T, C] (nb = number of branches)."""
    d = self.config.diffusion
    return diffusion.sample_chains(
      self.model,
      params,
      inputs,
      mask,
      rng,
      chains=self.branches,
      num_classes=self.num_classes,
      schedule=self.schedule,
      snr_scale=d.snr_scale,
      sampling_steps=d.sampling_steps,
      eta=d.eta,
      shared_view_noise=d.get('shared_view_noise', False),  # False in runs saved before it
      activation='sigmoid',
    )

  def _view_inputs(self, sample: formats.ReferringSample):
    """Temporal views of the sample's features ({branch: [R, T', D]}, text repeated per view)."""
    views = pipeline.frame_views(
      {b: getattr(sample, b) for b in self.branches}, self.config.data.sample_rate, sample.name
    )
    mask = views.pop('mask')
    if self.uses_text:
      text = self._text_arrays([sample.reference])
      views.update({k: np.repeat(v, len(mask), axis=0) for k, v in text.items()})
    return views, mask

  def predict_probs(self, params, sample, rng: jax.Array) -> dict[str, np.ndarray]:
    """{branch: probabilities [T', C]} at the sampled rate, averaged over the temporal views."""
    inputs, mask = self._view_inputs(sample)
    if self.config.eval.use_decoder:
      probs = self._sample(params, inputs, mask, rng)
    else:
      probs = self._encode(params, inputs, mask)
    probs = np.asarray(probs)
    lengths = mask.sum(1).astype(int)
    return {
      b: postprocess.merge_views([view[i, :n] for view, n in zip(probs, lengths)])
      for i, b in enumerate(self.branches)
    }

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

  def new_metrics(self) -> metrics.MultiLabelMetrics:
    return metrics.MultiLabelMetrics(threshold=self.threshold)

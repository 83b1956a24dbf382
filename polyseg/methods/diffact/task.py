"""DiffAct task (docs/methods/diffact.md): single-stream features, one label per frame.

Loss: encoder CE + smoothing, decoder CE + smoothing + boundary, with one diffusion time and one
condition mask per video. Prediction: encoder once, DDIM sampling (one jitted program: `lax.scan` over
the sampling steps, `vmap` over the temporal views), views averaged, post-processed, restored to the
full frame rate. With `config.eval.use_decoder=False` the encoder's own prediction is used (and, when
all decoder loss weights are 0, the decoder is never run: the "encoder alone" baseline).
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from polyseg.core import diffusion
from polyseg.core import losses
from polyseg.core import postprocess
from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.data import pipeline
from polyseg.data import synthetic
from polyseg.data import tfds
from polyseg.engine import parallel
from polyseg.engine import task as task_lib
from polyseg.nn import asformer
from polyseg.nn import layers

DECODER_TERMS = ('decoder_ce', 'decoder_smooth', 'decoder_boundary')


def dataset_root(config: ml_collections.ConfigDict) -> str:
  """`config.data.root`, or the embedded synthetic dataset (generated on first use)."""
  if config.data.root:
    return os.path.expanduser(config.data.root)
  cache = os.path.expanduser(config.data.cache_dir)
  return synthetic.ensure_single_stream(cache, **config.data.synthetic.to_dict())


def load_unlabelled(
  config: ml_collections.ConfigDict, info: dataset_lib.DataInfo
) -> list[formats.Video]:
  """Every `<vid>.npy` of `config.predict.features` as an unlabelled video."""
  return [
    formats.Video(name, features, None)
    for name, features in formats.read_feature_folder(
      config.predict.features, input_dim=info.input_dim
    )
  ]


def load_data(config: ml_collections.ConfigDict) -> dataset_lib.Data:
  """Train / val / test of the MS-TCN layout, from the folder or, with data.format='tfds', from its
  TFDS conversion (made on first use); see `dataset_lib.load_splits` (val: the val bundle, else a seeded
  `data.val_fraction` of train)."""
  root = dataset_root(config)

  def read_folder(subset: str, classes, train) -> formats.Dataset:
    input_dim = config.data.input_dim if train is None else train.input_dim
    return formats.read_single_stream(root, subset, config.data.split, classes, input_dim)

  spec = tfds.Spec('single_stream', split=config.data.split)
  classes, splits, read_test, shard = dataset_lib.load_splits(
    config, root, spec, read_folder, {'features': config.data.input_dim}
  )
  background = tuple(classes.index(n) for n in config.data.background if n in classes)
  input_dim = int(splits['train'][0].features.shape[1])
  info = dataset_lib.DataInfo(tuple(classes), input_dim, background)
  return dataset_lib.Data(info, splits['train'], splits['val'], read_test, train_shard=shard)


def uses_class_weights(loss: ml_collections.ConfigDict) -> bool:
  """Whether the CE terms are class-weighted: `loss.class_weighting`, and with soft labels only when
  `loss.weight_soft_labels` (DiffAct's reference leaves its soft-label CE unweighted; absent in the
  configs of runs made before it: off)."""
  return bool(loss.class_weighting and (not loss.soft_label or loss.get('weight_soft_labels')))


def classification_loss(logits, labels, mask, soft_label: float | None, class_weights=None):
  """Soft-label CE (gaussian-smoothed one-hot, sigma = soft_label) or CE, class-weighted when
  class_weights [C] is given. logits [B, T, C], labels [B, T] int, mask [B, T]."""
  if soft_label:
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    soft_targets = losses.gaussian_smooth(onehot, soft_label, mask)
    return losses.soft_cross_entropy(logits, soft_targets, mask, class_weights)
  return losses.cross_entropy(logits, labels, mask, class_weights)


def encoder_terms(logits, labels, mask, soft_label, class_weights=None) -> dict[str, jax.Array]:
  """DiffAct's encoder loss terms (unweighted): CE and smoothing.  logits [B, T, C]."""
  return {
    'encoder_ce': classification_loss(logits, labels, mask, soft_label, class_weights),
    'encoder_smooth': losses.smoothing_loss(logits, mask),
  }


def decoder_terms(
  logits, labels, boundary, mask, soft_label, class_weights=None
) -> dict[str, jax.Array]:
  """DiffAct's decoder loss terms (unweighted): CE, smoothing and boundary.  logits [B, T, C],
  boundary [B, T] the smoothed boundary target."""
  return {
    'decoder_ce': classification_loss(logits, labels, mask, soft_label, class_weights),
    'decoder_smooth': losses.smoothing_loss(logits, mask),
    'decoder_boundary': losses.boundary_loss(logits, boundary, mask),
  }


def _dropout(key: jax.Array | None) -> dict[str, jax.Array]:
  """The `rngs` of a model call: dropout with `key`, or none."""
  return {} if key is None else {'dropout': key}


class Task(task_lib.SingleLabelTask):
  """DiffAct: see the module docstring and `polyseg.engine.task` for the interface."""

  rows = ('DiffAct',)

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    info: dataset_lib.DataInfo,
    train_videos: list[formats.Video] | None = None,
  ):
    self.config = config
    self.classes = list(info.classes)
    self.background = info.background
    self.info = info
    self.input_dim = info.input_dim
    self.num_classes = len(self.classes)
    m, dtype = config.model, layers.compute_dtype(config.model.dtype)
    self.model = asformer.DiffActModel(
      encoder=asformer.Encoder(num_classes=self.num_classes, dtype=dtype, **m.encoder.to_dict()),
      decoder=asformer.Decoder(num_classes=self.num_classes, dtype=dtype, **m.decoder.to_dict()),
    )
    self.schedule = diffusion.cosine_schedule(config.diffusion.num_steps)
    self.condition_types = diffusion.parse_condition_types(config.diffusion.condition_types)
    self.train_decoder = any(config.loss[k] > 0 for k in DECODER_TERMS)
    self.class_weights = None
    if train_videos is not None and uses_class_weights(config.loss):  # every process's share counts
      counts = parallel.sum_over_processes(pipeline.class_counts(train_videos, self.num_classes))
      self.class_weights = jnp.asarray(pipeline.class_weights(counts))
    self._sample = jax.jit(self._sample_views)
    self._encode = jax.jit(self._encode_views)

  # -- data ---------------------------------------------------------------------------------

  def train_loader(self, videos: list[formats.Video], **overrides) -> pipeline.TrainLoader:
    return pipeline.TrainLoader.from_config(videos, self.config, **overrides)

  def example_batch(self) -> dict[str, np.ndarray]:
    t = 8
    return {
      'features': np.zeros((1, t, self.input_dim), np.float32),
      'labels': np.zeros((1, t), np.int32),
      'boundary': np.zeros((1, t), np.float32),
      'mask': np.ones((1, t), np.float32),
    }

  # -- model --------------------------------------------------------------------------------

  def init(self, rng: jax.Array, batch: dict[str, np.ndarray]):
    b, t = batch['labels'].shape
    return self.model.init(
      {'params': rng, 'dropout': rng},
      batch['features'],
      jnp.zeros((b, t, self.num_classes)),
      jnp.zeros((b,), jnp.int32),
      batch['mask'],
      train=False,
    )

  def loss(self, params, batch, rng):
    """Weighted DiffAct loss; returns (total, {term: value})."""
    k_noise, k_cond, k_dropout = jax.random.split(rng, 3)
    labels, mask = batch['labels'], batch['mask']
    diffused = None
    if self.train_decoder:
      x01, t = diffusion.noisy_labels(
        k_noise,
        jax.nn.one_hot(labels, self.num_classes),
        self.schedule,
        self.config.diffusion.snr_scale,
      )
      cond_mask = diffusion.condition_mask(
        k_cond,
        labels,
        batch['boundary'],
        mask,
        self.condition_types,
        self.config.diffusion.boundary_threshold,
      )
      diffused = (x01, t, cond_mask)
    return self.loss_terms(params, batch, diffused, k_dropout)

  def loss_terms(self, params, batch, diffused, dropout_rng):
    """The weighted loss of given decoder inputs; returns (total, {term: value}).

    diffused: (x01 [B, T, C] noisy labels in [0, 1], t [B] int, condition mask [B, T, 1]), or
    None (encoder terms only). dropout_rng None: no dropout (the deterministic loss).
    """
    w = self.config.loss
    train = dropout_rng is not None
    k_enc, k_proj, k_dec = jax.random.split(dropout_rng, 3) if train else (None,) * 3
    feats, labels, mask = batch['features'], batch['labels'], batch['mask']
    enc_logits, cond = self.model.apply(
      params, feats, mask, train=train, method=asformer.DiffActModel.encode, rngs=_dropout(k_enc)
    )
    terms = encoder_terms(enc_logits, labels, mask, w.soft_label, self.class_weights)
    if diffused is not None:
      x01, t, cond_mask = diffused
      cond_proj = self.model.apply(
        params,
        cond * cond_mask,
        train=train,
        rngs=_dropout(k_proj),
        method=asformer.DiffActModel.project_condition,
      )
      dec_logits = self.model.apply(
        params,
        x01,
        t,
        cond_proj,
        mask,
        train=train,
        method=asformer.DiffActModel.denoise,
        rngs=_dropout(k_dec),
      )
      terms.update(
        decoder_terms(dec_logits, labels, batch['boundary'], mask, w.soft_label, self.class_weights)
      )
    total = sum(w[k] * v for k, v in terms.items())
    return total, terms

  # -- prediction ---------------------------------------------------------------------------

  def _encode_views(self, params, features, mask):
    """Encoder class probabilities of the views.  features [R, T, D], mask [R, T] -> [R, T, C]."""
    logits, _ = self.model.apply(
      params, features, mask, train=False, method=asformer.DiffActModel.encode
    )
    return jax.nn.softmax(logits, -1) * mask[..., None]

  def _sample_views(self, params, features, mask, rng):
    """DDIM sampling of every view, one program.  features [R, T, D], mask [R, T] -> [R, T, C]."""
    d = self.config.diffusion

    def sample_one(view_features, view_mask, key):
      view_features, view_mask = view_features[None], view_mask[None]
      _, cond = self.model.apply(
        params, view_features, view_mask, train=False, method=asformer.DiffActModel.encode
      )
      cond_proj = self.model.apply(
        params, cond, train=False, method=asformer.DiffActModel.project_condition
      )
      denoise = lambda x01, t: self.model.apply(
        params, x01, t, cond_proj, view_mask, train=False, method=asformer.DiffActModel.denoise
      )
      probs = diffusion.ddim_sample(
        denoise,
        key,
        (1, view_mask.shape[1], self.num_classes),
        self.schedule,
        snr_scale=d.snr_scale,
        sampling_steps=d.sampling_steps,
        eta=d.eta,
      )
      return probs[0] * view_mask[0, :, None]

    shared = d.get('shared_view_noise', False)  # False in runs saved before it
    keys = diffusion.view_keys(rng, features.shape[0], shared)
    return jax.vmap(sample_one)(features, mask, keys)

  def predict_probs(self, params, video: formats.Video, rng: jax.Array) -> np.ndarray:
    """Averaged class probabilities of the temporal views, [T', C] at the sampled rate."""
    views = pipeline.temporal_views(video, self.config.data.sample_rate)
    if self.config.eval.use_decoder:
      probs = self._sample(params, views['features'], views['mask'], rng)
    else:
      probs = self._encode(params, views['features'], views['mask'])
    probs = np.asarray(probs)
    lengths = views['mask'].sum(1).astype(int)
    return postprocess.merge_views([p[:n] for p, n in zip(probs, lengths)])

  def predict(self, params, video: formats.Video, rng: jax.Array) -> dict[str, np.ndarray]:
    e = self.config.eval
    probs = self.predict_probs(params, video, rng)
    pred = postprocess.postprocess(
      probs, len(video.features), self.config.data.sample_rate, e.postprocess, e.postprocess_value
    )
    return {self.rows[0]: pred}

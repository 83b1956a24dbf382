"""DiffAct task (docs/methods/diffact.md): single-stream features, one label per frame.

A `DiffusionTask` with one label chain: the diffusion (noising, condition masks, the training
forward pass, DDIM sampling of every temporal view as one jitted program) is
`polyseg.engine.diffusion_task`'s; DiffAct supplies its model (`model.py`), its target (the one-hot
labels), its loss terms (encoder CE + smoothing, decoder CE + smoothing + boundary) and its decoding
(views averaged, post-processed, restored to the full frame rate). With
`config.eval.use_decoder=False` the encoder's own prediction is used (and, when all decoder loss
weights are 0, the decoder is never run: the "encoder alone" baseline).
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from polyseg.core import losses
from polyseg.core import postprocess
from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.data import pipeline
from polyseg.data import synthetic
from polyseg.data import tfds
from polyseg.engine import diffusion_task
from polyseg.engine import parallel
from polyseg.engine import task as task_lib
from polyseg.methods.diffact import model as diffact_model
from polyseg.nn import asformer

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


class Task(diffusion_task.DiffusionTask, task_lib.SingleLabelTask):
  """DiffAct: see the module docstring and `polyseg.engine.task` for the interface."""

  rows = ('DiffAct',)

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    info: dataset_lib.DataInfo,
    train_videos: list[formats.Video] | None = None,
  ):
    num_classes = len(info.classes)
    model = diffact_model.DiffActModel(
      encoder=asformer.make_encoder(config.model, num_classes),
      decoder=asformer.make_decoder(config.model, num_classes),
    )
    super().__init__(config, info, model, (diffact_model.CHAIN,))
    self.input_dim = info.input_dim
    self.train_decoder = any(config.loss[k] > 0 for k in DECODER_TERMS)
    self.class_weights = None
    if train_videos is not None and uses_class_weights(config.loss):  # every process's share counts
      counts = parallel.sum_over_processes(pipeline.class_counts(train_videos, num_classes))
      self.class_weights = jnp.asarray(pipeline.class_weights(counts))

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

  # -- the diffusion task's parts -----------------------------------------------------------

  def model_inputs(self, batch: dict) -> dict:
    return {'features': batch['features']}

  def targets(self, batch: dict) -> dict[str, diffusion_task.Target]:
    labels = batch['labels']
    y01 = jax.nn.one_hot(labels, self.num_classes)
    return {diffact_model.CHAIN: diffusion_task.Target(y01, labels, batch['boundary'])}

  def loss_terms(self, batch, encoder_logits, decoder_logits, task_state=None):
    """Encoder CE + smoothing, decoder CE + smoothing + boundary, weighted by `config.loss`."""
    del task_state
    w, labels, mask = self.config.loss, batch['labels'], batch['mask']
    chain = diffact_model.CHAIN
    terms = encoder_terms(encoder_logits[chain], labels, mask, w.soft_label, self.class_weights)
    if decoder_logits is not None:
      terms.update(
        decoder_terms(
          decoder_logits[chain], labels, batch['boundary'], mask, w.soft_label, self.class_weights
        )
      )
    return sum(w[k] * v for k, v in terms.items()), terms

  def view_inputs(self, video: formats.Video) -> tuple[dict, np.ndarray]:
    views = pipeline.temporal_views(video, self.config.data.sample_rate)
    return {'features': views['features']}, views['mask']

  # -- prediction ---------------------------------------------------------------------------

  def predict(self, params, video: formats.Video, rng: jax.Array) -> dict[str, np.ndarray]:
    e = self.config.eval
    probs = self.predict_probs(params, video, rng)[diffact_model.CHAIN]
    pred = postprocess.postprocess(
      probs, len(video.features), self.config.data.sample_rate, e.postprocess, e.postprocess_value
    )
    return {self.rows[0]: pred}

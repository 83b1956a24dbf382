"""2s-DAS task (docs/methods/twostream.md): RGB and flow streams, one DiffAct model each, late fusion.

Training: the two DiffAct models (own feature dimension, own weights; the architecture of
config.model) are trained in one jitted step on the sum of their DiffAct losses; each stream draws
its own diffusion times and its own condition mask type per video from
`config.diffusion.condition_types` (2s-DAS's random selection among the masks). Prediction: each
stream's DDIM probabilities averaged over its temporal views; fused as sum_s w_s p_s; the
post-processing chain of `config.eval.postprocess`; argmax at the full frame rate. Rows: 'Fused'
(picks the best checkpoint), 'RGB' and 'Flow' (each stream alone, same post-processing).

The fusion weights are searched on the validation split at every evaluation (`calibrate`: a grid
on the simplex, `config.fusion.step`, best `config.fusion.metric`; the test split never takes part)
and written, with the score curve as a PNG, to the val output folder; `config.fusion.search=False`
keeps `config.fusion.weights`.
"""

import json
import os
import pathlib

import jax
import ml_collections
import numpy as np

from polyseg.core import postprocess
from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.data import pipeline
from polyseg.data import synthetic
from polyseg.data import tfds
from polyseg.engine import task as task_lib
from polyseg.methods.diffact import model as diffact_model
from polyseg.methods.diffact import task as diffact
from polyseg.methods.twostream import late_fusion

STREAMS = formats.STREAMS  # ('rgb', 'flow'): the order of fusion weights


def dataset_root(config: ml_collections.ConfigDict) -> pathlib.Path:
  """`config.data.root`, or the embedded synthetic two-stream dataset (generated on first use)."""
  if config.data.root:
    return pathlib.Path(os.path.expanduser(config.data.root))
  cache = os.path.expanduser(config.data.cache_dir)
  return synthetic.ensure_two_streams(cache, **config.data.synthetic.to_dict())


def load_data(config: ml_collections.ConfigDict) -> dataset_lib.Data:
  """Train / val / test of the two-stream layout (`features_rgb/`, `features_flow/`, MS-TCN labels),
  each video aligned to its flow length (`data.length_tolerance`), from the folder or, with
  data.format='tfds', from its TFDS conversion (`dataset_lib.load_splits`). Val is
  `splits/val.split<k>.bundle`, or a seeded `data.val_fraction` of train (never test: the fusion
  weights and the best checkpoint are chosen on it)."""
  d = config.data
  root = dataset_root(config)

  def read_folder(subset: str, classes, train) -> formats.MultiStreamDataset:
    dims = d.input_dims if train is None else train.input_dims
    return formats.read_two_streams(
      root,
      subset,
      d.split,
      classes=classes,
      rgb_dim=dims['rgb'],
      flow_dim=dims['flow'],
      length_tolerance=d.length_tolerance,
    )

  spec = tfds.Spec('two_streams', split=d.split, length_tolerance=d.length_tolerance)
  dims = {f'features/{s}': d.input_dims[s] for s in STREAMS}
  classes, splits, read_test, shard = dataset_lib.load_splits(config, root, spec, read_folder, dims)
  dims = {s: int(splits['train'][0].features[s].shape[1]) for s in STREAMS}
  background = tuple(classes.index(n) for n in d.background if n in classes)
  info = dataset_lib.DataInfo(tuple(classes), dims, background)
  return dataset_lib.Data(info, splits['train'], splits['val'], read_test, train_shard=shard)


def load_unlabelled(config: ml_collections.ConfigDict, info: dataset_lib.DataInfo) -> list:
  """The videos of `config.predict.features`: a folder with `features_rgb/<vid>.npy` and
  `features_flow/<vid>.npy`, aligned to the flow length like the training data."""
  root = pathlib.Path(os.path.expanduser(config.predict.features))
  per_stream = {
    s: dict(formats.read_feature_folder(root / f'features_{s}', info.input_dim[s])) for s in STREAMS
  }
  if per_stream['rgb'].keys() != per_stream['flow'].keys():
    only = {
      s: sorted(per_stream[s].keys() - per_stream[o].keys()) for s, o in (STREAMS, STREAMS[::-1])
    }
    raise formats.DataError(f'{root}: the streams have different videos: only in {only}')
  videos = []
  for name in sorted(per_stream['flow']):
    flow = per_stream['flow'][name]
    (rgb,) = formats.align_lengths(
      name,
      (root / 'features_flow' / f'{name}.npy', len(flow)),
      [(root / 'features_rgb' / f'{name}.npy', per_stream['rgb'][name], 'constant')],
      config.data.length_tolerance,
    )
    videos.append(formats.MultiStreamVideo(name, {'rgb': rgb, 'flow': flow}))
  return videos


def _stream_batch(batch: dict, stream: str) -> dict:
  """One stream's DiffAct batch: features [B, T, D_stream], labels, boundary, mask."""
  return {
    'features': batch[stream],
    'labels': batch['labels'],
    'boundary': batch['boundary'],
    'mask': batch['mask'],
  }


def _fields(video: formats.MultiStreamVideo):
  return {**video.features, 'labels': video.labels}, {}


class Task(task_lib.SingleLabelTask):
  """2s-DAS: see the module docstring and `polyseg.engine.task` for the interface."""

  rows = ('Fused', 'RGB', 'Flow')
  calibrates = True

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    info: dataset_lib.DataInfo,
    train_videos: list[formats.MultiStreamVideo] | None = None,
  ):
    super().__init__(config, info)
    self.streams = {
      s: diffact.Task(
        config, dataset_lib.DataInfo(info.classes, info.input_dim[s], info.background), train_videos
      )
      for s in STREAMS
    }
    self.fusion_weights = late_fusion.check_weights(config.fusion.weights, len(STREAMS))
    self._val_probs = (None, {})  # (params they were computed with, {video name: stream probs})

  # -- data ---------------------------------------------------------------------------------

  def train_loader(self, videos: list[formats.MultiStreamVideo], **overrides):
    return pipeline.TrainLoader.from_config(videos, self.config, fields=_fields, **overrides)

  def example_batch(self) -> dict[str, np.ndarray]:
    batch = self.streams[STREAMS[0]].example_batch()
    features = {s: self.streams[s].example_batch()['features'] for s in STREAMS}
    return {**{k: v for k, v in batch.items() if k != 'features'}, **features}

  # -- model --------------------------------------------------------------------------------

  def init(self, rng: jax.Array, batch: dict[str, np.ndarray]):
    return {
      s: self.streams[s].init(jax.random.fold_in(rng, i), _stream_batch(batch, s))
      for i, s in enumerate(STREAMS)
    }

  def loss(self, params, batch, rng):
    """Sum of the streams' DiffAct losses; terms '<stream>/<term>'."""
    total, terms = 0.0, {}
    for i, s in enumerate(STREAMS):
      loss, stream_terms = self.streams[s].loss(
        params[s], _stream_batch(batch, s), jax.random.fold_in(rng, i)
      )
      total += loss
      terms.update({f'{s}/{k}': v for k, v in stream_terms.items()})
    return total, terms

  # -- prediction ---------------------------------------------------------------------------

  def stream_probs(self, params, video: formats.MultiStreamVideo, rng) -> list[np.ndarray]:
    """Each stream's class probabilities [T', C] (temporal views averaged), in STREAMS order."""
    cached = self._val_probs[1].pop(video.name, None) if self._val_probs[0] is params else None
    if cached is not None:
      return cached
    return [
      self.streams[s].predict_probs(
        params[s],
        formats.Video(video.name, video.features[s], video.labels),
        jax.random.fold_in(rng, i),
      )[diffact_model.CHAIN]
      for i, s in enumerate(STREAMS)
    ]

  def decode(self, probs: np.ndarray, num_frames: int) -> np.ndarray:
    """Probabilities [T', C] -> full-rate class ids [num_frames] (config.eval.postprocess)."""
    e = self.config.eval
    return postprocess.postprocess(
      probs, num_frames, self.config.data.sample_rate, e.postprocess, e.postprocess_value
    )

  def predict(self, params, video, rng) -> dict[str, np.ndarray]:
    probs = self.stream_probs(params, video, rng)
    num_frames = len(video.features['flow'])
    fused = late_fusion.fuse(probs, self.fusion_weights)
    return {
      'Fused': self.decode(fused, num_frames),
      'RGB': self.decode(probs[0], num_frames),
      'Flow': self.decode(probs[1], num_frames),
    }

  def calibrate(self, params, videos: list, rng, outdir: str | None) -> dict:
    """Searches the fusion weights on `videos` (the val split) and keeps the best, and writes the
    search to `outdir`/fusion_search.json (when given); returns {'fusion_weights': [...]} ({}
    when `fusion.search` is off). `rng` is the one the engine then predicts these videos with, so
    their stream probabilities are computed once."""
    f = self.config.fusion
    if not f.search:
      return {}
    probs = {
      video.name: self.stream_probs(params, video, jax.random.fold_in(rng, index))
      for index, video in enumerate(videos)
    }
    result = late_fusion.search_weights(
      [probs[v.name] for v in videos],
      [v.labels for v in videos],
      decode=lambda fused, index: self.decode(fused, len(videos[index].labels)),
      new_metrics=self.new_metrics,
      metric=f.metric,
      step=f.step,
    )
    self.fusion_weights = result.best
    self._val_probs = (params, probs)
    if outdir is not None and jax.process_index() == 0:
      os.makedirs(outdir, exist_ok=True)
      summary = {
        'streams': list(STREAMS),
        'weights': list(result.best),
        'metric': result.metric,
        'score': result.best_score,
        'curve': [[*map(float, w), float(score)] for w, score in zip(result.grid, result.scores)],
      }
      formats.write_atomic(
        os.path.join(outdir, 'fusion_search.json'), json.dumps(summary, indent=1).encode()
      )
      late_fusion.plot_search(result, os.path.join(outdir, 'fusion_search.png'), STREAMS)
      weights = ', '.join(f'{s} {w:.2f}' for s, w in zip(STREAMS, result.best))
      print(
        f'fusion weights on {len(videos)} val videos: {weights} ({f.metric} {result.best_score:.2f})'
      )
    return {'fusion_weights': [float(w) for w in result.best]}

r"""Numerical parity of polyseg's DiffAct with the public reference code (PyTorch).

  pip install -e '.[parity]'            # PyTorch CPU; polyseg itself never imports it
  git clone https://github.com/Finspire13/DiffAct /tmp/DiffAct
  python benchmarks/parity_diffact.py --reference=/tmp/DiffAct [--datasets=gtea,breakfast] \
      [--frames=600] [--json=parity.json]

For each dataset size (configs/diffact.py:dataset=...), the reference model is built with its
own (PyTorch default) initialisation, its weights are copied into polyseg's parameter tree, and
both implementations get the same random video (features, labels in random segments). Compared,
with dropout off:

- the schedule (alphas_cumprod), the boundary target (at the full rate, and of a training view at a
  lower rate), and the class weights;
- encoder logits and the decoder condition (the encoder's feature layers);
- the noisy decoder input for the same t and noise;
- the decoder's x0 logits for each condition mask (full, zero, boundary, segment);
- every loss term (soft labels as published, and hard-label class-weighted CE), per mask;
- the gradient of the weighted loss w.r.t. every parameter;
- one whole DDIM sampling with the noise fixed (the reference's draws replaced by polyseg's);
- the loss of a padded batch of two videos against the reference's mean of per-video losses
  (its batches are one video at a time, accumulated).

Error = max |polyseg - reference| / max |reference| per quantity, within --tolerance (1e-4) or not.
Prints every row, then the largest error per quantity and dataset; --json writes every row.

Weights whose gradient is small (a key's or query's, largely cancelled in the softmax) in layers
whose dilated windows reach past the ends of the video can differ by a few percent of their own
size. --float64 also runs the reference in float64, to tell a real difference from float32 rounding
(at Breakfast's size the reference's own float32 gradients are the ones off). The reference masks
attention keys outside the video with log(mask + 1e-6): a window position past either end enters
the softmax with score log 1e-6 before its weight is dropped; polyseg masks exactly, and
--exact-reference-masking removes the leak from the reference, or --reference-masking gives
polyseg the same leak (model.encoder/decoder.outside_logit = log 1e-6).
"""

import argparse
import contextlib
import copy
import json
import os
import random
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

from polyseg.configlib import load_config
from polyseg.core import diffusion
from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.data import pipeline
from polyseg.engine import diffusion_task
from polyseg.engine import parallel
from polyseg.methods.diffact import model as diffact_model
from polyseg.methods.diffact import task as diffact
from polyseg.report import tables

parallel.keep_ynnpack_to_matmuls()  # as `python -m polyseg.main` runs, before any device is used

REFERENCE_OUTSIDE_LOGIT = float(np.log(1e-6))  # the reference's log(mask + 1e-6) at a masked key
NUM_CLASSES = {'gtea': 11, '50salads': 19, 'breakfast': 48}
REFERENCE_MASKS = {
  'full': 'full',
  'zero': 'zero',
  'boundary': 'boundary03-',
  'segment=1': 'segment=1',
}
LOSS_TERMS = {  # reference loss_dict key -> polyseg loss term
  'encoder_ce_loss': 'encoder_ce',
  'encoder_mse_loss': 'encoder_smooth',
  'decoder_ce_loss': 'decoder_ce',
  'decoder_mse_loss': 'decoder_smooth',
  'decoder_boundary_loss': 'decoder_boundary',
}


class _ExactMasking:
  """Stands in for the reference module's `torch`: its attention's log(mask + 1e-6) becomes
  log(mask), so keys outside the video get exactly no weight (the only torch.log it runs after
  construction). Everything else is torch's."""

  def __getattr__(self, name):
    return getattr(torch, name)

  @staticmethod
  def log(x):
    return torch.log(x - LEAK)


def import_reference(path: str, exact_masking: bool = False):
  """The reference's model.py and dataset.py modules (from a checkout at `path`); `exact_masking`:
  its attention masked exactly (`_ExactMasking`), as polyseg's is."""
  if not os.path.isfile(os.path.join(path, 'model.py')):
    raise SystemExit(f'--reference={path}: no model.py there; expected a checkout of DiffAct')
  sys.path.insert(0, os.path.abspath(path))
  import dataset as reference_dataset  # the reference's own modules
  import model as reference_model

  if exact_masking:
    reference_model.torch = _ExactMasking()
  return reference_model, reference_dataset


def add_reference_arguments(parser: argparse.ArgumentParser) -> None:
  """--reference (a checkout of the DiffAct code) and --exact-reference-masking."""
  parser.add_argument('--reference', required=True, help='a checkout of the DiffAct code')
  parser.add_argument(
    '--exact-reference-masking',
    action='store_true',
    help="mask the reference's attention exactly (it adds log(mask + 1e-6), so a masked key keeps "
    'a weight of 1e-6 exp(-score of the valid keys)); polyseg masks exactly',
  )


def reference_params(config, input_dim: int, num_classes: int) -> dict:
  """The reference's constructor arguments for a polyseg DiffAct config."""
  e, d, f = config.model.encoder, config.model.decoder, config.diffusion
  threshold = {0.3: 'boundary03-', 0.5: 'boundary05-'}[f.boundary_threshold]
  return {
    'encoder_params': {
      'use_instance_norm': False,
      'num_layers': e.num_layers,
      'num_f_maps': e.num_f_maps,
      'input_dim': input_dim,
      'kernel_size': e.kernel_size,
      'normal_dropout_rate': e.dropout,
      'channel_dropout_rate': e.channel_dropout,
      'temporal_dropout_rate': e.temporal_dropout,
      'feature_layer_indices': list(e.feature_layer_indices),
    },
    'decoder_params': {
      'num_layers': d.num_layers,
      'num_f_maps': d.num_f_maps,
      'time_emb_dim': d.time_emb_dim,
      'kernel_size': d.kernel_size,
      'dropout_rate': d.dropout,
    },
    'diffusion_params': {
      'timesteps': f.num_steps,
      'sampling_timesteps': f.sampling_steps,
      'ddim_sampling_eta': f.eta,
      'snr_scale': f.snr_scale,
      'cond_types': [threshold if k == 'boundary' else k for k in f.condition_types],
      'detach_decoder': False,
    },
    'num_classes': num_classes,
    'device': 'cpu',
  }


def _dense(weight: torch.Tensor, bias: torch.Tensor | None = None) -> dict:
  """A torch Linear [out, in] or 1x1 Conv1d [out, in, 1] -> flax Dense {'kernel' [in, out], 'bias'}."""
  w = weight.detach().numpy()
  out = {'kernel': (w[..., 0] if w.ndim == 3 else w).T}
  if bias is not None:
    out['bias'] = bias.detach().numpy()
  return out


def _conv(conv) -> dict:
  """torch Conv1d [out, in, k] -> polyseg DilatedConv {'kernel' [k, in, out], 'bias'}."""
  return {
    'kernel': conv.weight.detach().numpy().transpose(2, 1, 0),
    'bias': conv.bias.detach().numpy(),
  }


def _layer(layer, width: int | None = None) -> dict:
  """A reference MixedConvAttentionLayer(V2) -> polyseg ConvAttentionLayer params. `width` (the
  layer's own channels) splits the decoder's Q/K weights on concat[x, condition] into polyseg's
  Dense(x) and Dense_no_bias(condition)."""
  out = {
    'conv': _conv(layer.conv_block[0]),
    'value': _dense(layer.att_linear_v.weight, layer.att_linear_v.bias),
    'ffn_hidden': _dense(layer.ffn_block[0].weight, layer.ffn_block[0].bias),
    'ffn_out': _dense(layer.ffn_block[2].weight, layer.ffn_block[2].bias),
  }
  for name, linear in (('query', layer.att_linear_q), ('key', layer.att_linear_k)):
    if width is None:
      out[name] = _dense(linear.weight, linear.bias)
    else:
      out[name] = _dense(linear.weight[:, :width], linear.bias)
      out[f'{name}_cond'] = _dense(linear.weight[:, width:])
  return out


def to_flax(model) -> dict:
  """The reference ASDiffusionModel's weights as the parameter tree of polyseg's DiffActModel."""
  enc, dec = model.encoder, model.decoder
  encoder = {
    'input_proj': _dense(enc.conv_in.weight, enc.conv_in.bias),
    'output': _dense(enc.conv_out.weight, enc.conv_out.bias),
  }
  for i, layer in enumerate(enc.encoder.layers):
    encoder[f'layers_{i}'] = _layer(layer)
  width = dec.conv_in.out_channels
  decoder = {
    'input_proj': _dense(dec.conv_in.weight, dec.conv_in.bias),
    'output': _dense(dec.conv_out.weight, dec.conv_out.bias),
    'time_hidden': _dense(dec.time_in[0].weight, dec.time_in[0].bias),
    'time_out': _dense(dec.time_in[1].weight, dec.time_in[1].bias),
    'time_proj': _dense(dec.module.time_proj.weight, dec.module.time_proj.bias),
  }
  for i, layer in enumerate(dec.module.layers):
    decoder[f'layers_{i}'] = _layer(layer, width)
  return {'params': {'encoder': encoder, 'decoder': decoder}}


def _flax_grads(model) -> dict:
  """The reference's .grad of every weight, in polyseg's parameter tree layout."""
  saved = {name: p.data.clone() for name, p in model.named_parameters()}
  for p in model.parameters():
    p.data = p.grad.clone()
  grads = to_flax(model)
  for name, p in model.named_parameters():
    p.data = saved[name]
  return grads


def random_video(rng: np.random.Generator, frames: int, input_dim: int, num_classes: int):
  """Features [T, D] and labels [T] in about 8 random segments (every class may repeat)."""
  cuts = np.sort(rng.choice(np.arange(20, frames - 20), 7, replace=False))
  labels = np.zeros(frames, np.int32)
  for start, end in zip([0, *cuts], [*cuts, frames]):
    labels[start:end] = rng.integers(num_classes)
  for i in range(1, frames):  # neighbouring segments differ
    if labels[i] == labels[i - 1] and i in cuts:
      labels[i:] = (labels[i:] + 1) % num_classes
  features = rng.normal(size=(frames, input_dim)).astype(np.float32)
  return features, labels


def error(ours, reference) -> float:
  """max |ours - reference| / max |reference|."""
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  if ours.shape != reference.shape:
    raise ValueError(f'shapes differ: {ours.shape} vs {reference.shape}')
  scale = max(np.abs(reference).max(), 1e-12)
  return float(np.abs(ours - reference).max() / scale)


# Biases whose exact gradient is 0 in every DiffAct layer: the conv and value biases add a constant
# per channel that the instance norm removes, the key bias a constant per query that the softmax
# removes. Both sides give rounding noise there, measured against the largest gradient.
ZERO_GRADIENT = re.compile(r"\['(conv|value|key)'\]\['bias'\]$")
LEAK = 1e-6  # the reference's attention masks keys with log(mask + 1e-6): masked keys leak 1e-6


def gradient_error(ours, reference) -> float:
  """The largest per-weight error of two gradient trees, each against its own largest reference
  gradient, except against the tree's largest gradient for ZERO_GRADIENT and for weights whose
  reference gradient is below LEAK of it (a layer whose dilated window reaches past both ends of
  the video for every frame has one key per query: its query and key weights have an exact
  gradient of 0, and the reference's is its masking leak)."""
  scale = max(np.abs(np.asarray(g)).max() for g in jax.tree.leaves(reference))
  errors = []
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(reference)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    own = np.abs(b).max()
    zero = ZERO_GRADIENT.search(jax.tree_util.keystr(path)) or own < LEAK * scale
    errors.append(np.abs(a - b).max() / (scale if zero else own))
  return float(max(errors))


@contextlib.contextmanager
def _patched(obj, name, value):
  saved = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, saved)


@contextlib.contextmanager
def fixed_draws(kind: str, dropped_class: int | None, normals: list[np.ndarray] | None = None):
  """The reference's random choices fixed: condition `kind`, the dropped segment class, and its
  torch.randn / randn_like draws taken in order from `normals`."""
  draws = iter(normals or [])

  def normal(*args, **kwargs):
    return torch.from_numpy(next(draws).astype(np.float32))

  with contextlib.ExitStack() as stack:
    stack.enter_context(_patched(random, 'choice', lambda seq: kind))
    stack.enter_context(_patched(np.random, 'choice', lambda seq: dropped_class))
    if normals is not None:
      stack.enter_context(_patched(torch, 'randn', normal))
      stack.enter_context(_patched(torch, 'randn_like', normal))
    yield


def _to_torch(x: np.ndarray) -> torch.Tensor:
  """[T, ...] channels-last -> [1, C, T] float32."""
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).T))[None]


def _channels_last(x: torch.Tensor) -> np.ndarray:
  """[1, C, T] -> [T, C]."""
  return x.detach().numpy()[0].T


def compare(
  dataset: str,
  ref_model,
  ref_dataset,
  frames: int,
  seed: int,
  float64: bool = False,
  outside_logit: float | None = None,
) -> list[dict]:
  """Rows {quantity, error} of one dataset size; `float64`: also both float32 gradients against
  the reference's in float64; `outside_logit`: polyseg's attention masking (None: exact)."""
  config = load_config('diffact', f'dataset={dataset}')
  config.model.encoder.outside_logit = config.model.decoder.outside_logit = outside_logit
  num_classes, input_dim = NUM_CLASSES[dataset], 2048
  torch.manual_seed(seed)
  args = reference_params(config, input_dim, num_classes)
  reference = ref_model.ASDiffusionModel(**args)
  reference.eval()  # dropout off on both sides
  info = dataset_lib.DataInfo(tuple(f'class{i}' for i in range(num_classes)), input_dim, ())
  rng = np.random.default_rng(seed)
  videos = [random_video(rng, n, input_dim, num_classes) for n in (frames, frames * 2 // 3)]
  features, labels = videos[0]
  counts = pipeline.class_counts([type('V', (), {'labels': v[1]})() for v in videos], num_classes)
  task = diffact.Task(config, info)
  class_weights = jnp.asarray(pipeline.class_weights(counts))
  params = to_flax(reference)
  rows = []

  def row(quantity, ours, theirs):
    rows.append({'dataset': dataset, 'quantity': quantity, 'error': error(ours, theirs)})

  # Schedule, boundary target, class weights.
  row('schedule alphas_cumprod', task.schedule.alphas_cumprod, reference.alphas_cumprod.numpy())
  sigma = config.data.boundary_sigma
  boundary = pipeline.boundary_target(labels, sigma)
  row('boundary target', boundary, ref_dataset.get_boundary_seq(labels.astype(float), sigma))
  ref_weights = ref_dataset.VideoFeatureDataset(
    {str(i): {'event_seq_raw': v[1]} for i, v in enumerate(videos)}, num_classes, 'train'
  ).get_class_weights()
  row('class weights', class_weights, ref_weights)
  rate = 8  # a training view at a lower frame rate (50Salads' rate), its boundary renormalised
  loader = pipeline.TrainLoader(
    [formats.Video('v', np.arange(frames, dtype=np.float32)[:, None], labels)],
    batch_size=1,
    sample_rate=rate,
    boundary_sigma=sigma,
    seed=seed,
  )
  view = loader.batch(0)
  offset = int(view['features'][0, 0, 0])
  full = ref_dataset.get_boundary_seq(labels.astype(float), sigma)
  ref_view = ref_dataset.VideoFeatureDataset(
    {
      'v': {
        'feature': [torch.zeros(1, len(range(o, frames, rate)), 1) for o in range(rate)],
        'event_seq_ext': [torch.from_numpy(labels[o::rate]) for o in range(rate)],
        'boundary_seq_ext': [torch.from_numpy(full[o::rate]).float() for o in range(rate)],
      }
    },
    num_classes,
    'train',
  )
  with _patched(random, 'randint', lambda low, high: min(offset, high)):
    ref_boundary = ref_view[0][2]
  n = int(view['mask'].sum())
  row(f'training boundary target, 1 frame in {rate}', view['boundary'][0, :n], ref_boundary[0])

  # Encoder.
  x, mask = jnp.asarray(features)[None], jnp.ones((1, frames))
  chain = diffact_model.CHAIN
  enc_logits, cond = task.model.apply(
    params, {'features': x}, mask, train=False, method=task.model.encode
  )
  enc_logits, cond = enc_logits[chain], cond[chain]
  with torch.no_grad():
    ref_logits, ref_cond = reference.encoder(_to_torch(features), get_features=True)
  row('encoder logits', enc_logits[0], _channels_last(ref_logits))
  row('decoder condition (encoder features)', cond[0], _channels_last(ref_cond))

  # Noisy decoder input for one t and noise.
  onehot = np.eye(num_classes, dtype=np.float32)[labels]
  t, noise = 400, rng.normal(size=(frames, num_classes)).astype(np.float32)
  signal = diffusion.labels_to_signal(jnp.asarray(onehot)[None], config.diffusion.snr_scale)
  x_t = diffusion.q_sample(signal, jnp.asarray([t]), jnp.asarray(noise)[None], task.schedule)
  x01 = diffusion.signal_to_unit(x_t, config.diffusion.snr_scale)
  fixed_t = _patched(torch, 'randint', lambda *a, **k: torch.tensor([t]))
  with torch.no_grad(), fixed_draws('full', None, [noise.T[None]]), fixed_t:
    ref_x01, _, _ = reference.prepare_targets(_to_torch(onehot))
  row('noisy labels x01 (t=400)', x01[0], _channels_last(ref_x01))

  # Decoder x0 and every loss term, per condition mask.
  batch = {
    'features': x,
    'labels': jnp.asarray(labels)[None],
    'boundary': jnp.asarray(boundary)[None],
    'mask': mask,
  }
  published_soft_label = config.loss.soft_label
  video, loss_weights = (features, onehot, boundary), reference_loss_weights(config)
  reference64 = copy.deepcopy(reference).double() if float64 else None
  for kind in ('full', 'zero', 'boundary', 'segment=1'):
    cond_mask = diffusion.condition_mask(
      jax.random.key(seed),
      batch['labels'],
      batch['boundary'],
      mask,
      (kind,),
      config.diffusion.boundary_threshold,
    )
    dropped = np.unique(labels[np.asarray(cond_mask[0, :, 0]) == 0])
    dropped_class = int(dropped[0]) if kind.startswith('segment') and dropped.size else None
    diffused = {chain: diffusion_task.Diffused(x01, jnp.asarray([t]), cond_mask)}
    with torch.no_grad():
      ref_feature_mask = {
        'full': 1.0,
        'zero': 0.0,
        'boundary': (torch.from_numpy(boundary)[None, None] < config.diffusion.boundary_threshold),
        'segment=1': torch.from_numpy(labels)[None, None] != dropped_class,
      }[kind]
      ref_x0 = reference.decoder(ref_cond * ref_feature_mask, torch.tensor([t]), ref_x01.float())
    cond_proj = task.model.apply(
      params, {chain: cond * cond_mask}, train=False, method=task.model.project_condition
    )
    x0 = task.model.apply(
      params,
      {chain: x01},
      {chain: jnp.asarray([t])},
      cond_proj,
      mask,
      train=False,
      method=task.model.denoise,
    )[chain]
    row(f'decoder x0 logits, mask {kind}', x0[0], _channels_last(ref_x0))
    for soft in (published_soft_label, None):
      name = f'soft labels {soft}' if soft else 'hard labels, class-weighted'
      task.config.loss.soft_label = soft
      task.class_weights = class_weights if diffact.uses_class_weights(task.config.loss) else None

      def loss_fn(p, diffused=diffused):
        return task.forward(p, batch, diffused)

      (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      draws = (REFERENCE_MASKS[kind], dropped_class, noise, t)
      ref_terms = reference_loss(reference, video, ref_weights, loss_weights, soft, draws)
      ref_grads = _flax_grads(reference)
      for ref_key, ours in LOSS_TERMS.items():
        row(f'{ref_key}, mask {kind}, {name}', terms[ours], ref_terms[ref_key].item())
      row(f'gradients (all weights), mask {kind}, {name}', 0.0, 0.0)
      rows[-1]['error'] = gradient_error(grads, ref_grads)
      if reference64 is not None:  # both float32 gradients against the reference's in float64
        reference_loss(reference64, video, ref_weights, loss_weights, soft, draws)
        exact = _flax_grads(reference64)
        for who, tree in (('polyseg', grads), ('reference', ref_grads)):
          row(f'float32 gradients of {who} vs float64, mask {kind}, {name}', 0.0, 0.0)
          rows[-1]['error'] = gradient_error(tree, exact)
    task.config.loss.soft_label = published_soft_label
    task.class_weights = class_weights if diffact.uses_class_weights(task.config.loss) else None

  # One DDIM sampling with the same noise.
  key = jax.random.key(seed + 1)
  steps = config.diffusion.sampling_steps
  view_key = diffusion.view_keys(key, 1, config.diffusion.shared_view_noise)[0]
  keys = jax.random.split(view_key, steps + 1)  # as ddim_sample splits the view's key
  shape = (1, frames, num_classes)
  normals = [np.asarray(jax.random.normal(k, shape, jnp.float32))[0].T[None] for k in keys]
  probs = task._sample(params, {'features': x}, mask, key)[:, 0]  # the view's one chain
  with torch.no_grad(), fixed_draws('full', None, normals):
    ref_probs = reference.ddim_sample(_to_torch(features))
  row(
    f'DDIM probabilities ({steps} steps, eta {config.diffusion.eta})',
    probs[0],
    _channels_last(ref_probs),
  )

  # A padded batch of two videos against the reference's per-video accumulation.
  second_features, second_labels = videos[1]
  batch2 = {
    'features': jnp.asarray(pipeline.pad_stack([features, second_features], frames, np.float32)),
    'labels': jnp.asarray(pipeline.pad_stack([labels, second_labels], frames, np.int32)),
    'boundary': jnp.asarray(
      pipeline.pad_stack(
        [boundary, pipeline.boundary_target(second_labels, sigma)], frames, np.float32
      )
    ),
    'mask': jnp.asarray(pipeline._mask([frames, len(second_labels)], frames)),
  }
  per_video = []
  for f, y in videos:
    single = {
      'features': jnp.asarray(f)[None],
      'labels': jnp.asarray(y)[None],
      'boundary': jnp.asarray(pipeline.boundary_target(y, sigma))[None],
      'mask': jnp.ones((1, len(y))),
    }
    per_video.append(float(task.forward(params, single, None)[0]))
  batched = float(task.forward(params, batch2, None)[0])
  row(
    'encoder loss of a padded batch of 2 vs mean of per-video losses', batched, np.mean(per_video)
  )
  return rows


def reference_terms(model, features, event_gt, boundary_gt, class_weights, soft_label) -> dict:
  """The reference's loss terms (its `get_training_loss` with the criteria its trainer builds) of
  one video: features [1, D, T], event_gt one-hot [1, C, T], boundary_gt [1, 1, T], torch tensors
  of one dtype; class_weights [C] (numpy) or None."""
  weight = None if class_weights is None else torch.from_numpy(class_weights).to(features.dtype)
  ce = torch.nn.CrossEntropyLoss(weight=weight, reduction='none')
  mse, bce = torch.nn.MSELoss(reduction='none'), torch.nn.BCELoss(reduction='none')
  return model.get_training_loss(
    features,
    event_gt=event_gt,
    boundary_gt=boundary_gt,
    encoder_ce_criterion=ce,
    encoder_mse_criterion=mse,
    encoder_boundary_criterion=bce,
    decoder_ce_criterion=ce,
    decoder_mse_criterion=mse,
    decoder_boundary_criterion=bce,
    soft_label=soft_label,
  )


def reference_loss(model, video, class_weights, loss_weights, soft_label, draws):
  """The reference's loss terms of one video (features [T, D], one-hot labels [T, C], boundary
  target [T]), backpropagated: the .grad of `model` (float32 or float64). draws: (its condition
  type, the dropped class, the noise [T, C], t), fixed."""
  features, onehot, boundary = video
  kind, dropped_class, noise, t = draws
  dtype = next(model.parameters()).dtype
  model.zero_grad()
  fixed_t = _patched(torch, 'randint', lambda *a, **k: torch.tensor([t]))
  # The reference casts the decoder's input with .float(); in float64 that cast keeps float64.
  cast = _patched(torch.Tensor, 'float', lambda x: x.to(dtype))
  with fixed_draws(kind, dropped_class, [noise.T[None]]), fixed_t, cast:
    terms = reference_terms(
      model,
      _to_torch(features).to(dtype),
      torch.from_numpy(onehot.T[None]).to(dtype),
      torch.from_numpy(boundary)[None, None].to(dtype),
      class_weights,
      soft_label,
    )
  sum(loss_weights[k] * v for k, v in terms.items()).backward()
  return terms


def reference_loss_weights(config) -> dict[str, float]:
  w = config.loss
  return {
    'encoder_ce_loss': w.encoder_ce,
    'encoder_mse_loss': w.encoder_smooth,
    'encoder_boundary_loss': 0.0,
    'decoder_ce_loss': w.decoder_ce,
    'decoder_mse_loss': w.decoder_smooth,
    'decoder_boundary_loss': w.decoder_boundary,
  }


def _verdict(value: float, tolerance: float) -> str:
  return 'yes' if value < tolerance else 'NO'


def summary(rows: list[dict]) -> str:
  """One line per quantity (masks and label kinds merged: their largest error), one column per
  dataset size."""
  datasets = list(dict.fromkeys(r['dataset'] for r in rows))
  table = {}
  for r in rows:
    group = re.sub(
      r', (mask [^,]+|soft labels [^,]+|hard labels, class-weighted)', '', r['quantity']
    )
    cell = table.setdefault(group, {})
    cell[r['dataset']] = max(cell.get(r['dataset'], 0.0), r['error'])
  cells = [['', *datasets]] + [
    [group, *(f'{errors[d]:.1e}' if d in errors else '-' for d in datasets)]
    for group, errors in table.items()
  ]
  return '\n'.join(tables.align_columns(cells))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  add_reference_arguments(parser)
  parser.add_argument('--datasets', default='gtea,breakfast')
  parser.add_argument('--frames', type=int, default=600)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--tolerance', type=float, default=1e-4)
  parser.add_argument('--json', help='write every row here')
  parser.add_argument(
    '--float64',
    action='store_true',
    help="also run the reference in float64 and measure both implementations' float32 gradients "
    'against it (is a gradient difference float32 rounding?)',
  )
  parser.add_argument(
    '--reference-masking',
    action='store_true',
    help="polyseg masks attention as the reference does (model.encoder/decoder.outside_logit = "
    'log(1e-6)) instead of exactly',
  )
  args = parser.parse_args()
  jax.config.update('jax_default_matmul_precision', 'highest')
  torch.set_num_threads(os.cpu_count() or 1)
  ref_model, ref_dataset = import_reference(args.reference, args.exact_reference_masking)
  rows = []
  for dataset in args.datasets.split(','):
    outside_logit = REFERENCE_OUTSIDE_LOGIT if args.reference_masking else None
    rows += compare(
      dataset, ref_model, ref_dataset, args.frames, args.seed, args.float64, outside_logit
    )
  cells = [['', 'relative error', 'within']] + [
    [f'{r["dataset"]}: {r["quantity"]}', f'{r["error"]:.1e}', _verdict(r['error'], args.tolerance)]
    for r in rows
  ]
  print('\n'.join(tables.align_columns(cells)))
  print(
    f'\nlargest error per quantity (over the four masks and both label kinds):\n{summary(rows)}'
  )
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=1)
  good = sum(r['error'] < args.tolerance for r in rows)
  print(f'{good} of {len(rows)} within {args.tolerance:g}')


if __name__ == '__main__':
  main()

"""Video ViT with two hand heads (Polyphony's ADH-ViT), VideoMAE (V2) compatible.

Tubelet embedding (a Conv3D with stride = kernel = [tubelet, patch, patch]), fixed sinusoidal
positions, pre-norm transformer blocks, mean over tokens, LayerNorm -> `shared` [B, D]; two linear
heads -> `lh`, `rh` logits [B, C]. Input: clips [B, F, S, S, 3] normalised with `normalize`.

Pretrained weights come from a local `.npz` or `.safetensors` file (no downloads) holding
VideoMAE-style tensor names (an official `.pth` must be converted first, e.g.
`np.savez(out, **{k: v.numpy() for k, v in torch.load(pth)['module'].items()})`):

    patch_embed.proj.weight        [D, 3, tubelet, patch, patch]  -> patch_embed/proj/kernel
    patch_embed.proj.bias          [D]
    blocks.<i>.norm1.weight|bias   [D]                            -> blocks_<i>/norm1/scale|bias
    blocks.<i>.attn.qkv.weight     [3D, D] (no bias: k has none)  -> blocks_<i>/attn/qkv/kernel
    blocks.<i>.attn.q_bias|v_bias  [D]
    blocks.<i>.attn.proj.weight|bias, blocks.<i>.norm2.*, blocks.<i>.mlp.fc1.*, blocks.<i>.mlp.fc2.*
    fc_norm.weight|bias            [D] (a pretraining encoder's `norm.*` is used when absent)
    head_lh.weight|bias, head_rh.weight|bias   [C, D], [C]  optional: missing heads stay fresh

Linear weights are torch's [out, in] (transposed on load). One common prefix is allowed
(`encoder.`, `module.`, ...). Ignored: a single-task `head.*` (e.g. Kinetics), a pretraining
decoder (`decoder.*`, `encoder_to_decoder.*`, `mask_token`) and a `pos_embed` equal to the fixed
table. Anything else, a missing backbone tensor or a wrong shape is a ValueError naming the file.
"""

import pathlib
import re
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from polyseg.nn import layers

SIZES = {
  'vit_b': {
    'width': 768,
    'depth': 12,
    'num_heads': 12,
    'mlp_dim': 3072,
    'patch_size': 16,
    'tubelet_size': 2,
    'num_frames': 16,
    'image_size': 224,
  },
  'tiny': {
    'width': 64,
    'depth': 2,
    'num_heads': 2,
    'mlp_dim': 128,
    'patch_size': 8,
    'tubelet_size': 2,
    'num_frames': 16,
    'image_size': 32,
  },
}
"""Architecture sizes: ViT-B/16 of VideoMAE V2 (the paper's) and a tiny one for CPU runs."""
ARCH_FIELDS = tuple(SIZES['tiny'])

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYER_NORM_EPS = 1e-6
HEADS = ('head_lh', 'head_rh')  # param names of the two hand heads, in formats.HANDS order


def normalize(frames: jax.Array) -> jax.Array:
  """uint8 RGB [..., 3] -> float32 (x / 255 - ImageNet mean) / std, as VideoMAE was trained."""
  x = frames.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def sinusoidal_positions(num_positions: int, dim: int) -> np.ndarray:
  """VideoMAE's fixed table [N, D] float32: angle(p, j) = p / 10000^(2 floor(j/2) / D),
  sin at even j, cos at odd j (one index p per token, in tubelet-major raster order)."""
  position = np.arange(num_positions, dtype=np.float64)[:, None]
  exponent = 2.0 * (np.arange(dim) // 2) / dim
  angle = position / np.power(10000.0, exponent)[None, :]
  table = np.where(np.arange(dim) % 2 == 0, np.sin(angle), np.cos(angle))
  return table.astype(np.float32)


def _dense(features: int, name: str, use_bias: bool = True, dtype=jnp.float32) -> layers.Dense:
  init = nn.initializers.truncated_normal(0.02)
  return layers.Dense(features, use_bias=use_bias, kernel_init=init, dtype=dtype, name=name)


def _layer_norm(name: str, dtype=jnp.float32) -> nn.LayerNorm:
  return nn.LayerNorm(LAYER_NORM_EPS, dtype=dtype, name=name)


class Attention(nn.Module):
  """Multi-head self-attention, VideoMAE layout: qkv without bias plus q_bias, v_bias (k: none).

  [B, N, D] -> [B, N, D].
  """

  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, tokens, dim = x.shape
    if dim % self.num_heads:
      raise ValueError(
        f'polyseg/methods/polyphony/vit.py: width {dim} not divisible by {self.num_heads} heads'
      )
    q_bias = self.param('q_bias', nn.initializers.zeros_init(), (dim,))
    v_bias = self.param('v_bias', nn.initializers.zeros_init(), (dim,))
    qkv = _dense(3 * dim, 'qkv', use_bias=False, dtype=self.dtype)(x)
    qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
    qkv = qkv.reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
    q, k, v = jnp.moveaxis(qkv, 2, 0)  # [B, N, heads, head_dim] each
    out = jax.nn.dot_product_attention(q, k, v)
    return _dense(dim, 'proj', dtype=self.dtype)(out.reshape(batch, tokens, dim))


class Mlp(nn.Module):
  """fc1, exact GELU, fc2: [B, N, D] -> [B, N, D]."""

  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.gelu(_dense(self.hidden, 'fc1', dtype=self.dtype)(x), approximate=False)
    return _dense(x.shape[-1], 'fc2', dtype=self.dtype)(h)


class Block(nn.Module):
  """Pre-norm transformer block: x + A(LN(x)), then + MLP(LN(x)); [B, N, D] -> [B, N, D].

  `drop_path` drops a sample's whole residual branch (stochastic depth) when training.
  """

  num_heads: int
  mlp_dim: int
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    drop = layers.Dropout(self.drop_path, broadcast_dims=(1, 2), deterministic=not train)
    h = Attention(self.num_heads, self.dtype, name='attn')(_layer_norm('norm1', self.dtype)(x))
    x = x + drop(h)
    h = Mlp(self.mlp_dim, self.dtype, name='mlp')(_layer_norm('norm2', self.dtype)(x))
    return x + drop(h)


class PatchEmbed(nn.Module):
  """Tubelet embedding: [B, F, S, S, 3] -> [B, N, D], tokens in (time, row, column) raster order."""

  width: int
  patch_size: int
  tubelet_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, video: jax.Array) -> jax.Array:
    kernel = (self.tubelet_size, self.patch_size, self.patch_size)
    x = nn.Conv(self.width, kernel, strides=kernel, padding='VALID', dtype=self.dtype, name='proj')(
      video
    )
    return x.reshape(x.shape[0], -1, self.width)


class VideoViT(nn.Module):
  """Clips [B, F, S, S, 3] (normalised) -> {'shared': [B, D], 'lh': [B, C], 'rh': [B, C]}.

  F = num_frames, S = image_size; tokens N = (F / tubelet) (S / patch)^2. Outputs are float32.
  """

  num_classes: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int
  tubelet_size: int
  num_frames: int
  image_size: int
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @property
  def clip_shape(self) -> tuple[int, int, int, int]:
    """[F, S, S, 3]: the shape of one input clip."""
    return (self.num_frames, self.image_size, self.image_size, 3)

  @property
  def num_tokens(self) -> int:
    return (self.num_frames // self.tubelet_size) * (self.image_size // self.patch_size) ** 2

  @nn.compact
  def __call__(self, video: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    if self.num_frames % self.tubelet_size or self.image_size % self.patch_size:
      raise ValueError(
        f'polyseg/methods/polyphony/vit.py: num_frames {self.num_frames} / tubelet_size {self.tubelet_size} '
        f'and image_size {self.image_size} / patch_size {self.patch_size} must divide exactly'
      )
    if video.shape[1:] != self.clip_shape:
      raise ValueError(
        f'polyseg/methods/polyphony/vit.py: clips must be [B, {", ".join(map(str, self.clip_shape))}], '
        f'got {video.shape}'
      )
    x = PatchEmbed(self.width, self.patch_size, self.tubelet_size, self.dtype, name='patch_embed')(
      video
    )
    x = x + jnp.asarray(sinusoidal_positions(self.num_tokens, self.width), x.dtype)
    for i in range(self.depth):
      rate = self.drop_path * i / max(self.depth - 1, 1)  # linearly increasing, as in VideoMAE
      x = Block(self.num_heads, self.mlp_dim, rate, self.dtype, name=f'blocks_{i}')(x, train)
    shared = _layer_norm('fc_norm', self.dtype)(x.mean(axis=1))
    out = {'shared': shared}
    for head, hand in zip(HEADS, ('lh', 'rh'), strict=True):
      out[hand] = _dense(self.num_classes, head, dtype=self.dtype)(shared)
    out = {k: v.astype(jnp.float32) for k, v in out.items()}
    chex.assert_shape(out['shared'], (video.shape[0], self.width))
    return out


def build(config, num_classes: int) -> VideoViT:
  """The VideoViT of `config` (fields of SIZES plus drop_path and dtype, e.g. adh_vit's
  `config.model`)."""
  fields = {name: config[name] for name in (*ARCH_FIELDS, 'drop_path')}
  return VideoViT(num_classes, **fields, dtype=layers.compute_dtype(config.dtype))


# ---------------------------------------------------------------------------------------------
# Weights from and to VideoMAE-style tensor files.

IGNORED_OUTSIDE_PREFIX = ('decoder.', 'encoder_to_decoder.', 'mask_token')
IGNORED_TENSORS = ('head.weight', 'head.bias')


def _tensor_name(path: tuple[str, ...]) -> str:
  """Flax param path -> VideoMAE tensor name ('blocks_3' -> 'blocks.3', kernel/scale -> weight)."""
  *modules, leaf = path
  modules = [re.sub(r'^blocks_(\d+)$', r'blocks.\1', name) for name in modules]
  return '.'.join([*modules, 'weight' if leaf in ('kernel', 'scale') else leaf])


def _from_torch(array: np.ndarray, leaf: str) -> np.ndarray:
  """torch layout -> Flax: Linear [out, in] -> [in, out]; Conv3d [D, 3, t, p, p] -> [t, p, p, 3, D]."""
  if leaf != 'kernel':
    return array
  return array.T if array.ndim == 2 else array.transpose(2, 3, 4, 1, 0)


def _to_torch(array: np.ndarray, leaf: str) -> np.ndarray:
  """Inverse of `_from_torch`."""
  if leaf != 'kernel':
    return array
  return array.T if array.ndim == 2 else array.transpose(4, 3, 0, 1, 2)


def _flat(params: Any) -> dict[tuple[str, ...], Any]:
  return {
    tuple(k.key for k in path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
  }


def to_state_dict(params: Any) -> dict[str, np.ndarray]:
  """VideoMAE-named float32 tensors (torch layouts) of `params` (the 'params' collection of a
  VideoViT); `load_pretrained` reads them back, e.g. after `np.savez(path, **state_dict)`."""
  return {
    _tensor_name(path): np.ascontiguousarray(_to_torch(np.asarray(leaf, np.float32), path[-1]))
    for path, leaf in _flat(params).items()
  }


def _read_tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  if not path.is_file():
    raise FileNotFoundError(f'{path}: pretrained weight file not found')
  if path.suffix == '.npz':
    try:
      with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
    except (ValueError, OSError) as e:
      raise ValueError(f'{path}: not a plain numeric .npz archive ({e})') from None
  if path.suffix == '.safetensors':
    try:
      import safetensors.numpy  # optional dependency (the 'text' extra)
    except ImportError as e:
      raise ImportError(f'{path}: reading .safetensors needs `pip install safetensors`') from e
    return safetensors.numpy.load_file(path)
  raise ValueError(
    f'{path}: pretrained weights must be a .npz or .safetensors file (convert a torch .pth with '
    "np.savez(out, **{k: v.numpy() for k, v in torch.load(pth)['module'].items()}))"
  )


def load_pretrained(params: Any, path: str | pathlib.Path) -> dict[str, Any]:
  """`params` (a VideoViT's 'params' collection) with every tensor of the file at `path` loaded
  (names and layouts in the module docstring); hand heads absent from the file keep their values.

  Raises ValueError naming the file for shape mismatches, missing backbone tensors and unknown
  tensors.
  """
  path = pathlib.Path(path)
  tensors = _read_tensors(path)
  anchor = 'patch_embed.proj.weight'
  prefixes = {name[: -len(anchor)] for name in tensors if name.endswith(anchor)}
  if len(prefixes) != 1:
    raise ValueError(f'{path}: expected one "*{anchor}" tensor, found prefixes {sorted(prefixes)}')
  prefix = prefixes.pop()
  flat = _flat(params)
  by_name = {_tensor_name(p): p for p in flat}
  aliases = {'norm.weight': 'fc_norm.weight', 'norm.bias': 'fc_norm.bias'}
  if 'fc_norm.weight' in {n.removeprefix(prefix) for n in tensors}:
    aliases = {}
  loaded, unknown = {}, []
  for full_name, tensor in tensors.items():
    if not full_name.startswith(prefix):
      if not full_name.startswith(IGNORED_OUTSIDE_PREFIX):
        unknown.append(full_name)
      continue
    name = full_name.removeprefix(prefix)
    name = aliases.get(name, name)
    if name in IGNORED_TENSORS:
      continue
    if name == 'pos_embed':
      _check_positions(path, np.asarray(tensor), flat)
      continue
    if name not in by_name:
      unknown.append(full_name)
      continue
    target = by_name[name]
    value = _from_torch(np.asarray(tensor, np.float32), target[-1])
    if value.shape != flat[target].shape:
      raise ValueError(
        f'{path}: tensor {full_name} has shape {tensor.shape}, but param {"/".join(target)} '
        f'needs {flat[target].shape} (a different model size or class count? without head_* '
        'tensors the heads stay fresh)'
      )
    loaded[target] = value
  missing = sorted(_tensor_name(p) for p in flat.keys() - loaded.keys() if p[0] not in HEADS)
  if unknown or missing:
    raise ValueError(
      f'{path}: does not match this VideoViT; unknown tensors {sorted(unknown)}, '
      f'missing tensors {missing}'
    )
  return jax.tree_util.tree_map_with_path(
    lambda p, leaf: jnp.asarray(loaded.get(tuple(k.key for k in p), leaf), jnp.float32), params
  )


def _check_positions(path: pathlib.Path, table: np.ndarray, flat: dict) -> None:
  """A stored position table must be the fixed one (this ViT has no learned positions)."""
  dim = flat[('fc_norm', 'scale')].shape[0]
  table = table.reshape(-1, table.shape[-1])
  expected = sinusoidal_positions(table.shape[0], dim)
  if table.shape != expected.shape or not np.allclose(table, expected, atol=1e-4):
    raise ValueError(
      f'{path}: pos_embed {table.shape} is not the fixed sinusoidal table this ViT uses '
      '(learned position embeddings are not supported)'
    )

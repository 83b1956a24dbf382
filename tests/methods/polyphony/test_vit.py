"""Video ViT (ADH-ViT): shapes, positions, a NumPy reference of the VideoMAE forward pass, and
loading weights from .npz / .safetensors files."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import scipy.special

from polyseg.methods.polyphony import vit

SMALL = {
  'width': 16,
  'depth': 2,
  'num_heads': 2,
  'mlp_dim': 24,
  'patch_size': 4,
  'tubelet_size': 2,
  'num_frames': 4,
  'image_size': 8,
}
NUM_CLASSES = 5

pytestmark = pytest.mark.usefixtures('fast_compile')


def small_model(**overrides) -> vit.VideoViT:
  return vit.VideoViT(NUM_CLASSES, **{**SMALL, **overrides})


@functools.cache
def jitted_apply(model: vit.VideoViT):
  return jax.jit(model.apply, static_argnames='train')


def init(model: vit.VideoViT, seed: int = 0):
  params = jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, *model.clip_shape)))
  params = params['params']
  # Random biases and norm parameters too (they initialise to 0 / 1), so that the reference
  # comparison sees every parameter.
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: np.float32(x + 0.1 * rng.standard_normal(x.shape)), params)


def test_output_shapes_and_clip_shape_check():
  model = small_model()
  params = init(model)
  out = jitted_apply(model)({'params': params}, jnp.zeros((3, 4, 8, 8, 3)))
  assert {k: v.shape for k, v in out.items()} == {
    'shared': (3, 16),
    'lh': (3, NUM_CLASSES),
    'rh': (3, NUM_CLASSES),
  }
  assert model.num_tokens == 2 * 2 * 2
  with pytest.raises(ValueError, match=r'clips must be \[B, 4, 8, 8, 3\]'):
    jitted_apply(model)({'params': params}, jnp.zeros((1, 6, 8, 8, 3)))
  with pytest.raises(ValueError, match='must divide exactly'):
    small_model(patch_size=3).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 8, 8, 3)))


def test_sizes():
  """ViT-B/16 as VideoMAE's: 16 frames of 224 px in tubelets of 2 x 16 x 16, width 768 over 12
  layers of 12 heads (the token count and the parameter count pin every size)."""
  model = vit.VideoViT(10, **vit.SIZES['vit_b'])
  assert model.clip_shape == (16, 224, 224, 3)
  assert model.num_tokens == 8 * 14 * 14  # 1568 tokens, as VideoMAE ViT-B/16
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *model.clip_shape)))
  count = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
  assert 86_000_000 < count < 87_000_000  # ViT-B: 86M parameters (+ two small heads)


def test_sinusoidal_positions_values():
  table = vit.sinusoidal_positions(3, 4)
  expected = [
    [0.0, 1.0, 0.0, 1.0],
    [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
    [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)],
  ]
  np.testing.assert_allclose(table, expected, rtol=1e-6, atol=1e-7)
  table = vit.sinusoidal_positions(3, 6)  # frequencies 1, 10000^(-1/3), 10000^(-2/3)
  np.testing.assert_allclose(table[2, 2:4], [math.sin(2 / 21.5443469), math.cos(2 / 21.5443469)])
  np.testing.assert_allclose(table[1, 5], math.cos(1 / 464.158883), rtol=1e-6)
  assert table.dtype == np.float32


def test_normalize():
  frames = np.array([[0, 128, 255]], np.uint8)
  np.testing.assert_allclose(
    vit.normalize(frames)[0],
    [(0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225],
    rtol=1e-6,
  )


# ---------------------------------------------------------------------------------------------
# An independent reference: the VideoMAE forward pass in NumPy from torch-layout tensors.


def _layer_norm(x, weight, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * weight + bias


def _linear(x, sd, name):
  return x @ sd[f'{name}.weight'].T + sd[f'{name}.bias']


def reference_forward(sd: dict, video: np.ndarray, num_heads: int) -> dict:
  """video [B, F, H, W, 3] -> outputs, from a torch state dict, with explicit loops over
  tubelets (a Conv3d with stride = kernel) and heads."""
  _, frames, height, width, _ = video.shape
  w = sd['patch_embed.proj.weight']  # [D, 3, t, p, p]
  dim, _, t, p, _ = w.shape
  tokens = []
  for ti in range(frames // t):
    for hi in range(height // p):
      for wi in range(width // p):
        cube = video[:, ti * t : (ti + 1) * t, hi * p : (hi + 1) * p, wi * p : (wi + 1) * p]
        cube = cube.transpose(0, 4, 1, 2, 3)  # [B, 3, t, p, p] (torch NCTHW)
        tokens.append(np.einsum('bcthw,dcthw->bd', cube, w) + sd['patch_embed.proj.bias'])
  x = np.stack(tokens, axis=1)
  n = x.shape[1]
  position = np.arange(n)[:, None]
  j = np.arange(dim)[None, :]
  angle = position / 10000 ** (2 * (j // 2) / dim)
  x = x + np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
  depth = len({k.split('.')[1] for k in sd if k.startswith('blocks.')})
  head_dim = dim // num_heads
  for i in range(depth):
    b = f'blocks.{i}'
    h = _layer_norm(x, sd[f'{b}.norm1.weight'], sd[f'{b}.norm1.bias'])
    bias = np.concatenate([sd[f'{b}.attn.q_bias'], np.zeros(dim), sd[f'{b}.attn.v_bias']])
    qkv = h @ sd[f'{b}.attn.qkv.weight'].T + bias
    q, k, v = qkv[..., :dim], qkv[..., dim : 2 * dim], qkv[..., 2 * dim :]
    heads = []
    for head in range(num_heads):
      s = slice(head * head_dim, (head + 1) * head_dim)
      scores = q[..., s] @ k[..., s].transpose(0, 2, 1) / math.sqrt(head_dim)
      weights = np.exp(scores - scores.max(-1, keepdims=True))
      weights /= weights.sum(-1, keepdims=True)
      heads.append(weights @ v[..., s])
    x = x + _linear(np.concatenate(heads, -1), sd, f'{b}.attn.proj')
    h = _layer_norm(x, sd[f'{b}.norm2.weight'], sd[f'{b}.norm2.bias'])
    h = _linear(h, sd, f'{b}.mlp.fc1')
    h = 0.5 * h * (1 + scipy.special.erf(h / math.sqrt(2)))
    x = x + _linear(h, sd, f'{b}.mlp.fc2')
  shared = _layer_norm(x.mean(1), sd['fc_norm.weight'], sd['fc_norm.bias'])
  return {
    'shared': shared,
    'lh': _linear(shared, sd, 'head_lh'),
    'rh': _linear(shared, sd, 'head_rh'),
  }


def test_forward_matches_numpy_reference():
  model = small_model()
  params = init(model)
  video = np.random.default_rng(0).standard_normal((2, *model.clip_shape)).astype(np.float32)
  out = jitted_apply(model)({'params': params}, video)
  sd = {k: v.astype(np.float64) for k, v in vit.to_state_dict(params).items()}
  expected = reference_forward(sd, video.astype(np.float64), SMALL['num_heads'])
  for name in ('shared', 'lh', 'rh'):
    np.testing.assert_allclose(out[name], expected[name], rtol=2e-4, atol=2e-4, err_msg=name)


def test_drop_path_only_when_training():
  model = small_model(drop_path=0.5)
  params = init(model)
  video = jnp.ones((8, *model.clip_shape))
  eval_out = jitted_apply(model)({'params': params}, video)['shared']
  np.testing.assert_allclose(eval_out, jitted_apply(model)({'params': params}, video)['shared'])
  train_out = jitted_apply(model)(
    {'params': params}, video, train=True, rngs={'dropout': jax.random.PRNGKey(3)}
  )['shared']
  # Identical clips: rows differ only through the per-sample drops of the residual branches.
  assert not np.allclose(train_out, eval_out)
  assert len({tuple(np.round(row, 4)) for row in np.asarray(train_out)}) > 1


# ---------------------------------------------------------------------------------------------
# Weight files.


def _assert_trees_equal(a, b):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def test_state_dict_names_and_layouts():
  params = init(small_model())
  sd = vit.to_state_dict(params)
  assert sd['patch_embed.proj.weight'].shape == (16, 3, 2, 4, 4)  # torch Conv3d [D, C, t, p, p]
  assert sd['blocks.1.attn.qkv.weight'].shape == (48, 16)  # torch Linear [out, in]
  assert 'blocks.1.attn.qkv.bias' not in sd
  assert sd['blocks.0.attn.q_bias'].shape == sd['blocks.0.attn.v_bias'].shape == (16,)
  assert sd['blocks.0.mlp.fc1.weight'].shape == (24, 16)
  assert sd['fc_norm.weight'].shape == (16,)
  assert sd['head_rh.weight'].shape == (NUM_CLASSES, 16)
  np.testing.assert_array_equal(sd['blocks.0.norm2.weight'], params['blocks_0']['norm2']['scale'])


@pytest.mark.parametrize('suffix', ['.npz', '.safetensors'])
def test_load_pretrained_round_trip(tmp_path, suffix):
  model = small_model()
  source, target = init(model, seed=0), init(model, seed=10)
  path = tmp_path / f'weights{suffix}'
  if suffix == '.npz':
    np.savez(path, **vit.to_state_dict(source))
  else:
    safetensors.numpy.save_file(vit.to_state_dict(source), str(path))
  loaded = vit.load_pretrained(target, path)
  _assert_trees_equal(loaded, source)
  video = np.random.default_rng(1).standard_normal((1, *model.clip_shape)).astype(np.float32)
  np.testing.assert_allclose(
    jitted_apply(model)({'params': loaded}, video)['lh'],
    jitted_apply(model)({'params': source}, video)['lh'],
  )


def test_load_videomae_pretraining_checkpoint_keeps_fresh_heads(tmp_path):
  """A VideoMAE-style file: 'encoder.' prefix, final `norm` instead of `fc_norm`, a single
  Kinetics head, a decoder and a stored fixed position table: the backbone loads, heads stay."""
  model = small_model()
  source, target = init(model, seed=0), init(model, seed=10)
  sd = vit.to_state_dict(source)
  tensors = {f'encoder.{k}': v for k, v in sd.items() if not k.startswith(('head_', 'fc_norm'))}
  tensors['encoder.norm.weight'] = sd['fc_norm.weight']
  tensors['encoder.norm.bias'] = sd['fc_norm.bias']
  tensors['encoder.head.weight'] = np.zeros((400, 16), np.float32)
  tensors['encoder.head.bias'] = np.zeros(400, np.float32)
  tensors['encoder.pos_embed'] = vit.sinusoidal_positions(8, 16)[None]
  tensors['decoder.blocks.0.norm1.weight'] = np.ones(8, np.float32)
  tensors['mask_token'] = np.zeros((1, 1, 8), np.float32)
  path = tmp_path / 'pretrain.npz'
  np.savez(path, **tensors)
  loaded = vit.load_pretrained(target, path)
  for name in ('patch_embed', 'blocks_0', 'blocks_1', 'fc_norm'):
    _assert_trees_equal(loaded[name], source[name])
  for head in vit.HEADS:
    _assert_trees_equal(loaded[head], target[head])


def _write(tmp_path, tensors, name='w.npz'):
  path = tmp_path / name
  np.savez(path, **tensors)
  return path


def test_load_pretrained_errors(tmp_path):
  params = init(small_model())
  sd = vit.to_state_dict(params)
  wider = vit.to_state_dict(init(small_model(width=32, num_heads=2)))
  path = _write(tmp_path, wider)
  with pytest.raises(ValueError, match=r'w\.npz: tensor .* has shape .*needs'):
    vit.load_pretrained(params, path)
  missing = {k: v for k, v in sd.items() if k != 'blocks.1.mlp.fc2.bias'}
  with pytest.raises(ValueError, match=r"missing tensors \['blocks.1.mlp.fc2.bias'\]"):
    vit.load_pretrained(params, _write(tmp_path, missing))
  extra = {**sd, 'blocks.0.gamma_1': np.ones(16, np.float32)}
  with pytest.raises(ValueError, match=r"unknown tensors \['blocks.0.gamma_1'\]"):
    vit.load_pretrained(params, _write(tmp_path, extra))
  learned = {**sd, 'pos_embed': np.ones((1, 8, 16), np.float32)}
  with pytest.raises(ValueError, match='not the fixed sinusoidal table'):
    vit.load_pretrained(params, _write(tmp_path, learned))
  no_anchor = {k: v for k, v in sd.items() if not k.startswith('patch_embed')}
  with pytest.raises(ValueError, match='expected one "\\*patch_embed.proj.weight" tensor'):
    vit.load_pretrained(params, _write(tmp_path, no_anchor))
  (tmp_path / 'model.pth').write_bytes(b'\x80\x02')
  with pytest.raises(ValueError, match=r'model\.pth: .*must be a \.npz or \.safetensors'):
    vit.load_pretrained(params, tmp_path / 'model.pth')
  with pytest.raises(FileNotFoundError, match='absent.npz'):
    vit.load_pretrained(params, tmp_path / 'absent.npz')
  (tmp_path / 'pickled.npz').write_bytes(b'not a zip archive')
  with pytest.raises(ValueError, match=r'pickled\.npz: not a plain numeric \.npz'):
    vit.load_pretrained(params, tmp_path / 'pickled.npz')

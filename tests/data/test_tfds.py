"""Tests for polyseg.data.tfds (and the readers it added to the formats): every layout converts to
array_record and reads back as the folder reader's objects, identical train batches, host sharding,
the data.format switch of the tasks, the command, and failures that leave nothing behind."""

import dataclasses
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from polyseg.configlib import load_config
from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.data import synthetic
from polyseg.data import tfds
from polyseg.data.formats import DataError
from polyseg.methods.diffact import task as diffact_task
from polyseg.methods.hopadiff import task as hopadiff_task
from polyseg.methods.polyphony import task as polyphony_task
from polyseg.methods.twostream import task as twostream_task

CLASSES = ['background', 'cut', 'pour']
LABELS = {  # subset -> video -> label ids per frame
  'train': {'a': [0, 0, 1, 1, 2, 2, 2], 'b': [0, 2, 2, 1, 1], 'c': [1, 1, 1, 0], 'd': [2, 0, 0]},
  'test': {'e': [1, 1, 0, 0, 2]},
}
LAYOUT_READERS = {  # layout -> folder reader (root, subset, split) -> dataset
  'single_stream': formats.read_single_stream,
  'two_hands': formats.read_two_hands,
  'two_streams': formats.read_two_streams,
  'transcripts': formats.read_transcripts,
}


def random_features(name: str, length: int, dim: int) -> np.ndarray:
  """[T, D] float32, different per (name, dim)."""
  seed = [dim, *name.encode()]
  return np.random.default_rng(seed).normal(size=(length, dim)).astype(np.float32)


def write_files(root: pathlib.Path, files: dict) -> pathlib.Path:
  """Writes {relative path: [T, D] array (saved as [D, T] .npy) or lines of text} under root."""
  for relative, content in files.items():
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, np.ndarray):
      np.save(path, content.T, allow_pickle=False)
    else:
      path.write_text(''.join(f'{line}\n' for line in content))
  return root


def layout_files(layout: str, shared_hand_features: bool = False, labels: bool = True) -> dict:
  """The files of a tiny dataset of `layout` (MS-TCN split 1), from LABELS."""
  files = {'mapping.txt': [f'{i} {name}' for i, name in enumerate(CLASSES)]}
  for subset, videos in LABELS.items():
    files[f'splits/{subset}.split1.bundle'] = [f'{name}.txt' for name in videos]
    for name, ids in videos.items():
      names, length = [CLASSES[i] for i in ids], len(ids)
      if layout == 'two_hands':
        for hand in formats.HANDS:
          hand_names = names if hand == 'lh' else names[::-1]
          files[f'groundTruth/{hand}/{name}.txt'] = hand_names
          folder = 'features' if shared_hand_features else f'features/{hand}'
          files[f'{folder}/{name}.npy'] = random_features(f'{name}{folder}', length, 4)
        continue
      if labels:
        files[f'groundTruth/{name}.txt'] = names
      if layout == 'two_streams':
        files[f'features_rgb/{name}.npy'] = random_features(name, length, 4)
        files[f'features_flow/{name}.npy'] = random_features(name, length, 3)
      else:
        files[f'features/{name}.npy'] = random_features(name, length, 4)
      if layout == 'transcripts':
        segments = formats.segment_classes(np.asarray(ids))
        files[f'transcripts/{name}.txt'] = [CLASSES[i] for i in segments]
  return files


def assert_same(a, b) -> None:
  """Two reader objects (dataclasses) with equal fields: arrays equal in dtype, shape and values."""
  assert type(a) is type(b)
  for field in dataclasses.fields(a):
    x, y = getattr(a, field.name), getattr(b, field.name)
    if isinstance(x, dict):
      assert x.keys() == y.keys()
      pairs = [(x[k], y[k]) for k in x]
    else:
      pairs = [(x, y)]
    for u, v in pairs:
      if isinstance(u, np.ndarray):
        assert u.dtype == v.dtype and u.shape == v.shape and np.array_equal(u, v), field.name
      else:
        assert type(u) is type(v) and u == v, field.name


def assert_same_items(items_a, items_b) -> None:
  assert [x.name for x in items_a] == [x.name for x in items_b]
  for x, y in zip(items_a, items_b, strict=True):
    assert_same(x, y)


def assert_same_batches(loader_a, loader_b, steps: int = 6) -> None:
  for step in range(steps):
    a, b = loader_a.batch(step), loader_b.batch(step)
    assert a.keys() == b.keys()
    for key in a:
      assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (step, key)


@pytest.fixture
def single_stream_root(tmp_path) -> pathlib.Path:
  return write_files(tmp_path / 'data', layout_files('single_stream'))


def referring_root(path: pathlib.Path) -> pathlib.Path:
  """A tiny synthetic referring dataset (4 videos of 60-80 frames, 2-4 persons each)."""
  return synthetic.referring(
    path, num_videos=4, min_len=60, max_len=80, holistic_dim=6, partial_dim=5
  )


# ----------------------------------------------------------------------------- layouts --


@pytest.mark.parametrize(
  'layout, options',
  [
    ('single_stream', {}),
    ('two_hands', {}),
    ('two_hands', {'shared_hand_features': True}),
    ('two_streams', {}),
    ('transcripts', {}),
    ('transcripts', {'labels': False}),
  ],
)
def test_layout_reads_back_as_the_folder_reader_objects(tmp_path, layout, options):
  root = write_files(tmp_path / 'data', layout_files(layout, **options))
  spec = tfds.Spec(layout)
  directory = tfds.convert(root, tmp_path / 'tfds', spec)
  assert directory == tmp_path / 'tfds' / 'polyseg' / f'{layout}-split1' / tfds.VERSION
  assert sorted(p.name for p in directory.glob('*.array_record-*')) == [
    'polyseg-test.array_record-00000-of-00001',
    'polyseg-train.array_record-00000-of-00001',
  ]  # no val bundle: an empty val subset
  assert not tfds.read(tmp_path / 'tfds', spec, 'val').videos
  folder_kwargs = {'labels': options.get('labels', True)} if layout == 'transcripts' else {}
  for subset in ('train', 'test'):
    expected = LAYOUT_READERS[layout](root, subset, 1, **folder_kwargs)
    converted = tfds.read(tmp_path / 'tfds', spec, subset)
    assert type(converted) is type(expected) and converted.classes == expected.classes == CLASSES
    assert_same_items(converted.videos, expected.videos)
  first = tfds.read(tmp_path / 'tfds', spec, 'train').videos[0]
  if layout == 'two_hands':  # labels [T, 2]: one column per hand
    assert first.labels.shape == (7, 2) and first.features['lh'].shape == (7, 4)
    same = np.array_equal(first.features['lh'], first.features['rh'])
    assert same == bool(options.get('shared_hand_features'))
  if layout == 'transcripts':
    assert first.transcript.tolist() == [0, 1, 2]
    assert (first.labels is None) == (options.get('labels') is False)


def test_single_stream_train_batches_are_identical(single_stream_root, tmp_path, monkeypatch):
  system_temp = tmp_path / 'system_temp'
  system_temp.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(system_temp))
  config = load_config('diffact', 'runlocal=True')
  config.train.batch_size = 2
  config.data.max_train_len = 3
  spec = tfds.Spec('single_stream')
  tfds.convert(single_stream_root, tmp_path / 'tfds', spec)
  folder = formats.read_single_stream(single_stream_root, 'train', 1).videos
  converted = tfds.read(tmp_path / 'tfds', spec, 'train').videos
  task = diffact_task.Task(config, dataset_lib.DataInfo(CLASSES, 4, (0,)))
  assert_same_batches(task.train_loader(converted), task.train_loader(folder))
  assert tempfile.gettempdir() == str(system_temp) and not os.listdir(system_temp)


def test_referring_windows_and_splits_read_back_with_identical_batches(tmp_path):
  root = referring_root(tmp_path / 'referring')
  spec = tfds.Spec('referring', protocol='random', sample_frames=25, split_seed=3)
  assert spec.name == 'referring-random-frames25-seed3-fractions0.8_0.1_0.1'
  tfds.convert(root, tmp_path / 'tfds', spec)
  dataset = formats.read_referring(root)
  windows = formats.window_samples(dataset.samples, 25)
  expected = formats.split_referring(root, windows, 'random', seed=3)
  for subset in ('train', 'val', 'test'):
    converted = tfds.read(tmp_path / 'tfds', spec, subset)
    assert isinstance(converted, formats.ReferringDataset)
    assert converted.classes == dataset.classes
    assert expected[subset] and any('@' in s.name for s in expected[subset])
    assert_same_items(converted.samples, expected[subset])
  config = load_config('hopadiff', 'runlocal=True')
  config.train.batch_size = 3
  info = dataset_lib.DataInfo(tuple(dataset.classes), {'holistic': 6, 'partial': 5}, ())
  task = hopadiff_task.Task(config, info)
  converted = tfds.read(tmp_path / 'tfds', spec, 'train').samples
  assert_same_batches(task.train_loader(converted), task.train_loader(expected['train']))


def test_referring_split_files_with_an_empty_subset(tmp_path):
  root = referring_root(tmp_path / 'referring')
  splits = {
    'train.txt': ['video000', 'video001', 'video002'],
    'val.txt': [],
    'test.txt': ['video003'],
  }
  write_files(root / 'splits' / 'cross_video', splits)
  spec = tfds.Spec('referring', protocol='cross_video')
  tfds.convert(root, tmp_path / 'tfds', spec)
  assert not tfds.read(tmp_path / 'tfds', spec, 'val').samples
  test = tfds.read(tmp_path / 'tfds', spec, 'test').samples
  assert test and {s.video for s in test} == {'video003'}


def test_split_numbers_do_not_collide(single_stream_root, tmp_path):
  """Split 2 (train and test swapped) converts next to split 1 in the same TFDS folder."""
  splits = single_stream_root / 'splits'
  (splits / 'train.split2.bundle').write_text((splits / 'test.split1.bundle').read_text())
  (splits / 'test.split2.bundle').write_text((splits / 'train.split1.bundle').read_text())
  for split in (1, 2):
    tfds.convert(single_stream_root, tmp_path / 'tfds', tfds.Spec('single_stream', split=split))
  for split, train in ((1, ['a', 'b', 'c', 'd']), (2, ['e'])):
    videos = tfds.read(tmp_path / 'tfds', tfds.Spec('single_stream', split=split), 'train').videos
    assert [v.name for v in videos] == train


# ------------------------------------------------------------------------- host sharding --


def test_val_bundle_becomes_the_val_subset(tmp_path):
  files = layout_files('two_hands')
  files['splits/train.split1.bundle'] = ['a.txt', 'b.txt']
  files['splits/val.split1.bundle'] = ['c.txt', 'd.txt']
  root = write_files(tmp_path / 'data', files)
  spec = tfds.Spec('two_hands')
  tfds.convert(root, tmp_path / 'tfds', spec)
  for subset, names in (('train', ['a', 'b']), ('val', ['c', 'd']), ('test', ['e'])):
    assert tfds.names(tmp_path / 'tfds', spec, subset) == names
    expected = formats.read_two_hands(root, subset, 1).videos
    assert_same_items(tfds.read(tmp_path / 'tfds', spec, subset).videos, expected)


def test_two_streams_are_aligned_within_the_tolerance(tmp_path):
  files = layout_files('two_streams')
  files['features_rgb/a.npy'] = random_features('a', 9, 4)  # flow has 7 frames: 2 too many
  files['features_flow/b.npy'] = random_features('b', 6, 3)  # labels and RGB have 5: 1 too few
  root = write_files(tmp_path / 'data', files)
  with pytest.raises(DataError, match=r'rgb/a\.npy'):
    tfds.convert(root, tmp_path / 'tfds', tfds.Spec('two_streams'))  # tolerance 0: strict
  assert not (tmp_path / 'tfds').exists()
  spec = tfds.Spec('two_streams', length_tolerance=2)
  assert spec.name == 'two_streams-split1-tolerance2'
  tfds.convert(root, tmp_path / 'tfds', spec)
  converted = tfds.read(tmp_path / 'tfds', spec, 'train').videos
  expected = formats.read_two_streams(root, 'train', 1, length_tolerance=2).videos
  assert_same_items(converted, expected)
  a, b = converted[0], converted[1]
  assert a.features['rgb'].shape == (7, 4) and len(a.labels) == 7
  assert b.features['rgb'].shape == (6, 4) and not b.features['rgb'][5].any()  # zero-padded
  assert b.labels[5] == b.labels[4]  # padded with the last label
  with pytest.raises(ValueError, match='two_streams only'):
    tfds.Spec('single_stream', length_tolerance=2)
  with pytest.raises(ValueError, match='>= 0'):
    tfds.Spec('two_streams', length_tolerance=-1)


def test_load_holds_out_val_from_train_records_as_the_folder_tasks(tmp_path):
  files = layout_files('single_stream')
  for name in 'fghij':  # 9 train videos
    files[f'groundTruth/{name}.txt'] = [CLASSES[1]] * 4
    files[f'features/{name}.npy'] = random_features(name, 4, 4)
  files['splits/train.split1.bundle'] += [f'{name}.txt' for name in 'fghij']
  root = write_files(tmp_path / 'data', files)
  spec = tfds.Spec('single_stream')
  every = formats.read_single_stream(root, 'train', 1).videos
  held = formats.hold_out([v.name for v in every], 0.3, 7)
  assert len(held) == 3
  shards = []
  for p in range(2):
    subsets, read_test = tfds.load(root, None, spec, train_shard=(p, 2), hold_out=(0.3, 7))
    assert 'test' not in subsets and read_test().videos  # test: read only when asked
    assert_same_items(subsets['val'].videos, [v for v in every if v.name in held])
    shards.append([v.name for v in subsets['train'].videos])
  rest = [v.name for v in every if v.name not in held]
  assert shards == [rest[0::2], rest[1::2]]  # val whole, the rest of train shared by the hosts
  with pytest.raises(DataError, match=r'tfds/polyseg/single_stream-split1/.*no val records, and'):
    tfds.load(root, None, spec, hold_out=(1.5, 0))


def test_host_shards_partition_the_split(single_stream_root, tmp_path):
  spec = tfds.Spec('single_stream')
  tfds.convert(single_stream_root, tmp_path / 'tfds', spec)
  whole = tfds.read(tmp_path / 'tfds', spec, 'train').videos
  names = [v.name for v in whole]
  for count in (1, 2, 3, 5):
    shards = [
      tfds.read(tmp_path / 'tfds', spec, 'train', process_index=p, process_count=count).videos
      for p in range(count)
    ]
    for p, shard in enumerate(shards):
      assert_same_items(shard, whole[p::count])
    shard_names = [v.name for shard in shards for v in shard]
    assert sorted(shard_names) == sorted(names) and len(set(shard_names)) == len(names)
  with pytest.raises(ValueError, match='process_index'):
    tfds.read(tmp_path / 'tfds', spec, 'train', process_index=2, process_count=2)


# ------------------------------------------------------------------ the data.format switch --


def assert_same_data(a: dataset_lib.Data, b: dataset_lib.Data) -> None:
  assert a.info == b.info
  assert_same_items(a.train, b.train)
  assert_same_items(a.val, b.val)
  assert_same_items(a.read_test(), b.read_test())


def test_diffact_format_switch_loads_the_same_data(tmp_path, capsys):
  config = load_config('diffact', 'runlocal=True')
  config.data.cache_dir = str(tmp_path / 'cache')
  folder = diffact_task.load_data(config)
  config.data.format = 'tfds'
  converted = diffact_task.load_data(config)
  assert 'converting' in capsys.readouterr().out  # first use: converted, and said so
  assert_same_data(converted, folder)
  root = pathlib.Path(diffact_task.dataset_root(config))
  assert tfds.is_converted(root / 'tfds', tfds.Spec('single_stream'))
  assert_same_data(diffact_task.load_data(config), folder)
  assert 'converting' not in capsys.readouterr().out  # then reused
  config.data.input_dim = 99
  with pytest.raises(DataError, match="dimension of 'features' is 16, expected 99"):
    diffact_task.load_data(config)
  config.data.format = 'tfrecord'
  with pytest.raises(ValueError, match="config.data.format='tfrecord'"):
    diffact_task.load_data(config)


def test_hopadiff_format_switch_loads_the_same_windows_and_splits(tmp_path):
  config = load_config('hopadiff', 'runlocal=True')
  config.data.update(cache_dir=str(tmp_path / 'cache'), sample_frames=40)
  folder = hopadiff_task.load_data(config)
  assert any('@' in s.name for s in folder.train) and folder.val and folder.read_test()
  config.data.update(format='tfds', tfds_dir=str(tmp_path / 'elsewhere'))
  assert_same_data(hopadiff_task.load_data(config), folder)
  spec = tfds.Spec('referring', protocol=config.data.protocol, sample_frames=40)
  assert tfds.is_converted(tmp_path / 'elsewhere', spec)
  config.data.classes = ('walk', 'run')
  with pytest.raises(DataError, match='differ from the expected'):
    hopadiff_task.load_data(config)


def test_polyphony_format_switch_loads_the_same_data(tmp_path):
  root = write_files(tmp_path / 'data', layout_files('two_hands'))
  config = load_config('polyphony', 'runlocal=True')
  config.data.update(root=str(root), layout='two_hands', features='all', val_fraction=0.3)
  folder = polyphony_task.load_data(config)
  assert len(folder.val) == 1 and len(folder.train) == 3  # held out of train: no val bundle
  config.data.format = 'tfds'
  assert_same_data(polyphony_task.load_data(config), folder)
  assert tfds.is_converted(root / 'tfds', tfds.Spec('two_hands'))
  config.data.input_dim = 5
  with pytest.raises(DataError, match="dimension of 'features/lh' is 4, expected 5"):
    polyphony_task.load_data(config)


def test_twostream_format_switch_loads_the_same_data(tmp_path):
  config = load_config('twostream', 'runlocal=True')
  config.data.cache_dir = str(tmp_path / 'cache')
  folder = twostream_task.load_data(config)
  assert folder.val and folder.train and folder.read_test()
  config.data.update(format='tfds', tfds_dir=str(tmp_path / 'tfds'))
  assert_same_data(twostream_task.load_data(config), folder)
  spec = tfds.Spec('two_streams', length_tolerance=config.data.length_tolerance)
  assert tfds.is_converted(tmp_path / 'tfds', spec)


# --------------------------------------------------------------------- command and errors --


def test_command_converts_with_a_progress_bar(single_stream_root, tmp_path):
  out = tmp_path / 'tfds'
  command = [sys.executable, '-m', 'polyseg.data.tfds', '--layout=single_stream']
  command += [f'--root={single_stream_root}', f'--out={out}']
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  assert 'Generating train examples' in result.stderr  # the progress bar
  assert f'to {out}/polyseg/single_stream-split1/{tfds.VERSION}' in result.stdout
  assert tfds.read(out, tfds.Spec('single_stream'), 'test').videos[0].name == 'e'
  assert tfds.main(command[3:]) == 0  # a second run keeps the conversion


def test_command_errors_name_the_problem(tmp_path, capsys):
  out = tmp_path / 'tfds'
  assert tfds.main(['--layout=referring', f'--root={tmp_path / "missing"}', f'--out={out}']) == 1
  assert f'{tmp_path / "missing"}: dataset folder not found' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    tfds.main(['--layout=two_hands', f'--root={tmp_path}', f'--out={out}', '--split=0'])
  assert 'split must be >= 1' in capsys.readouterr().err
  assert not out.exists()


def test_missing_label_file_fails_naming_it_and_leaves_no_output(single_stream_root, tmp_path):
  (single_stream_root / 'groundTruth' / 'c.txt').unlink()
  out = tmp_path / 'tfds'
  with pytest.raises(DataError, match=r'groundTruth/c\.txt: label file not found'):
    tfds.convert(single_stream_root, out, tfds.Spec('single_stream'))
  assert sorted(os.listdir(tmp_path)) == ['data']


def test_failure_while_writing_leaves_no_output(single_stream_root, tmp_path, monkeypatch):
  def fail_after_one(self, items):
    yield 0, tfds._record(items[0])
    raise OSError('disk full')

  monkeypatch.setattr(tfds.builder_class(), '_generate_examples', fail_after_one)
  out = tmp_path / 'tfds'
  with pytest.raises(OSError, match='disk full'):
    tfds.convert(single_stream_root, out, tfds.Spec('single_stream'))
  assert sorted(os.listdir(tmp_path)) == ['data']
  out.mkdir()  # an existing TFDS folder is left as it was
  with pytest.raises(OSError, match='disk full'):
    tfds.convert(single_stream_root, out, tfds.Spec('single_stream'))
  assert sorted(os.listdir(tmp_path)) == ['data', 'tfds'] and not os.listdir(out)


def test_subsets_with_different_dimensions_are_refused(tmp_path):
  files = layout_files('two_streams')
  files['features_flow/e.npy'] = random_features('e', 5, 2)  # test: D = 2, train: D = 3
  root = write_files(tmp_path / 'data', files)
  with pytest.raises(DataError, match=r"test 'e' has fields .*\(2,\).* but train 'a'"):
    tfds.convert(root, tmp_path / 'tfds', tfds.Spec('two_streams'))


@pytest.mark.parametrize(
  'layout, change, message',
  [
    ('two_hands', {'groundTruth/rh/b.txt': ['cut']}, r'groundTruth/lh/b\.txt has 5 frames'),
    ('two_hands', {'features/rh/a.npy': np.zeros((7, 2), np.float32)}, r'rh/a\.npy: feature dim'),
    ('two_streams', {'features_flow/a.npy': np.zeros((6, 3), np.float32)}, r'flow/a\.npy: 6 fr'),
    ('transcripts', {'transcripts/a.txt': ['background', 'pour']}, r'a\.txt:2: action .pour.'),
    ('transcripts', {'transcripts/a.txt': ['background', 'cut']}, r'2 actions but .* 3 segm'),
    ('transcripts', {'transcripts/b.txt': ['stir']}, r"b\.txt:1: action 'stir' is not in"),
    ('transcripts', {'transcripts/d.txt': []}, r'd\.txt: empty transcript'),
  ],
)
def test_new_readers_name_the_bad_file(tmp_path, layout, change, message):
  root = write_files(tmp_path / 'data', {**layout_files(layout), **change})
  with pytest.raises(DataError, match=message):
    LAYOUT_READERS[layout](root, 'train', 1)


def test_transcript_longer_than_the_video(tmp_path):
  files = layout_files('transcripts', labels=False)
  files['transcripts/d.txt'] = ['cut', 'pour', 'cut', 'pour']  # d has 3 frames
  root = write_files(tmp_path / 'data', files)
  with pytest.raises(DataError, match=r'd\.txt: 4 actions but .*d\.npy has only 3 frames'):
    formats.read_transcripts(root, 'train', 1, labels=False)

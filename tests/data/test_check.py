"""The data check (--config.data.check_only): statistics hand-counted on tiny datasets of every task
family, the JSON and PNG it writes (and nothing else), warnings, errors and the command line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from matplotlib import image

from polyseg import methods
from polyseg.configlib import load_config
from polyseg.data import formats
from polyseg.engine import data_check

CLASSES = ['background', 'cut', 'pour', 'stir', 'wipe']


def per_class(*counts: int) -> dict[str, int]:
  """{class name: count} in the order of CLASSES."""
  return dict(zip(CLASSES, counts, strict=True))


def run_check(config, workdir: str) -> dict:
  """The dataset check of `config`'s method, as `--config.data.check_only` runs it."""
  return data_check.run(methods.get(config.task), config, workdir)


OUTPUTS = {data_check.JSON_FILE, data_check.PNG_FILE}


def features(length: int, dim: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(length, dim)).astype(np.float32)


def video(name: str, labels: list[int], dim: int = 3) -> formats.Video:
  return formats.Video(name, features(len(labels), dim), np.array(labels, np.int32))


def single_stream_root(root):
  """Train a (6 frames), b (8); val v (4); test c (100 frames, one of them 'stir'); 'wipe'
  nowhere."""
  train = [video('a', [0, 0, 1, 1, 1, 0]), video('b', [2, 2, 2, 2, 0, 0, 0, 2])]
  val = [video('v', [0, 1, 1, 0])]
  test = [video('c', [0] * 50 + [1] * 49 + [3])]
  subsets = {'train': train, 'val': val, 'test': test}
  datasets = {k: formats.Dataset(CLASSES, v) for k, v in subsets.items()}
  return formats.write_single_stream(root, datasets)


def config_for(method: str, root, arg: str = 'runlocal=True'):
  config = load_config(method, arg)
  config.data.root = str(root)
  return config


def assert_png_has_content(path):
  data = path.read_bytes()
  assert data.startswith(b'\x89PNG\r\n\x1a\n')
  pixels = image.imread(path)[..., :3]  # [H, W, 3] in [0, 1]
  assert pixels.shape[0] > 200 and pixels.shape[1] > 400
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # bars, text, axes: not one colour
  assert 0.02 < (pixels < 0.9).any(-1).mean() < 0.9  # drawn on, not blank and not filled


def test_single_stream_statistics_are_hand_counted(tmp_path, capsys):
  workdir = tmp_path / 'run'
  stats = run_check(config_for('diffact', single_stream_root(tmp_path / 'data')), str(workdir))
  assert stats['classes'] == CLASSES and stats['background'] == ['background']
  assert stats['feature_dims'] == 3
  train, val, test = (stats['splits'][s] for s in ('train', 'val', 'test'))
  assert train['videos'] == 2 and train['labels'] == 'class ids'
  assert train['frames'] == {'min': 6, 'median': 7.0, 'mean': 7.0, 'max': 8, 'total': 14}
  assert train['frames_per_class'] == per_class(6, 3, 5, 0, 0)
  assert train['segments_per_class'] == per_class(3, 1, 2, 0, 0)
  assert val['frames'] == {'min': 4, 'median': 4.0, 'mean': 4.0, 'max': 4, 'total': 4}
  assert val['frames_per_class'] == per_class(2, 2, 0, 0, 0)
  assert test['frames'] == {'min': 100, 'median': 100.0, 'mean': 100.0, 'max': 100, 'total': 100}
  assert test['frames_per_class'] == per_class(50, 49, 0, 1, 0)
  assert test['segments_per_class'] == per_class(1, 1, 0, 1, 0)
  assert stats['warnings'] == [
    'classes never in train (2 of 5): stir, wipe',
    'classes in test but never in train (1): stir',
    'videos over 10x the median length of 7 frames (1): c (test): 100 frames',
    'classes on fewer than 1% of the labelled frames (1): stir (0.85%)',  # 1 of 118 frames
  ]
  printed = capsys.readouterr().out
  assert '  1 cut' in printed and '3/1' in printed and '49/1' in printed
  assert all(warning in printed for warning in stats['warnings'])
  assert f'Wrote {workdir / data_check.JSON_FILE} and {workdir / data_check.PNG_FILE}' in printed
  assert json.loads((workdir / data_check.JSON_FILE).read_text()) == stats
  assert set(os.listdir(workdir)) == OUTPUTS  # no checkpoints, metrics, config or data.json
  assert_png_has_content(workdir / data_check.PNG_FILE)


HAND_CLASSES = ['background', 'hold box', 'take nut']
HAND_LABELS = {  # video: (split, lh, rh)
  'v0': ('train', [0, 1, 1, 1, 0, 0], [2, 2, 0, 0, 2, 2]),
  'v1': ('val', [1, 1, 1, 1], [0, 0, 0, 2]),
  'v2': ('test', [0, 0, 0, 0, 0], [2, 2, 2, 1, 1]),
}


def two_hands_root(root):
  """Every stage's input at once: frames (videos/, stage 1), shared features and each hand's
  logits (features/{shared,lh,rh}, stage 2; stage 3 reads lh and rh with data.features=all)."""
  videos = []
  for name, (_, lh, rh) in HAND_LABELS.items():
    length = len(lh)
    logits = {hand: features(length, len(HAND_CLASSES), i) for i, hand in enumerate(('lh', 'rh'))}
    labels = np.array([lh, rh], np.int32).T
    videos.append(formats.MultiStreamVideo(name, {'shared': features(length, 2), **logits}, labels))
  splits = {split: [name] for name, (split, _, _) in HAND_LABELS.items()}
  frames = lambda v: {'videos': np.zeros((len(v.labels), 4, 4, 3), np.uint8)}
  return formats.write_two_hands(root, HAND_CLASSES, splits, videos, video_arrays=frames)


@pytest.mark.parametrize(
  'stage, dims',
  [('1,2,3', {}), ('2,3', {'shared': 2, 'lh': 3, 'rh': 3}), ('3', 3)],
  ids=['raw_videos', 'stage1_features', 'stage3_features'],
)
def test_two_hands_per_hand_counts_at_every_stage(tmp_path, stage, dims):
  config = config_for('polyphony', two_hands_root(tmp_path / 'data'))
  config.stage, config.data.features = stage, 'all'
  workdir = tmp_path / 'run'
  stats = run_check(config, str(workdir))
  assert stats['feature_dims'] == dims and stats['warnings'] == []
  train = stats['splits']['train']
  assert train['labels'] == 'hands' and train['frames']['total'] == 6
  assert train['frames_per_class'] == {
    'lh': {'background': 3, 'hold box': 3, 'take nut': 0},
    'rh': {'background': 2, 'hold box': 0, 'take nut': 4},
  }
  assert train['segments_per_class'] == {
    'lh': {'background': 2, 'hold box': 1, 'take nut': 0},
    'rh': {'background': 1, 'hold box': 0, 'take nut': 2},
  }
  assert train['active_share'] == {'lh': 0.5, 'rh': pytest.approx(4 / 6)}
  assert stats['splits']['val']['active_share'] == {'lh': 1.0, 'rh': 0.25}
  assert stats['splits']['test']['active_share'] == {'lh': 0.0, 'rh': 1.0}
  assert set(os.listdir(workdir)) == OUTPUTS  # stages 1 and 2 did not run
  assert_png_has_content(workdir / data_check.PNG_FILE)


def test_multi_label_counts_active_classes(tmp_path):
  classes = ['walk', 'wave', 'talk']
  labels = {  # sample: (video, person, multi-hot rows)
    'v0__p0': ('v0', 'p0', [[1, 0, 0], [1, 1, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]]),
    'v0__p1': ('v0', 'p1', [[0, 0, 1]] * 3),
    'v1__p0': ('v1', 'p0', [[0, 0, 0]] * 2 + [[1, 0, 0]] * 2),
  }
  samples = [
    formats.ReferringSample(
      name,
      vid,
      person,
      'the person',
      features(len(rows), 4),
      features(len(rows), 2),
      np.array(rows, bool),
    )
    for name, (vid, person, rows) in labels.items()
  ]
  splits = {'random': {'train': ['v0__p0'], 'val': ['v0__p1'], 'test': ['v1__p0']}}
  root = formats.write_referring(
    tmp_path / 'data', formats.ReferringDataset(classes, samples), splits
  )
  stats = run_check(config_for('hopadiff', root), str(tmp_path / 'run'))
  assert stats['feature_dims'] == {'holistic': 4, 'partial': 2}
  train = stats['splits']['train']
  assert train['labels'] == 'multi-hot' and train['frames']['total'] == 5
  assert train['frames_per_class'] == {'walk': 4, 'wave': 2, 'talk': 0}
  assert train['segments_per_class'] == {'walk': 2, 'wave': 1, 'talk': 0}
  assert train['mean_active_classes'] == pytest.approx(6 / 5)
  assert train['no_action_share'] == pytest.approx(1 / 5)
  assert stats['splits']['test']['no_action_share'] == pytest.approx(2 / 4)
  assert stats['warnings'] == [
    'classes never in train (1 of 3): talk',
    'classes in val but never in train (1): talk',
  ]


def test_weak_supervision_counts_the_transcripts(tmp_path):
  classes = CLASSES[:3]
  train = [video('a', [0] * 4 + [1] * 4 + [0] * 4), video('b', [2] * 8)]
  val = [video('v', [0] * 3 + [1] * 5)]
  test = [video('c', [0] * 4 + [2] * 8)]
  subsets = {'train': train, 'val': val, 'test': test}
  datasets = {k: formats.Dataset(classes, v) for k, v in subsets.items()}
  root = formats.write_single_stream(tmp_path / 'data', datasets, transcripts=True)
  stats = run_check(config_for('hal', root), str(tmp_path / 'run'))
  train, test = stats['splits']['train'], stats['splits']['test']
  assert train['labels'] == 'transcripts' and 'frames_per_class' not in train  # never read
  assert train['frames'] == {'min': 8, 'median': 10.0, 'mean': 10.0, 'max': 12, 'total': 20}
  assert train['segments_per_class'] == {'background': 2, 'cut': 1, 'pour': 1}
  assert train['transcript_actions'] == {'min': 1, 'median': 2.0, 'mean': 2.0, 'max': 3, 'total': 4}
  assert stats['splits']['val']['frames_per_class'] == {'background': 3, 'cut': 5, 'pour': 0}
  assert test['labels'] == 'class ids'
  assert test['frames_per_class'] == {'background': 4, 'cut': 0, 'pour': 8}
  assert test['transcript_actions']['total'] == 2
  assert stats['warnings'] == []


def test_two_streams_report_both_dimensions(tmp_path):
  def two_streams(name, labels):
    streams = {'rgb': features(len(labels), 3), 'flow': features(len(labels), 2)}
    return formats.MultiStreamVideo(name, streams, np.array(labels, np.int32))

  subsets = {'train': [two_streams('a', [0, 1, 1])], 'val': [two_streams('b', [1, 1])]}
  subsets['test'] = [two_streams('c', [0, 0, 1, 0])]
  datasets = {k: formats.MultiStreamDataset(CLASSES[:2], v) for k, v in subsets.items()}
  root = formats.write_two_streams(tmp_path / 'data', datasets)
  stats = run_check(config_for('twostream', root), str(tmp_path / 'run'))
  assert stats['feature_dims'] == {'rgb': 3, 'flow': 2}
  assert stats['splits']['test']['frames_per_class'] == {'background': 3, 'cut': 1}
  assert stats['splits']['test']['segments_per_class'] == {'background': 2, 'cut': 1}


def test_broken_data_raises_the_loaders_error_and_writes_nothing(tmp_path):
  root = single_stream_root(tmp_path / 'data')
  label_file = root / 'groundTruth' / 'b.txt'
  label_file.write_text('pour\n' * 7)  # 7 labels for 8 frames
  workdir = tmp_path / 'run'
  with pytest.raises(formats.DataError, match='b.txt'):
    run_check(config_for('diffact', root), str(workdir))
  hands = two_hands_root(tmp_path / 'hands')
  (hands / 'videos' / 'v1.npy').unlink()
  config = config_for('polyphony', hands)
  config.stage = '1,2,3'
  with pytest.raises(formats.DataError, match="no video file for video 'v1'"):
    run_check(config, str(workdir))
  assert not OUTPUTS & set(os.listdir(workdir))


@pytest.mark.parametrize('method', ['diffact', 'hopadiff', 'polyphony', 'twostream', 'hal'])
def test_every_config_has_the_switch_off(method):
  assert load_config(method).data.check_only is False


def test_command_line_checks_and_exits_without_training(tmp_path):
  root = single_stream_root(tmp_path / 'data')
  workdir = tmp_path / 'run'
  command = [
    sys.executable,
    '-m',
    'polyseg.main',
    '--config=configs/diffact.py:runlocal=True',
    f'--workdir={workdir}',
    f'--config.data.root={root}',
    '--config.data.check_only=True',
  ]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  done = subprocess.run(
    command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'Data check: diffact' in done.stdout and 'classes never in train' in done.stdout
  assert f'Wrote {workdir / data_check.JSON_FILE}' in done.stdout
  assert set(os.listdir(workdir)) == OUTPUTS

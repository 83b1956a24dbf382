"""Real camera footage: OpenCV's two documentation videos (a hand grasping and turning a cup, a box
moved by hand; H.264, 640 x 480; tests/assets/opencv/LICENSE.txt) decoded by polyseg/data/video.py
as PyAV decodes them, then through Polyphony's stage 1 (a tiny ADH-ViT) and its per-frame feature
extraction end to end."""

import hashlib
import os
import shutil

import av
import numpy as np
import pytest
from conftest import REPO
from test_adh_vit import tiny_config

from polyseg.data import formats
from polyseg.data import video
from polyseg.methods.polyphony import stage1

FOOTAGE = REPO / 'tests' / 'assets' / 'opencv'
FRAMES = {'cup': 217, 'box': 455}  # frames decoded (box's stream header says 456)

pytestmark = pytest.mark.usefixtures('fast_compile')


def pyav_frames(path, size=None):
  """PyAV's own full decode, frame by frame: (frames (resized to `size` when given) or their
  SHA-1s, presentation times in seconds)."""
  frames, times = [], []
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    for frame in container.decode(stream):
      array = frame.to_ndarray(format='rgb24')
      frames.append(hashlib.sha1(array).hexdigest() if size is None else array)
      times.append(float(frame.pts * stream.time_base))
    rate = float(stream.average_rate)
  if size is not None:
    frames = video.resize_frames(np.stack(frames), size)
  return frames, np.asarray(times), rate


def test_cup_decodes_frame_for_frame_at_full_size():
  frames = video.read_video(FOOTAGE / 'cup.mp4')
  hashes, times, rate = pyav_frames(FOOTAGE / 'cup.mp4')
  assert frames.shape == (FRAMES['cup'], 480, 640, 3) and frames.dtype == np.uint8
  assert [hashlib.sha1(frame).hexdigest() for frame in frames] == hashes
  # Frame i is shown at i / rate: decode order is presentation order, none dropped or doubled.
  assert np.all(np.diff(times) > 0)
  np.testing.assert_allclose(times - times[0], np.arange(len(times)) / rate, atol=0.5 / rate)
  assert frames.std() > 20  # real pictures, not a blank stream


@pytest.mark.parametrize('name', ['cup', 'box'])
def test_resized_frames_and_clip_windows_match_pyav(name):
  size = 32
  frames = video.read_video(FOOTAGE / f'{name}.mp4', size)
  reference, times, rate = pyav_frames(FOOTAGE / f'{name}.mp4', size)
  assert frames.shape == (FRAMES[name], size, size, 3)
  np.testing.assert_array_equal(frames, reference)
  assert times[-1] - times[0] == pytest.approx((FRAMES[name] - 1) / rate, abs=0.5 / rate)
  # Every frame's clip: the 16 frames around it, repeated at the ends, as from PyAV's frames.
  windows = video.frame_windows(len(frames), 16)
  assert windows.shape == (FRAMES[name], 16)
  assert windows.min() == 0 and windows.max() == FRAMES[name] - 1
  for i in (0, 7, len(frames) // 2, len(frames) - 1):
    np.testing.assert_array_equal(frames[windows[i]], reference[windows[i]])
    inside = windows[i][(windows[i] > 0) & (windows[i] < len(frames) - 1)]
    assert np.all(np.diff(inside) == 1)


def write_raw_root(root) -> dict[str, tuple[str, str]]:
  """The stage-1 layout over the two videos, each also under a second name (their files are the
  same footage) so that train, val and test each hold videos. The videos come unlabelled; the
  labels are a rough hand-made split of each video in two, to give stage 1 something to learn."""
  names = {'cup': 'cup', 'cup_val': 'cup', 'box': 'box', 'box_test': 'box'}
  labels = {  # (left hand, right hand) per half
    'cup': (('idle', 'idle'), ('grasp cup', 'turn cup')),
    'box': (('hold box', 'hold box'), ('idle', 'move box')),
  }
  classes = ['idle', 'grasp cup', 'turn cup', 'hold box', 'move box']
  os.makedirs(root / 'videos')
  for name, source in names.items():
    shutil.copy(FOOTAGE / f'{source}.mp4', root / 'videos' / f'{name}.mp4')
    half = FRAMES[source] // 2
    for hand, (first, second) in zip(formats.HANDS, labels[source], strict=True):
      lines = [first] * half + [second] * (FRAMES[source] - half)
      formats.write_labels(root / 'groundTruth' / hand / f'{name}.txt', lines)
  formats.write_labels(root / 'mapping.txt', [f'{i} {c}' for i, c in enumerate(classes)])
  bundles = {'train': ['cup', 'box'], 'val': ['cup_val'], 'test': ['box_test']}
  for subset, videos in bundles.items():
    formats.write_labels(formats.split_path(root, subset, 1), [f'{v}.txt' for v in videos])
  return names


def test_stage1_trains_and_extracts_features_on_real_footage(tmp_path):
  names = write_raw_root(tmp_path / 'raw')
  config = tiny_config(num_steps=6, eval_every=6, checkpoint_every=6)
  out = stage1.run(config, str(tmp_path / 'work'), str(tmp_path / 'raw'))
  classes = formats.read_mapping(out / 'mapping.txt')
  features = {}
  for subset in ('train', 'val', 'test'):
    data = formats.read_hand_streams(out, subset, 1, classes, {'shared': MODEL_WIDTH})
    for item in data.videos:
      length = FRAMES[names[item.name]]
      assert item.labels.shape == (length, 2)
      assert item.features['shared'].shape == (length, MODEL_WIDTH)
      for hand in formats.HANDS:
        assert item.features[hand].shape == (length, len(classes))
      for array in item.features.values():
        assert np.isfinite(array).all() and array.std() > 0
      features[item.name] = item.features
  assert sorted(features) == sorted(names)
  # The same footage under two names gets the same features: extraction sees only the frames.
  for a, b in (('cup', 'cup_val'), ('box', 'box_test')):
    for stream in ('shared', *formats.HANDS):
      np.testing.assert_allclose(features[a][stream], features[b][stream], rtol=1e-5, atol=1e-6)
  cached = np.load(tmp_path / 'work' / 'stage1' / 'frames_16' / 'box.npy')
  np.testing.assert_array_equal(cached, video.read_video(FOOTAGE / 'box.mp4', 16))


MODEL_WIDTH = tiny_config().model.width

"""Raw video for stage 1: reading (.npy, PyAV-decoded files), resizing, windows, clip sampling."""

import av
import numpy as np
import pytest

from polyseg.data import formats
from polyseg.data import video


def write_video(path, frames: np.ndarray, codec: str, pix_fmt: str) -> None:
  """Encodes frames [T, H, W, 3] uint8 RGB with PyAV."""
  with av.open(str(path), 'w') as container:
    stream = container.add_stream(codec, rate=25)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    container.mux(stream.encode())


def two_colour_frames(length: int, height: int, width: int) -> np.ndarray:
  """Smooth test frames: left and right halves in colours that change every 4 frames."""
  rng = np.random.default_rng(0)
  colours = rng.integers(30, 220, (length // 4 + 1, 2, 3))
  frames = np.empty((length, height, width, 3), np.uint8)
  for t in range(length):
    frames[t, :, : width // 2] = colours[t // 4, 0]
    frames[t, :, width // 2 :] = colours[t // 4, 1]
  return frames


# ------------------------------------------------------------------------------ reading --


def test_lossless_video_file_round_trip(tmp_path):
  frames = np.random.default_rng(1).integers(0, 256, (7, 12, 20, 3), dtype=np.uint8)
  path = tmp_path / 'clip.mkv'
  write_video(path, frames, 'ffv1', 'bgr0')  # lossless RGB
  np.testing.assert_array_equal(video.read_video(path), frames)


def test_mp4_read_back_and_resized(tmp_path):
  frames = two_colour_frames(70, 48, 64)  # > DECODE_CHUNK frames: decoded in two chunks
  path = tmp_path / 'clip.mp4'
  write_video(path, frames, 'mpeg4', 'yuv420p')
  back = video.read_video(path)
  assert back.shape == frames.shape and back.dtype == np.uint8
  assert np.abs(back.astype(int) - frames).mean() < 4  # lossy codec, smooth content
  small = video.read_video(path, size=16)
  assert small.shape == (70, 16, 16, 3)
  # Far from the colour border, a resized half keeps its colour.
  for t in (0, 35, 69):
    np.testing.assert_allclose(small[t, :, :5].mean((0, 1)), frames[t, :, :20].mean((0, 1)), atol=6)
    np.testing.assert_allclose(
      small[t, :, -5:].mean((0, 1)), frames[t, :, -20:].mean((0, 1)), atol=6
    )


def test_npy_video_memory_mapped_and_resized(tmp_path):
  frames = two_colour_frames(9, 8, 8)
  path = tmp_path / 'v.npy'
  np.save(path, frames)
  same = video.read_video(path, size=8)
  assert isinstance(same, np.memmap)
  np.testing.assert_array_equal(same, frames)
  resized = video.read_video(path, size=4)
  assert resized.shape == (9, 4, 4, 3) and not isinstance(resized, np.memmap)
  np.testing.assert_array_equal(resized[:, :, 0], frames[:, :4, 0])  # uniform halves stay exact


def test_resize_frames_values():
  ramp = np.tile(np.arange(0, 256, 32, dtype=np.uint8)[None, :, None], (8, 1, 3))  # [8, 8, 3]
  out = video.resize_frames(np.stack([ramp, 255 - ramp]), 4)
  assert out.shape == (2, 4, 4, 3)
  # Antialiased 2x downscale: a triangle filter over 4 source columns, weights (1, 3, 3, 1) / 8,
  # renormalised where it leaves the image: (3*0 + 3*32 + 64) / 7, (32 + 3*64 + 3*96 + 128) / 8, ...
  np.testing.assert_allclose(out[0, 0, :, 0], [160 / 7, 80, 144, 1408 / 7], atol=0.5)
  np.testing.assert_allclose(out[1, 0, :, 0], [255 - 160 / 7, 175, 111, 255 - 1408 / 7], atol=0.5)
  with pytest.raises(ValueError, match=r'\[N, H, W, 3\]'):
    video.resize_frames(ramp, 4)


def test_read_video_errors(tmp_path):
  with pytest.raises(formats.DataError, match='absent.mp4: video file not found'):
    video.read_video(tmp_path / 'absent.mp4')
  (tmp_path / 'notes.txt').write_text('hello')
  with pytest.raises(formats.DataError, match=r'notes\.txt: unsupported video file type'):
    video.read_video(tmp_path / 'notes.txt')
  (tmp_path / 'broken.mp4').write_bytes(b'this is not a video' * 10)
  with pytest.raises(formats.DataError, match=r'broken\.mp4: cannot open as a video'):
    video.read_video(tmp_path / 'broken.mp4')
  np.save(tmp_path / 'float.npy', np.zeros((2, 4, 4, 3), np.float32))
  with pytest.raises(formats.DataError, match=r'float\.npy: video frames must be uint8'):
    video.read_video(tmp_path / 'float.npy')
  np.save(tmp_path / 'empty.npy', np.zeros((0, 4, 4, 3), np.uint8))
  with pytest.raises(formats.DataError, match=r'empty\.npy: empty video'):
    video.read_video(tmp_path / 'empty.npy')
  np.save(tmp_path / 'objects.npy', np.array([None, 1], dtype=object))
  with pytest.raises(formats.DataError, match=r'objects\.npy: not a plain \.npy array'):
    video.read_video(tmp_path / 'objects.npy')


def _write_root(root, names, lengths=None):
  """A stage-1 root: mapping, a train bundle, labels of both hands and .npy videos."""
  (root / 'splits').mkdir(parents=True)
  (root / 'mapping.txt').write_text('0 background\n1 take cup\n')
  formats.split_path(root, 'train', 1).write_text(''.join(f'{n}.txt\n' for n in names))
  for hand, pattern in (('lh', [0, 0, 1]), ('rh', [1, 1, 0])):
    (root / 'groundTruth' / hand).mkdir(parents=True)
    for name in names:
      length = (lengths or {}).get((name, hand), 3)
      labels = [('background', 'take cup')[c] for c in (pattern * 3)[:length]]
      (root / 'groundTruth' / hand / f'{name}.txt').write_text('\n'.join(labels) + '\n')
  (root / 'videos').mkdir()
  for name in names:
    np.save(root / 'videos' / f'{name}.npy', np.zeros((3, 4, 4, 3), np.uint8))


def test_read_raw_videos(tmp_path):
  _write_root(tmp_path, ['a', 'b'])
  (tmp_path / 'videos' / 'b.npy').unlink()
  write_video(tmp_path / 'videos' / 'b.mkv', np.zeros((3, 4, 4, 3), np.uint8), 'ffv1', 'bgr0')
  classes, videos = video.read_raw_videos(tmp_path, 'train', 1)
  assert classes == ['background', 'take cup']
  assert [v.name for v in videos] == ['a', 'b']
  assert [v.path.name for v in videos] == ['a.npy', 'b.mkv']
  np.testing.assert_array_equal(videos[0].labels, [[0, 1], [0, 1], [1, 0]])
  assert videos[0].labels.dtype == np.int32


def test_read_raw_videos_errors(tmp_path):
  _write_root(tmp_path / 'uneven', ['a'], lengths={('a', 'rh'): 4})
  with pytest.raises(formats.DataError, match=r'rh/a\.txt: 4 frames but .*lh/a\.txt has 3'):
    video.read_raw_videos(tmp_path / 'uneven', 'train', 1)
  _write_root(tmp_path / 'missing', ['a'])
  (tmp_path / 'missing' / 'videos' / 'a.npy').unlink()
  with pytest.raises(formats.DataError, match=r"videos: no video file for video 'a'"):
    video.read_raw_videos(tmp_path / 'missing', 'train', 1)
  _write_root(tmp_path / 'twice', ['a'])
  (tmp_path / 'twice' / 'videos' / 'a.mp4').write_bytes(b'')
  with pytest.raises(formats.DataError, match=r"2 video files \['a.npy', 'a.mp4'\]"):
    video.read_raw_videos(tmp_path / 'twice', 'train', 1)


# ---------------------------------------------------------------------- windows and clips --


def test_frame_windows_at_edges():
  np.testing.assert_array_equal(
    video.frame_windows(5, 4),
    [[0, 0, 0, 1], [0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 4]],
  )
  windows = video.frame_windows(40, 16)
  assert windows.shape == (40, 16)
  np.testing.assert_array_equal(windows[:, 8], np.arange(40))  # frame t at position 8
  np.testing.assert_array_equal(windows[20], np.arange(12, 28))  # t-8 .. t+7
  np.testing.assert_array_equal(windows[0], [0] * 9 + list(range(1, 8)))
  np.testing.assert_array_equal(windows[39], list(range(31, 40)) + [39] * 7)
  np.testing.assert_array_equal(video.frame_windows(1, 3), [[0, 0, 0]])
  with pytest.raises(ValueError, match='>= 1'):
    video.frame_windows(0, 16)


def test_segments():
  np.testing.assert_array_equal(
    video.segments(np.array([0, 0, 2, 2, 2, 0])), [[0, 2, 0], [2, 5, 2], [5, 6, 0]]
  )
  np.testing.assert_array_equal(video.segments(np.array([3])), [[0, 1, 3]])


def test_segmental_indices():
  rng = np.random.default_rng(0)
  for _ in range(20):
    idx = video.segmental_indices(rng, 10, 42, 16)  # 32 frames: part i is frames 10+2i, 11+2i
    assert ((idx - 10) // 2 == np.arange(16)).all()
  short = np.concatenate([video.segmental_indices(rng, 5, 8, 8) for _ in range(50)])
  assert set(short) == {5, 6, 7}
  idx = video.segmental_indices(rng, 5, 8, 8)
  assert (np.diff(idx) >= 0).all()


def test_random_clip_indices():
  rng = np.random.default_rng(0)
  centres = set()
  for _ in range(100):
    idx = video.random_clip_indices(rng, 3, 6, 4, length=7)
    centre = idx[2]  # position size // 2
    assert 3 <= centre < 6
    np.testing.assert_array_equal(idx, np.clip(np.arange(centre - 2, centre + 2), 0, 6))
    centres.add(int(centre))
  assert centres == {3, 4, 5}


def test_clip_sampler_draws_the_requested_hands_segments():
  lh = np.array([0] * 10 + [1] * 10 + [0] * 10)
  rh = np.array([2] * 5 + [3] * 20 + [2] * 5)
  labels = [np.stack([lh, rh], axis=1), np.stack([rh, lh], axis=1)[:20]]
  sampler = video.ClipSampler(labels, size=4, mode='segmental', seed=3)
  assert len(sampler.segments[0]) == len(sampler.segments[1]) == 3 + 2
  picks = []
  for step in range(200):
    hands = np.array([0, 1, 1])
    vids, idx, label = sampler.sample(step, hands)
    assert idx.shape == (3, 4)
    for v, i, y, h in zip(vids, idx, label, hands, strict=True):
      assert (labels[v][i, h] == y).all()  # segmental: every frame inside the segment
      picks.append((h, v, labels[v][i[0], h]))
  # Uniform over segments: the LH segments of video 0 (3 of 5) get about 60% of the LH draws.
  lh_draws = [p for p in picks if p[0] == 0]
  assert 0.5 < np.mean([p[1] == 0 for p in lh_draws]) < 0.7
  first, again = sampler.sample(7, np.array([0, 1])), sampler.sample(7, np.array([0, 1]))
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a, b)  # a function of (seed, step)


def test_clip_sampler_random_and_both_modes():
  labels = [np.stack([np.repeat([0, 1, 0], 12), np.repeat([1, 0, 1], 12)], axis=1)]
  random_sampler = video.ClipSampler(labels, size=8, mode='random', seed=0)
  both = video.ClipSampler(labels, size=8, mode='both', seed=0)
  kinds = []
  for step in range(60):
    _, idx, label = random_sampler.sample(step, np.zeros(2, int))
    centre = idx[:, 4]
    np.testing.assert_array_equal(labels[0][centre, 0], label)  # the window's centre frame
    np.testing.assert_array_equal(idx, video._windows(centre, 36, 8))
    _, idx, _ = both.sample(step, np.ones(4, int))
    kinds += [bool((np.diff(row) == 1).all()) for row in idx]
  assert 0.3 < np.mean(kinds) < 0.8  # 'both': dense windows and spread (segmental) clips
  with pytest.raises(ValueError, match="sampling mode 'dense'"):
    video.ClipSampler(labels, size=8, mode='dense')

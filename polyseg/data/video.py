"""Raw video for Polyphony stage 1: the two-hand video layout, frames, per-frame windows, clips.

Layout (a two-hands dataset root, see `formats`, with videos instead of features)::

    mapping.txt, splits/<subset>.split<k>.bundle, groundTruth/{lh,rh}/<vid>.txt
    videos/<vid>.npy     [T, H, W, 3] uint8 RGB (never pickled), or
    videos/<vid>.<ext>   ext in VIDEO_EXTENSIONS, decoded with PyAV (`pip install av`)

T (frames) equals the label length. Frames are resized to the model's S x S without cropping (a
crop could cut off a hand) and never flipped (a flip swaps the hands).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Iterator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from polyseg.data import formats
from polyseg.data.formats import base

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm', '.mov')
DECODE_CHUNK = 64  # frames decoded (and resized) at a time
SAMPLING_MODES = ('segmental', 'random', 'both')


# ------------------------------------------------------------------------------ reading --


@dataclasses.dataclass
class RawVideo:
  """One video of the stage-1 layout: its file and labels [T, 2] int32 (columns formats.HANDS)."""

  name: str
  path: pathlib.Path
  labels: np.ndarray


def find_video(root: formats.PathLike, name: str) -> pathlib.Path:
  """`root/videos/<name>.npy` or `.<ext>` (exactly one of them); DataError otherwise."""
  folder = pathlib.Path(root) / 'videos'
  found = [folder / f'{name}{ext}' for ext in ('.npy', *VIDEO_EXTENSIONS)]
  found = [path for path in found if path.is_file()]
  if len(found) != 1:
    what = 'no video file' if not found else f'{len(found)} video files {[p.name for p in found]}'
    raise formats.DataError(
      f'{folder}: {what} for video {name!r} (expected one <vid>.npy or <vid>'
      f'{"|".join(VIDEO_EXTENSIONS)})'
    )
  return found[0]


def read_raw_videos(
  root: formats.PathLike, subset: str, split: int, classes: Sequence[str] | None = None
) -> tuple[list[str], list[RawVideo]]:
  """(classes, videos of `splits/{subset}.split{split}.bundle`): labels read and checked (equal
  length per hand, names in mapping.txt), each video file located (its frames are read later)."""
  root = pathlib.Path(root)
  mapping = base.read_mapping_as(root, classes)
  videos = []
  for name in formats.read_split(root, subset, split):
    paths = [root / 'groundTruth' / hand / f'{name}.txt' for hand in formats.HANDS]
    tracks = [formats.read_labels(path, mapping) for path in paths]
    base.check_same_length(list(zip(paths, tracks, strict=True)))
    videos.append(RawVideo(name, find_video(root, name), np.stack(tracks, axis=1)))
  return mapping, videos


def _load_npy(path: pathlib.Path) -> np.ndarray:
  """Frames [T, H, W, 3] uint8 memory-mapped from a `.npy` (never unpickled), validated."""
  try:
    frames = np.load(path, mmap_mode='r', allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise formats.DataError(f'{path}: not a plain .npy array ({e})') from None
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise formats.DataError(
      f'{path}: video frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}'
    )
  if not frames.shape[0]:
    raise formats.DataError(f'{path}: empty video (T = 0 frames)')
  return frames


def _decode(path: pathlib.Path) -> Iterator[np.ndarray]:
  """Chunks [n, H, W, 3] uint8 (n <= DECODE_CHUNK) of the first video stream, decoded by PyAV."""
  try:
    import av  # the video extra; .npy videos need no decoder
  except ImportError as e:
    raise ImportError(f'{path}: decoding video files needs PyAV (`pip install av`)') from e
  try:
    container = av.open(str(path))
  except av.error.FFmpegError as e:
    raise formats.DataError(f'{path}: cannot open as a video ({e})') from None
  with container:
    if not container.streams.video:
      raise formats.DataError(f'{path}: has no video stream')
    stream = container.streams.video[0]
    stream.thread_type = 'AUTO'
    chunk, count = [], 0
    try:
      for frame in container.decode(stream):
        chunk.append(frame.to_ndarray(format='rgb24'))
        count += 1
        if len(chunk) == DECODE_CHUNK:
          yield np.stack(chunk)
          chunk = []
    except av.error.FFmpegError as e:
      raise formats.DataError(f'{path}: decoding failed after {count} frames ({e})') from None
  if chunk:
    yield np.stack(chunk)


@functools.partial(jax.jit, static_argnums=1)
def _resize_chunk(frames: jax.Array, size: int) -> jax.Array:
  shape = (frames.shape[0], size, size, 3)
  resized = jax.image.resize(frames.astype(jnp.float32), shape, 'linear', antialias=True)
  return jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8)


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
  """[N, H, W, 3] uint8 -> [N, size, size, 3] uint8: antialiased bilinear, aspect not kept.

  Jitted on chunks of DECODE_CHUNK frames (the last one padded), so a video compiles once per
  input frame size.
  """
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f'resize_frames: frames must be [N, H, W, 3], got {frames.shape}')
  out = []
  for start in range(0, len(frames), DECODE_CHUNK):
    chunk = np.asarray(frames[start : start + DECODE_CHUNK])
    padded = np.pad(chunk, [(0, DECODE_CHUNK - len(chunk)), (0, 0), (0, 0), (0, 0)])
    out.append(np.asarray(_resize_chunk(padded, size))[: len(chunk)])
  return np.concatenate(out) if out else np.zeros((0, size, size, 3), np.uint8)


def read_video(path: formats.PathLike, size: int | None = None) -> np.ndarray:
  """Frames [T, H, W, 3] uint8 RGB of a `.npy` or a video file (PyAV), resized to [T, S, S, 3] when
  `size` = S is given. A `.npy` that needs no resizing is returned memory-mapped (read-only)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise formats.DataError(f'{path}: video file not found')
  if path.suffix == '.npy':
    frames = _load_npy(path)
    if size is None or frames.shape[1:3] == (size, size):
      return frames
    chunks = (frames[i : i + DECODE_CHUNK] for i in range(0, len(frames), DECODE_CHUNK))
  elif path.suffix.lower() in VIDEO_EXTENSIONS:
    chunks = _decode(path)
  else:
    raise formats.DataError(
      f'{path}: unsupported video file type (expected .npy or {", ".join(VIDEO_EXTENSIONS)})'
    )
  out = [chunk if size is None else resize_frames(chunk, size) for chunk in chunks]
  if not out:
    raise formats.DataError(f'{path}: empty video (no frames decoded)')
  return np.concatenate(out)


# ---------------------------------------------------------------------- windows and clips --


def _windows(centres: np.ndarray, length: int, size: int) -> np.ndarray:
  """[N, size]: frames c - size//2 .. c + size - 1 - size//2 around each centre c, clipped to
  [0, length) (edge frames repeated)."""
  offsets = np.arange(size) - size // 2
  return np.clip(np.asarray(centres)[:, None] + offsets[None, :], 0, length - 1)


def frame_windows(length: int, size: int = 16) -> np.ndarray:
  """Each frame's window [T, size] int: frame t sits at position size // 2 of frames
  t - size//2 .. t + size - 1 - size//2 (t-8 .. t+7 for 16), indices clipped to [0, T)."""
  if length < 1 or size < 1:
    raise ValueError(f'frame_windows: length and size must be >= 1, got {length}, {size}')
  return _windows(np.arange(length), length, size)


def segments(labels: np.ndarray) -> np.ndarray:
  """Segments of labels [T] as rows (start, end, class) [N, 3] int64, end exclusive, in order."""
  labels = np.asarray(labels)
  starts = np.r_[0, np.flatnonzero(labels[1:] != labels[:-1]) + 1]
  ends = np.r_[starts[1:], len(labels)]
  return np.stack([starts, ends, labels[starts]], axis=1).astype(np.int64)


def segmental_indices(rng: np.random.Generator, start: int, end: int, size: int) -> np.ndarray:
  """TSN segmental sampling of frames [start, end): one uniform frame in each of `size` equal
  parts, in order (frames repeat when the segment is shorter than `size`). [size] int64."""
  parts = (np.arange(size) + rng.random(size)) * ((end - start) / size)
  return start + np.minimum(parts.astype(np.int64), end - start - 1)


def random_clip_indices(
  rng: np.random.Generator, start: int, end: int, size: int, length: int
) -> np.ndarray:
  """Random clip sampling: the `size`-frame window (as `frame_windows`) around a uniform frame
  of [start, end) in a video of `length` frames. [size] int64."""
  return _windows(rng.integers(start, end, size=1), length, size)[0]


class ClipSampler:
  """Training clips of given hands: a segment of that hand's labels, uniform over all segments
  of the training videos (every action instance counts once, as in clip-level recognition data),
  then its frames by `mode`: 'segmental' (`segmental_indices`), 'random' (`random_clip_indices`,
  the dense window extraction uses) or 'both' (each clip picks one of the two, evenly). The
  clip's label is the segment's class. Draws depend only on (seed, step): resumable.
  """

  def __init__(self, labels: Sequence[np.ndarray], size: int, mode: str = 'both', seed: int = 0):
    """`labels` per video [T, H] int (one column per hand)."""
    if mode not in SAMPLING_MODES:
      raise ValueError(f'sampling mode {mode!r}; choose one of {SAMPLING_MODES}')
    if not labels:
      raise ValueError('ClipSampler: no videos')
    self.size, self.mode, self.seed = size, mode, seed
    self.lengths = np.asarray([len(x) for x in labels])
    self.segments = []  # per hand: rows (video, start, end, class)
    for hand in range(labels[0].shape[1]):
      rows = [
        np.c_[np.full(len(s), v), s] for v, s in enumerate(segments(x[:, hand]) for x in labels)
      ]
      self.segments.append(np.concatenate(rows))

  def sample(self, step: int, hands: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For clip hands [B]: (video index [B], frame indices [B, size], label [B]) int."""
    rng = np.random.default_rng((self.seed, step))
    videos, indices, labels = [], [], []
    for hand in np.asarray(hands):
      table = self.segments[hand]
      video, start, end, label = table[rng.integers(len(table))]
      mode = self.mode if self.mode != 'both' else SAMPLING_MODES[rng.integers(2)]
      if mode == 'segmental':
        indices.append(segmental_indices(rng, start, end, self.size))
      else:
        indices.append(random_clip_indices(rng, start, end, self.size, self.lengths[video]))
      videos.append(video)
      labels.append(label)
    return np.asarray(videos), np.stack(indices), np.asarray(labels)

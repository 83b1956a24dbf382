r"""seglearn's smartwatch recordings -> one dataset root for DiffAct, 2s-DAS and HAL.

  python -m polyseg.data.watch --out=DATASET_DIR [--src=watch_dataset.npy] [--trust-pickle]

The PyPI package `seglearn` (BSD) ships `seglearn/data/watch_dataset.npy`: 140 real recordings of
a smartwatch (10 subjects, the watch on either wrist, 7 shoulder exercises, one exercise per
recording; 50 Hz, accelerometer x/y/z and gyroscope x/y/z). It is a pickled object array, and
unpickling can execute arbitrary code, so this converter opens exactly one file: the one whose
SHA-256 is that of seglearn 1.2.5's copy (`SHA256`); any other file needs `--trust-pickle`, which
says it comes from a trusted source. Pickles are opened nowhere else in polyseg.

What the dataset root holds (the single-stream layout of formats/single_stream.py with the
two-stream folders and transcripts beside it):

* one video per subject and side, `s<subject>_<left|right>`: the subject's 7 recordings of that side
  joined in exercise order; so the boundaries between exercises are where recordings were joined,
  not transitions a person made, and every video holds each exercise once, in the same order;
* frames every `stride` samples (10: 5 frames per second); each frame's features summarise the
  `window` samples around it (50: one second) by mean, standard deviation, minimum and maximum of
  each channel, standardised with the training subjects' statistics: `features_rgb/` holds the
  accelerometer's 12 (2s-DAS's first stream), `features_flow/` the gyroscope's 12 (its second),
  `features/` all 24 (DiffAct, HAL); a frame's label is the exercise of its centre sample;
* `transcripts/<vid>.txt`: the 7 exercises in order (HAL's weak supervision);
* cross-subject splits (split 1): test subjects 9 and 10, val subjects 7 and 8, train the rest.
"""

import argparse
import hashlib
import importlib.util
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from polyseg.data import formats
from polyseg.data.formats import single_stream

SHA256 = 'eb122f23cdf06ef6bd6c6c5312958ec5cf9d038e2e6d457b8081662c75a42537'  # seglearn 1.2.5
SUBJECT_SPLITS = {'val': (7, 8), 'test': (9, 10)}  # the other subjects train
SIDES = {0: 'left', 1: 'right'}
SENSORS = {'rgb': slice(0, 3), 'flow': slice(3, 6)}  # accelerometer, gyroscope channels
STATISTICS = ('mean', 'std', 'min', 'max')


def installed_file() -> pathlib.Path:
  """seglearn's watch_dataset.npy, found without importing seglearn (which imports scikit-learn)."""
  spec = importlib.util.find_spec('seglearn')
  if spec is None or not spec.submodule_search_locations:
    raise formats.DataError(
      'seglearn is not installed: `pip install --no-deps seglearn`, or give --src=watch_dataset.npy'
    )
  return pathlib.Path(next(iter(spec.submodule_search_locations))) / 'data' / 'watch_dataset.npy'


def read_recordings(path: pathlib.Path, trust: bool) -> dict:
  """The file's dict (X: [T, 6] per recording, y, subject, side, y_labels), after its SHA-256 is
  checked (or `trust` given)."""
  if not path.is_file():
    raise formats.DataError(f'{path}: not found')
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  if digest != SHA256 and not trust:
    raise formats.DataError(
      f'{path}: SHA-256 {digest} is not that of seglearn 1.2.5\'s watch_dataset.npy ({SHA256}); '
      'it is a pickle, and unpickling can execute code: pass --trust-pickle only for a file '
      'from a trusted source'
    )
  try:
    data = np.load(path, allow_pickle=True).item()
    recordings = [np.asarray(x, np.float64) for x in data['X']]
    fields = {k: np.asarray(data[k]).astype(int) for k in ('y', 'subject', 'side')}
    classes = [str(name) for name in data['y_labels']]
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise formats.DataError(f'{path}: not seglearn\'s watch dataset ({type(e).__name__}: {e})')
  bad = [i for i, x in enumerate(recordings) if x.ndim != 2 or x.shape[1] != 6 or not len(x)]
  if bad or any(len(v) != len(recordings) for v in fields.values()):
    raise formats.DataError(f'{path}: recordings {bad[:3]} are not [T, 6], or the fields differ')
  return {'X': recordings, 'classes': classes, **fields}


def window_features(signal: np.ndarray, window: int, stride: int) -> np.ndarray:
  """[T, C] samples -> [ceil(T / stride), 4 C]: mean, std, min and max of each channel over the
  `window` samples centred on every `stride`-th sample (clipped at the ends)."""
  centres = np.arange(0, len(signal), stride)
  starts = np.clip(centres - window // 2, 0, None)
  ends = np.clip(centres + window - window // 2, None, len(signal))
  rows = []
  for start, end in zip(starts, ends, strict=True):
    part = signal[start:end]
    rows.append(np.concatenate([part.mean(0), part.std(0), part.min(0), part.max(0)]))
  return np.stack(rows)


def sequences(recordings: dict) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
  """{video: (subject, samples [T, 6], exercise per sample [T])}: per subject and side, the
  recordings joined in exercise order."""
  out = {}
  for subject in sorted(set(recordings['subject'])):
    for side, side_name in SIDES.items():
      chosen = [
        i
        for i in np.argsort(recordings['y'], kind='stable')
        if recordings['subject'][i] == subject and recordings['side'][i] == side
      ]
      if chosen:
        samples = np.concatenate([recordings['X'][i] for i in chosen])
        labels = np.concatenate(
          [np.full(len(recordings['X'][i]), recordings['y'][i]) for i in chosen]
        )
        out[f's{subject:02d}_{side_name}'] = (subject, samples, labels)
  return out


def subset_of(subject: int) -> str:
  return next((s for s, subjects in SUBJECT_SPLITS.items() if subject in subjects), 'train')


def convert(
  src: pathlib.Path, out: pathlib.Path, window: int = 50, stride: int = 10, trust: bool = False
) -> dict[str, int]:
  """Writes the dataset root `out` (atomically; it must not exist); returns {subset: videos}."""
  if window < 1 or stride < 1:
    raise ValueError(f'window and stride must be >= 1, got {window}, {stride}')
  recordings = read_recordings(pathlib.Path(src), trust)
  videos = {}
  for name, (subject, samples, labels) in sequences(recordings).items():
    features = {
      s: window_features(samples[:, channels], window, stride) for s, channels in SENSORS.items()
    }
    videos[name] = (subset_of(subject), features, labels[::stride].astype(np.int32))
  train = [f for subset, f, _ in videos.values() if subset == 'train']
  train_frames = {s: np.concatenate([f[s] for f in train]) for s in SENSORS}
  stats = {s: (x.mean(0), x.std(0) + 1e-6) for s, x in train_frames.items()}
  datasets = {
    subset: formats.MultiStreamDataset(recordings['classes'], [])
    for subset in ('train', 'val', 'test')
  }
  for name, (subset, features, labels) in videos.items():
    scaled = {s: ((x - stats[s][0]) / stats[s][1]).astype(np.float32) for s, x in features.items()}
    datasets[subset].videos.append(formats.MultiStreamVideo(name, scaled, labels))
  single_stream.write_ms_tcn(
    out,
    datasets,
    1,
    lambda video: {
      'features': np.concatenate([video.features[s] for s in SENSORS], axis=1),
      **{f'features_{s}': video.features[s] for s in SENSORS},
    },
    transcripts=True,
  )
  return {subset: len(d.videos) for subset, d in datasets.items()}


@formats.reports_data_errors
def main(argv: Sequence[str] | None = None) -> int:
  """`python -m polyseg.data.watch` (see the module docstring)."""
  parser = argparse.ArgumentParser(
    prog='python -m polyseg.data.watch',
    description="Convert seglearn's smartwatch recordings to a dataset root (DiffAct, 2s-DAS, HAL).",
  )
  parser.add_argument('--out', required=True, help='the dataset folder to write (must not exist)')
  parser.add_argument('--src', help="watch_dataset.npy (default: the installed seglearn's)")
  parser.add_argument('--window', type=int, default=50, help='samples per frame window (50 Hz)')
  parser.add_argument('--stride', type=int, default=10, help='samples between frames')
  parser.add_argument(
    '--trust-pickle',
    action='store_true',
    help='unpickle a file other than seglearn 1.2.5\'s (only for a file from a trusted source)',
  )
  args = parser.parse_args(argv)
  src = pathlib.Path(args.src) if args.src else installed_file()
  counts = convert(src, pathlib.Path(args.out), args.window, args.stride, args.trust_pickle)
  print(f'Wrote {args.out}: {counts} videos (cross-subject split 1), from {src}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

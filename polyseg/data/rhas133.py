r"""RHAS133 release -> the referring layout (formats/referring.py; the data of HopaDIFF, docs/methods/hopadiff.md).

  python -m polyseg.data.rhas133 --src=RELEASE_DIR --out=DATASET_DIR --features=blip2 \
      --trust-pickles

The release keeps its annotations in Python pickles, and unpickling can execute arbitrary code: the
command refuses to run without `--trust-pickles`, which says the files come from a trusted source.
Pickles are opened nowhere else in polyseg; the feature files are plain `.npy` arrays and are read
with `allow_pickle=False`.

What the release holds. The release itself could not be inspected here: this is read from the
reference code, KPeng9510/HopaDIFF, `dataset.py` (classes `Dataset_RHAS`, `Dataset_RHAS_random`,
`Dataset_RHAS_random_clip`), `main.py`, `inference.py`, `model.py` and `README.md`. There the
paths are absolute paths of the authors' cluster (`.../neurips2025/...`); RELEASE_DIR stands for
that `neurips2025/` folder. `<split>` is train, val or test of the cross-movie partition and `<i>`
the index of a sample in that split's pickled lists::

  Processing_codes/actions_<split>_rhas.pkl     list over samples; a sample is a list over frames;
                                                a frame is a class id or a list of ids in 0..136
  Processing_codes/person_ref_<split>_rhas.pkl  list over samples: the reference text
  Processing_codes/frame_ids_<split>_rhas.pkl   loaded by the reference code, never used: not opened
  Processing_codes/randomsplits/<split>_files.pkl  list of feature paths
                                                .../RHAS_feature_blipv2{,_val,_test}/<i>_blip_feat.npy
  Processing_codes/randomsplits/<split>_anno.pkl   the labels of those samples, as in actions_*.pkl
  RHAS_feature_blipv2{,_val,_test}/<i>_blip_feat.npy      BLIP-2 holistic [T, Q, 768]; mean over Q
  RHAS_feature_blipv2_<split>_grounding_dino/<i>_blip_feat.npy   BLIP-2 partial, same shape
  RHAS_1_feature_clip_<split>/RHAS_feature_clip_<split><i>_clip_feat.npy   CLIP holistic [T, 512]
  RHAS_feature_clip_<split>_grounding_dino/<i>_clip_feat.npy     CLIP partial [T, 512]

(Pickles are also accepted directly in RELEASE_DIR, without `Processing_codes/`.)

Read from the code: the pickle and feature file names (the CLIP loader, `Dataset_RHAS_random_clip`,
derives its paths from the BLIP-2 paths of randomsplits/); the label structure (one-hot rows of 137
classes indexed by the ids, the rows of a frame summed); the mean over axis 1 of BLIP-2 arrays (Q:
presumably BLIP-2's query tokens) and 2-D CLIP arrays, time first (cut with `[:len(...)]`). Both
shapes are accepted for both extractors.

Inferred, or ambiguous in the code:
- Holistic vs partial: the code passes the `*_grounding_dino` features and the others to two
  symmetric encoders (`encoder`, `encoder_original`); GroundingDINO crops of the referred person are
  the paper's partial branch, the uncropped `original` features its holistic branch.
- Class names: the README's "Action Name Index" (1..137), id = index - 1 (the code is 0-based).
- person_ref items are taken to be the reference strings (the code never reads them).
- No video or person ids: a sample (a window of about 3,000 frames of one referred person in one
  movie; the paper, §5.1, counts 566/61/163 of them) is known only by (split, index). Each becomes a video `<split>_<i:04d>` with one person
  `target`, so `splits/cross_video/` reproduces the cross-movie partition exactly.
- randomsplits/ re-partitions the same samples: a path's folder and number name the sample; the
  converter checks that its labels equal that sample's labels and writes `splits/random/`.
- The CLIP holistic path: the code's string replacement leaves no `/` before the file name; both
  that name and `RHAS_1_feature_clip_<split>/RHAS_feature_clip_<split>/<i>_clip_feat.npy` are tried.
- A frame with an empty id list (the reference code would fail on it) is a frame without action.

The reference loader tolerates three things that this converter rejects unless `--lenient`: it
lists samples from the holistic folder (samples without holistic features are skipped), it uses the
holistic features when a partial file is missing, and it cuts holistic features and labels to the
partial length. `--lenient` does the same and reports which samples were affected.

Everything is validated (shapes, dimensions 768 / 512, lengths, finite values, class ids, non-empty
samples and texts) before anything is written; errors name the file and the sample (`file[i]`).
The output is written by `formats.write_referring`, atomically. Features are held in a scratch
folder beside the output (memory-mapped) rather than in memory: the BLIP-2 release is ~15 GB as
float32 (790 samples of 3,000 frames, two branches).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import pickle
import re
import sys
import tempfile
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tqdm

from polyseg.data import formats
from polyseg.data.formats import base

DataError = formats.DataError

REFUSAL = (
  'refusing to unpickle the RHAS133 annotations: unpickling can execute arbitrary code. Run this '
  'only on files from a trusted source (the official release), and say so with --trust-pickles.'
)
FEATURE_DIMS = {'blip2': 768, 'clip': 512}
SPLITS = formats.REFERRING_SUBSETS  # the release's cross-movie partition: train, val, test
PERSON = 'target'  # the one referred person of each sample
# The README's "Action Name Index": class id i is index i + 1 there.
_CLASS_NAMES = """
  arranging asking beckoning bending bleeding bowing breathing brushing calling carrying catching
  clapping climbing closing cooking coughing covering crawling crossing crying cutting dancing
  dodging dragging drawing drinking driving dropping eating entering falling fixing flipping flying
  frowning gesturing getting gettingdown gettingon gettingup giving grabbing handsinpocket hanging
  helping hitting holding hugging jumping kicking kissing kneeling knocking laughing leaning leaving
  lifting listening litting looking lookingdown lying makinghair moveeyes movehand movehead
  movemouth moving movingbody movingonstairs no nodding opening picking picturing playing
  playingmusic pointing pouring pulling pushing putting raising reaching reading receiving removing
  riding rolling rubbing running sawing seaching searching shaking shakingbody shocking shooting
  shouting showing sighing singing sitting sittingdown slapping sleeping smearing smelling smiling
  smoking speaking squatting standing standingup stopping straighteningup stretching struggling
  swimming swing taking takingoff talking thinking throwing tidying touching turning walking
  watching watering waving wearing wiping working writing yawning
"""
CLASSES = tuple(_CLASS_NAMES.split())
# BLIP-2 holistic folders (also the folders named in randomsplits/*_files.pkl) -> split.
BLIP2_HOLISTIC = {
  'RHAS_feature_blipv2': 'train',
  'RHAS_feature_blipv2_val': 'val',
  'RHAS_feature_blipv2_test': 'test',
}
_BLIP2_FILE = re.compile(r'(\d+)_blip_feat\.npy')


@dataclasses.dataclass
class Conversion:
  """What `convert` wrote: the dataset folder, and the sample names `--lenient` changed."""

  root: pathlib.Path
  samples: dict[str, int]  # {split: samples written}
  skipped: list[str] = dataclasses.field(default_factory=list)  # no holistic features
  partial_from_holistic: list[str] = dataclasses.field(default_factory=list)  # no partial file
  truncated: list[str] = dataclasses.field(default_factory=list)  # cut to the partial length


def video_id(split: str, index: int) -> str:
  """'<split>_<index:04d>': the video id of sample `index` of the release's `split`."""
  return f'{split}_{index:04d}'


# ------------------------------------------------------------------------------ reading --


def _first_existing(candidates: Sequence[pathlib.Path]) -> pathlib.Path | None:
  return next((path for path in candidates if path.is_file()), None)


def _not_found(candidates: Sequence[pathlib.Path], what: str) -> DataError:
  also = f' (also tried {", ".join(map(str, candidates[1:]))})' if len(candidates) > 1 else ''
  return DataError(f'{candidates[0]}: {what} not found{also}')


def _pickle_candidates(src: pathlib.Path, relative: str) -> list[pathlib.Path]:
  return [src / 'Processing_codes' / relative, src / relative]


def _unpickle_list(path: pathlib.Path) -> list:
  """The non-empty list pickled in `path` (only ever called behind --trust-pickles)."""
  try:
    with path.open('rb') as f:
      value = pickle.load(f)
  except (
    pickle.UnpicklingError,
    EOFError,
    ImportError,
    AttributeError,
    LookupError,
    TypeError,
    ValueError,
  ) as e:  # what unpickling raises, e.g. for a module missing here
    raise DataError(f'{path}: cannot unpickle ({type(e).__name__}: {e})') from None
  if not isinstance(value, list | tuple) or not value:
    raise DataError(f'{path}: expected a non-empty list of samples, got {type(value).__name__}')
  return list(value)


def _read_pickles(src: pathlib.Path, names: Sequence[str]) -> list[tuple[pathlib.Path, list]]:
  """(path, list) for each pickle in `names` (relative to Processing_codes/), equally long."""
  loaded = []
  for name in names:
    candidates = _pickle_candidates(src, name)
    path = _first_existing(candidates)
    if path is None:
      raise _not_found(candidates, 'annotation pickle')
    loaded.append((path, _unpickle_list(path)))
  (first_path, first), *others = loaded
  for path, items in others:
    if len(items) != len(first):
      raise DataError(f'{path}: {len(items)} samples but {first_path} has {len(first)}')
  return loaded


def _is_class_id(value: object) -> bool:
  return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_sequence(value: object) -> bool:
  return isinstance(value, list | tuple) or (isinstance(value, np.ndarray) and value.ndim >= 1)


def _multi_hot(frames: object, key: str) -> np.ndarray:
  """Multi-hot [T, C] bool from one sample's frames (a class id or a list of ids per frame)."""
  if not _is_sequence(frames) or not len(frames):
    raise DataError(f'{key}: expected a non-empty list of frames, got {frames!r:.60}')
  multi_hot = np.zeros((len(frames), len(CLASSES)), bool)
  for t, frame in enumerate(frames):
    ids = [frame] if _is_class_id(frame) else frame
    if not _is_sequence(ids) or not all(_is_class_id(i) for i in ids):
      raise DataError(f'{key}, frame {t}: expected a class id or a list of ids, got {frame!r:.60}')
    out_of_range = [int(i) for i in ids if not 0 <= i < len(CLASSES)]
    if out_of_range:
      raise DataError(
        f'{key}, frame {t}: class id {out_of_range[0]} is not in 0..{len(CLASSES) - 1}'
      )
    multi_hot[t, np.asarray(ids, np.int64)] = True
  return multi_hot


def _feature_candidates(
  src: pathlib.Path, features: str, split: str, index: int
) -> dict[str, list[pathlib.Path]]:
  """{'holistic', 'partial'}: the files the reference code reads for a sample, in order of trial."""
  if features == 'blip2':
    name = f'{index}_blip_feat.npy'
    holistic_folder = next(f for f, s in BLIP2_HOLISTIC.items() if s == split)
    return {
      'holistic': [src / holistic_folder / name],
      'partial': [src / f'RHAS_feature_blipv2_{split}_grounding_dino' / name],
    }
  name = f'{index}_clip_feat.npy'
  folder = src / f'RHAS_1_feature_clip_{split}'
  return {
    'holistic': [
      folder / f'RHAS_feature_clip_{split}{name}',
      folder / f'RHAS_feature_clip_{split}' / name,
    ],
    'partial': [src / f'RHAS_feature_clip_{split}_grounding_dino' / name],
  }


def _load_features(path: pathlib.Path, dim: int) -> np.ndarray:
  """Features [T, dim] float32 from a release `.npy`: [T, dim], or [T, Q, dim] averaged over Q."""
  try:
    array = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise DataError(f'{path}: not a plain numeric .npy array ({e})') from None
  shape = array.shape if isinstance(array, np.ndarray) else 'an .npz archive'
  if isinstance(shape, str) or len(shape) not in (2, 3) or shape[-1] != dim or 0 in shape:
    raise DataError(f'{path}: expected a non-empty [T, {dim}] or [T, Q, {dim}] array, got {shape}')
  # formats checks the dtype and finite values (per frame) of [T, Q * dim] as a [D, T] file.
  frames = base.as_features(array.reshape(len(array), -1).T, path, None)
  return frames.reshape(shape).mean(1) if len(shape) == 3 else frames


def _scratch_copy(array: np.ndarray, path: pathlib.Path) -> np.ndarray:
  """`array` saved to `path` and memory-mapped back, so that samples do not fill the memory."""
  np.save(path, array, allow_pickle=False)
  return np.load(path, mmap_mode='r', allow_pickle=False)


class _Annotations(NamedTuple):
  """One split of the release's cross-movie annotations (pickles and their lists)."""

  actions_path: pathlib.Path
  actions: list  # per sample: per frame a class id or a list of ids
  references_path: pathlib.Path
  references: list  # per sample: the reference text


@dataclasses.dataclass
class _SampleReader:
  """Reads, validates and converts the release's samples."""

  src: pathlib.Path
  features: str
  lenient: bool
  scratch: pathlib.Path  # where the converted features wait, memory-mapped, for write_referring
  conversion: Conversion  # records what --lenient changes

  def __call__(
    self, annotations: _Annotations, split: str, index: int
  ) -> tuple[formats.ReferringSample | None, str, np.ndarray]:
    """(sample `index` of `split`, or None when --lenient skips it; its key 'actions file[i]';
    its labels as in the pickle, [T0, C] bool)."""
    key = f'{annotations.actions_path}[{index}]'
    labels = _multi_hot(annotations.actions[index], key)
    reference = annotations.references[index]
    if not isinstance(reference, str) or not reference.strip():
      raise DataError(
        f'{annotations.references_path}[{index}]: expected the reference text, '
        f'got {reference!r:.60}'
      )
    name = formats.sample_name(video_id(split, index), PERSON)
    candidates = _feature_candidates(self.src, self.features, split, index)
    dim = FEATURE_DIMS[self.features]
    holistic_path = _first_existing(candidates['holistic'])
    if holistic_path is None:
      if not self.lenient:
        raise _not_found(candidates['holistic'], f'holistic features of {key}')
      self.conversion.skipped.append(name)
      return None, key, labels
    holistic = _load_features(holistic_path, dim)
    partial_path = _first_existing(candidates['partial'])
    if partial_path is not None:
      partial = _load_features(partial_path, dim)
    elif self.lenient:
      partial, partial_path = holistic, holistic_path
      self.conversion.partial_from_holistic.append(name)
    else:
      raise _not_found(candidates['partial'], f'partial features of {key}')
    length = len(partial)
    for where, array in ((holistic_path, holistic), (key, labels)):
      if len(array) < length or (len(array) > length and not self.lenient):
        raise DataError(f'{where}: {len(array)} frames but {partial_path} has {length} frames')
    if len(holistic) > length or len(labels) > length:
      self.conversion.truncated.append(name)
    sample = formats.ReferringSample(
      name,
      video_id(split, index),
      PERSON,
      reference,
      _scratch_copy(holistic[:length], self.scratch / f'{name}.holistic.npy'),
      _scratch_copy(partial, self.scratch / f'{name}.partial.npy'),
      labels[:length],
    )
    return sample, key, labels


def _random_partition(
  src: pathlib.Path, labels: dict[tuple[str, int], tuple[str, np.ndarray]], written: set[str]
) -> dict[str, list[str]] | None:
  """{subset: sample names} of the release's random partition, or None if it has none.

  `labels`: {(split, index): (pickle key, labels)} of every sample read; `written`: the names of the
  samples written (those skipped by --lenient are left out of the partition too).
  """
  names = [f'randomsplits/{subset}_{kind}.pkl' for subset in SPLITS for kind in ('files', 'anno')]
  if not any(_first_existing(_pickle_candidates(src, name)) for name in names):
    return None
  partition, listed = {}, {}
  for subset in SPLITS:
    (files_path, files), (anno_path, annos) = _read_pickles(
      src, [f'randomsplits/{subset}_files.pkl', f'randomsplits/{subset}_anno.pkl']
    )
    partition[subset] = []
    for k, (file, anno) in enumerate(zip(files, annos, strict=True)):
      parts = re.split(r'[/\\]', file) if isinstance(file, str) else []
      match = _BLIP2_FILE.fullmatch(parts[-1]) if len(parts) >= 2 else None
      if match is None or parts[-2] not in BLIP2_HOLISTIC:
        raise DataError(
          f'{files_path}[{k}]: expected a path .../<folder>/<i>_blip_feat.npy with <folder> in '
          f'{sorted(BLIP2_HOLISTIC)}, got {file!r:.120}'
        )
      split, index = BLIP2_HOLISTIC[parts[-2]], int(match[1])
      if (split, index) not in labels:
        raise DataError(f'{files_path}[{k}]: {file!r} names no sample of the {split} annotations')
      name = formats.sample_name(video_id(split, index), PERSON)
      if name in listed:
        raise DataError(f'{files_path}[{k}]: sample {file!r} is already listed at {listed[name]}')
      listed[name] = f'{files_path}[{k}]'
      key, expected = labels[split, index]
      if not np.array_equal(_multi_hot(anno, f'{anno_path}[{k}]'), expected):
        raise DataError(f'{anno_path}[{k}]: labels differ from those of the same sample, {key}')
      if name in written:
        partition[subset].append(name)
  missing = sorted(written - set(listed))
  if missing:
    raise DataError(
      f'{src}: {len(missing)} samples are in no randomsplits/*_files.pkl, e.g. {missing[:3]}'
    )
  return partition


def convert(
  src: formats.PathLike,
  out: formats.PathLike,
  features: str = 'blip2',
  *,
  trust_pickles: bool = False,
  lenient: bool = False,
) -> Conversion:
  """Converts the RHAS133 release at `src` into the referring layout at `out` (see the module
  docstring). Unpickles the release's annotations, so `trust_pickles` must be True."""
  if not trust_pickles:
    raise PermissionError(REFUSAL)
  if features not in FEATURE_DIMS:
    raise ValueError(f'features must be one of {sorted(FEATURE_DIMS)}, got {features!r}')
  src, out = pathlib.Path(src), pathlib.Path(out)
  if not src.is_dir():
    raise DataError(f'{src}: release folder not found')
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise DataError(f'{out}: already exists and is not an empty folder; not overwriting')
  annotations = {}
  for split in SPLITS:
    (actions_path, actions), (references_path, references) = _read_pickles(
      src, [f'actions_{split}_rhas.pkl', f'person_ref_{split}_rhas.pkl']
    )
    annotations[split] = _Annotations(actions_path, actions, references_path, references)
  conversion = Conversion(out, dict.fromkeys(SPLITS, 0))
  samples, labels, videos = [], {}, {split: [] for split in SPLITS}
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent, prefix=f'.{out.name}.scratch-') as scratch:
    read_sample = _SampleReader(src, features, lenient, pathlib.Path(scratch), conversion)
    total = sum(len(a.actions) for a in annotations.values())
    with tqdm.tqdm(total=total, desc='RHAS133', unit='video') as progress:
      for split, split_annotations in annotations.items():
        for index in range(len(split_annotations.actions)):
          sample, key, frames = read_sample(split_annotations, split, index)
          labels[split, index] = (key, frames)
          progress.update()
          if sample is not None:
            samples.append(sample)
            videos[split].append(sample.video)
            conversion.samples[split] += 1
    splits = {'cross_video': videos}
    random = _random_partition(src, labels, {s.name for s in samples})
    if random is not None:
      splits['random'] = random
    formats.write_referring(out, formats.ReferringDataset(list(CLASSES), samples), splits)
  return conversion


# ------------------------------------------------------------------------------ command --


@formats.reports_data_errors
def main(argv: Sequence[str] | None = None) -> int:
  """`python -m polyseg.data.rhas133`: converts the RHAS133 release (see the module docstring)."""
  parser = argparse.ArgumentParser(
    prog='python -m polyseg.data.rhas133',
    description='Convert the RHAS133 release (pickled annotations) to the referring layout.',
  )
  parser.add_argument(
    '--src', required=True, help='the release folder (Processing_codes/, RHAS_feature_* folders)'
  )
  parser.add_argument('--out', required=True, help='the dataset folder to write (must not exist)')
  parser.add_argument('--features', choices=sorted(FEATURE_DIMS), default='blip2')
  parser.add_argument(
    '--trust-pickles',
    action='store_true',
    help='unpickle the annotations: this can execute arbitrary code, so only for trusted files',
  )
  parser.add_argument(
    '--lenient',
    action='store_true',
    help='as the reference loader: skip samples without holistic features, use the holistic '
    'features when partial ones are missing, cut holistic features and labels to the partial length',
  )
  args = parser.parse_args(argv)
  if not args.trust_pickles:
    parser.error(REFUSAL)
  conversion = convert(args.src, args.out, args.features, trust_pickles=True, lenient=args.lenient)
  counts = ', '.join(f'{n} {split}' for split, n in conversion.samples.items())
  print(f'converted {args.src} ({args.features}) to {conversion.root}: {counts} samples')
  for what, names in (
    ('skipped (no holistic features)', conversion.skipped),
    ('partial features = holistic (no partial file)', conversion.partial_from_holistic),
    ('cut to the partial length', conversion.truncated),
  ):
    if names:
      print(f'--lenient: {len(names)} samples {what}, e.g. {names[:3]}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

r"""TFDS input: a dataset folder of any on-disk layout as array_record shards, read without TensorFlow.

  python -m polyseg.data.tfds --layout=single_stream --root=DATASET_DIR --out=TFDS_DIR --split=1

One builder serves every layout (polyseg/data/formats: single_stream, two_hands, two_streams, referring,
transcripts). A `Spec` (the layout and its split parameters) names the TFDS config, so conversions
with other parameters live side by side: `TFDS_DIR/polyseg/<spec.name>/1.0.0/`.

- Records are the objects the folder readers return, field by field: one per video
  (formats.Video, MultiStreamVideo, TranscriptVideo) or one per referring sample window
  (formats.ReferringSample). Arrays are stored as raw bytes with shape [None, ...] (trailing
  dimensions fixed by the first record); records keep the folder reader's order.
- Splits: train / val / test of MS-TCN split `spec.split` (val empty without a
  `val.split<k>.bundle`; `load` can then hold out part of train); two streams aligned to the flow
  length within `spec.length_tolerance` frames (formats.read_two_streams); referring: the
  train / val / test of
  `formats.split_referring` for `spec.protocol`, after `formats.window_samples` with
  `spec.sample_frames`. Windowing happens at conversion, before the TFDS stage, so a record is a
  training sample and hosts shard windows; frames, protocol, seed and fractions are in the name.
- Conversion reads and validates the whole folder with the folder reader first (all of it in
  memory, as training in folder mode), then writes into a temporary sibling folder that is renamed
  into place: a failed conversion leaves nothing behind.
- Writing uses the numpy encoders of tensorflow_datasets and array_record; reading uses
  `builder_from_directory(...).as_data_source()` (random access). Neither imports TensorFlow.
  Arrays read back are read-only views of the records.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np

from polyseg.data import formats

FORMATS = ('folder', 'tfds')  # config.data.format
BUILDER_NAME = 'polyseg'
VERSION = '1.1.0'  # 1.1.0: MS-TCN val subset, record names in the metadata

DataError = formats.DataError
PathLike = formats.PathLike


@dataclasses.dataclass(frozen=True)
class Spec:
  """What a conversion produces: a layout and its split parameters (they name the TFDS config)."""

  layout: str
  split: int = 1  # MS-TCN split k: subsets train, test (all layouts but referring)
  protocol: str = 'random'  # referring: subsets train, val, test of formats.split_referring
  sample_frames: int | None = None  # referring: window length (None or 0: whole samples)
  split_seed: int = 0  # referring: seeded partition when there are no split files
  split_fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
  length_tolerance: int = 0  # two_streams: frames RGB / labels may differ from the flow length

  def __post_init__(self):
    if self.layout not in LAYOUTS:
      raise ValueError(f'layout={self.layout!r}; choose one of {sorted(LAYOUTS)}')
    if self.split < 1:
      raise ValueError(f'split must be >= 1, got {self.split}')
    if self.protocol not in formats.REFERRING_PROTOCOLS:
      raise ValueError(f'protocol={self.protocol!r}; choose one of {formats.REFERRING_PROTOCOLS}')
    if self.sample_frames is not None and self.sample_frames < 0:
      raise ValueError(f'sample_frames must be >= 0 or None, got {self.sample_frames}')
    if len(self.split_fractions) != 3 or min(self.split_fractions) <= 0:
      raise ValueError(f'split_fractions must be 3 positive numbers, got {self.split_fractions}')
    object.__setattr__(self, 'split_fractions', tuple(float(f) for f in self.split_fractions))
    if self.length_tolerance < 0:
      raise ValueError(f'length_tolerance must be >= 0, got {self.length_tolerance}')
    if self.length_tolerance and self.layout != 'two_streams':
      raise ValueError(f'length_tolerance applies to two_streams only, not {self.layout}')

  @property
  def name(self) -> str:
    """The TFDS config name, e.g. 'single_stream-split1', 'two_streams-split1-tolerance5'."""
    if self.layout != 'referring':
      tolerance = f'-tolerance{self.length_tolerance}' if self.length_tolerance else ''
      return f'{self.layout}-split{self.split}{tolerance}'
    fractions = '_'.join(f'{f:g}' for f in self.split_fractions)
    return (
      f'referring-{self.protocol}-frames{self.sample_frames or 0}-seed{self.split_seed}-'
      f'fractions{fractions}'
    )

  @property
  def subsets(self) -> tuple[str, ...]:
    return formats.REFERRING_SUBSETS if self.layout == 'referring' else ('train', 'val', 'test')


# ------------------------------------------------------------------------------- layouts --


def _read_ms_tcn(
  reader: Callable[..., Any], aligned: bool = False
) -> Callable[[pathlib.Path, Spec], dict[str, Any]]:
  """(root, spec) -> {'train', 'val', 'test'} datasets of an MS-TCN-split layout's `reader` (val
  empty without a val bundle). `aligned`: the reader takes `length_tolerance` (two streams)."""

  def read(root: pathlib.Path, spec: Spec) -> dict[str, Any]:
    options = {'length_tolerance': spec.length_tolerance} if aligned else {}
    train = reader(root, 'train', spec.split, **options)
    subsets = {'train': train, 'val': type(train)(train.classes, [])}
    for subset in ('val', 'test'):
      if subset == 'test' or formats.split_path(root, subset, spec.split).exists():
        subsets[subset] = reader(root, subset, spec.split, classes=train.classes, **options)
    return subsets

  return read


def _read_transcripts(
  root: pathlib.Path, subset: str, split: int, classes: Sequence[str] | None = None
) -> formats.Dataset:
  """Transcript videos, with their frame labels when the dataset has a groundTruth/ folder."""
  labels = (root / 'groundTruth').is_dir()
  return formats.read_transcripts(root, subset, split, classes=classes, labels=labels)


def _read_referring(root: pathlib.Path, spec: Spec) -> dict[str, formats.ReferringDataset]:
  """{'train', 'val', 'test'}: the windows of `spec.sample_frames` frames, split by the protocol."""
  dataset = formats.read_referring(root)
  windows = formats.window_samples(dataset.samples, spec.sample_frames)
  splits = formats.split_referring(
    root, windows, spec.protocol, seed=spec.split_seed, fractions=spec.split_fractions
  )
  return {subset: formats.ReferringDataset(dataset.classes, s) for subset, s in splits.items()}


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a layout's folder is read and what its records become."""

  read: Callable[[pathlib.Path, Spec], dict[str, Any]]  # (root, spec) -> {subset: dataset}
  record: type  # the dataclass of one record
  dataset: type  # dataset(classes, items): what the folder reader returns
  items: str = 'videos'  # the dataset's field that holds the records


LAYOUTS = {
  'single_stream': Layout(_read_ms_tcn(formats.read_single_stream), formats.Video, formats.Dataset),
  'two_hands': Layout(
    _read_ms_tcn(formats.read_two_hands), formats.MultiStreamVideo, formats.MultiStreamDataset
  ),
  'two_streams': Layout(
    _read_ms_tcn(formats.read_two_streams, aligned=True),
    formats.MultiStreamVideo,
    formats.MultiStreamDataset,
  ),
  'transcripts': Layout(_read_ms_tcn(_read_transcripts), formats.TranscriptVideo, formats.Dataset),
  'referring': Layout(
    _read_referring, formats.ReferringSample, formats.ReferringDataset, items='samples'
  ),
}


# ------------------------------------------------------------------------------- records --


def _record(item: Any) -> dict[str, Any]:
  """The fields of a reader's object that are set (labels may be None): TFDS example values."""
  values = {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
  return {name: value for name, value in values.items() if value is not None}


def _structure(value: Any) -> Any:
  """What a record value is: 'text', 'int', (dtype, trailing shape) of an array, or a dict."""
  if isinstance(value, dict):
    return {key: _structure(v) for key, v in value.items()}
  if isinstance(value, str):
    return 'text'
  if isinstance(value, int):
    return 'int'
  return (value.dtype.str, value.shape[1:])


def _tfds():
  """tensorflow_datasets, imported on first use (half a second; folder data never needs it)."""
  import tensorflow_datasets

  return tensorflow_datasets


def _feature(structure: Any):
  """The TFDS feature of a record structure."""
  tfds = _tfds()
  """The TFDS feature of a `_structure`: arrays as raw bytes with shape [None, ...]."""
  if isinstance(structure, dict):
    return tfds.features.FeaturesDict({key: _feature(s) for key, s in structure.items()})
  if structure == 'text':
    return tfds.features.Text()
  if structure == 'int':
    return tfds.features.Scalar(np.int64)
  dtype, trailing = structure
  return tfds.features.Tensor(
    shape=(None, *trailing), dtype=np.dtype(dtype), encoding=tfds.features.Encoding.BYTES
  )


def _feature_dims(structure: dict[str, Any], prefix: str = '') -> dict[str, int]:
  """{path: D} of the float [T, D] arrays of a record structure ('features', 'features/lh', ...)."""
  dims = {}
  for key, s in structure.items():
    if isinstance(s, dict):
      dims.update(_feature_dims(s, f'{prefix}{key}/'))
    elif isinstance(s, tuple) and np.dtype(s[0]).kind == 'f' and len(s[1]) == 1:
      dims[f'{prefix}{key}'] = s[1][0]
  return dims


def _value(value: Any) -> Any:
  """A decoded TFDS value as the folder reader has it: str, int or array ({stream: array})."""
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, dict):
    return {key: _value(v) for key, v in value.items()}
  if np.ndim(value) == 0:
    return int(value)
  return value


def _check_structure(root: pathlib.Path, subsets: Mapping[str, Any], layout: Layout) -> dict:
  """The structure shared by all records (one feature spec), else DataError naming the records."""
  first = None
  for subset, dataset in subsets.items():
    for item in getattr(dataset, layout.items):
      structure = _structure(_record(item))
      if first is None:
        first = (subset, item.name, structure)
      elif structure != first[2]:
        raise DataError(
          f'{root}: {subset} {item.name!r} has fields {structure}, but {first[0]} '
          f'{first[1]!r} has {first[2]} (fields, dtypes and dimensions must agree)'
        )
  return first[2]  # readers refuse empty datasets: there is a first record


@functools.cache
def builder_class():
  """The TFDS builder class (made on first use, when tensorflow_datasets is imported)."""
  tfds = _tfds()

  class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The TFDS builder of one conversion: config `spec.name`; splits = `subsets` ({subset: dataset}
    read and validated by the layout's folder reader), one record per video / sample, in order."""

    name = BUILDER_NAME
    VERSION = tfds.core.Version(VERSION)
    # No code folder with checksums (nothing is downloaded). TFDS would look for it with
    # importlib_resources, which its dependencies do not install.
    code_path = None

    def __init__(
      self, *, spec: Spec, subsets: Mapping[str, Any], structure: dict, data_dir: PathLike
    ):
      self._spec, self._subsets, self._structure = spec, subsets, structure
      config = tfds.core.BuilderConfig(
        name=spec.name, version=VERSION, description=f'polyseg {spec.layout} dataset'
      )
      super().__init__(data_dir=os.fspath(data_dir), config=config, file_format='array_record')

    def _info(self) -> tfds.core.DatasetInfo:
      classes = next(iter(self._subsets.values())).classes
      items = LAYOUTS[self._spec.layout].items
      metadata = tfds.core.MetadataDict(
        layout=self._spec.layout,
        spec=dataclasses.asdict(self._spec),
        subsets=list(self._subsets),
        names={k: [x.name for x in getattr(d, items)] for k, d in self._subsets.items()},
        classes=list(classes),
        dims=_feature_dims(self._structure),
      )
      return tfds.core.DatasetInfo(
        builder=self,
        description=f'{self._spec.layout} dataset converted by polyseg.data.tfds ({self._spec.name})',
        features=_feature(self._structure),
        disable_shuffling=True,  # records keep the folder reader's order
        metadata=metadata,
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download: the folder was read before
      items = LAYOUTS[self._spec.layout].items
      return {
        subset: self._generate_examples(getattr(dataset, items))
        for subset, dataset in self._subsets.items()
        if getattr(dataset, items)  # an empty subset (referring split files) gets no split
      }

    def _generate_examples(self, items: Sequence[Any]):
      for index, item in enumerate(items):
        yield index, _record(item)

  return Builder


# ---------------------------------------------------------------------------- conversion --


def dataset_dir(out: PathLike, spec: Spec) -> pathlib.Path:
  """`out/polyseg/<spec.name>/<VERSION>`: where the conversion of `spec` lives."""
  return pathlib.Path(out).expanduser() / BUILDER_NAME / spec.name / VERSION


def is_converted(out: PathLike, spec: Spec) -> bool:
  """Whether `out` holds a complete conversion of `spec` (they are installed atomically)."""
  return (dataset_dir(out, spec) / 'dataset_info.json').is_file()


def _install(tmp: pathlib.Path, out: pathlib.Path, spec: Spec) -> None:
  """Renames the conversion in `tmp` into `out`: the whole folder when `out` is new, else its
  version folder. A concurrent identical conversion that got there first wins."""
  built, final = dataset_dir(tmp, spec), dataset_dir(out, spec)
  try:
    if out.exists():
      final.parent.mkdir(parents=True, exist_ok=True)
      os.replace(built, final)
    else:
      os.replace(tmp, out)
  except OSError:
    if not is_converted(out, spec):
      raise


def convert(root: PathLike, out: PathLike, spec: Spec) -> pathlib.Path:
  """Converts the dataset folder `root` (layout `spec.layout`) into TFDS folder `out`, atomically.

  Reads and validates every file first (DataError naming the file); writes into a temporary
  sibling of `out` and renames the result into place, so a failed conversion leaves no trace.
  Returns `dataset_dir(out, spec)`; an existing conversion is kept as it is.
  """
  root, out = pathlib.Path(root).expanduser(), pathlib.Path(out).expanduser()
  if is_converted(out, spec):
    return dataset_dir(out, spec)
  if not root.is_dir():
    raise DataError(f'{root}: dataset folder not found')
  if out.exists() and not out.is_dir():
    raise DataError(f'{out}: exists and is not a folder')
  layout = LAYOUTS[spec.layout]
  subsets = layout.read(root, spec)
  structure = _check_structure(root, subsets, layout)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=f'.{out.name}.tmp-'))
  umask = os.umask(0o022)
  os.umask(umask)
  tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; it may become `out`
  try:
    # A new builder looks for published metadata on GCS and leaves the (empty) folder it made for
    # it in the temp folder: made inside `tmp` instead, it goes with it.
    system_temp, tempfile.tempdir = tempfile.tempdir, os.fspath(tmp)
    try:
      builder = builder_class()(spec=spec, subsets=subsets, structure=structure, data_dir=tmp)
    finally:
      tempfile.tempdir = system_temp
    builder.download_and_prepare(download_dir=os.fspath(tmp / 'downloads'))
    shutil.rmtree(tmp / 'downloads', ignore_errors=True)
    _install(tmp, out, spec)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return dataset_dir(out, spec)


# ------------------------------------------------------------------------------- reading --


def _builder(out: PathLike, spec: Spec) -> tuple[pathlib.Path, Any]:
  """(folder, builder) of the conversion of `spec` in `out`; DataError saying how to make it."""
  directory = dataset_dir(out, spec)
  if not is_converted(out, spec):
    raise DataError(
      f'{directory}: no TFDS conversion of {spec.name}; make it with python -m polyseg.data.tfds '
      f'--layout={spec.layout} --root=DATASET_DIR --out={out}'
    )
  return directory, _tfds().builder_from_directory(os.fspath(directory))


def names(out: PathLike, spec: Spec, subset: str) -> list[str]:
  """The record names of `subset` of the conversion of `spec` in `out`, in record order (read
  from the metadata: no record is decoded)."""
  directory, builder = _builder(out, spec)
  metadata = builder.info.metadata
  if subset not in metadata['subsets']:
    raise DataError(f'{directory}: no subset {subset!r}; it has {metadata["subsets"]}')
  return list(metadata['names'][subset])


def read(
  out: PathLike,
  spec: Spec,
  subset: str,
  *,
  indices: Sequence[int] | None = None,
  process_index: int = 0,
  process_count: int = 1,
  classes: Sequence[str] | None = None,
  dims: Mapping[str, int | None] | None = None,
) -> Any:
  """Records `indices` (default: all, in order) of `subset` of the conversion of `spec` in `out`,
  of which this process takes every P-th from p (p = process_index, P = process_count), as the
  layout's folder reader returns them (formats.Dataset, MultiStreamDataset or ReferringDataset).
  `classes` and `dims` ({'features': D}, {'holistic': Dh, ...}; None values are not checked) are
  checked against the conversion when given."""
  if not 0 <= process_index < process_count:
    raise ValueError(
      f'need 0 <= process_index < process_count, got {process_index}, {process_count}'
    )
  directory, builder = _builder(out, spec)
  metadata = builder.info.metadata
  if subset not in metadata['subsets']:
    raise DataError(f'{directory}: no subset {subset!r}; it has {metadata["subsets"]}')
  if classes is not None and list(classes) != metadata['classes']:
    raise DataError(
      f'{directory}: classes {metadata["classes"]} differ from the expected {list(classes)}'
    )
  for path, dim in (dims or {}).items():
    if dim is not None and metadata['dims'].get(path) != dim:
      raise DataError(
        f'{directory}: feature dimension of {path!r} is {metadata["dims"].get(path)}, '
        f'expected {dim}'
      )
  if indices is None:
    indices = range(len(metadata['names'][subset]))
  records = []
  if subset in builder.info.splits and indices:  # else an empty subset
    source = builder.as_data_source(split=subset)
    records = source.__getitems__(list(indices)[process_index::process_count])
  layout = LAYOUTS[spec.layout]
  items = [layout.record(**{k: _value(v) for k, v in record.items()}) for record in records]
  return layout.dataset(list(metadata['classes']), items)


def check_format(value: str) -> str:
  """`config.data.format` if it is one of FORMATS, else ValueError."""
  if value not in FORMATS:
    raise ValueError(f'config.data.format={value!r}; choose one of {FORMATS}')
  return value


def load(
  root: PathLike,
  tfds_dir: PathLike | None,
  spec: Spec,
  *,
  classes: Sequence[str] | None = None,
  dims: Mapping[str, int | None] | None = None,
  train_shard: tuple[int, int] = (0, 1),
  hold_out: tuple[float, int] | None = None,
) -> tuple[dict[str, Any], Callable[[], Any]]:
  """({subset: dataset} of `spec` from `tfds_dir` (None: `<root>/tfds`) but test, read_test):
  every subset whole except 'train', of which only records p::P are read for `train_shard` = (p, P)
  (a host's share); `read_test()` reads the test records (none is read before it is called).
  Converts `root` there first if needed (and says so). `classes` / `dims` as in `read`.

  `hold_out` = (fraction, seed): when the conversion's val subset is empty, val is the seeded
  `fraction` of the train records that `formats.hold_out` picks (as the folder tasks do), read
  whole, and train is the rest, sharded."""
  out = pathlib.Path(tfds_dir or pathlib.Path(root) / 'tfds').expanduser()
  if not is_converted(out, spec):
    print(f'No TFDS conversion {spec.name} in {out} yet: converting {root} (first use)', flush=True)
    convert(root, out, spec)
  indices = {subset: None for subset in spec.subsets if subset != 'test'}
  if hold_out is not None and 'val' in indices and not names(out, spec, 'val'):
    indices['train'], indices['val'] = formats.hold_out_split(
      names(out, spec, 'train'), *hold_out, f'{dataset_dir(out, spec)}: no val records'
    )
  read_whole = functools.partial(read, out, spec, classes=classes, dims=dims)
  datasets = {}
  for subset, chosen in indices.items():
    held_out_val = subset == 'val' and chosen is not None
    shard = train_shard if subset == 'train' else (0, 1)
    datasets[subset] = read_whole(
      'train' if held_out_val else subset,
      indices=chosen,
      process_index=shard[0],
      process_count=shard[1],
    )
  return datasets, lambda: read_whole('test')


# ------------------------------------------------------------------------------- command --


@formats.reports_data_errors
def main(argv: Sequence[str] | None = None) -> int:
  """`python -m polyseg.data.tfds`: converts a dataset folder (see the module docstring)."""
  parser = argparse.ArgumentParser(
    prog='python -m polyseg.data.tfds', description='Convert a dataset folder to TFDS.'
  )
  parser.add_argument('--layout', required=True, choices=sorted(LAYOUTS))
  parser.add_argument('--root', required=True, help='the dataset folder')
  parser.add_argument('--out', required=True, help='the TFDS folder (several conversions fit)')
  parser.add_argument('--split', type=int, default=1, help='MS-TCN split k (not referring)')
  parser.add_argument(
    '--protocol', default='random', choices=formats.REFERRING_PROTOCOLS, help='referring'
  )
  parser.add_argument(
    '--sample_frames',
    type=int,
    default=3000,
    help='referring: frames per window, as config.data.sample_frames (0: whole samples)',
  )
  parser.add_argument('--split_seed', type=int, default=0, help='referring')
  parser.add_argument(
    '--split_fractions', default='0.8,0.1,0.1', help='referring: train,val,test fractions'
  )
  parser.add_argument(
    '--length_tolerance',
    type=int,
    default=0,
    help='two_streams: frames RGB / labels may differ from the flow length (config.data.length_tolerance)',
  )
  args = parser.parse_args(argv)
  try:
    fractions = tuple(float(f) for f in args.split_fractions.split(','))
    spec = Spec(
      args.layout,
      split=args.split,
      protocol=args.protocol,
      sample_frames=args.sample_frames,
      split_seed=args.split_seed,
      split_fractions=fractions,
      length_tolerance=args.length_tolerance,
    )
  except ValueError as e:
    parser.error(str(e))
  if is_converted(args.out, spec):
    print(f'{dataset_dir(args.out, spec)} exists: nothing to do (delete it to convert again)')
    return 0
  directory = convert(args.root, args.out, spec)
  print(f'converted {args.root} ({spec.name}) to {directory}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

"""Tests for the two-hands dataset with a shared stream: formats.write_two_hands /
read_hand_streams (round trip, streaming, atomicity, every error) and synthetic.make_two_hands /
ensure_two_hands (determinism, layout, coupled hands, LH harder, confusable classes, frames)."""

import json
import pathlib
import time

import numpy as np
import pytest
from conftest import raises_data_error

from polyseg.data import formats
from polyseg.data import synthetic

CLASSES = ['background', 'take cup', 'place lid onto box']
SPLITS = {'train': ['a', 'b'], 'test': ['c']}


def hand_video(name: str, lh: list[int], rh: list[int], shared_dim: int = 2):
  """A MultiStreamVideo: shared [T, shared_dim] encodes (video, frame, channel), logits one-hot."""
  labels = np.stack([lh, rh], axis=1).astype(np.int32)
  length = len(labels)
  shared = np.arange(length * shared_dim, dtype=np.float32).reshape(length, shared_dim)
  streams = {
    'shared': shared + 100 * ord(name[0]),
    'lh': np.eye(len(CLASSES), dtype=np.float32)[labels[:, 0]],
    'rh': 2 * np.eye(len(CLASSES), dtype=np.float32)[labels[:, 1]],
  }
  return formats.MultiStreamVideo(name, streams, labels)


def three_videos() -> list[formats.MultiStreamVideo]:
  return [
    hand_video('a', [0, 0, 1, 1], [0, 2, 2, 1]),
    hand_video('b', [2, 0], [1, 1]),
    hand_video('c', [0, 1, 1], [2, 2, 0]),
  ]


def write(root: pathlib.Path, videos=None, **kwargs) -> pathlib.Path:
  """write_two_hands of CLASSES, SPLITS and `videos` (default three_videos()) as a generator."""
  videos = three_videos() if videos is None else videos
  kwargs = {'classes': CLASSES, 'splits': SPLITS, **kwargs}
  return formats.write_two_hands(root, videos=(video for video in videos), **kwargs)


# ------------------------------------------------------------ writer and reader --


def test_write_read_round_trip(tmp_path):
  root = write(tmp_path / 'data', extra_files={'notes.txt': b'hello\n'})
  assert root == tmp_path / 'data'
  assert sorted(p.name for p in root.iterdir()) == [
    'features',
    'groundTruth',
    'mapping.txt',
    'notes.txt',
    'splits',
  ]
  assert (root / 'mapping.txt').read_text() == '0 background\n1 take cup\n2 place lid onto box\n'
  assert (root / 'splits' / 'train.split1.bundle').read_text() == 'a.txt\nb.txt\n'
  assert (root / 'splits' / 'test.split1.bundle').read_text() == 'c.txt\n'
  assert (root / 'groundTruth' / 'lh' / 'b.txt').read_text() == 'place lid onto box\nbackground\n'
  assert (root / 'groundTruth' / 'rh' / 'b.txt').read_text() == 'take cup\ntake cup\n'
  assert (root / 'notes.txt').read_bytes() == b'hello\n'
  on_disk = np.load(root / 'features' / 'shared' / 'a.npy')
  assert on_disk.shape == (2, 4) and on_disk.dtype == np.float32  # [D, T]
  train = formats.read_hand_streams(root, 'train', 1, classes=CLASSES, dims={'shared': 2})
  test = formats.read_hand_streams(root, 'test', 1)
  assert train.classes == test.classes == CLASSES
  assert train.input_dims == {'shared': 2, 'lh': 3, 'rh': 3}
  for read, expected in zip(train.videos + test.videos, three_videos(), strict=True):
    assert read.name == expected.name
    np.testing.assert_array_equal(read.labels, expected.labels)
    assert read.labels.shape == (len(expected.labels), 2)  # columns HANDS = (lh, rh)
    assert read.features.keys() == expected.features.keys()
    for stream, features in expected.features.items():
      np.testing.assert_array_equal(read.features[stream], features)


def test_writer_streams_videos_one_at_a_time(tmp_path):
  pulled = []

  def videos():
    for video in three_videos():
      # Every video pulled before this one is already on disk in the temporary root.
      on_disk = sorted(p.stem for p in tmp_path.glob('.data.tmp-*/features/shared/*.npy'))
      assert on_disk == pulled
      pulled.append(video.name)
      yield video

  formats.write_two_hands(tmp_path / 'data', CLASSES, SPLITS, videos())
  assert pulled == ['a', 'b', 'c']


def test_stage2_output_is_read_by_read_two_hands(tmp_path):
  """The MAS layout: per-hand features only (no shared folder) plus mas.json."""
  mas = {'shared': 2, 'logits': 3, 'semantic': 1}
  videos = []
  for video in three_videos():
    features = {
      hand: np.concatenate(
        [video.features['shared'], video.features[hand], video.labels[:, i : i + 1]], 1
      )
      for i, hand in enumerate(formats.HANDS)
    }
    videos.append(formats.MultiStreamVideo(video.name, features, video.labels))
  root = write(tmp_path / 'mas', videos, extra_files={'mas.json': json.dumps(mas).encode()})
  assert sorted(p.name for p in (root / 'features').iterdir()) == ['lh', 'rh']
  assert json.loads((root / 'mas.json').read_text()) == mas
  train = formats.read_two_hands(root, 'train', 1, classes=CLASSES, input_dim=6)
  np.testing.assert_array_equal(train.videos[0].features['rh'], videos[0].features['rh'])
  np.testing.assert_array_equal(train.videos[1].labels, videos[1].labels)


def test_video_arrays_are_saved_unchanged(tmp_path):
  def frames(video):
    length = len(video.labels)
    return {'videos': np.arange(length * 12, dtype=np.uint8).reshape(length, 2, 2, 3)}

  root = write(tmp_path / 'data', video_arrays=frames)
  for video in three_videos():
    on_disk = np.load(root / 'videos' / f'{video.name}.npy', allow_pickle=False)
    assert on_disk.dtype == np.uint8
    np.testing.assert_array_equal(on_disk, frames(video)['videos'])


def replace(index: int, **changes) -> list[formats.MultiStreamVideo]:
  """three_videos() with video `index` changed (features given as a dict replace all streams)."""
  videos = three_videos()
  videos[index] = formats.MultiStreamVideo(
    changes.get('name', videos[index].name),
    changes.get('features', videos[index].features),
    changes.get('labels', videos[index].labels),
  )
  return videos


def with_stream(index: int, stream: str, array) -> list[formats.MultiStreamVideo]:
  return replace(index, features={**three_videos()[index].features, stream: array})


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'classes': ['background', 'cut', 'cut']}, "duplicate class names ['cut']"),
    ({'classes': ['background', 'cut\nx', 'pour']}, 'cannot be written on one line'),
    ({'classes': ['background', ' cut', 'pour']}, 'without outer spaces'),
    ({'classes': []}, 'no classes to write'),
    ({'splits': {}}, 'no split subsets'),
    ({'splits': {'tr/ain': ['a', 'b', 'c']}}, "subset id 'tr/ain' cannot be part of a file"),
    ({'splits': {'train': ['a', 'b'], 'test': ['c', 'a']}}, "'a' is listed in both 'train'"),
    ({'splits': {'train': ['a', 'b', 'c'], 'val': []}}, "subset 'val' lists no videos"),
    ({'splits': {'train': ['a', 'b'], 'test': ['c', 'd']}}, "1 videos of the splits were not"),
    ({'splits': {'train': ['a', 'b']}}, "video 'c' is in no split subset"),
    ({'videos': replace(2, name='a')}, "video 'a' is given twice"),
    ({'videos': replace(1, labels=None)}, "video 'b' has no labels"),
    ({'videos': replace(1, labels=np.array([1, 1]))}, 'labels must have shape [T, 2]'),
    ({'videos': replace(1, labels=np.zeros((0, 2), int))}, 'T >= 1, got (0, 2)'),
    ({'videos': replace(1, labels=np.ones((2, 2)))}, 'labels must be an integer array'),
    ({'videos': replace(1, labels=np.array([[0, 3], [0, 0]]))}, 'in [0, 3] outside [0, 3)'),
    ({'videos': replace(1, features={})}, "video 'b' has no features"),
    ({'videos': with_stream(1, 'shared', np.zeros((3, 2)))}, "'shared' have shape (3, 2)"),
    ({'videos': with_stream(1, 'lh', np.zeros((2, 4)))}, 'expected [T, 3] with T = 2'),
    ({'videos': with_stream(2, 'extra', np.zeros((3, 1)))}, 'feature streams'),
    ({'videos': with_stream(0, 'sh/ared', np.zeros((4, 1)))}, "feature folder id 'sh/ared'"),
    ({'videos': with_stream(2, 'rh', np.full((3, 3), np.nan))}, "'rh' have non-finite values"),
    ({'extra_files': {'mapping.txt': b''}}, "'mapping.txt' would replace part of the dataset"),
    ({'extra_files': {'../x': b''}}, "extra file id '../x' cannot be part of a file name"),
    ({'video_arrays': lambda v: {'videos': np.zeros(1)}}, "array 'videos' (float64, shape (1,))"),
    ({'video_arrays': lambda v: {'features': np.zeros(len(v.labels))}}, 'would replace part'),
  ],
)
def test_writer_rejects_bad_input_and_leaves_nothing(tmp_path, kwargs, message):
  with raises_data_error(message):
    write(tmp_path / 'data', **kwargs)
  assert list(tmp_path.iterdir()) == []


def test_writer_refuses_to_overwrite_and_cleans_up_after_a_crash(tmp_path, monkeypatch):
  root = write(tmp_path / 'data')
  with raises_data_error(f'{root}: already exists'):
    write(root)

  def crashing():
    yield three_videos()[0]
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    formats.write_two_hands(tmp_path / 'other', CLASSES, SPLITS, crashing())
  monkeypatch.setattr(
    'polyseg.data.formats.base.save_features', lambda *a: (_ for _ in ()).throw(OSError('full'))
  )
  with pytest.raises(OSError, match='full'):
    write(tmp_path / 'third')
  assert [p.name for p in tmp_path.iterdir()] == ['data']


def test_reader_errors(tmp_path):
  videos = [
    formats.MultiStreamVideo(v.name, {**v.features, 'lh': np.zeros((len(v.labels), 4))}, v.labels)
    for v in three_videos()
  ]
  root = write(tmp_path / 'data', videos)
  with raises_data_error(f'{root}/features/lh/a.npy: feature dimension D = 4'):
    formats.read_hand_streams(root, 'train', 1)  # logits must have C = 3 by default ...
  train = formats.read_hand_streams(root, 'train', 1, dims={'lh': None})  # ... unless unchecked
  assert train.videos[1].features['lh'].shape == (2, 4)
  np.save(root / 'features' / 'lh' / 'b.npy', np.zeros((5, 2), np.float32))  # [D, T]
  with raises_data_error(
    f'{root}/features/lh/b.npy: feature dimension D = 5 differs from D = 4 of'
  ):
    formats.read_hand_streams(root, 'train', 1, dims={'lh': None})
  with raises_data_error(f'{root}/features/shared/c.npy: feature dimension D = 2'):
    formats.read_hand_streams(root, 'test', 1, dims={'shared': 5, 'lh': None})
  with pytest.raises(ValueError, match='unknown streams'):
    formats.read_hand_streams(root, 'test', 1, dims={'rgb': 5})
  with raises_data_error('differ from the expected'):
    formats.read_hand_streams(root, 'test', 1, classes=CLASSES[:2])
  np.save(root / 'features' / 'rh' / 'c.npy', np.zeros((3, 4), np.float32))
  with raises_data_error(
    f'{root}/features/rh/c.npy: 4 frames but {root}/groundTruth/lh/c.txt has 3'
  ):
    formats.read_hand_streams(root, 'test', 1, dims={'lh': None})
  (root / 'features' / 'shared' / 'c.npy').unlink()
  with raises_data_error(f'{root}/features/shared/c.npy: feature file not found'):
    formats.read_hand_streams(root, 'test', 1, dims={'lh': None})


# ------------------------------------------------------------------- generator --

SMALL = {'num_videos': 4, 'min_len': 60, 'max_len': 120, 'shared_dim': 16}
WORLD = {'seed': 0, 'num_parts': 3, 'rank': 16, 'shared_dim': 64}  # the default's world


def files(root: pathlib.Path) -> dict[str, bytes]:
  """Relative path -> bytes of every file under root."""
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def default_data(tmp_path_factory) -> dict[str, formats.MultiStreamDataset]:
  """The default dataset (generation timed), written to disk and read back."""
  start = time.process_time()
  root = synthetic.ensure_two_hands(tmp_path_factory.mktemp('cache'))
  assert time.process_time() - start < 10.0  # a few CPU seconds at most
  assert not (root / 'videos').exists()
  return {s: formats.read_hand_streams(root, s, 1) for s in ('train', 'val', 'test')}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
  small = {**SMALL, 'frames': True, 'frame_size': 8}
  first = files(synthetic.make_two_hands(tmp_path / 'a', seed=3, **small))
  second = files(synthetic.make_two_hands(tmp_path / 'b', seed=3, **small))
  other = files(synthetic.make_two_hands(tmp_path / 'c', seed=4, **small))
  assert first == second
  for name in (
    'features/shared/video000.npy',
    'groundTruth/lh/video000.txt',
    'videos/video000.npy',
  ):
    assert first[name] != other[name]


def test_default_sizes_and_layout(default_data):
  train, val, test = default_data.values()
  assert [len(d.videos) for d in default_data.values()] == [40, 10, 10]
  names = [v.name for d in default_data.values() for v in d.videos]
  assert sorted(names) == [f'video{i:03d}' for i in range(60)]
  world = synthetic.make_two_hands_world(**WORLD)
  assert train.classes == val.classes == test.classes == world.classes
  assert len(world.classes) == 24 and world.classes[0] == 'background'
  assert train.input_dims == {'shared': 64, 'lh': 24, 'rh': 24}
  for video in train.videos + val.videos + test.videos:
    assert 300 <= len(video.labels) <= 800 and video.labels.shape[1] == 2
    assert (video.labels[[0, -1]] == 0).all()  # both hands idle at the start and the end
    assert all(
      x.dtype == np.float32 and len(x) == len(video.labels) for x in video.features.values()
    )


def parse(name: str) -> tuple[str, str, str, str]:
  """stage2.parse_label: verb = first word; object up to ' into '/' onto ' (or ' using ' when
  neither); target after that up to ' using '; tool after ' using '; missing -> 'none'."""
  verb, _, rest = name.replace('_', ' ').partition(' ')
  rest, _, tool = rest.partition(' using ')
  obj, target = rest, ''
  for preposition in (' into ', ' onto '):
    if preposition in rest:
      obj, _, target = rest.partition(preposition)
      break
  return verb, obj or 'none', target or 'none', tool or 'none'


def test_class_names_parse_into_their_parts():
  world = synthetic.make_two_hands_world(**WORLD)
  assert [parse(name) for name in world.classes] == world.parts
  parts = dict(zip(world.classes, world.parts, strict=True))
  assert parts['screw nut onto bolt using wrench'] == ('screw', 'nut', 'bolt', 'wrench')
  assert parts['insert shaft into box'] == ('insert', 'shaft', 'box', 'none')
  assert parts['wipe box using cloth'] == ('wipe', 'box', 'none', 'cloth')
  assert parts['take nut'] == ('take', 'nut', 'none', 'none')
  assert len(synthetic.make_two_hands_world(**{**WORLD, 'num_parts': 6}).classes) == 36


def class_ids(world, *names: str) -> list[int]:
  return [world.classes.index(name) for name in names]


def test_lh_is_sparser_and_the_hands_are_coupled(default_data):
  world = synthetic.make_two_hands_world(**WORLD)
  videos = [v for d in default_data.values() for v in d.videos]
  labels = np.concatenate([v.labels for v in videos])
  lh, rh = labels.T
  assert (lh == 0).mean() > (rh == 0).mean() + 0.15  # LH idle much more often ...
  segments = np.array(
    [[len(formats.segment_classes(v.labels[:, h])) for h in (0, 1)] for v in videos]
  )
  assert segments[:, 0].mean() < 0.95 * segments[:, 1].mean()  # ... in fewer segments ...
  assert len(np.unique(lh)) < len(np.unique(rh)) - 5  # ... of fewer classes (imbalance)

  def lh_share(rh_name: str, lh_name: str) -> float:
    """Share of the frames with RH `rh_name` where the LH does `lh_name`."""
    [rh_class, lh_class] = class_ids(world, rh_name, lh_name)
    return (lh[rh == rh_class] == lh_class).mean()

  for part in synthetic.PARTS[:3]:  # supporting: the LH holds what the RH works on
    assert lh_share(f'insert {part} into box', 'hold box') > 0.95
    assert lh_share(f'screw nut onto {part} using wrench', f'hold {part}') > 0.95
  assert lh_share('place lid onto box', 'hold box') > 0.95
  assert lh_share('lift box', 'lift box') > 0.8  # joint: both lift, boundaries a little apart
  assert lh_share('hold box', 'wipe box using cloth') > 0.8  # joint: the RH holds, the LH wipes
  assert 0.2 < lh_share('take bolt', 'take nut') < 0.8  # independent: sometimes, own timing
  idle_or_holding = class_ids(
    world, 'background', 'hold box', *(f'hold {p}' for p in synthetic.PARTS[:3])
  )
  [take_wrench] = class_ids(world, 'take wrench')
  assert np.isin(lh[rh == take_wrench], idle_or_holding).mean() > 0.95  # holds spill over a little
  assert lh_share('take wrench', 'background') > 0.6
  # Hand-specific appearance: the two hands' prototypes of a class differ about as much as the
  # prototypes of two classes do.
  lh_prototypes, rh_prototypes = world.prototypes
  between_classes = np.linalg.norm(rh_prototypes[:, None] - rh_prototypes[None], axis=-1)
  typical = np.median(between_classes[np.triu_indices(len(rh_prototypes), 1)])
  assert np.linalg.norm(lh_prototypes - rh_prototypes, axis=1).min() > 0.4 * typical


def test_confusable_classes_differ_only_in_the_target():
  world = synthetic.make_two_hands_world(**WORLD)
  screws = class_ids(world, *(f'screw nut onto {p} using wrench' for p in synthetic.PARTS[:3]))
  assert world.confusable == [
    (screws[0], screws[1]),
    (screws[0], screws[2]),
    (screws[1], screws[2]),
  ]
  for first, second in world.confusable:
    differ = [i for i, (a, b) in enumerate(zip(world.parts[first], world.parts[second])) if a != b]
    assert differ == [2]  # (verb, object, target, tool): only the target differs
    for prototypes in world.prototypes:  # nearly equal for both hands
      distances = np.linalg.norm(prototypes[:, None] - prototypes[None], axis=-1)
      assert distances[first, second] < 0.25 * np.median(
        distances[np.triu_indices(len(distances), 1)]
      )
    np.testing.assert_allclose(world.colours[:, first], world.colours[:, second], atol=0.06)
    np.testing.assert_array_equal(world.speeds[:, first], world.speeds[:, second])


def moving_average(scores: np.ndarray, width: int) -> np.ndarray:
  """Centred moving average over time of [T, C] scores, edges repeated."""
  padded = np.pad(scores, ((width // 2, width - 1 - width // 2), (0, 0)), mode='edge')
  cumulative = np.concatenate([np.zeros((1, scores.shape[1])), np.cumsum(padded, axis=0)])
  return (cumulative[width:] - cumulative[:-width]) / width


def temporal(x: np.ndarray) -> np.ndarray:
  """[T, D] -> [T, 4D]: the frame and its centred moving averages over 9, 31 and 91 frames."""
  return np.concatenate([x, *(moving_average(x, w) for w in (9, 31, 91))], axis=1)


def with_past(x: np.ndarray) -> np.ndarray:
  """[T, D] -> [T, 5D]: temporal(x) and the mean of the 240 frames before the last 30 (what
  happened one or two steps earlier)."""
  past = np.pad(moving_average(x, 240), ((150, 0), (0, 0)), mode='edge')[: len(x)]
  return np.concatenate([temporal(x), past], axis=1)


def linear_accuracy(train, test, hand: int, streams, context=None, classes=None) -> float:
  """Test accuracy of a class-balanced least-squares linear classifier of `hand`'s labels on the
  concatenated `streams` (through `context`, e.g. temporal), restricted to `classes`."""

  num_classes = len(train.classes)
  allowed = np.arange(num_classes) if classes is None else np.asarray(classes)

  def inputs(dataset):
    per_video = [np.concatenate([v.features[s] for s in streams], 1) for v in dataset.videos]
    x = np.concatenate([f if context is None else context(f) for f in per_video])
    y = np.concatenate([v.labels[:, hand] for v in dataset.videos])
    keep = np.isin(y, allowed)
    return np.c_[x, np.ones(len(x))][keep].astype(np.float64), y[keep]

  x, y = inputs(train)
  weight = (1.0 / np.bincount(y, minlength=num_classes).clip(1))[y][:, None]
  targets = np.eye(num_classes)[y][:, allowed]
  w = np.linalg.solve(x.T @ (x * weight) + 1e-3 * np.eye(x.shape[1]), x.T @ (targets * weight))
  x, y = inputs(test)
  return (allowed[(x @ w).argmax(1)] == y).mean()


def test_hard_per_frame_temporal_context_and_the_other_hand_pay_off(default_data):
  train, test = default_data['train'], default_data['test']
  accuracy = {}
  for h, (own, other) in enumerate([('lh', 'rh'), ('rh', 'lh')]):
    frame = linear_accuracy(train, test, h, ['shared', own])
    accuracy[own] = linear_accuracy(train, test, h, ['shared', own], temporal)
    assert 0.35 < frame < 0.8 and accuracy[own] > frame + 0.12, (own, frame, accuracy[own])
    with_other = linear_accuracy(train, test, h, ['shared', own, other])
    assert with_other > frame + (0.05 if own == 'lh' else 0.0), (own, frame, with_other)
  assert accuracy['lh'] < accuracy['rh'] - 0.05, accuracy  # the LH is harder
  # The per-frame logits: fragmented, and the LH's noisier (balanced accuracy).
  for h, hand in enumerate(formats.HANDS):
    predicted = sum(len(formats.segment_classes(v.features[hand].argmax(1))) for v in test.videos)
    true = sum(len(formats.segment_classes(v.labels[:, h])) for v in test.videos)
    assert predicted > 3 * true, (hand, predicted, true)
  recall = {}
  for h, hand in enumerate(formats.HANDS):
    y = np.concatenate([v.labels[:, h] for v in test.videos])
    p = np.concatenate([v.features[hand].argmax(1) for v in test.videos])
    recall[hand] = np.mean([(p[y == c] == c).mean() for c in np.unique(y)])
  assert recall['lh'] < recall['rh'] - 0.1, recall


def test_confusable_classes_are_separated_by_context(default_data):
  world = synthetic.make_two_hands_world(**WORLD)
  screws = sorted({c for pair in world.confusable for c in pair})
  train, test = default_data['train'], default_data['test']
  frame = linear_accuracy(train, test, 1, ['shared', 'rh'], classes=screws)
  context = linear_accuracy(train, test, 1, ['shared', 'rh', 'lh'], with_past, classes=screws)
  assert frame < 0.6 and context > frame + 0.12, (frame, context)


def test_frames_show_each_hand_in_its_half(tmp_path):
  root = synthetic.make_two_hands(tmp_path / 'd', **SMALL, frames=True, frame_size=8)
  videos = [
    v for s in ('train', 'val', 'test') for v in formats.read_hand_streams(root, s, 1).videos
  ]
  for video in videos:
    frames = np.load(root / 'videos' / f'{video.name}.npy', allow_pickle=False)
    assert frames.shape == (len(video.labels), 8, 8, 3) and frames.dtype == np.uint8
  world = synthetic.make_two_hands_world(**{**WORLD, 'shared_dim': 16})
  labels = videos[0].labels
  swapped = labels.copy()
  swapped[:, 1] = labels[::-1, 1]  # same LH, other RH actions

  def render(labels):
    return synthetic.render_frames(np.random.default_rng(0), world, labels, 8)

  first, second = render(labels), render(swapped)
  np.testing.assert_array_equal(first[:, :, :4], second[:, :, :4])  # left half: the LH only
  assert (first[:, :, 4:] != second[:, :, 4:]).any()
  # Class-specific appearance: nearest class mean of a half's mean colour beats the majority.
  for h, half in enumerate((slice(0, 4), slice(4, 8))):
    frames = np.concatenate([np.load(root / 'videos' / f'{v.name}.npy') for v in videos])
    colour = frames[:, :, half].reshape(len(frames), -1, 3).mean(1)
    y = np.concatenate([v.labels[:, h] for v in videos])
    present = np.unique(y)
    means = np.stack([colour[y == c].mean(0) for c in present])
    predicted = present[((colour[:, None] - means[None]) ** 2).sum(-1).argmin(1)]
    assert (predicted == y).mean() > np.bincount(y).max() / len(y) + 0.15


def test_ensure_two_hands_generates_once_and_keys_on_arguments(tmp_path, monkeypatch):
  root = synthetic.ensure_two_hands(tmp_path, seed=1, **SMALL)
  assert root.parent == tmp_path and root.name.startswith('two_hands-')
  assert formats.read_split(root, 'test', 1) == ['video003']
  assert not (root / 'videos').exists()
  assert synthetic.ensure_two_hands(tmp_path, seed=1, num_parts=3, **SMALL) == root  # defaults
  assert synthetic.ensure_two_hands(tmp_path, seed=2, **SMALL) != root
  monkeypatch.setattr(formats, 'write_two_hands', lambda *a, **k: pytest.fail('regenerated'))
  assert synthetic.ensure_two_hands(tmp_path, seed=1, **SMALL) == root
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
    [root.name, synthetic.two_hands_cache_name(seed=2, **SMALL)]
  )


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'num_videos': 2}, 'num_videos'),
    ({'num_parts': 0}, 'num_parts'),
    ({'num_parts': 7}, 'num_parts'),
    ({'rank': 17}, 'rank'),
    ({'min_len': 10}, 'min_len'),
    ({'min_len': 130}, 'min_len'),
    ({'ar_coef': 1.0}, 'ar_coef'),
    ({'lh_noise': -1.0}, 'noise'),
    ({'frames': True, 'frame_size': 1}, 'frame_size'),
  ],
)
def test_bad_arguments(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    synthetic.make_two_hands(tmp_path / 'd', **{**SMALL, **kwargs})
  assert list(tmp_path.iterdir()) == []

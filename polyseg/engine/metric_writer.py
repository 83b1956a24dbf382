"""The run's metric log: metrics.jsonl lines and TensorBoard scalars.

The TensorBoard event files are written here, not through a TensorBoard library: the format is
small (TFRecord framing around `tensorflow.Event` protocol buffers, of which scalars need four
fields), and the libraries that write it pull in TensorFlow or, where installed, PyTorch
(tensorboardX imports torch when it can: 3 s at every start, and polyseg never imports PyTorch).
"""

import itertools
import json
import math
import os
import re
import socket
import struct
import time

from polyseg.data import formats

# Event (tensorflow/core/util/event.proto) fields: wall_time 1 (double), step 2 (int64),
# file_version 3 (string), summary 5 (Summary: value 1, repeated Value: tag 1 (string),
# simple_value 2 (float)), session_log 7 (SessionLog: status 1, START = 1).
_FILE_VERSION = b'brain.Event:2'
_SESSION_START = 1
_FILE_UIDS = itertools.count()


def _crc32c_table() -> tuple[int, ...]:
  """The byte table of CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C of `data` (crc32c(b'123456789') == 0xE3069283)."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
  """TFRecord's masked CRC-32C, little-endian."""
  crc = crc32c(data)
  return struct.pack('<I', (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: length (uint64), its masked CRC, the data, the data's masked CRC."""
  length = struct.pack('<Q', len(data))
  return length + _masked_crc(length) + data + _masked_crc(data)


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    low, value = value & 0x7F, value >> 7
    out.append(low | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited protocol-buffer field."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def tensorboard_tag(name: str) -> str:
  """The TensorBoard tag of a metric name: characters outside [-/\\w.] become '_'."""
  return re.sub(r'[^-/\w.]', '_', name)


def scalar_event(step: int, scalars: dict[str, float], wall_time: float) -> bytes:
  """The serialised Event of `scalars` (name -> value; tags as `tensorboard_tag`) at `step`."""
  values = b''.join(
    _field(1, _field(1, tensorboard_tag(name).encode()) + b'\x15' + struct.pack('<f', value))
    for name, value in scalars.items()
  )
  return _event_header(step, wall_time) + _field(5, values)


def _event_header(step: int, wall_time: float) -> bytes:
  if step < 0:
    raise ValueError(f'TensorBoard steps are >= 0, got {step}')
  return b'\x09' + struct.pack('<d', wall_time) + b'\x10' + _varint(step)


class MetricWriter:
  """Appends `{'step', **scalars}` lines to workdir/metrics.jsonl and TensorBoard scalars to
  workdir/tensorboard. Does nothing when not enabled (e.g. on processes other than 0).

  TensorBoard tags are the metric names with characters outside [-/\\w.] replaced by '_'
  (`tensorboard_tag`), e.g. 'eval/F1@50' -> 'eval/F1_50'; metrics.jsonl keeps the names as given.

  A run resumed from the checkpoint of `resume_step` forgets what the run before it logged after
  that step (it will log those steps again): the later metrics.jsonl lines (and a last line cut
  short by a kill) are dropped, and TensorBoard purges those steps.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
    self.enabled = enabled
    self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    self.events_path = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if resume_step is not None and os.path.exists(self.jsonl_path):
        self._rewind(resume_step)
      self._start_events(os.path.join(workdir, 'tensorboard'), resume_step)

  def _rewind(self, step: int) -> None:
    kept = []
    with open(self.jsonl_path, 'rb') as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:  # a line cut short by a kill (or undecodable bytes)
          continue
        if record.get('step', math.inf) <= step:
          kept.append(line if line.endswith(b'\n') else line + b'\n')
    formats.write_atomic(self.jsonl_path, b''.join(kept))

  def _start_events(self, folder: str, resume_step: int | None) -> None:
    """A new event file in `folder` (a resumed run writes a file of its own beside the earlier
    ones, as TensorBoard expects), started with the file-version event; after a resume from
    `resume_step`, a session start at resume_step + 1 makes TensorBoard drop the earlier files'
    events from that step on (the steps this run logs again)."""
    os.makedirs(folder, exist_ok=True)
    now = time.time()
    host, uid = socket.gethostname(), next(_FILE_UIDS)  # TensorFlow's naming: one file per writer
    self.events_path = os.path.join(
      folder, f'events.out.tfevents.{int(now):010d}.{host}.{os.getpid()}.{uid}'
    )
    header = _event_header(0 if resume_step is None else resume_step + 1, now)
    records = tfrecord(header + _field(3, _FILE_VERSION))
    if resume_step is not None:
      records += tfrecord(header + _field(7, b'\x08' + _varint(_SESSION_START)))
    _append(self.events_path, records)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    """Logs scalars (python/numpy/jax scalars) at `step`."""
    if not self.enabled:
      return
    values = {}
    for name, value in scalars.items():
      try:
        values[name] = float(value)
      except (TypeError, ValueError) as error:
        raise ValueError(f'metric {name!r} at step {step} is not a scalar: {value!r}') from error
    # A line or record cut short (a kill, a full disk) is skipped on resume / by TensorBoard.
    _append(self.jsonl_path, (json.dumps({'step': int(step), **values}) + '\n').encode())
    _append(self.events_path, tfrecord(scalar_event(int(step), values, time.time())))


def _append(path: str, data: bytes) -> None:
  """Appends `data` to the file `path`; an OSError (e.g. a full disk) names the file."""
  try:
    with open(path, 'ab') as f:
      f.write(data)
  except OSError as error:
    raise OSError(error.errno, error.strerror, path) from error

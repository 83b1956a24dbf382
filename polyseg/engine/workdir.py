"""The workdir and the folders a run writes: created and checked before anything runs, one writer
at a time, room on the disk.

`Lock(folder, purpose)` makes a process the only writer of `folder`: training holds the workdir,
`--mode=eval` its `eval_<which>` folder, `--mode=predict` its output folder (so an evaluation may
run beside the training it reads). The lock is `<folder>/polyseg.lock`, held two ways at once:

* an exclusive `flock` on that file, which the kernel (and NFSv4's server) drops when the process
  ends, however it ends, SIGKILL included;
* the holder's record in the file: host, pid, the process's start time (so a reused pid is not
  taken for the holder), what it does, and a heartbeat it rewrites every `HEARTBEAT_S` seconds.

A second process is refused while the flock is held, or, where a file system shares no flocks
between hosts, while the record names a live process of this host or a heartbeat of another host
younger than `STALE_AFTER_S`. A record left by a process that is gone is a stale lock: it is taken
over, with a line saying whose it was. The holder deletes the file when it lets go.
"""

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import threading
import time
import uuid
from typing import Any
from typing import Self

from polyseg.engine import checkpoint as checkpoint_lib

LOCK_NAME = 'polyseg.lock'
HEARTBEAT_S = 30.0  # the holder rewrites its record this often
STALE_AFTER_S = 300.0  # another host's record without a heartbeat for this long is stale
RECORD_BYTES = 1024  # the record's size in the file (JSON padded with spaces)


class WorkdirBusy(OSError):
  """Another process writes the folder; the message names it."""


class DiskFull(OSError):
  """The workdir's disk (or quota) filled during a run; the message says what was not written."""


@contextlib.contextmanager
def disk_full_reported(workdir: str):
  """Turns a full disk inside the block into DiskFull naming the workdir, what could not be
  written and the newest checkpoint, the one a rerun resumes from (a write cut short is never a
  checkpoint: orbax renames a step's folder into place only once it is complete)."""
  try:
    yield
  except OSError as error:
    if not checkpoint_lib.is_disk_full(error):
      raise
    workdir = os.path.abspath(os.path.expanduser(workdir))
    folder = os.path.join(workdir, 'checkpoints')
    steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
    newest = f'its newest checkpoint is {max(steps)}' if steps else 'it has no checkpoint yet'
    what = error.strerror or str(error)
    raise DiskFull(
      f'workdir {workdir}: the disk is full ({what}{f": {error.filename}" if error.filename else ""}); '
      f'{newest}: free some space, then run the same command again to resume'
    ) from error


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` and checks it is writable, before any data is read or step is run."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write-test-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise OSError(f'workdir {workdir} is not writable: {e}') from e
  return workdir


def check_free_space(workdir: str, state: Any, keep: int, margin: int = 64 << 20) -> None:
  """OSError at start-up, not a crash mid-run, when the disk of `workdir` cannot hold the
  checkpoints the run will keep: (keep + 2) copies of `state` (the kept ones, the best one and the
  one being written) plus `margin` bytes for metrics, predictions and plots. The checkpoints a
  resumed run finds count as written (it replaces them), but at least one more copy must fit."""
  state_bytes = checkpoint_lib.state_bytes(state)
  existing = checkpoint_lib.folder_bytes(os.path.join(workdir, 'checkpoints'))
  needed = max((keep + 2) * state_bytes - existing, state_bytes) + margin
  free = shutil.disk_usage(workdir).free
  if free < needed:
    raise OSError(
      f'workdir {workdir}: {free / 2**20:.0f} MiB free on its disk, but this run needs about '
      f'{needed / 2**20:.0f} MiB more ({keep + 2} checkpoints of {state_bytes / 2**20:.1f} MiB, '
      f'train.keep_checkpoints={keep}, {existing / 2**20:.1f} MiB of them already written, and '
      f'{margin >> 20} MiB for outputs): free some space or use another --workdir'
    )


def _process_start(pid: int) -> str | None:
  """'<boot id>:<start time in clock ticks>' of process `pid` on this host (Linux /proc), None when
  there is no such process: with the pid, it names one process even after the pid is reused."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()  # after the command name, which may hold spaces
    with open('/proc/sys/kernel/random/boot_id') as f:
      return f'{f.read().strip()}:{fields[19]}'  # field 22 of stat: starttime
  except (OSError, IndexError):
    return None


@dataclasses.dataclass
class Holder:
  """The record of the process that holds a lock."""

  host: str
  pid: int
  process: str | None  # _process_start(pid) when it took the lock
  purpose: str  # 'train', 'eval', 'predict'
  since: float  # time.time() when it took the lock
  heartbeat: float  # time.time() of its last sign of life
  token: str  # unique per holding

  def describe(self) -> str:
    since = (
      datetime.datetime.fromtimestamp(self.since, datetime.UTC)
      .astimezone()
      .strftime('%Y-%m-%d %H:%M:%S')
    )
    return f'process {self.pid} on host {self.host} ({self.purpose}, since {since})'

  def alive(self, now: float) -> bool:
    """Whether the holder still runs: on this host, its process with its start time exists;
    elsewhere, its heartbeat is younger than STALE_AFTER_S."""
    if self.host == socket.gethostname() and self.process is not None:
      return _process_start(self.pid) == self.process
    return now - self.heartbeat < STALE_AFTER_S


def _read_holder(fd: int) -> Holder | None:
  """The record in the lock file, None when it is empty or unreadable (a write cut short)."""
  try:
    data = os.pread(fd, 1 << 16, 0)
    return Holder(**json.loads(data)) if data.strip() else None
  except (OSError, ValueError, TypeError):
    return None


class Lock:
  """`with Lock(folder, purpose):` holds `<folder>/polyseg.lock` (module docstring), or raises
  WorkdirBusy naming the holder, before anything is written. `enabled=False` (processes other than
  a multi-host run's first) does nothing: one process writes for all."""

  def __init__(self, folder: str, purpose: str, enabled: bool = True):
    self.folder = os.path.abspath(os.path.expanduser(folder))
    self.path = os.path.join(self.folder, LOCK_NAME)
    self.purpose, self.enabled = purpose, enabled
    self.fd = None
    self.holder = None
    self._stop = threading.Event()
    self._beat = None

  def __enter__(self) -> Self:
    if not self.enabled:
      return self
    prepare_workdir(self.folder)
    while True:  # until the locked file is the one at the path (a releasing holder unlinks it)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise self._busy(holder) from None
      except OSError as e:  # a file system without flock: the record alone decides
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
          os.close(fd)
          raise
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    now = time.time()
    previous = _read_holder(fd)
    if previous is not None and previous.alive(now):
      os.close(fd)
      raise self._busy(previous)
    if previous is not None:
      print(
        f'{self.folder}: taking over the stale lock of {previous.describe()}, which is gone',
        flush=True,
      )
    self.fd = fd
    self.holder = Holder(
      host=socket.gethostname(),
      pid=os.getpid(),
      process=_process_start(os.getpid()),
      purpose=self.purpose,
      since=now,
      heartbeat=now,
      token=uuid.uuid4().hex,
    )
    self._write()
    self._beat = threading.Thread(target=self._heartbeat, name='polyseg-lock', daemon=True)
    self._beat.start()
    return self

  def _busy(self, holder: Holder | None) -> WorkdirBusy:
    who = holder.describe() if holder else 'another process'
    return WorkdirBusy(
      f'{self.folder} is in use by {who}: wait for it to end, or write elsewhere '
      f'(lock file {self.path})'
    )

  def _write(self) -> None:
    """The record, padded to RECORD_BYTES and written in one call over the previous one, so that
    a reader never finds the file empty or half old."""
    data = json.dumps(dataclasses.asdict(self.holder)).encode().ljust(RECORD_BYTES)
    os.pwrite(self.fd, data, 0)
    os.ftruncate(self.fd, RECORD_BYTES)
    os.fsync(self.fd)

  def _heartbeat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      self.holder.heartbeat = time.time()
      try:
        self._write()
      except OSError:  # a full disk must not kill the run from this thread; the run reports it
        pass

  def __exit__(self, *exc) -> None:
    if self.fd is None:
      return
    self._stop.set()
    self._beat.join()
    current = _read_holder(self.fd)
    if current is not None and current.token == self.holder.token:
      try:
        os.unlink(self.path)
      except FileNotFoundError:
        pass
    os.close(self.fd)  # drops the flock
    self.fd = None

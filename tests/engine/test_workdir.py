"""The one-writer lock of polyseg/engine/workdir.py: held, refused, released on every exit (a
SIGKILLed holder's lock is taken over), records of other hosts and reused pids, and the command
line refusing a workdir in use before writing anything."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO

import polyseg
from polyseg.engine import workdir

HOLD = (
  'import sys, time; from polyseg.engine import workdir\n'
  'with workdir.Lock(sys.argv[1], "train"):\n'
  '  print("held", flush=True); sys.stdin.readline()\n'
)


def holder_process(folder) -> subprocess.Popen:
  """A process that holds the lock of `folder` until its stdin gets a line."""
  proc = subprocess.Popen(
    [sys.executable, '-c', HOLD, str(folder)],
    cwd=REPO,
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert proc.stdout.readline().strip() == 'held'
  return proc


def write_record(folder, **fields) -> None:
  now = time.time()
  record = {
    'host': socket.gethostname(),
    'pid': os.getpid(),
    'process': workdir._process_start(os.getpid()),
    'purpose': 'train',
    'since': now - 100,
    'heartbeat': now,
    'token': 'theirs',
  }
  os.makedirs(folder, exist_ok=True)
  (folder / workdir.LOCK_NAME).write_text(json.dumps(record | fields))


def test_a_held_folder_refuses_a_second_writer_naming_the_holder(tmp_path):
  proc = holder_process(tmp_path / 'run')
  try:
    with pytest.raises(workdir.WorkdirBusy) as busy, workdir.Lock(tmp_path / 'run', 'eval'):
      pass
    message = str(busy.value)
    assert f'process {proc.pid} on host {socket.gethostname()} (train, since ' in message
    assert str(tmp_path / 'run') in message
  finally:
    proc.communicate('\n', timeout=60)
  assert proc.returncode == 0
  assert not (tmp_path / 'run' / workdir.LOCK_NAME).exists()  # released: the file is gone
  with workdir.Lock(tmp_path / 'run', 'train') as lock:  # and the folder is free again
    record = json.loads((tmp_path / 'run' / workdir.LOCK_NAME).read_text())
    assert record['pid'] == os.getpid() and record['token'] == lock.holder.token
    assert record['purpose'] == 'train'


def test_the_lock_of_a_sigkilled_holder_is_taken_over_with_a_line(tmp_path, capsys):
  proc = holder_process(tmp_path / 'run')
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  proc.stdin.close()
  proc.stdout.close()
  assert (tmp_path / 'run' / workdir.LOCK_NAME).exists()  # the record stays behind
  with workdir.Lock(tmp_path / 'run', 'train'):
    pass
  out = capsys.readouterr().out
  assert f'taking over the stale lock of process {proc.pid} on host' in out


def test_a_live_process_of_this_host_holds_even_without_the_flock(tmp_path):
  """A file system that shares no flocks (NFS without locking): the record decides."""
  write_record(tmp_path / 'run')  # this very process, with its start time: alive
  busy = pytest.raises(workdir.WorkdirBusy, match=f'process {os.getpid()} on host')
  with busy, workdir.Lock(tmp_path / 'run', 'train'):
    pass


def test_a_reused_pid_is_not_the_holder(tmp_path, capsys):
  write_record(
    tmp_path / 'run', process='another-boot:12345'
  )  # the pid lives, but it started later
  with workdir.Lock(tmp_path / 'run', 'train'):
    pass
  assert 'taking over the stale lock' in capsys.readouterr().out


@pytest.mark.parametrize('age, busy', [(10.0, True), (workdir.STALE_AFTER_S + 10, False)])
def test_another_hosts_record_holds_while_its_heartbeat_is_fresh(tmp_path, capsys, age, busy):
  write_record(tmp_path / 'run', host='elsewhere', pid=1, process=None, heartbeat=time.time() - age)
  if busy:
    refused = pytest.raises(workdir.WorkdirBusy, match='process 1 on host elsewhere')
    with refused, workdir.Lock(tmp_path / 'run', 'train'):
      pass
  else:
    with workdir.Lock(tmp_path / 'run', 'train'):
      pass
    assert 'taking over the stale lock of process 1 on host elsewhere' in capsys.readouterr().out


def test_the_heartbeat_is_rewritten_while_held(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir, 'HEARTBEAT_S', 0.05)
  with workdir.Lock(tmp_path / 'run', 'train') as lock:
    first = lock.holder.heartbeat
    deadline = time.time() + 30
    while json.loads((tmp_path / 'run' / workdir.LOCK_NAME).read_text())['heartbeat'] == first:
      assert time.time() < deadline, 'no heartbeat written'
      time.sleep(0.05)


def test_a_disabled_lock_does_nothing(tmp_path):
  with workdir.Lock(tmp_path / 'run', 'train', enabled=False):
    assert not (tmp_path / 'run').exists()


def test_a_second_training_on_a_workdir_in_use_stops_at_once_and_writes_nothing(tmp_path):
  run = tmp_path / 'run'
  proc = holder_process(run)
  try:
    before = sorted(p.name for p in run.iterdir())
    done = subprocess.run(
      [
        sys.executable,
        '-m',
        'polyseg.main',
        f'--config={REPO / "configs" / "diffact.py"}:runlocal=True',
        f'--workdir={run}',
        f'--config.data.cache_dir={tmp_path / "cache"}',
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    since = lines[0].split('since ')[1].split(')')[0]
    assert lines == [
      (
        f'polyseg: WorkdirBusy: {run} is in use by process {proc.pid} on host '
        f'{socket.gethostname()} (train, since {since}): '
        f'wait for it to end, or write elsewhere (lock file {run / workdir.LOCK_NAME})'
      )
    ]
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written
    assert not (tmp_path / 'cache').exists()  # not even the data read
  finally:
    proc.communicate('\n', timeout=60)


def test_python_predict_into_a_folder_in_use_stops_before_reading_anything(tmp_path, tiny_config):
  """polyseg.predict(..., output=F) holds F as --mode=predict does: refused while F is held, and
  nothing is read (the run named does not even exist)."""
  out = tmp_path / 'predictions'
  with workdir.Lock(out, 'predict'):
    with pytest.raises(workdir.WorkdirBusy, match=f'{out} is in use by process {os.getpid()}'):
      polyseg.predict(
        str(tmp_path / 'no_run'), {'v1': np.zeros((8, 4))}, config=tiny_config, output=str(out)
      )
    assert sorted(p.name for p in out.iterdir()) == [workdir.LOCK_NAME]
  assert not (tmp_path / 'no_run').exists()
